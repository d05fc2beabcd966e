"""The real OpenCode CLI (tools/node_modules/opencode-linux-x64/bin/opencode, 1.18.33) through the agent runner (issue 18).

The command line built by ``AgentProfile(kind="opencode")`` runs under ``tasks.agent.execute_agent``
in a temporary git repository against the fake Messages API of ``fake_anthropic.py`` (one
server for the module: OpenCode ships the Anthropic provider), and ``tasks.agent.assess_run``
reads its log back: cost, tokens, failure kind, retry decision. OpenCode's environment
(``fake_opencode_provider.py``) turns off everything it would fetch; every other host is
behind a proxy that records and refuses, and each test fails on any request it saw. A missing
CLI is a failure, not a skip: ``make install``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blocks.agent_profile import AgentProfile
from fake_anthropic import OVERLOADED, SERVER_ERROR, UNAUTHORIZED, FakeAnthropic, Reply
from fake_model_api import ForeignHosts
from fake_opencode_provider import (
    OPENCODE_API_KEY,
    missing_files,
    opencode_cli_env,
    ripgrep_path,
)
from real_clis import APP, pinned_cli, planted_ledger, seeded_repo, without_own_setup
from sdlc.models import AgentResult
from sdlc.retry import RetryDecision
from tasks.agent import AgentInvocation, assess_run, execute_agent
from tasks.classify import read_tail
from tasks.sandbox import SandboxSpec

TASK_FILE = ".task-developer.md"
SYSTEM_PROMPT = "You are running inside the sdlc-flows test suite; answer briefly."


def opencode_binary() -> str:
    """The pinned CLI, and the ripgrep lent to it; a test without them fails (never skips)."""
    binary = pinned_cli("opencode")
    if missing := missing_files():
        pytest.fail(f"missing {', '.join(map(str, missing))}: run `make install`", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def foreign_hosts() -> Iterator[ForeignHosts]:
    with ForeignHosts() as guard:
        yield guard


@pytest.fixture
def api(
    fake_api: FakeAnthropic, foreign_hosts: ForeignHosts, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeAnthropic]:
    without_own_setup(monkeypatch, "ANTHROPIC_", "OPENCODE_", "XDG_")
    fake_api.reset()
    foreign_hosts.reset()
    yield fake_api
    assert not foreign_hosts.seen(), f"OpenCode reached for other hosts: {foreign_hosts.seen()}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    task = "# Task\nWrite docs/notes.md and greet the world in src/app.py.\n"
    return seeded_repo(tmp_path / "repo", {TASK_FILE: task}, APP)


def run_opencode(
    api: FakeAnthropic,
    guard: ForeignHosts,
    repo: Path,
    tmp_path: Path,
    *,
    sandbox: str = "none",
    role: str = "developer",
    timeout_ms: int = 30000,
    permission: dict[str, Any] | None = None,
) -> tuple[AgentResult, AgentInvocation, RetryDecision | None]:
    """The project's opencode profile, run once by the project's runner and assessed as the runner does."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    prompt_file = tmp_path / "system-prompt.md"
    prompt_file.write_text(SYSTEM_PROMPT + "\n")
    env = opencode_cli_env(
        str(home),
        api.url,
        proxy_url=guard.url,
        path=ripgrep_path(os.environ.get("PATH", "")),
        timeout_ms=timeout_ms,
        permission=permission,
    )
    profile = AgentProfile(kind="opencode", binary=opencode_binary(), env=env)
    argv = profile.build_command(role=role, task_file=TASK_FILE, system_prompt_file=str(prompt_file))
    invocation = AgentInvocation(
        work_item="OC-7",
        stage="development",
        role=role,
        worktree=str(repo),
        argv=argv,
        timeout_seconds=240,
        protocol_env={"SDLC_ROLE": role, "SDLC_WORK_ITEM": "OC-7", "SDLC_TASK_FILE": TASK_FILE},
        profile_env=profile.env,
        provider=profile.kind,
        sandbox=SandboxSpec(mode=sandbox),
    )
    result = execute_agent(invocation, attempt=1, log_path=tmp_path / "logs" / f"{role}-1.log")
    assessed, decision = assess_run(result, invocation, [])
    return assessed, invocation, decision


def log_of(result: AgentResult) -> str:
    return read_tail(result.log_path)


def test_the_profile_command_line() -> None:
    argv = AgentProfile(kind="opencode", binary="/opt/opencode").build_command(
        role="reviewer", task_file=".task-reviewer.md", system_prompt_file="/data/prompts/reviewer.md"
    )
    assert argv[:2] == ["/opt/opencode", "run"]
    assert ".task-reviewer.md" in argv[2]  # the prompt, first: --file takes every word after it
    assert argv[3:] == [
        "--format",
        "json",
        "--model",
        "anthropic/claude-opus-5-5",
        "--agent",
        "sdlc-reviewer",
        "--title",
        "sdlc reviewer",
        "--file",
        "/data/prompts/reviewer.md",
    ]


def test_developer_edits_src_and_writes_its_artifact_with_cost_and_tokens(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """Read, edit and write tool calls go through unattended (no --auto: OpenCode's defaults allow
    them in the worktree); each model request's cost and tokens are summed."""
    usage = {"input_tokens": 30, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 7}
    app = repo / "src" / "app.py"
    # A repository's own OpenCode config may not send the model requests elsewhere: the profile's wins.
    (repo / "opencode.json").write_text(
        json.dumps({"provider": {"anthropic": {"options": {"baseURL": f"{foreign_hosts.url}/v1"}}}})
    )
    api.script(
        Reply.tool_use("read", {"filePath": str(app)}, **usage),
        Reply.tool_use(
            "edit", {"filePath": str(app), "oldString": "print('hello')", "newString": "print('hello, world')"}, **usage
        ),
        Reply.tool_use("write", {"filePath": "docs/notes.md", "content": "# Notes\n"}, **usage),
        Reply.message("done", **usage),
    )
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 0 and not result.timed_out, log_of(result)
    assert decision is None and result.failure_kind is None, log_of(result)
    assert "Falling back to default agent" not in log_of(result)  # --agent sdlc-developer is opencode_env()'s
    assert app.read_text() == "print('hello, world')\n"
    assert (repo / "docs" / "notes.md").read_text() == "# Notes\n"
    # Four model requests, each 150 prompt tokens (30 + 20 cache writes + 100 cache reads) and 7 out,
    # priced by OpenCode for claude-sonnet-5 ($2 / $10 per million, cache reads $0.20, writes $2.50).
    assert (result.input_tokens, result.output_tokens, result.num_turns) == (600, 28, 4), log_of(result)
    step = 30 * 2e-6 + 7 * 10e-6 + 100 * 0.2e-6 + 20 * 2.5e-6
    assert result.cost_usd == pytest.approx(4 * step, rel=1e-6)
    assert result.session_id and result.session_id.startswith("ses_")
    # Every flag of the profile took effect in the model requests; no request but the turns (no title).
    requests = api.message_requests()
    assert len(requests) == 4
    body = requests[0]["body"]
    assert body["stream"] is True and body["model"] == "claude-sonnet-5"
    assert requests[0]["headers"].get("x-api-key") == OPENCODE_API_KEY
    assert SYSTEM_PROMPT in json.dumps(body["messages"])  # --file
    assert TASK_FILE in json.dumps(body["messages"])  # the prompt names the task file
    tools = {tool["name"] for tool in body["tools"]}
    assert {"read", "edit", "write", "bash", "grep", "glob"} <= tools
    assert not tools & {"webfetch", "websearch", "task"}  # denied by its config: not offered at all


def test_a_reviewer_runs_git_diff_and_writes_its_review_but_no_other_command(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """The reviewer's agent (``sdlc-reviewer``, from ``opencode_env()``) has Claude's reviewer tools:
    Write, and Bash only for ``git diff`` and ``git log``; any other command is refused, unattended."""
    api.script(
        Reply.tool_use("bash", {"command": "touch src/sneaky.py", "description": "edit by shell"}),
        Reply.tool_use("bash", {"command": "git log --oneline", "description": "history"}),
        Reply.tool_use("write", {"filePath": "docs/review.md", "content": "approved\n"}),
        Reply.message("reviewed"),
    )
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path, role="reviewer")
    assert result.exit_code == 0 and decision is None, log_of(result)
    assert (repo / "docs" / "review.md").read_text() == "approved\n"
    assert not (repo / "src" / "sneaky.py").exists()
    requests = api.message_requests()
    assert requests[0]["body"]["model"] == "claude-opus-5-5"  # the strong model of the reviewer
    refused, history = (json.dumps(r["body"]["messages"][-1]) for r in requests[1:3])
    assert "prevents you from using this specific tool call" in refused, refused
    assert "seed" in history, history  # git log ran: the seed commit


def test_in_the_sandbox_it_writes_its_worktree_and_cannot_read_the_data_dir(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bwrap the real CLI reaches its (loopback) model API, edits its worktree, and its read and
    bash tools find nothing of the data directory, even with OpenCode's own check of paths outside
    the worktree turned off (external_directory: allow): the sandbox hides them."""
    ledger, canary = planted_ledger(tmp_path, monkeypatch)
    data_dir = ledger.parent
    api.script(
        Reply.tool_use("read", {"filePath": str(ledger)}),
        Reply.tool_use("bash", {"command": f"cat {ledger}; ls {data_dir}", "description": "look"}),
        Reply.tool_use("write", {"filePath": "hello.txt", "content": "hello\n"}),
        Reply.message("written"),
    )
    result, _, decision = run_opencode(
        api, foreign_hosts, repo, tmp_path, sandbox="bwrap", permission={"external_directory": "allow"}
    )
    assert result.exit_code == 0 and decision is None, log_of(result)
    assert result.sandbox is not None and result.sandbox.startswith("bwrap"), result.sandbox
    assert (repo / "hello.txt").read_text() == "hello\n"
    requests = api.message_requests()
    assert len(requests) == 4
    assert canary not in json.dumps([r["body"] for r in requests])
    results = json.dumps([r["body"]["messages"][-1] for r in requests[1:3]])
    assert "ledger.db" in results and ("not found" in results.lower() or "No such file" in results), results


def test_rate_limit_is_retried_by_opencode_after_the_wait_it_was_sent(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """A 429 with ``retry-after: 2`` once: OpenCode waits those 2 s itself and tries again (it cannot
    be told not to), silently; the run succeeds."""
    api.script(Reply.error(429, "rate_limit_error", "slow down", headers={"retry-after": "2"}))
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 0 and decision is None, log_of(result)
    first, second = api.message_requests()
    assert second["at"] - first["at"] >= 2.0
    assert "slow down" not in log_of(result)  # the 429 left no trace in the log


def test_rate_limit_it_gives_up_on_is_transient_with_the_announced_wait(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """A 429 every time: OpenCode retries 5 times, each after the 1 s it was sent, then prints the last
    answer, ``retry-after`` included; sdlc retries no sooner than that."""
    api.default = Reply.error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        headers={"retry-after": "1"},
    )
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 1 and not result.timed_out, log_of(result)
    assert (result.failure_kind, result.failure_reason) == ("transient", "rate_limit"), log_of(result)
    assert result.retry_after_seconds == 1.0
    assert decision is not None and decision.retry and decision.wait_seconds >= 1.0
    assert result.retry_not_before is not None and result.ended_at is not None
    assert (result.retry_not_before - result.ended_at).total_seconds() >= 1.0
    stamps = [r["at"] for r in api.message_requests()]
    assert len(stamps) == 6  # its own 5 retries
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(stamps))
    # Nothing finished: no cost or tokens were reported (None, never zero).
    assert (result.cost_usd, result.input_tokens, result.output_tokens) == (None, None, None)
    assert result.session_id and result.session_id.startswith("ses_")


@pytest.mark.parametrize(
    ("reply", "reason"), [(OVERLOADED, "overloaded"), (SERVER_ERROR, "server_error")], ids=["529", "500"]
)
def test_overload_and_server_errors_are_transient(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path, reply: Reply, reason: str
) -> None:
    """Sent with ``retry-after: 0`` so that OpenCode's own 5 retries take no time (without it they
    take 2 + 4 + 8 + 16 + 32 s: ``tests/fixtures/opencode/529-json.txt``)."""
    api.default = Reply.error(
        reply.status, reply.error_type or "", reply.error_message or "", headers={"retry-after": "0"}
    )
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 1, log_of(result)
    assert (result.failure_kind, result.failure_reason) == ("transient", reason), log_of(result)
    assert decision is not None and decision.retry
    assert len(api.message_requests()) == 6


def test_unauthorized_fails_permanently_and_reports_no_cost(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    api.default = UNAUTHORIZED
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 1 and not result.timed_out, log_of(result)
    assert (result.failure_kind, result.failure_reason) == ("permanent", "authentication"), log_of(result)
    assert result.retry_after_seconds is None and decision is not None
    assert len(api.message_requests()) == 1  # not retryable: OpenCode does not retry it either
    assert (result.cost_usd, result.input_tokens, result.output_tokens, result.num_turns) == (None, None, None, None)


def test_spent_credit_is_a_usage_limit_without_a_retry(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    api.default = Reply.error(
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade "
        "or purchase credits.",
    )
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path)
    assert result.exit_code == 1, log_of(result)
    assert (result.failure_kind, result.failure_reason) == ("usage_limit", "quota_exhausted"), log_of(result)
    assert decision is not None and not decision.retry
    assert len(api.message_requests()) == 1


def test_an_api_that_does_not_answer_in_time_is_transient(
    api: FakeAnthropic, foreign_hosts: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """The provider's timeout (1 s) against an answer after 3 s: OpenCode does not retry that one."""
    api.default = Reply.hang(3)
    result, _, decision = run_opencode(api, foreign_hosts, repo, tmp_path, timeout_ms=1000)
    assert result.exit_code == 1, log_of(result)
    assert (result.failure_kind, result.failure_reason) == ("transient", "timeout_api"), log_of(result)
    assert decision is not None and decision.retry
