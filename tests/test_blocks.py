"""Prefect's own standard checks over every sdlc block (STYLE 8), and the profiles' command lines."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.agent_profile import TOOLS_DIR, AgentProfile, installed_cli
from blocks.forge import GiteaCredentials, GitHubCredentials, GitLabCredentials
from blocks.notifications import AppriseURLNotification, TelegramNotification
from blocks.plane import PlaneCredentials
from blocks.webhooks import WebhookSettings
from sdlc.graph import BUILTIN_PROMPTS

ALL_BLOCKS: list[type[Block]] = [
    AgentProfile, GiteaCredentials, GitHubCredentials, GitLabCredentials, WebhookSettings, PlaneCredentials, TelegramNotification,
    AppriseURLNotification,
]


@pytest.mark.parametrize("block", ALL_BLOCKS)
class TestAllBlocks(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:  # type: ignore[override]
        return block

    def test_has_a_valid_image(self, block: type[Block]) -> None:  # type: ignore[override]
        # Nothing may be fetched from the internet: our blocks ship no remote logo.
        assert block._logo_url is None


def test_claude_profile_builds_an_unattended_command_line() -> None:
    argv = AgentProfile(kind="claude").build_command(
        role="reviewer", task_file=".task-reviewer.md", system_prompt_file="/p/reviewer.md"
    )
    # The CLI make install pinned under tools/ (found on PATH when it is not there).
    assert argv[0] == str(TOOLS_DIR / "node_modules" / ".bin" / "claude"), argv[0]
    assert argv[1] == "-p" and ".task-reviewer.md" in argv[2]
    assert argv[argv.index("--output-format") + 1] == "json"
    assert argv[argv.index("--model") + 1] == "opus"  # stronger model for the reviewer
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"  # works as root, unlike bypassPermissions
    assert argv[argv.index("--append-system-prompt-file") + 1] == "/p/reviewer.md"
    developer = AgentProfile(kind="claude").build_command(role="developer", task_file="t", system_prompt_file="p")
    assert developer[developer.index("--model") + 1] == "sonnet"
    assert "Bash" in developer[developer.index("--allowedTools") + 1].split(",")


def test_profile_overrides_and_custom_commands() -> None:
    profile = AgentProfile(kind="claude", models={"developer": "haiku"}, extra_args=["--max-turns", "30"], timeouts={"developer": 60})
    argv = profile.build_command(role="developer", task_file="t", system_prompt_file="p")
    assert argv[argv.index("--model") + 1] == "haiku" and argv[-2:] == ["--max-turns", "30"]
    assert profile.timeout_for("developer") == 60 and profile.timeout_for("tester") == 1800
    custom = AgentProfile(kind="custom", command=["my-agent", "--fast"])
    assert custom.build_command(role="tester", task_file="t", system_prompt_file="p") == ["my-agent", "--fast"]
    with pytest.raises(ValueError, match="needs `command`"):
        AgentProfile(kind="custom")


CLI_HELP = Path(__file__).parent / "contracts" / "cli-help"
PROMPT = str(BUILTIN_PROMPTS / "developer.md")  # a role prompt: Codex and Gemini CLI get its text on the command line


@pytest.mark.parametrize(
    ("kind", "help_file"),
    [("codex", "codex-exec-help.txt"), ("gemini", "gemini-help.txt"), ("aider", "aider-flags.txt")],
)
def test_profile_flags_exist_in_the_real_cli(kind: str, help_file: str) -> None:
    documented = set(re.findall(r"--[a-z0-9][a-z0-9-]*", (CLI_HELP / help_file).read_text()))
    argv = AgentProfile(kind=kind).build_command(role="developer", task_file=".task-developer.md", system_prompt_file=PROMPT)
    used = {arg for arg in argv if arg.startswith("--")}
    unknown = {flag for flag in used if flag not in documented and f"--{flag.removeprefix('--no-')}" not in documented}
    assert used and not unknown, f"{kind} profile uses flags its CLI does not document: {sorted(unknown)}"
    if kind == "codex":
        assert argv[1] == "exec"  # the non-interactive subcommand


@pytest.mark.parametrize("kind", ["claude", "codex", "gemini", "opencode", "aider"])
def test_each_kind_runs_the_cli_make_install_pinned(kind: str) -> None:
    """`make install` puts every agent CLI under tools/; a profile that names no binary runs that one."""
    pinned = Path(installed_cli(kind))
    assert pinned.is_relative_to(TOOLS_DIR) and os.access(pinned, os.X_OK), f"{kind}: {pinned} (run make install)"
    assert AgentProfile(kind=kind).build_command(role="developer", task_file="t", system_prompt_file=PROMPT)[0] == str(pinned)
    assert AgentProfile(kind=kind, binary="/opt/x").build_command(role="developer", task_file="t", system_prompt_file=PROMPT)[0] == "/opt/x"


def test_an_opencode_run_that_names_no_profile_gets_the_settings_that_keep_it_offline_and_narrow() -> None:
    from blocks.agent_profile import profile_for

    env = profile_for("opencode").env
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1" and env["npm_config_offline"] == "true", env
    assert "sdlc-developer" in env["OPENCODE_CONFIG_CONTENT"]  # one agent per role, with its tools
    assert profile_for("claude").env == {}
