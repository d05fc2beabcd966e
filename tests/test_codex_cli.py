"""The real Codex CLI (tools/node_modules/.bin/codex, 0.169.0) through the agent runner (issue 18).

The command line built by ``AgentProfile(kind="codex")`` runs under ``tasks.agent.execute_agent``
in a temporary git repository against the fake Responses API of ``fake_openai_responses.py``
(one server for the module), and ``tasks.agent.assess_run`` reads its log back: tokens,
failure kind, retry decision. Codex's config is the private HOME's ``~/.codex/config.toml``
(a custom provider at the fake, its own retries off, no plugin sync or analytics); every
other host is behind a proxy that is the fake itself, so the tests see (and fail on) any
request Codex makes elsewhere. A missing CLI is a failure, not a skip: ``make install``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from blocks.agent_profile import AgentProfile
from fake_model_api import Reply, foreign_requests
from fake_openai_responses import (
    CODEX_API_KEY,
    OVERLOADED,
    QUOTA_EXHAUSTED,
    RATE_LIMITED,
    SERVER_ERROR,
    UNAUTHORIZED,
    FakeOpenAIResponses,
    OpenAIReply,
    codex_cli_env,
    codex_config,
    usage_limit,
)
from real_clis import APP, ROLE_PROMPT, pinned_cli, planted_ledger, seeded_repo, without_own_setup
from sdlc.models import AgentResult
from sdlc.retry import RetryDecision
from tasks.agent import AgentInvocation, assess_run, execute_agent
from tasks.classify import read_tail
from tasks.sandbox import SandboxSpec

TASK_FILE = ".task-developer.md"


def codex_binary() -> str:
    return pinned_cli("codex")


def exec_tool(js: str) -> Reply:
    """Codex 0.169's code mode: every tool is reached through the freeform ``exec`` tool (JavaScript)."""
    return Reply.tool_call("exec", {"input": js})


def apply_patch(patch: str) -> Reply:
    return exec_tool(f"const r = await tools.apply_patch({json.dumps(patch)});\ntext(JSON.stringify(r));\n")


def shell(command: str) -> Reply:
    args = json.dumps({"cmd": command, "login": False})
    return exec_tool(f"const r = await tools.exec_command({args});\ntext(JSON.stringify(r));\n")


def add_file(path: str, text: str) -> str:
    lines = "".join(f"+{line}\n" for line in text.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeOpenAIResponses]:
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture
def api(fake_api: FakeOpenAIResponses, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIResponses]:
    without_own_setup(monkeypatch, "OPENAI_", "CODEX_")
    fake_api.reset()
    yield fake_api
    assert not foreign_requests(fake_api), f"Codex reached for other hosts: {foreign_requests(fake_api)}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return seeded_repo(
        tmp_path / "repo", {TASK_FILE: "# Task\nCreate docs/notes.md and fix src/app.py.\n"}, APP
    )


def codex_home(tmp_path: Path, api_url: str, extra_config: str = "") -> Path:
    """A private HOME whose ``~/.codex/config.toml`` points Codex at ``api_url``."""
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(codex_config(api_url, extra=extra_config))
    return home


def run_codex(
    api: FakeOpenAIResponses,
    repo: Path,
    tmp_path: Path,
    *,
    sandbox: str = "none",
    attempt: int = 1,
    api_url: str | None = None,
    profile_sandbox: Literal["none"] | None = None,
    extra_config: str = "",
    extra_env: dict[str, str] | None = None,
) -> tuple[AgentResult, AgentInvocation, Path]:
    """The project's codex profile, run once by the project's runner; returns the result, invocation and log."""
    home = codex_home(tmp_path, api_url or api.url, extra_config)
    env = {**codex_cli_env(str(home), api.url), **(extra_env or {})}
    profile = AgentProfile(kind="codex", binary=codex_binary(), env=env, sandbox=profile_sandbox)
    prompt_file = tmp_path / "p.md"
    prompt_file.write_text(ROLE_PROMPT)
    argv = profile.build_command(role="developer", task_file=TASK_FILE, system_prompt_file=str(prompt_file))
    invocation = AgentInvocation(
        work_item="CX-7",
        stage="development",
        role="developer",
        worktree=str(repo),
        argv=argv,
        timeout_seconds=90,
        provider="codex",
        protocol_env={"SDLC_ROLE": "developer", "SDLC_WORK_ITEM": "CX-7", "SDLC_TASK_FILE": TASK_FILE},
        profile_env=profile.env,
        # Its config (the provider) is all Codex needs of its ~/.codex: its state goes to the sandbox's HOME.
        sandbox=SandboxSpec(mode=sandbox, read_paths=[str(home / ".codex" / "config.toml")]),
    )
    log = tmp_path / "logs" / f"developer-{attempt}.log"
    result = execute_agent(invocation, attempt=attempt, log_path=log)
    return result, invocation, log


def assessed(
    result: AgentResult, invocation: AgentInvocation, earlier: list[AgentResult] | None = None
) -> tuple[AgentResult, RetryDecision | None]:
    return assess_run(result, invocation, earlier or [])


def test_profile_writes_its_artifact_and_records_tokens_not_cost(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path
) -> None:
    """The profile's flags start Codex unattended; its apply_patch tool adds a file and its shell tool edits
    src/; the run's tokens are Codex's turn usage (both requests summed) and its cost is "not reported"."""
    api.script(
        apply_patch(add_file("docs/notes.md", "# Notes\nwritten by codex")),
        shell("sed -i s/hello/bye/ src/app.py"),
        OpenAIReply.message("done", input_tokens=40, cached_tokens=30, output_tokens=9, reasoning_tokens=4),
    )
    result, invocation, log = run_codex(api, repo, tmp_path)
    assert result.exit_code == 0 and not result.timed_out, read_tail(log)
    assert (repo / "docs" / "notes.md").read_text() == "# Notes\nwritten by codex\n"
    assert (repo / "src" / "app.py").read_text() == "print('bye')\n"
    run, decision = assessed(result, invocation)
    assert decision is None and run.failure_kind is None, run
    # Two default replies (12 in / 5 out) and the last one: one turn, summed by Codex itself.
    assert (run.input_tokens, run.output_tokens) == (12 + 12 + 40, 5 + 5 + 9)
    assert run.cost_usd is None  # Codex reports no cost: "not reported", never 0
    assert run.session_id and len(run.session_id) == 36
    # Every flag of the profile took effect in the model requests.
    requests = api.model_requests()
    assert len(requests) == 3
    first = requests[0]
    assert first["headers"]["authorization"] == f"Bearer {CODEX_API_KEY}"
    assert first["body"]["model"] == "gpt-6.1-sol" and first["body"]["stream"] is True
    metadata = json.loads(first["headers"]["x-codex-turn-metadata"])
    assert metadata["sandbox_mode"] == "danger-full-access"  # sdlc's sandbox confines it (see the profile)
    assert TASK_FILE in json.dumps(first["body"]["input"][-1])  # the prompt names the task file
    # The role's prompt is the developer's instructions, a message of its own before the user's prompt.
    developer = [item for item in first["body"]["input"] if item.get("role") == "developer" and "content" in item]
    assert any(ROLE_PROMPT.strip() in json.dumps(item["content"]) for item in developer), first["body"]["input"]
    # What the tools did came back to the model.
    outputs = [item for item in requests[1]["body"]["input"] if item.get("type") == "custom_tool_call_output"]
    assert outputs and "Script completed" in json.dumps(outputs)


def test_in_the_sandbox_it_edits_its_worktree_and_cannot_read_the_data_dir(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confined by bwrap with only its config.toml granted, Codex reaches the fake (its port only),
    writes in its worktree, and its shell finds nothing of the data directory."""
    ledger, canary = planted_ledger(tmp_path, monkeypatch)
    data_dir = ledger.parent
    api.script(
        shell(f"cat {ledger}; ls {data_dir}; cat ~/.ssh/id_rsa"),
        apply_patch(add_file("docs/notes.md", "confined")),
        Reply.message("done"),
    )
    result, invocation, log = run_codex(api, repo, tmp_path, sandbox="bwrap")
    assert result.exit_code == 0, read_tail(log)
    assert result.sandbox is not None and result.sandbox.startswith("bwrap"), result.sandbox
    assert (repo / "docs" / "notes.md").read_text() == "confined\n"
    requests = api.model_requests()
    assert len(requests) == 3
    assert canary not in json.dumps([r["body"] for r in requests])
    tool_output = json.dumps(requests[1]["body"]["input"][-1])
    assert "No such file or directory" in tool_output and "ledger.db" in tool_output
    run, decision = assessed(result, invocation)
    assert decision is None and run.input_tokens == 36


def test_with_sdlcs_sandbox_turned_off_codex_confines_itself(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path
) -> None:
    """A profile with `sandbox: none` runs Codex's own workspace-write sandbox: its worktree is
    writable, the rest of the disk is not (here /tmp and TMPDIR excluded, where the test's files are)."""
    (tmp_path / "tmp").mkdir()
    api.script(
        apply_patch(add_file("docs/notes.md", "own sandbox")),
        shell("touch ../outside.txt; touch src/inside.txt"),
        Reply.message("done"),
    )
    result, _, log = run_codex(
        api,
        repo,
        tmp_path,
        profile_sandbox="none",
        extra_config="\n[sandbox_workspace_write]\nexclude_slash_tmp = true\nexclude_tmpdir_env_var = true\n",
        # Codex keeps its sandbox helper beside its config, never under TMPDIR (pytest's files are in /tmp).
        extra_env={"TMPDIR": str(tmp_path / "tmp")},
    )
    assert result.exit_code == 0 and result.sandbox and result.sandbox.startswith("unconfined"), read_tail(log)
    assert (repo / "docs" / "notes.md").read_text() == "own sandbox\n" and (repo / "src" / "inside.txt").exists()
    assert not (tmp_path / "outside.txt").exists()
    requests = api.model_requests()
    assert json.loads(requests[0]["headers"]["x-codex-turn-metadata"])["sandbox_mode"] == "workspace-write"
    assert "touch: cannot touch '../outside.txt': Read-only file system" in json.dumps(requests[2]["body"]["input"][-1])


def test_a_429_is_transient_and_retried_after_sdlcs_backoff(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path
) -> None:
    """Codex prints neither the retry-after it was sent nor any wait: the failure is transient, with no
    wait of the API's, so sdlc's own backoff applies; the next attempt succeeds."""
    api.script(RATE_LIMITED)
    result, invocation, log = run_codex(api, repo, tmp_path)
    assert result.exit_code == 1, read_tail(log)
    tail = read_tail(log)
    assert "last status: 429 Too Many Requests" in tail and "retry-after" not in tail.lower()
    run, decision = assessed(result, invocation)
    assert (run.failure_kind, run.failure_reason, run.retry_after_seconds) == ("transient", "rate_limit", None)
    assert decision is not None and decision.retry and decision.wait_seconds > 0, decision
    assert run.input_tokens is None and run.cost_usd is None  # a failed turn reports no usage
    assert len(api.model_requests()) == 1  # request_max_retries = 0: no retries of its own
    # The retry: attempt 2 of the same stage, now answered.
    again, invocation, log = run_codex(api, repo, tmp_path, attempt=2)
    retried, decision = assessed(again, invocation, [run])
    assert again.exit_code == 0 and decision is None and retried.output_tokens == 5, read_tail(log)


@pytest.mark.parametrize(
    "reply, kind, reason",
    [
        (SERVER_ERROR, "transient", "server_error"),
        (OVERLOADED, "transient", "overloaded"),
        (UNAUTHORIZED, "permanent", "authentication"),
        (QUOTA_EXHAUSTED, "usage_limit", "quota_exhausted"),
    ],
    ids=["500", "503-overloaded", "401", "429-insufficient-quota"],
)
def test_api_errors_are_classified_from_what_codex_prints(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path, reply: Reply, kind: str, reason: str
) -> None:
    api.default = reply
    result, invocation, log = run_codex(api, repo, tmp_path)
    assert result.exit_code == 1 and not result.timed_out, read_tail(log)
    run, decision = assessed(result, invocation)
    assert (run.failure_kind, run.failure_reason) == (kind, reason), read_tail(log)
    assert decision is not None
    if reason == "authentication":
        assert decision.retry  # a permanent failure is retried within max_attempts, as for every CLI
    if reason == "quota_exhausted":
        assert not decision.retry and "without a usable reset time" in decision.why  # someone must pay first


def test_a_plan_usage_limit_waits_for_the_reset_codex_prints(
    api: FakeOpenAIResponses, repo: Path, tmp_path: Path
) -> None:
    """ChatGPT sign-in: a 429 usage_limit_reached with resets_at; Codex prints the local clock time."""
    resets = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=2, minutes=2)
    api.default = usage_limit(int(resets.timestamp()) + 30)
    result, invocation, log = run_codex(api, repo, tmp_path)
    assert "You’ve hit your usage limit" in read_tail(log) and "try again at" in read_tail(log)
    run, decision = assessed(result, invocation)
    assert (run.failure_kind, run.failure_reason) == ("usage_limit", "usage_limit"), read_tail(log)
    assert decision is not None and decision.retry
    assert run.retry_not_before is not None and run.retry_not_before >= resets, (run.retry_not_before, resets)


def test_an_unreachable_api_fails_fast_and_transient(api: FakeOpenAIResponses, repo: Path, tmp_path: Path) -> None:
    """With the profile's --disable unbounded_connection_retries Codex gives up instead of waiting for
    the network until the agent's timeout."""
    started = time.monotonic()
    result, invocation, log = run_codex(api, repo, tmp_path, api_url="http://127.0.0.1:9")
    assert result.exit_code == 1 and time.monotonic() - started < 30, read_tail(log)
    run, _ = assessed(result, invocation)
    assert (run.failure_kind, run.failure_reason) == ("transient", "network"), read_tail(log)
