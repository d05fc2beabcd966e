"""The real Gemini CLI (tools/node_modules/.bin/gemini, @google/gemini-cli 0.61.0) through the agent runner (issue 18).

The CLI built by ``AgentProfile(kind="gemini")`` runs under ``tasks.agent.execute_agent`` in
a temporary git repository against the fake Gemini API of ``fake_gemini.py`` (one server for
the module), with a private HOME whose ``.gemini/settings.json`` selects API-key auth and
turns off usage statistics, telemetry, update checks, the IDE client and the CLI's own
retries (folder trust stays on: ``--skip-trust`` trusts the worktree for the session only);
``tasks.agent.assess_run`` then reads its log back. Every Node process of a run records its
connections (``fixtures/gemini/net_guard.cjs``): the CLI may reach the fake API on 127.0.0.1
and nothing else. The reader of what it prints (``tasks/agent_outputs/gemini.py``) is also
checked against the captured fixtures (``fixtures/gemini/``). A missing CLI is a failure,
not a skip: ``make install`` provides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from blocks.agent_profile import AgentProfile, gemini_permissions
from fake_gemini import (
    API_KEY_INVALID,
    RATE_LIMITED,
    TEST_API_KEY,
    UNAUTHENTICATED,
    FakeGemini,
    declared_functions,
    gemini_cli_env,
    write_gemini_home,
)
from fake_model_api import Reply
from real_clis import APP, ROLE_PROMPT, pinned_cli, planted_ledger, seeded_repo, without_own_setup
from sdlc.graph import BUILTIN_PROMPTS
from sdlc.models import AgentResult
from sdlc.retry import RetryPolicy
from tasks.agent import AgentInvocation, assess_run, execute_agent
from tasks.agent_outputs import gemini as reader
from tasks.classify import FailureKind, classify_output, read_tail, run_usage
from tasks.sandbox import SandboxSpec

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
NET_GUARD = FIXTURES / "net_guard.cjs"
MODEL = "gemini-2.5-flash"


def gemini_binary() -> str:
    return pinned_cli("gemini")


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def api(fake_api: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    without_own_setup(monkeypatch, "GEMINI_", "GOOGLE_")
    fake_api.reset()
    yield fake_api
    assert not fake_api.unserved_requests(), fake_api.unserved_requests()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    task = "# Task\nCreate hello.txt containing `hello`.\n"
    return seeded_repo(tmp_path / "repo", {f".task-{role}.md": task for role in ("developer", "reviewer")}, APP)


def run_gemini(
    api: FakeGemini, repo: Path, tmp_path: Path, *, role: str = "developer", sandbox: str = "none"
) -> tuple[AgentResult, AgentInvocation, Path]:
    """The project's gemini profile, run once by the project's runner; the result, invocation and log."""
    home = tmp_path / "home"
    settings = write_gemini_home(str(home))
    env = gemini_cli_env(str(home), api.url)
    if sandbox == "none":  # confined, the sandbox's own network namespace stands guard instead
        scratch = tmp_path / "tmp"
        scratch.mkdir(exist_ok=True)
        env.update(NODE_OPTIONS=f"--require {NET_GUARD}", NET_GUARD_LOG=str(tmp_path / "net.log"), TMPDIR=str(scratch))
    profile = AgentProfile(kind="gemini", binary=gemini_binary(), models={role: MODEL}, env=env)
    task_file = f".task-{role}.md"
    prompt_file = tmp_path / "p.md"
    prompt_file.write_text(ROLE_PROMPT)
    argv = profile.build_command(role=role, task_file=task_file, system_prompt_file=str(prompt_file))
    invocation = AgentInvocation(
        work_item="GM-7",
        stage="development" if role == "developer" else "review",
        role=role,
        worktree=str(repo),
        argv=argv,
        timeout_seconds=120,
        provider="gemini",
        protocol_env={"SDLC_ROLE": role, "SDLC_WORK_ITEM": "GM-7", "SDLC_TASK_FILE": task_file},
        profile_env=profile.env,
        # Its settings are all the CLI needs of its ~/.gemini: its state goes to the sandbox's HOME.
        sandbox=SandboxSpec(mode=sandbox, read_paths=[settings]),
    )
    log = tmp_path / "logs" / f"{role}-1.log"
    result = execute_agent(invocation, attempt=1, log_path=log)
    return result, invocation, log


def connections(tmp_path: Path) -> list[str]:
    """What the run's Node processes connected to or looked up (``net_guard.cjs``)."""
    log = tmp_path / "net.log"
    return log.read_text().splitlines() if log.exists() else []


def assert_only_loopback(tmp_path: Path, api: FakeGemini) -> None:
    seen = connections(tmp_path)
    port = api.url.rsplit(":", 1)[1]
    assert seen, "the network guard recorded nothing: was NODE_OPTIONS passed to the CLI?"
    assert set(seen) == {f"connect 127.0.0.1:{port}"}, seen


def function_responses(request: dict) -> list[dict]:
    """The functionResponse parts of a request's last turn (what the CLI's tools gave back)."""
    return [part["functionResponse"] for part in request["body"]["contents"][-1]["parts"] if "functionResponse" in part]


# -- the real CLI ---------------------------------------------------------------------------


def test_developer_writes_its_artifact_and_records_tokens_not_cost(api: FakeGemini, repo: Path, tmp_path: Path) -> None:
    """The profile's flags start the CLI unattended (yolo for the developer); a scripted write_file call
    writes in the worktree; tokens are the CLI's stats (both model calls summed), cost "not reported".

    What the worktree holds for the CLI is not obeyed: its ``.gemini/settings.json`` (an MCP server,
    i.e. a command the CLI would start) is not loaded, since the folder is trusted by --skip-trust for the
    session only; its ``.env`` and ``.gemini/.env`` cannot move the model API elsewhere, since the
    agent's environment already names it (the CLI never overrides a variable that is set)."""
    marker = tmp_path / "mcp-server-started"
    (repo / ".gemini").mkdir()
    mcp = {"mcpServers": {"repo": {"command": "sh", "args": ["-c", f"touch {marker}"]}}}
    (repo / ".gemini" / "settings.json").write_text(json.dumps(mcp))
    for name in (".env", ".gemini/.env"):
        (repo / name).write_text("GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:9\n")
    target = repo / "hello.txt"
    api.script(
        Reply.tool_call(
            "write_file", {"file_path": str(target), "content": "hello\n"}, input_tokens=30, output_tokens=7
        ),
        Reply.message("written", input_tokens=45, output_tokens=3),
    )
    result, invocation, log = run_gemini(api, repo, tmp_path)
    assert result.exit_code == 0 and not result.timed_out, read_tail(log)
    assert target.read_text() == "hello\n"
    assessed, decision = assess_run(result, invocation, [])
    assert decision is None, read_tail(log)
    assert assessed.cost_usd is None  # the CLI reports no cost: "not reported", never zero
    assert (assessed.input_tokens, assessed.output_tokens, assessed.num_turns) == (75, 10, 2)
    assert assessed.session_id and re.fullmatch(r"[0-9a-f-]{36}", assessed.session_id)
    # Every flag of the profile took effect in the model requests.
    first, second = api.generate_requests()
    assert first["path"] == f"/v1beta/models/{MODEL}:streamGenerateContent" and first["query"] == "alt=sse"
    assert first["headers"].get("x-goog-api-key") == TEST_API_KEY
    assert ".task-developer.md" in json.dumps(first["body"]["contents"])  # the prompt names the task file
    assert ROLE_PROMPT.strip() in json.dumps(first["body"]["contents"])  # and the role's prompt
    assert {"write_file", "replace", "read_file", "run_shell_command"} <= set(declared_functions(first["body"]))
    [written] = function_responses(second)
    assert written["name"] == "write_file" and "error" not in json.dumps(written["response"]).lower()
    assert not marker.exists(), "the CLI started the worktree's MCP server"
    assert_only_loopback(tmp_path, api)


def test_reviewer_may_run_git_diff_and_no_other_shell_command(api: FakeGemini, repo: Path, tmp_path: Path) -> None:
    """The reviewer's Bash(git diff:*) becomes --allowed-tools run_shell_command(git diff) under
    auto_edit: that command runs, any other is refused by the CLI's policy, and writes still work.

    ``--no-ext-diff``: the CLI's shell tool sets git's ``diff.external`` to "" (GIT_CONFIG_KEY_n), which
    git 2.39 (this machine's) then tries to run ("error: cannot run : No such file or directory", exit 128)."""
    (repo / "src" / "app.py").write_text("print('hello, world')\n")
    canary = repo / "canary.txt"
    api.script(
        Reply.tool_call("run_shell_command", {"command": "git diff --no-ext-diff"}),
        Reply.tool_call("run_shell_command", {"command": f"touch {canary}"}),
        Reply.tool_call("write_file", {"file_path": str(repo / "review.md"), "content": "LGTM\n"}),
        Reply.message("reviewed"),
    )
    result, _, log = run_gemini(api, repo, tmp_path, role="reviewer")
    assert result.exit_code == 0, read_tail(log)
    assert (repo / "review.md").read_text() == "LGTM\n"
    assert not canary.exists()
    requests = api.generate_requests()
    assert len(requests) == 4, [r["body"]["contents"][-1] for r in requests]
    diff, refused = (json.dumps(function_responses(r)) for r in requests[1:3])
    assert "hello, world" in diff, diff
    assert "hello, world" not in refused and re.search(r"denied|not allowed|policy", refused, re.IGNORECASE), refused
    assert_only_loopback(tmp_path, api)


def test_in_the_sandbox_it_writes_its_worktree_and_cannot_read_the_data_dir(
    api: FakeGemini, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confined by bwrap with only its settings.json granted, the CLI reaches its (loopback) API,
    writes its worktree, and its shell finds nothing of the data directory."""
    ledger, canary = planted_ledger(tmp_path, monkeypatch)
    data_dir = ledger.parent
    target = repo / "hello.txt"
    api.script(
        Reply.tool_call("run_shell_command", {"command": f"cat {ledger}; ls {data_dir}"}),
        Reply.tool_call("write_file", {"file_path": str(target), "content": "hello\n"}),
        Reply.message("written"),
    )
    result, _, log = run_gemini(api, repo, tmp_path, sandbox="bwrap")
    assert result.exit_code == 0, read_tail(log)
    assert result.sandbox is not None and result.sandbox.startswith("bwrap"), result.sandbox
    assert target.read_text() == "hello\n"
    requests = api.generate_requests()
    assert len(requests) == 3
    assert canary not in json.dumps([r["body"] for r in requests])
    assert "No such file" in json.dumps(function_responses(requests[1]))


def test_a_429_is_retried_after_the_wait_gemini_prints(api: FakeGemini, repo: Path, tmp_path: Path) -> None:
    """The API's RetryInfo (7 s) reaches the log as "Suggested retry after 7s."; sdlc waits at least that."""
    api.default = RATE_LIMITED
    result, invocation, log = run_gemini(api, repo, tmp_path)
    assert result.exit_code == 429 % 256, read_tail(log)  # the CLI exits with the status modulo 256
    assert "Suggested retry after 7s." in read_tail(log)
    assessed, decision = assess_run(result, invocation, [])
    assert (assessed.failure_kind, assessed.failure_reason) == ("transient", "rate_limit")
    assert assessed.retry_after_seconds == 7
    assert decision is not None and decision.retry and decision.wait_seconds >= 7, decision
    assert assessed.input_tokens is None and assessed.cost_usd is None  # an error result has no stats
    assert len(api.generate_requests()) == 1  # general.maxAttempts=1: no retries of its own
    assert_only_loopback(tmp_path, api)


@pytest.mark.parametrize(
    "reply, kind, reason",
    [
        (API_KEY_INVALID, FailureKind.permanent, "authentication"),
        (UNAUTHENTICATED, FailureKind.permanent, "authentication"),
    ],
    ids=["400-api-key-invalid", "401"],
)
def test_api_errors_are_classified_from_what_gemini_prints(
    api: FakeGemini, repo: Path, tmp_path: Path, reply: Reply, kind: FailureKind, reason: str
) -> None:
    api.default = reply
    result, invocation, log = run_gemini(api, repo, tmp_path)
    assert result.exit_code == reply.status % 256, read_tail(log)
    # One run allowed while failures are permanent: a permanent failure is not run again.
    one_run = invocation.model_copy(update={"retry": RetryPolicy(max_attempts=1)})
    assessed, decision = assess_run(result, one_run, [])
    assert (assessed.failure_kind, assessed.failure_reason) == (kind.value, reason), read_tail(log)
    assert decision is not None and decision.retry is (kind is FailureKind.transient), decision
    assert len(api.generate_requests()) == 1


# -- what it printed, captured (tests/fixtures/gemini/) --------------------------------------

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
EXPECTED: dict[str, tuple[str, str, float | None] | None] = {
    # case: (kind, reason, retry_after) or None for success
    "200": None,
    "429-then-200": None,
    "429": ("transient", "rate_limit", 7.0),
    "429-retries-exhausted": ("transient", "rate_limit", 1.0),
    "429-daily-quota": ("usage_limit", "usage_limit", None),
    "429-no-quota": ("permanent", "no_quota", None),
    "500": ("transient", "server_error", None),
    "503": ("transient", "overloaded", None),
    "503-retries-exhausted": ("transient", "overloaded", None),
    "400-api-key-invalid": ("permanent", "authentication", None),
    "401": ("permanent", "authentication", None),
    "403": ("permanent", "authentication", None),
    "connection-refused": ("transient", "network", None),
    "timeout": ("transient", "network", None),
    "no-api-key": ("permanent", "authentication", None),
    "no-auth-type": ("permanent", "authentication", None),
    "untrusted-folder": ("permanent", "untrusted_folder", None),
    "profile-200": None,
    "profile-write": None,
    "profile-429": ("transient", "rate_limit", 7.0),
}


def fixture_case(name: str) -> str:
    return name.rsplit("-", 1)[0]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_captured_output_is_classified(name: str) -> None:
    meta = MANIFEST[name]
    assert meta["source"] == "captured"
    text = (FIXTURES / f"{name}.txt").read_text()
    failure = classify_output(text, exit_code=meta["exit_code"], now=NOW, kind="gemini")
    expected = EXPECTED[fixture_case(name)]
    if expected is None:
        assert failure is None, failure
        return
    assert failure is not None, text[-500:]
    assert (failure.kind.value, failure.reason, failure.retry_after_seconds) == expected, failure
    assert failure.message and len(failure.message) <= 300 and "[object Object]" not in failure.message
    if failure.kind is FailureKind.usage_limit:
        # Per-day quotas reset at midnight Pacific time: the next one after NOW.
        assert failure.resets_at == datetime(2026, 11, 30, 0, 0, tzinfo=ZoneInfo("America/Los_Angeles"))


def test_captured_tokens_are_read_and_cost_is_not_reported() -> None:
    ok = run_usage((FIXTURES / "200-json.txt").read_text(), "gemini")
    assert ok is not None and ok.cost_usd is None
    assert (ok.input_tokens, ok.output_tokens, ok.num_turns, ok.is_error) == (12, 5, 1, False)
    wrote = run_usage((FIXTURES / "profile-write-json.txt").read_text(), "gemini")
    assert wrote is not None and (wrote.input_tokens, wrote.output_tokens, wrote.num_turns) == (24, 10, 2)
    # A retry the CLI recovered from counts both calls.
    retried = run_usage((FIXTURES / "429-then-200-json.txt").read_text(), "gemini")
    assert retried is not None and retried.num_turns == 2 and retried.is_error is False
    # An error result has a session but no stats: tokens "not reported".
    failed = run_usage((FIXTURES / "429-json.txt").read_text(), "gemini")
    assert failed is not None and failed.is_error and failed.api_error_status == 429
    assert failed.session_id and failed.input_tokens is None and failed.output_tokens is None
    exit_41 = run_usage((FIXTURES / "no-api-key-json.txt").read_text(), "gemini")
    assert exit_41 is not None and exit_41.api_error_status is None  # 41 is the CLI's exit code, not HTTP
    # Text output carries no figures at all.
    assert run_usage((FIXTURES / "200-text.txt").read_text(), "gemini") is None


def test_thoughts_and_tool_prompts_count_and_models_are_summed() -> None:
    stats = {
        "models": {
            "gemini-2.5-pro": {
                "tokens": {"prompt": 100, "candidates": 10, "thoughts": 40, "tool": 5, "cached": 60},
                "roles": {"main": {"totalRequests": 3}},
            },
            "gemini-2.5-flash-lite": {"tokens": {"prompt": 20, "candidates": 2}, "api": {"totalRequests": 1}},
        }
    }
    text = "noise {not json}\n" + json.dumps({"session_id": "s", "response": "ok", "stats": stats}, indent=2)
    usage = reader.usage(text)
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.num_turns) == (125, 52, 4)


def test_the_quota_reset_is_the_next_midnight_in_california() -> None:
    summer = reader.next_quota_reset(datetime(2026, 7, 1, 6, 59, tzinfo=UTC))  # 23:59 PDT
    assert summer == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    winter = reader.next_quota_reset(datetime(2026, 1, 1, 8, 0, tzinfo=UTC))  # 00:00 PST exactly
    assert winter == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)


def test_each_role_gets_the_narrowest_approval_mode() -> None:
    def argv(role: str, **kwargs: list[str]) -> list[str]:
        allowed = {role: kwargs["tools"]} if "tools" in kwargs else {}
        return AgentProfile(kind="gemini", allowed_tools=allowed).build_command(
            role=role, task_file=f".task-{role}.md", system_prompt_file=str(BUILTIN_PROMPTS / f"{role}.md")
        )

    developer = argv("developer")
    assert developer[developer.index("--approval-mode") + 1] == "yolo" and "--yolo" not in developer
    assert developer[developer.index("--output-format") + 1] == "json" and "--skip-trust" in developer
    analyst = argv("analyst")
    assert analyst[analyst.index("--approval-mode") + 1] == "auto_edit" and "--allowed-tools" not in analyst
    reviewer = argv("reviewer")
    assert reviewer[reviewer.index("--model") + 1] == "gemini-2.5-pro"
    assert [reviewer[i + 1] for i, a in enumerate(reviewer) if a == "--allowed-tools"] == [
        "run_shell_command(git diff)",
        "run_shell_command(git log)",
    ]
    read_only = argv("analyst", tools=["Read", "Glob"])
    assert read_only[read_only.index("--approval-mode") + 1] == "default"
    assert gemini_permissions(["Read", "Bash(npm test:*)"]) == [
        "--approval-mode",
        "default",
        "--allowed-tools",
        "run_shell_command(npm test)",
    ]
    # The prompt names the task file only: nothing of the work item is on the command line.
    assert "GM-7" not in " ".join(developer) and ".task-developer.md" in developer[-1]
