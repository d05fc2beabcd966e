"""Agent profiles (B4): which CLI runs a role, with which model, tools and flags.

A profile turns (role, task file, system prompt file) into an argument list. No
value from a work item ever reaches the argument list: the agent learns about the
work item by reading the task file, whose *name* is all the command line carries.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, model_validator

from sdlc.models import AgentKind
from sdlc.retry import RetryKnobs

STRONG_ROLES = ("architect", "reviewer")

DEFAULT_MODELS: dict[str, tuple[str, str]] = {
    # kind: (strong model for architect and reviewer, model for the other roles)
    "claude": ("opus", "sonnet"),
    "codex": ("gpt-6-astra", "gpt-6.1-sol"),  # in Codex 0.169's model catalog (`codex debug models`)
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash"),
    "aider": ("sonnet", "sonnet"),
    # in OpenCode 1.18.33's own price list (`opencode models anthropic`; OPENCODE_DISABLE_MODELS_FETCH=1)
    "opencode": ("anthropic/claude-opus-5-5", "anthropic/claude-sonnet-5"),
}

DEFAULT_TOOLS: dict[str, list[str]] = {
    "analyst": ["Read", "Write", "Edit", "Glob", "Grep"],
    "architect": ["Read", "Write", "Edit", "Glob", "Grep"],
    "developer": ["Read", "Write", "Edit", "Glob", "Grep", "Bash"],
    "reviewer": ["Read", "Write", "Glob", "Grep", "Bash(git diff:*)", "Bash(git log:*)"],
    "tester": ["Read", "Write", "Edit", "Glob", "Grep", "Bash"],
    "deployer": ["Read", "Write", "Glob", "Grep", "Bash"],
}


# Where `make install` puts each CLI (tools/package-lock.json; Aider's own venv), relative to the checkout.
TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"
INSTALLED_CLIS: dict[str, str] = {
    "claude": "node_modules/.bin/claude",
    "codex": "node_modules/.bin/codex",
    "gemini": "node_modules/.bin/gemini",
    "opencode": "node_modules/opencode-linux-x64/bin/opencode",
    "aider": "aider/bin/aider",
}


def installed_cli(kind: str) -> str:
    """The kind's CLI as `make install` pinned it under tools/, else its name (found on PATH)."""
    pinned = TOOLS_DIR / INSTALLED_CLIS.get(kind, kind)
    return str(pinned) if kind in INSTALLED_CLIS and os.access(pinned, os.X_OK) else kind


def gemini_permissions(tools: list[str]) -> list[str]:
    """Gemini CLI flags granting a role's tools (Claude Code's names) and no more, unattended.

    Headless, the CLI leaves out every tool its approval mode would ask about: ``auto_edit``
    runs its edit tools (``write_file``, ``replace``) and no shell, ``default`` only reads,
    ``yolo`` runs everything (``run_shell_command`` included). ``Bash(git diff:*)`` becomes
    ``--allowed-tools run_shell_command(git diff)``: that command prefix runs, every other
    shell command is refused.
    """
    if "Bash" in tools:
        return ["--approval-mode", "yolo"]
    edits = any(tool in ("Write", "Edit", "MultiEdit") for tool in tools)
    flags = ["--approval-mode", "auto_edit" if edits else "default"]
    for tool in tools:
        if tool.startswith("Bash(") and tool.endswith(")"):
            prefix = tool[len("Bash(") : -1].removesuffix(":*").removesuffix("*").strip()
            if prefix:
                flags += ["--allowed-tools", f"run_shell_command({prefix})"]
    return flags


# What no role of an opencode profile may do unattended: the web (the model API is all it needs),
# subagents (their cost is not in the run's output), files outside the worktree, a repeated call.
OPENCODE_PERMISSION: dict[str, Any] = {
    "webfetch": "deny",
    "websearch": "deny",
    "task": "deny",
    "doom_loop": "deny",
    "external_directory": "deny",
}


def opencode_permission(tools: list[str]) -> dict[str, Any]:
    """OpenCode permission rules granting a role's tools (Claude Code's names) and no more.

    Reading and searching stay allowed; ``Write``/``Edit`` allow every file edit, ``Bash`` every
    command, ``Bash(git diff:*)`` only commands starting ``git diff`` (each command of a pipeline
    or list is checked on its own). A denied tool is not even offered to the model.
    """
    prefixes = [
        tool[len("Bash(") : -1].removesuffix(":*").removesuffix("*").strip()
        for tool in tools
        if tool.startswith("Bash(") and tool.endswith(")")
    ]
    bash: str | dict[str, str] = "deny"
    if "Bash" in tools or "" in prefixes:
        bash = "allow"
    elif prefixes:
        bash = {"*": "deny", **{f"{prefix} *": "allow" for prefix in prefixes}}
    edits = any(tool in ("Write", "Edit", "MultiEdit") for tool in tools)
    return {"edit": "allow" if edits else "deny", "bash": bash}


def opencode_env(allowed_tools: dict[str, list[str]] | None = None) -> dict[str, str]:
    """The environment an opencode profile wants (its ``env``): quiet, offline but for the model API,
    and one agent per role, ``sdlc-<role>``, with that role's tools (``DEFAULT_TOOLS``, then
    ``allowed_tools``), which the command line names (``--agent``).

    Nothing but the model API is contacted: no model list (the one OpenCode ships is used), update
    check, share, LSP download, snapshots (a git copy of the worktree per step) or npm install (of
    ``@opencode-ai/plugin`` into its config folders: ``npm_config_offline``). The Anthropic base URL
    is taken from ``ANTHROPIC_BASE_URL`` (with ``/v1``, unlike Claude Code's) in the config itself,
    so a repository's own ``opencode.json`` cannot send the requests and the key elsewhere.
    """
    tools = {**DEFAULT_TOOLS, **(allowed_tools or {})}
    config = {
        "autoupdate": False,
        "share": "disabled",
        "snapshot": False,
        "lsp": False,
        "formatter": False,
        "permission": OPENCODE_PERMISSION,
        "agent": {
            f"sdlc-{role}": {"mode": "primary", "permission": opencode_permission(role_tools)}
            for role, role_tools in tools.items()
        },
        "provider": {"anthropic": {"options": {"baseURL": "{env:ANTHROPIC_BASE_URL}"}}},
    }
    return {
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "npm_config_offline": "true",
    }


# Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN); a role prompt is a few KiB.
MAX_ROLE_PROMPT_BYTES = 100_000


def role_instructions(system_prompt_file: str) -> str:
    """The role's prompt as text, for the CLIs that take it on the command line (Codex, Gemini CLI)."""
    try:
        text = Path(system_prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"the role prompt {system_prompt_file} cannot be read: {exc}") from exc
    if len(text.encode()) > MAX_ROLE_PROMPT_BYTES:
        raise ValueError(f"the role prompt {system_prompt_file} is over {MAX_ROLE_PROMPT_BYTES} bytes")
    return text


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string, for a ``--config key=value`` of Codex (JSON's escapes are TOML's,
    but for DEL, which TOML wants escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def agent_prompt(role: str, task_file: str) -> str:
    """The one-line instruction on the command line; everything else is in the task file."""
    return (
        f"You are the {role} of this repository's delivery pipeline. "
        f"Read the task file {task_file} in the current directory and do what it asks. "
        "Write the files it names; do not commit, push or merge."
    )


class AgentProfile(Block, RetryKnobs):
    """How to run one kind of coding agent CLI for every role of the pipeline."""

    _block_type_name: ClassVar[str] = "SDLC Agent Profile"
    _block_type_slug: ClassVar[str] = "sdlc-agent-profile"
    _description: ClassVar[str] = "Agent CLI, models, tools and timeouts per role for sdlc-flows."
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://docs.prefect.io/v3/concepts/blocks")
    _code_example: ClassVar[str] = """
```python
from blocks.agent_profile import AgentProfile

AgentProfile(kind="claude", models={"developer": "sonnet"}, timeouts={"developer": 3600}).save("claude-team")
profile = AgentProfile.load("BLOCK_NAME")
```
"""

    kind: AgentKind = Field(
        default="scripted", description="scripted, claude, codex, gemini, aider, opencode or custom."
    )
    binary: str | None = Field(
        default=None,
        description="Executable; defaults to the pinned CLI under tools/ (make install), else the kind's name on PATH.",
    )
    command: list[str] | None = Field(default=None, description="Full argument list of a custom agent.")
    models: dict[str, str] = Field(
        default_factory=dict, description="Model per role; unset roles use the kind's default."
    )
    allowed_tools: dict[str, list[str]] = Field(default_factory=dict, description="Allowed tools per role (claude).")
    extra_args: list[str] = Field(default_factory=list, description="Arguments appended to every run.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the agent (no secrets).")
    timeouts: dict[str, float] = Field(default_factory=dict, description="Timeout in seconds per role.")
    default_timeout_seconds: float = Field(default=1800, gt=0, description="Timeout for roles not in `timeouts`.")
    sandbox: Literal["auto", "bwrap", "none"] | None = Field(
        default=None, description="Confine this profile's agents: auto, bwrap or none (unset: SDLC_AGENT_SANDBOX)."
    )
    sandbox_read_paths: list[str] = Field(
        default_factory=list,
        description="Paths its agents may read in the sandbox, e.g. a CLI's login under ~/.claude.",
    )
    sandbox_write_paths: list[str] = Field(
        default_factory=list, description="Paths its agents may write in the sandbox."
    )
    network: bool = Field(
        default=True, description="Outbound network in the sandbox (never the worker's loopback); false: none."
    )
    resume_sessions: bool = Field(
        default=True,
        description="When work comes back to a role, continue its previous CLI session (claude --resume).",
    )

    @model_validator(mode="after")
    def _custom_needs_command(self) -> AgentProfile:
        if self.kind == "custom" and not self.command:
            raise ValueError("a custom agent profile needs `command`")
        return self

    def model_for(self, role: str) -> str:
        if role in self.models:
            return self.models[role]
        strong, normal = DEFAULT_MODELS.get(self.kind, ("", ""))
        return strong if role in STRONG_ROLES else normal

    def timeout_for(self, role: str) -> float:
        return self.timeouts.get(role, self.default_timeout_seconds)

    def build_command(
        self,
        *,
        role: str,
        task_file: str,
        system_prompt_file: str,
        max_budget_usd: float | None = None,
        resume_session: str | None = None,
    ) -> list[str]:
        """The argument list for one run; never a shell string. A CLI with a per-run cap gets what is left of the budget."""
        model = self.model_for(role)
        prompt = agent_prompt(role, task_file)
        kind = self.kind
        if kind == "scripted":
            argv = [sys.executable, "-m", "demo.scripted_agent"]
        elif kind == "custom":
            assert self.command is not None
            argv = list(self.command)
        elif kind == "claude":
            tools = self.allowed_tools.get(role, DEFAULT_TOOLS.get(role, ["Read", "Write", "Edit"]))
            argv = [
                self.binary or installed_cli("claude"),
                "-p",
                prompt,
                "--output-format",
                "json",
                "--model",
                model,
                "--append-system-prompt-file",
                system_prompt_file,
                "--allowedTools",
                ",".join(tools),
                "--permission-mode",
                "acceptEdits",
            ]
            if max_budget_usd is not None:
                argv += ["--max-budget-usd", f"{max_budget_usd:.4f}"]
            if resume_session and self.resume_sessions:
                argv += ["--resume", resume_session]
        elif kind == "codex":
            argv = [
                self.binary or installed_cli("codex"),
                "exec",
                "--json",
                "--model",
                model,
                # Codex's own sandbox is bubblewrap too and cannot start inside sdlc's (no uid map in a
                # nested user namespace): every command and file write of the agent would fail. sdlc's
                # sandbox confines it; only a profile that turns sdlc's off gets Codex's own.
                "--sandbox",
                "workspace-write" if self.sandbox == "none" else "danger-full-access",
                "--config",
                'approval_policy="never"',
                # Unreachable API: fail (transient, sdlc's backoff) rather than wait for the network forever.
                "--disable",
                "unbounded_connection_retries",
                # The role's prompt, as instructions of the developer (above the user's prompt).
                "--config",
                f"developer_instructions={toml_string(role_instructions(system_prompt_file))}",
                "--skip-git-repo-check",
                prompt,
            ]
        elif kind == "gemini":
            tools = self.allowed_tools.get(role, DEFAULT_TOOLS.get(role, ["Read", "Write", "Edit"]))
            argv = [
                self.binary or installed_cli("gemini"),
                "--model",
                model,
                "--skip-trust",
                *gemini_permissions(tools),
                "--output-format",
                "json",
                "--prompt",
                # The role's prompt first: the CLI takes no system prompt of a caller's (GEMINI_SYSTEM_MD
                # would replace its own, tool rules and all).
                f"{role_instructions(system_prompt_file).rstrip()}\n\n{prompt}",
            ]
        elif kind == "aider":
            # The task file's text is the one message; Aider edits in its model's edit format (no
            # tools), creates and edits files unattended (--yes-always; it never runs a shell
            # command it suggests: those need an explicit yes) and commits nothing, not even a
            # dirty file before editing it. Nothing but the model API: no update or release-notes
            # check, analytics, URL scraping, browser (BROWSER=true: it offers the URLs of error
            # messages), or litellm price list from GitHub (its own copy; Aider's own copy, fetched
            # when ~/.aider/caches has none younger than a day, see the README). Its history files
            # stay out of the worktree; --no-stream: the tokens and cost are the API's, not guesses.
            argv = [
                self.binary or installed_cli("aider"),
                "--model",
                model,
                "--message-file",
                task_file,
                "--read",
                system_prompt_file,
                "--yes-always",
                "--no-auto-commits",
                "--no-dirty-commits",
                "--no-gitignore",
                "--no-suggest-shell-commands",
                "--no-detect-urls",
                "--no-check-update",
                "--no-show-release-notes",
                "--no-show-model-warnings",
                "--analytics-disable",
                "--set-env",
                "LITELLM_LOCAL_MODEL_COST_MAP=True",
                "--set-env",
                "BROWSER=true",
                # Without a git identity Aider writes "Your Name" into the repository's config.
                "--set-env",
                "GIT_CONFIG_COUNT=2",
                "--set-env",
                "GIT_CONFIG_KEY_0=user.name",
                "--set-env",
                "GIT_CONFIG_VALUE_0=aider (sdlc agent)",
                "--set-env",
                "GIT_CONFIG_KEY_1=user.email",
                "--set-env",
                "GIT_CONFIG_VALUE_1=aider@sdlc.invalid",
                "--chat-history-file",
                "/dev/null",
                "--input-history-file",
                "/dev/null",
                "--no-fancy-input",
                "--no-stream",
                "--no-pretty",
            ]
        elif kind == "opencode":
            # One JSON event per line (the tokens and cost of each model request, the error), a fixed
            # title (else a second model call names the session), the role's prompt file attached to
            # the message (OpenCode has no system-prompt flag). The prompt comes first: --file takes
            # every word after it. No --auto: `run` rejects whatever its permissions would ask about
            # (files outside the worktree among them). The role's agent, sdlc-<role>, and its tools
            # are in the config opencode_env() puts in the profile's env; without it OpenCode says
            # the agent is not found and runs its default one.
            argv = [
                self.binary or installed_cli("opencode"),
                "run",
                prompt,
                "--format",
                "json",
                "--model",
                model,
                "--agent",
                f"sdlc-{role}",
                "--title",
                f"sdlc {role}",
                "--file",
                system_prompt_file,
            ]
        else:  # pragma: no cover - guarded by the Literal type
            raise ValueError(f"unknown agent kind {kind!r}")
        return [*argv, *self.extra_args]


def profile_for(
    kind: AgentKind, command: list[str] | None = None, timeout_seconds: float | None = None
) -> AgentProfile:
    """A profile with the kind's defaults, for runs that name no saved block."""
    # OpenCode's defaults would ask nothing of its permissions and reach other hosts: its profile's env says otherwise.
    profile = AgentProfile(kind=kind, command=command, env=opencode_env() if kind == "opencode" else {})
    if timeout_seconds is not None:
        profile.default_timeout_seconds = timeout_seconds
    return profile
