"""The real Claude Code CLI (tools/node_modules/.bin/claude) through the agent runner (B4-B7, B30).

The CLI built by ``AgentProfile(kind="claude")`` runs under ``tasks.agent.execute_agent``
in a temporary git repository against the fake Messages API of ``fake_anthropic.py``;
its log is then read back with ``tasks.classify``. No network: the CLI's only peer is
127.0.0.1. A missing CLI is a failure, not a skip: ``make install`` provides it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import pytest
from fake_anthropic import OVERLOADED, RATE_LIMITED, SERVER_ERROR, UNAUTHORIZED, FakeAnthropic, Reply, claude_cli_env
from real_clis import pinned_cli, planted_ledger, seeded_repo

from blocks.agent_profile import AgentProfile
from sdlc.models import AgentResult
from tasks.agent import AgentInvocation, execute_agent
from tasks.classify import FailureKind, classify_log_tail, parse_result_json, read_tail
from tasks.sandbox import SandboxSpec

SYSTEM_PROMPT = "You are running inside the sdlc-flows test suite; answer briefly."


def claude_binary() -> str:
    return pinned_cli("claude")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    # Nothing from this machine's own Claude setup may reach the CLI (the runner passes
    # ANTHROPIC_*, CLAUDE_* and DISABLE_* through from the worker).
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_", "DISABLE_")) or name == "IS_SANDBOX":
            monkeypatch.delenv(name)
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return seeded_repo(tmp_path / "repo", {".task-developer.md": "# Task\nCreate hello.txt containing `hello`.\n"})


def run_claude(
    claude: str, api: FakeAnthropic, repo: Path, tmp_path: Path, sandbox: str = "auto"
) -> tuple[AgentResult, Path]:
    """The project's claude profile, run once by the project's runner; returns the result and its log."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    prompt_file = tmp_path / "system-prompt.md"
    prompt_file.write_text(SYSTEM_PROMPT + "\n")
    profile = AgentProfile(
        kind="claude",
        binary=claude,
        env=claude_cli_env(str(home), api.url, timeout_ms=10000),
    )
    argv = profile.build_command(role="developer", task_file=".task-developer.md", system_prompt_file=str(prompt_file))
    invocation = AgentInvocation(
        work_item="ET-7",
        stage="development",
        role="developer",
        worktree=str(repo),
        argv=argv,
        timeout_seconds=90,
        protocol_env={"SDLC_ROLE": "developer", "SDLC_WORK_ITEM": "ET-7", "SDLC_TASK_FILE": ".task-developer.md"},
        profile_env=profile.env,
        sandbox=SandboxSpec(mode=sandbox),
    )
    log = tmp_path / "logs" / "developer-1.log"
    result = execute_agent(invocation, attempt=1, log_path=log)
    return result, log


def test_success_reports_cost_tokens_and_session(api: FakeAnthropic, repo: Path, tmp_path: Path) -> None:
    api.default = Reply.message("done", input_tokens=30, cache_creation_input_tokens=20,
                                cache_read_input_tokens=100, output_tokens=7)
    result, log = run_claude(claude_binary(), api, repo, tmp_path)
    assert result.exit_code == 0 and not result.timed_out, read_tail(log)
    usage = parse_result_json(read_tail(log))
    assert usage is not None, read_tail(log)
    assert usage.is_error is False and usage.api_error_status is None
    assert usage.cost_usd is not None and usage.cost_usd > 0
    assert (usage.input_tokens, usage.output_tokens, usage.num_turns) == (150, 7, 1)
    assert usage.session_id and re.fullmatch(r"[0-9a-f-]{36}", usage.session_id)
    assert classify_log_tail(log, exit_code=result.exit_code) is None
    # Every flag of the profile was accepted and took effect in the model request.
    [request] = api.message_requests()
    body = request["body"]
    assert body["stream"] is True and "sonnet" in body["model"]
    assert request["headers"].get("x-api-key") == "sk-test-dummy"
    assert SYSTEM_PROMPT in str(body["system"])  # --append-system-prompt-file
    assert ".task-developer.md" in str(body["messages"])  # the prompt names the task file
    assert {"Read", "Write", "Edit", "Bash"} <= {tool["name"] for tool in body["tools"]}


def test_profile_edits_files_unattended_as_the_runner_user(api: FakeAnthropic, repo: Path, tmp_path: Path) -> None:
    """--permission-mode acceptEdits with --allowedTools lets a Write tool call through (root too)."""
    target = repo / "hello.txt"
    api.script(Reply.tool_use("Write", {"file_path": str(target), "content": "hello\n"}), Reply.message("written"))
    result, log = run_claude(claude_binary(), api, repo, tmp_path)
    assert result.exit_code == 0, read_tail(log)
    assert target.read_text() == "hello\n"
    usage = parse_result_json(read_tail(log))
    assert usage is not None and usage.num_turns == 2 and usage.is_error is False
    assert len(api.message_requests()) == 2


def test_in_the_sandbox_it_writes_its_worktree_and_cannot_read_the_data_dir(
    api: FakeAnthropic, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: the real CLI, confined by bwrap, reaches its (loopback) model API, edits its worktree,
    and its Read and Bash tools find nothing of the data directory."""
    ledger, canary = planted_ledger(tmp_path, monkeypatch)
    data_dir = ledger.parent
    target = repo / "hello.txt"
    api.script(
        Reply.tool_use("Read", {"file_path": str(ledger)}),
        Reply.tool_use("Bash", {"command": f"cat {ledger}; ls {data_dir}"}),
        Reply.tool_use("Write", {"file_path": str(target), "content": "hello\n"}),
        Reply.message("written"),
    )
    result, log = run_claude(claude_binary(), api, repo, tmp_path, sandbox="bwrap")
    assert result.exit_code == 0, read_tail(log)
    assert result.sandbox is not None and result.sandbox.startswith("bwrap"), result.sandbox
    assert target.read_text() == "hello\n"
    requests = api.message_requests()
    assert len(requests) == 4
    # What the tools gave back is in the next request: errors, never the ledger's text.
    tool_results = json.dumps([r["body"]["messages"][-1] for r in requests[1:3]])
    assert canary not in json.dumps([r["body"] for r in requests])
    assert "ledger.db" in tool_results and ("does not exist" in tool_results or "No such file" in tool_results)


@pytest.mark.parametrize(
    "reply, kind, reason",
    [
        (RATE_LIMITED, FailureKind.transient, "rate_limit"),
        (OVERLOADED, FailureKind.transient, "overloaded"),
        (SERVER_ERROR, FailureKind.transient, "server_error"),
        (UNAUTHORIZED, FailureKind.permanent, "authentication"),
    ],
    ids=["429", "529", "500", "401"],
)
def test_api_errors_are_classified_from_the_log(
    api: FakeAnthropic, repo: Path, tmp_path: Path, reply: Reply, kind: FailureKind, reason: str
) -> None:
    api.default = reply
    result, log = run_claude(claude_binary(), api, repo, tmp_path)
    assert result.exit_code == 1 and not result.timed_out, read_tail(log)
    usage = parse_result_json(read_tail(log))
    assert usage is not None and usage.is_error is True and usage.api_error_status == reply.status
    failure = classify_log_tail(log, exit_code=result.exit_code)
    assert failure is not None, read_tail(log)
    assert (failure.kind, failure.reason) == (kind, reason), failure
    # The server sent `retry-after: 7` with the 429; the CLI does not print it, so the
    # log cannot show it and the orchestrator's own backoff applies.
    assert failure.retry_after_seconds is None
    assert "retry-after" not in read_tail(log).lower()
    assert len(api.message_requests()) == 1  # CLAUDE_CODE_MAX_RETRIES=0: no own retries
