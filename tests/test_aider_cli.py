"""The real Aider CLI (tools/aider/bin/aider, aider-chat 0.86.2) through the agent runner (issue 18).

The command built by ``AgentProfile(kind="aider")`` runs under ``tasks.agent.execute_agent``
in a temporary git repository against the fake Chat Completions API of
``fake_openai_chat.py`` (litellm's ``openai/`` provider, ``OPENAI_API_BASE``); its log is
then read back with ``tasks.classify`` and Aider's reader (``tasks/agent_outputs/aider.py``).
The CLI's only peer is 127.0.0.1: every HTTP(S) request it would make elsewhere goes to a
tripwire proxy instead, and the test fails if the tripwire saw one. A missing CLI is a
failure, not a skip: ``make install`` provides it.

Aider exits 0 even when the API failed, retries errors itself (0.25 s doubling, about a
minute) and its OpenAI SDK waits out a 429's ``retry-after`` twice per call, silently; the
tests that need it to give up shorten its retry loop (``aider_cli_env(retry_timeout=...)``).
The readers' unit tests at the end run on the captured fixtures (``tests/fixtures/aider/``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from blocks.agent_profile import AgentProfile
from fake_openai_chat import (
    INSUFFICIENT_QUOTA,
    FakeOpenAIChat,
    Reply,
    aider_cli_env,
    seed_aider_model_cache,
)
from fake_model_api import ForeignHosts
from gitrepo import git
from real_clis import pinned_cli, without_own_setup
from sdlc.models import AgentResult
from sdlc.retry import Classification, RetryPolicy, decide_retry
from tasks.agent import AgentInvocation, execute_agent
from tasks.agent_outputs import aider as aider_output
from tasks.classify import FailureKind, classify_log_tail, classify_output, read_tail, run_usage
from tasks.sandbox import REPOSITORY_SETTINGS, SandboxSpec, sandbox_spec_for

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "aider"
SYSTEM_PROMPT = "You are running inside the sdlc-flows test suite; answer briefly."
TASK = "# Task\nCreate src/hello.txt containing `hello` and make src/greeting.txt say `hi there`.\n"
MODEL = "openai/gpt-4o-mini"  # litellm knows its price: Aider prints a cost
UNPRICED_MODEL = "openai/sdlc-fake-model"  # litellm knows no price: Aider prints tokens only
# Aider's "whole" edit format (its default for gpt-4o-mini): each file in full under its path.
EDITS = "src/hello.txt\n```\nhello\n```\n\nsrc/greeting.txt\n```\nhi there\n```\n"


def rate_limited(seconds: int) -> Reply:
    """OpenAI's 429 as it words it, asking for a wait of ``seconds`` (message and header)."""
    return Reply.error(
        429,
        "requests",
        "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): "
        f"Limit 3, Used 3, Requested 1. Please try again in {seconds}s.",
        headers={"retry-after": str(seconds)},
        code="rate_limit_exceeded",
    )


def aider_binary() -> str:
    return pinned_cli("aider")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeOpenAIChat, ForeignHosts]]:
    # Nothing of this machine's own OpenAI, Aider or litellm setup may reach the CLI (the runner
    # passes OPENAI_* and AIDER_* through from the worker).
    with pytest.MonkeyPatch.context() as patch:
        without_own_setup(patch, "OPENAI_", "AIDER_", "LITELLM_", "ANTHROPIC_")
        with ForeignHosts() as tripwire, FakeOpenAIChat() as fake:
            yield fake, tripwire


@pytest.fixture
def api(server: tuple[FakeOpenAIChat, ForeignHosts]) -> Iterator[FakeOpenAIChat]:
    fake, tripwire = server
    fake.reset()
    tripwire.reset()
    yield fake
    assert tripwire.seen() == [], f"the CLI reached for the internet: {tripwire.seen()}"


@pytest.fixture
def tripwire(server: tuple[FakeOpenAIChat, ForeignHosts]) -> ForeignHosts:
    return server[1]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A linked worktree of a clone, as sdlc gives each work item (the sandbox gives it a private git dir)."""
    clone = tmp_path / "clone"
    (clone / "src").mkdir(parents=True)
    (clone / "src" / "greeting.txt").write_text("hello world\n")
    git(clone, "init", "-q", "-b", "main")
    git(clone, "add", ".")
    git(clone, "commit", "-q", "-m", "seed")
    path = tmp_path / "repo"
    git(clone, "worktree", "add", "-q", "-b", "feature/ET-7", str(path))
    (path / ".task-developer.md").write_text(TASK)
    return path


def clone_config(repo: Path) -> str:
    return (repo.parent / "clone" / ".git" / "config").read_text()


def run_aider(
    api: FakeOpenAIChat,
    tripwire: ForeignHosts,
    repo: Path,
    tmp_path: Path,
    *,
    model: str = MODEL,
    sandbox: str = "none",
    retry_timeout: float | None = None,
) -> tuple[AgentResult, Path]:
    """The project's aider profile, run once by the project's runner; returns the result and its log."""
    home = tmp_path / "home"
    caches = seed_aider_model_cache(home)
    prompt_file = tmp_path / "system-prompt.md"
    prompt_file.write_text(SYSTEM_PROMPT + "\n")
    profile = AgentProfile(
        kind="aider",
        binary=aider_binary(),
        models={"developer": model},
        env={**aider_cli_env(str(home), api.url, retry_timeout=retry_timeout), **tripwire.env()},
    )
    argv = profile.build_command(role="developer", task_file=".task-developer.md", system_prompt_file=str(prompt_file))
    reads = [str(caches)] + ([profile.env["PYTHONPATH"]] if "PYTHONPATH" in profile.env else [])
    invocation = AgentInvocation(
        work_item="ET-7",
        stage="development",
        role="developer",
        worktree=str(repo),
        argv=argv,
        timeout_seconds=150,
        protocol_env={"SDLC_ROLE": "developer", "SDLC_WORK_ITEM": "ET-7", "SDLC_TASK_FILE": ".task-developer.md"},
        profile_env=profile.env,
        provider="aider",
        # What sandbox_spec_for gives an aider run: the repository's copies of its settings shown empty.
        sandbox=SandboxSpec(mode=sandbox, read_paths=reads, masked_files=REPOSITORY_SETTINGS["aider"]),  # type: ignore[arg-type]
    )
    log = tmp_path / "logs" / "developer-1.log"
    result = execute_agent(invocation, attempt=1, log_path=log)
    return result, log


def test_profile_writes_its_artifacts_in_the_sandbox_and_reports_cost_and_tokens(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """Confined by bwrap, the real CLI reaches its (loopback) model API only, creates a new file and
    edits one nobody named on its command line, commits nothing, and prints the API's tokens and its cost."""
    api.default = Reply.message(EDITS, input_tokens=321, output_tokens=45)
    result, log = run_aider(api, tripwire, repo, tmp_path, sandbox="bwrap")
    tail = read_tail(log)
    assert result.exit_code == 0 and not result.timed_out, tail
    assert result.sandbox is not None and result.sandbox.startswith("bwrap"), result.sandbox
    assert (repo / "src" / "hello.txt").read_text() == "hello\n", tail
    assert (repo / "src" / "greeting.txt").read_text() == "hi there\n", tail
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"  # no commit of its own
    assert "user" not in clone_config(repo)  # no identity written into sdlc's clone
    assert not list(repo.glob(".aider.*history*")) and not (repo / ".gitignore").exists()
    assert classify_log_tail(log, exit_code=result.exit_code, kind="aider") is None
    usage = run_usage(tail, "aider")
    assert usage is not None, tail
    assert (usage.input_tokens, usage.output_tokens, usage.num_turns) == (321, 45, 1)
    # gpt-4o-mini at litellm's price ($0.15 / $0.60 per million tokens): 321 * 0.15e-6 + 45 * 0.6e-6.
    assert usage.cost_usd == pytest.approx(0.00007515, rel=0.01)
    # Every flag of the profile was accepted and took effect in the one model request.
    [request] = api.model_requests()
    body = request["body"]
    assert body["model"] == "gpt-4o-mini" and body.get("stream") in (None, False)
    assert request["headers"].get("authorization") == "Bearer sk-test-dummy"
    said = json.dumps(body["messages"])
    assert SYSTEM_PROMPT in said  # --read system-prompt.md
    assert "Create src/hello.txt" in said  # --message-file .task-developer.md
    assert "with whole edit format" in tail


def test_in_the_sandbox_a_planted_env_file_cannot_redirect_the_model_api_or_its_key(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """Aider loads the repository's .env over the environment (no flag stops it): an agent that wrote one
    would send the next run's key elsewhere. Confined, the CLI finds it (and its YAML settings) empty."""
    (repo / ".env").write_text("OPENAI_API_BASE=http://127.0.0.1:9/v1\nOPENAI_API_KEY=sk-planted\n")
    (repo / ".aider.conf.yml").write_text("model: openai/planted-model\n")
    api.default = Reply.message(EDITS)
    result, log = run_aider(api, tripwire, repo, tmp_path, sandbox="bwrap")
    assert result.exit_code == 0 and result.sandbox is not None and result.sandbox.startswith("bwrap"), read_tail(log)
    [request] = api.model_requests()
    assert request["headers"].get("authorization") == "Bearer sk-test-dummy"
    assert request["body"]["model"] == "gpt-4o-mini"
    assert (repo / ".env").read_text().startswith("OPENAI_API_BASE=")  # the file itself is left as it was
    spec = sandbox_spec_for(
        mode="bwrap", kind="aider", work_item="ET-7", read_paths=[], write_paths=[], network=True, repo="https://x/r.git"
    )
    assert spec.masked_files == [".env", ".aider.conf.yml", ".aider.model.settings.yml", ".aider.model.metadata.json"]


def test_a_429_is_waited_out_by_the_cli_as_the_server_asks(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """The OpenAI SDK under litellm retries a 429 after its retry-after, silently; the run then
    succeeds. On a model litellm has no price for, Aider prints tokens but no cost: "not reported"."""
    api.script(rate_limited(2), Reply.message(EDITS, input_tokens=1234, output_tokens=56))
    result, log = run_aider(api, tripwire, repo, tmp_path, model=UNPRICED_MODEL)
    tail = read_tail(log)
    assert result.exit_code == 0, tail
    assert (repo / "src" / "hello.txt").read_text() == "hello\n", tail
    first, second = api.model_requests()
    assert second["at"] - first["at"] >= 2.0  # the announced wait, kept
    assert "RateLimitError" not in tail and "Retrying" not in tail  # nothing in the log says so
    assert classify_log_tail(log, exit_code=result.exit_code, kind="aider") is None
    usage = run_usage(tail, "aider")
    assert usage is not None, tail
    assert usage.cost_usd is None  # not reported, never 0
    assert (usage.input_tokens, usage.output_tokens) == (1200, 56)  # Aider prints "1.2k sent"


def test_a_429_the_cli_gives_up_on_is_transient_with_the_wait_openai_names(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """Aider exits 0 after giving up; the reader sees the error it ended on. The retry-after header never
    reaches the log, OpenAI's "Please try again in 1s." does: sdlc waits at least that long."""
    api.default = rate_limited(1)
    result, log = run_aider(api, tripwire, repo, tmp_path, retry_timeout=0.2)
    tail = read_tail(log)
    assert result.exit_code == 0, tail
    assert "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached" in tail
    assert len(api.model_requests()) == 3  # the SDK's call and its two retries; Aider's loop cut short
    failure = classify_log_tail(log, exit_code=result.exit_code, kind="aider")
    assert failure is not None, tail
    assert (failure.kind, failure.reason, failure.retry_after_seconds) == (FailureKind.transient, "rate_limit", 1.0)
    decision = decide_retry(
        Classification(kind=failure.kind, reason=failure.reason, retry_after=failure.retry_after_seconds,
                       transient_failures=1),
        RetryPolicy(backoff_base_seconds=0.1),
    )
    assert decision.retry and decision.wait_seconds >= 1.0
    assert not (repo / "src" / "hello.txt").exists()
    assert run_usage(tail, "aider") is None  # no model call answered: nothing reported


def test_a_401_fails_permanently_at_once(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    api.default = Reply.error(
        401,
        "invalid_request_error",
        "Incorrect API key provided: sk-test-***ummy. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )
    result, log = run_aider(api, tripwire, repo, tmp_path)
    tail = read_tail(log)
    assert result.exit_code == 0, tail  # Aider exits 0 all the same
    assert len(api.model_requests()) == 1  # neither the SDK nor Aider retries it
    failure = classify_log_tail(log, exit_code=result.exit_code, kind="aider")
    assert failure is not None, tail
    assert (failure.kind, failure.reason) == (FailureKind.permanent, "authentication")
    assert "Incorrect API key provided" in failure.message
    assert "user" not in clone_config(repo)  # unconfined too, no identity written into sdlc's clone


def test_an_exhausted_quota_stops_without_retrying(
    api: FakeOpenAIChat, tripwire: ForeignHosts, repo: Path, tmp_path: Path
) -> None:
    """OpenAI's insufficient_quota is a 429 too (Aider and the SDK retry it); its words tell it apart:
    a usage limit with no reset time, which sdlc does not retry."""
    api.default = INSUFFICIENT_QUOTA
    result, log = run_aider(api, tripwire, repo, tmp_path, retry_timeout=0.2)
    tail = read_tail(log)
    failure = classify_log_tail(log, exit_code=result.exit_code, kind="aider")
    assert failure is not None, tail
    assert (failure.kind, failure.reason, failure.resets_at) == (FailureKind.usage_limit, "quota_exhausted", None)
    decision = decide_retry(
        Classification(kind=failure.kind, reason=failure.reason, usage_limit_waits=1), RetryPolicy()
    )
    assert not decision.retry


# -- the reader on what the real CLI printed (tests/fixtures/aider/, capture.py) --------------------

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def fixture(name: str) -> tuple[str, dict[str, Any]]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return (FIXTURES / f"{name}.txt").read_text(), manifest["fixtures"][name]


@pytest.mark.parametrize(
    "name, kind, reason, retry_after",
    [
        ("429", FailureKind.transient, "rate_limit", 7.0),
        ("insufficient-quota", FailureKind.usage_limit, "quota_exhausted", None),
        ("500", FailureKind.transient, "server_error", None),
        ("503", FailureKind.transient, "overloaded", None),
        ("401", FailureKind.permanent, "authentication", None),
        ("403", FailureKind.permanent, "unexpected_status", None),
        ("404-model", FailureKind.permanent, "model_not_found", None),
        ("context-length", FailureKind.permanent, "context_window", None),
        ("timeout", FailureKind.transient, "timeout_api", None),
        ("connection-refused", FailureKind.transient, "network", None),
    ],
)
def test_captured_failures_are_classified(
    name: str, kind: FailureKind, reason: str, retry_after: float | None
) -> None:
    text, meta = fixture(name)
    failure = classify_output(text, exit_code=meta["exit_code"], now=NOW, kind="aider")
    assert failure is not None, text
    assert (failure.kind, failure.reason, failure.retry_after_seconds) == (kind, reason, retry_after), failure
    # No answer, no usage; but on a context overflow Aider prints its own estimate of what it sent.
    assert (run_usage(text, "aider") is None) == (name != "context-length")


@pytest.mark.parametrize("name", ["200", "429-then-200", "500-then-200"])
def test_captured_successes_are_no_failure_and_report_usage(name: str) -> None:
    text, meta = fixture(name)
    assert meta["exit_code"] == 0
    assert classify_output(text, exit_code=0, now=NOW, kind="aider") is None
    usage = aider_output.usage(text)
    assert usage is not None and usage.input_tokens and usage.output_tokens and usage.num_turns == 1
    assert usage.cost_usd is not None and usage.cost_usd > 0


def test_captured_unpriced_model_reports_tokens_but_no_cost() -> None:
    text, _ = fixture("200-unpriced-model")
    usage = aider_output.usage(text)
    assert usage is not None and usage.cost_usd is None and usage.input_tokens == 12 and usage.output_tokens == 5


def test_an_error_aider_retried_and_got_past_is_no_failure() -> None:
    text, _ = fixture("500-then-200")
    assert "Retrying in 0.2 seconds..." in text
    assert classify_output(text, exit_code=0, now=NOW, kind="aider") is None
    usage = aider_output.usage(text)
    assert usage is not None and usage.cost_usd is not None


def test_usage_sums_every_model_call_and_takes_the_session_cost() -> None:
    text = (
        "Tokens: 2.3k sent, 120 received. Cost: $0.0012 message, $0.0012 session.\n"
        "Applied edit to src/app.py\n"
        "Tokens: 12k sent, 3.4k cache write, 8.1k cache hit, 1.5k received.\n"
        "Cost: $0.05 message, $0.05 session.\n"
    )
    usage = aider_output.usage(text)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.num_turns) == (14300, 1620, 2)
    assert usage.cost_usd == pytest.approx(0.05)
    assert aider_output.usage("Aider v0.86.2\nModel: openai/gpt-4o-mini with whole edit format\n") is None


def test_only_the_last_attempt_of_a_log_counts() -> None:
    text = (
        "--- developer attempt 1 started 2026-11-29T10:00:00+00:00 in /w [none]: aider\n"
        "litellm.AuthenticationError: AuthenticationError: OpenAIException - bad key\n"
        "--- developer attempt 1 ended: exit 0, 3.0 s\n"
        "--- developer attempt 2 started 2026-11-29T10:05:00+00:00 in /w [none]: aider\n"
        "Tokens: 12 sent, 5 received. Cost: $0.0000048 message, $0.0000048 session.\n"
        "--- developer attempt 2 ended: exit 0, 3.0 s\n"
    )
    assert classify_output(text, exit_code=0, now=NOW, kind="aider") is None
    usage = aider_output.usage(text)
    assert usage is not None and usage.input_tokens == 12


@pytest.mark.parametrize(
    "said, seconds",
    [("Please try again in 7s.", 7.0), ("Please try again in 20ms.", 0.02), ("Please try again in 1m30s.", 90.0),
     ("Please try again in 1.898s.", 1.898), ("Please try again in 6m0s.", 360.0), ("try again later", None)],
)
def test_the_wait_openai_names(said: str, seconds: float | None) -> None:
    assert aider_output.retry_after(said) == (pytest.approx(seconds) if seconds is not None else None)
