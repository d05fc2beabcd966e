"""One whole pipeline with a different real CLI per role (issue 18): ``AgentSpec.role_profiles``.

analyst OpenCode, architect Aider, developer Codex, reviewer Claude Code, tester Gemini,
deployer Claude Code (the run's default profile). Each CLI talks to its own fake model API
(one per protocol, as its own test module sets it up: ``test_<cli>_cli.py``), which plays
the model as ``test_claude_pipeline.py``'s does: the role's first turn is a tool call in
that protocol writing the role's artifacts (with the B5 variables, ``$SDLC_ARTIFACTS_DIR``),
every later turn "done". The pipeline runs to the merge, confined as configured
(SDLC_AGENT_SANDBOX: auto), and the ledger holds each run's tokens, and its cost where the
CLI reports one (Claude Code, Aider, OpenCode); Codex and Gemini report none: "not reported".
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from blocks.agent_profile import INSTALLED_CLIS, TOOLS_DIR, AgentProfile
from demo.sample import create_sample_repo
from fake_anthropic import FakeAnthropic, claude_cli_env
from fake_anthropic import Reply as AnthropicReply
from fake_gemini import FakeGemini, gemini_cli_env, write_gemini_home
from fake_model_api import ForeignHosts, Reply, foreign_requests
from fake_openai_chat import FakeOpenAIChat, aider_cli_env, seed_aider_model_cache
from fake_openai_responses import FakeOpenAIResponses, codex_cli_env, codex_config
from fake_opencode_provider import opencode_cli_env, ripgrep_path
from real_clis import pinned_cli
from sdlc.graph import artifacts_dir
from sdlc.models import AgentSpec, WorkItemRequest
from test_claude_pipeline import OUT, ROLE_IN_PROMPT, WRITES
from test_codex_cli import shell
from test_opencode_cli import opencode_binary

WORK_ITEM = "ET-60"
ANALYSIS_DIR = f"docs/work-items/{WORK_ITEM}"
AIDER_MODEL = "openai/gpt-4o-mini"  # litellm has its price: Aider prints a cost
REVIEW = f"printf '# Review\\nVerdict: APPROVE\\n' > {OUT}/12-review.md"
KINDS = {
    "analyst": "opencode",
    "architect": "aider",
    "developer": "codex",
    "reviewer": "claude",
    "tester": "gemini",
    "deployer": "claude",
}


class Fakes:
    """Every fake model API the run's CLIs talk to, each answering its role(s) as the model."""

    def __init__(self, stack: ExitStack) -> None:
        self.claude = stack.enter_context(FakeAnthropic(responder=self.claude_model))
        self.opencode = stack.enter_context(FakeAnthropic(responder=self.opencode_model))
        self.foreign_hosts = stack.enter_context(ForeignHosts())  # the proxy of OpenCode and Aider
        self.codex = stack.enter_context(FakeOpenAIResponses(responder=self.codex_model))
        self.aider = stack.enter_context(FakeOpenAIChat(responder=self.aider_model))
        self.gemini = stack.enter_context(FakeGemini(responder=self.gemini_model))

    # Anthropic's Messages API: Claude Code's Bash, OpenCode's bash.
    @staticmethod
    def _tool_result_turn(body: dict[str, Any]) -> bool:
        messages = body.get("messages") or []
        content = messages[-1].get("content") if messages else None
        return isinstance(content, list) and any(part.get("type") == "tool_result" for part in content)

    def claude_model(self, body: dict[str, Any]) -> AnthropicReply:
        if self._tool_result_turn(body):
            return AnthropicReply.message("done", output_tokens=12)
        match = ROLE_IN_PROMPT.search(json.dumps(body.get("messages") or []))
        if not match:
            return AnthropicReply.message("ok")
        command = REVIEW if match.group(1) == "reviewer" else WRITES[match.group(1)]
        return AnthropicReply.tool_use("Bash", {"command": command, "description": "write the role's files"})

    def opencode_model(self, body: dict[str, Any]) -> AnthropicReply:
        if self._tool_result_turn(body):
            return AnthropicReply.message("done", output_tokens=12)
        # The analyst's tools are edits only (no shell): one write per document, in one turn.
        writes = tuple(
            AnthropicReply.tool_use("write", {"filePath": f"{ANALYSIS_DIR}/{name}.md", "content": f"# {name}\n"}).tool_uses[0]
            for name in ("02-brd", "03-requirements", "04-acceptance-criteria", "05-test-plan")
        )
        return AnthropicReply(text="", tool_uses=writes, stop_reason="tool_use")

    # OpenAI's Responses API: Codex's code-mode exec tool running exec_command.
    @staticmethod
    def codex_model(body: dict[str, Any]) -> Reply:
        items = body.get("input") or []
        if any(isinstance(item, dict) and item.get("type", "").endswith("_call_output") for item in items):
            return Reply.message("done", output_tokens=12)
        return shell(WRITES["developer"])

    # OpenAI's Chat Completions API: Aider's whole-file edit format.
    @staticmethod
    def aider_model(body: dict[str, Any]) -> Reply:
        path = f"{artifacts_dir(WORK_ITEM)}/11-architecture.md"
        return Reply.message(
            f"{path}\n```\n# Architecture\n\nOne module, no rollback needed.\n```\n", input_tokens=321, output_tokens=45
        )

    # Gemini's API: run_shell_command.
    @staticmethod
    def gemini_model(body: dict[str, Any]) -> Reply:
        parts = (body.get("contents") or [{}])[-1].get("parts") or []
        if any("functionResponse" in part for part in parts):
            return Reply.message("done", output_tokens=12)
        return Reply.tool_call("run_shell_command", {"command": WRITES["tester"]})

    def foreign(self) -> list[Any]:
        return [*foreign_requests(self.codex), *self.foreign_hosts.seen()]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    # Nothing of this machine's own model-API setup may reach any CLI (the runner passes some through).
    prefixes = (
        "ANTHROPIC_",
        "CLAUDE_",
        "DISABLE_",
        "OPENAI_",
        "CODEX_",
        "GEMINI_",
        "GOOGLE_",
        "AIDER_",
        "LITELLM_",
        "OPENCODE_",
        "XDG_",
    )
    for name in list(os.environ):
        if name.startswith(prefixes) or name == "IS_SANDBOX" or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    with ExitStack() as stack:
        yield Fakes(stack)


def save_profiles(tmp_path: Path, fakes: Fakes) -> dict[str, str]:
    """An AgentProfile block per kind, each CLI pointed at its fake; role -> block name."""
    suffix = uuid.uuid4().hex[:8]

    def home(kind: str) -> Path:
        path = tmp_path / f"home-{kind}"
        path.mkdir(exist_ok=True)
        return path

    codex_home = home("codex")
    (codex_home / ".codex").mkdir()
    (codex_home / ".codex" / "config.toml").write_text(codex_config(fakes.codex.url))
    aider_home = home("aider")
    seed_aider_model_cache(aider_home)
    write_gemini_home(str(home("gemini")))
    profiles = {
        "claude": AgentProfile(
            kind="claude",
            binary=pinned_cli("claude"),
            allowed_tools={role: ["Bash", "Read", "Write", "Edit"] for role in KINDS},
            env=claude_cli_env(str(home("claude")), fakes.claude.url, timeout_ms=20000),
        ),
        "opencode": AgentProfile(
            kind="opencode",
            binary=opencode_binary(),
            env=opencode_cli_env(
                str(home("opencode")),
                fakes.opencode.url,
                proxy_url=fakes.foreign_hosts.url,
                path=ripgrep_path(os.environ.get("PATH", "")),
            ),
        ),
        "aider": AgentProfile(
            kind="aider",
            binary=pinned_cli("aider"),
            models={"architect": AIDER_MODEL},
            env={**aider_cli_env(str(aider_home), fakes.aider.url), **fakes.foreign_hosts.env()},
        ),
        "codex": AgentProfile(kind="codex", binary=pinned_cli("codex"), env=codex_cli_env(str(codex_home), fakes.codex.url)),
        "gemini": AgentProfile(
            kind="gemini", binary=pinned_cli("gemini"), env=gemini_cli_env(str(home("gemini")), fakes.gemini.url)
        ),
    }
    blocks = {}
    for kind, profile in profiles.items():
        profile.default_timeout_seconds = 150
        blocks[kind] = f"mixed-{kind}-{suffix}"
        profile.save(blocks[kind])
    return {role: blocks[kind] for role, kind in KINDS.items()}


def kind_of_run(log_path: str) -> str:
    """The CLI a run started: its log's first line is the argument list, the pinned binary first."""
    argv0 = shlex.split(Path(log_path).read_text().splitlines()[0].split("]: ", 1)[1])[0]
    (kind,) = [kind for kind, path in INSTALLED_CLIS.items() if argv0 == str(TOOLS_DIR / path)]
    return kind


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("prefect_api")
def test_a_pipeline_with_a_different_real_cli_per_role(tmp_path: Path, data_dir: Path, fakes: Fakes) -> None:
    from entrypoints.cli import status_report
    from flows.pipeline import sdlc_pipeline
    from tasks.ledger import Ledger

    blocks = save_profiles(tmp_path, fakes)
    origin = create_sample_repo(tmp_path / "repos")
    request = WorkItemRequest(
        work_item=WORK_ITEM,
        title="Every CLI does its part",
        repo=str(origin),
        auto_approve=True,
        agent=AgentSpec(
            profile_block=blocks["deployer"],  # the default: the deployer names no profile of its own
            role_profiles={role: block for role, block in blocks.items() if role != "deployer"},
            backoff_base_seconds=0.2,
        ),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    runs = Ledger.from_settings().agent_runs(WORK_ITEM)
    assert state.is_completed(), f"{state.message}\n" + "\n".join(
        f"{r.role} {r.exit_code} {r.error} {r.log_path}" for r in runs
    )
    assert [(r.role, r.failure_kind, r.exit_code) for r in runs] == [
        (role, None, 0) for role in ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
    ]
    assert {r.role: kind_of_run(r.log_path) for r in runs} == KINDS
    assert all(r.sandbox and r.sandbox.startswith("bwrap") for r in runs), [r.sandbox for r in runs]
    # Tokens for every run; cost where the CLI reports one, "not reported" (None, never 0) where not.
    assert all(r.input_tokens and r.output_tokens for r in runs), [
        (r.role, r.input_tokens, r.output_tokens) for r in runs
    ]
    cost = {r.role: r.cost_usd for r in runs}
    assert cost["developer"] is None and cost["tester"] is None, cost
    assert all(cost[role] and cost[role] > 0 for role in ("analyst", "architect", "reviewer", "deployer")), cost
    # Each fake was the model of its role(s) only.
    assert len(fakes.opencode.message_requests()) == 2 and len(fakes.aider.model_requests()) == 1
    assert len(fakes.codex.model_requests()) == 2 and len(fakes.gemini.generate_requests()) == 2
    assert len(fakes.claude.message_requests()) == 4  # reviewer and deployer, two turns each
    assert not fakes.foreign(), fakes.foreign()

    (item,) = status_report(WORK_ITEM)
    assert item["state"] == "done"
    assert item["usage"]["cost_usd"] == pytest.approx(sum(c for c in cost.values() if c), abs=1e-6)
    assert item["usage"]["output_tokens"] == sum(r.output_tokens or 0 for r in runs)
    # What each CLI's tools wrote was committed and merged.
    merged = os.popen(f"git -C {origin} show main:src/feature.py").read()
    assert "return 1" in merged
    architecture = os.popen(f"git -C {origin} show main:{artifacts_dir(WORK_ITEM)}/11-architecture.md").read()
    assert "One module" in architecture


@pytest.mark.parametrize("profiles", [{"Developer": "codex-team"}, {"../x": "codex-team"}, {"developer": "Codex Team"}])
def test_role_profiles_take_plain_roles_and_block_names(profiles: dict[str, str]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AgentSpec(kind="claude", role_profiles=profiles)


def test_a_profile_for_a_role_no_stage_has_fails_the_graph_check() -> None:
    from sdlc.config import current_graph
    from tasks.graph_check import InvalidStageGraph, require_valid_graph, role_profile_problems

    graph = current_graph()
    fine = AgentSpec(kind="claude", role_profiles={"developer": "codex-team"})
    assert role_profile_problems(fine, graph) == []
    wrong = AgentSpec(kind="claude", role_profiles={"developer": "codex-team", "qa": "gemini-team"})
    with pytest.raises(
        InvalidStageGraph, match=r"agent profile \(gemini-team\) is named for role 'qa', which no stage"
    ):
        require_valid_graph(graph, agent=wrong)
