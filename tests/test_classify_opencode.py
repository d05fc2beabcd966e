"""The OpenCode reader (tasks/agent_outputs/opencode.py) against what the real CLI printed (issue 18).

The fixtures are ``tests/fixtures/opencode/`` (README there), captured from OpenCode 1.18.33
against the fake Anthropic API; read through ``tasks.classify`` as the runner reads a log tail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blocks.agent_profile import DEFAULT_TOOLS, opencode_env, opencode_permission
from tasks.agent_outputs import opencode
from tasks.classify import LOG_TAIL_BYTES, FailureKind, classify_output, read_tail, run_usage

FIXTURES = Path(__file__).parent / "fixtures" / "opencode"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
STEP = 12 * 2e-6 + 5 * 10e-6  # one answer of the fake (12 in, 5 out) at claude-sonnet-5's price


def fixture(name: str) -> tuple[str, int]:
    return (FIXTURES / f"{name}.txt").read_text(), MANIFEST[name]["exit_code"]


def classify(name: str):  # type: ignore[no-untyped-def]
    text, code = fixture(name)
    return classify_output(text, exit_code=code, now=NOW, kind="opencode")


def test_every_fixture_is_in_the_manifest_and_no_capture_reached_another_host() -> None:
    assert {p.stem for p in FIXTURES.glob("*.txt")} == set(MANIFEST)
    for name, entry in MANIFEST.items():
        assert not entry.get("foreign_requests"), name


@pytest.mark.parametrize(
    ("name", "cost", "tokens", "turns"),
    [
        ("200-json", STEP, (12, 5), 1),
        ("profile-200-json", STEP, (12, 5), 1),
        ("429-then-200-json", STEP, (12, 5), 1),
        ("tool-write-json", 2 * STEP, (24, 10), 2),
        # 30 in + 20 cache writes + 100 cache reads, 7 out ($2, $2.50, $0.20, $10 per million)
        ("cache-tokens-json", 30 * 2e-6 + 20 * 2.5e-6 + 100 * 0.2e-6 + 7 * 10e-6, (150, 7), 1),
    ],
)
def test_a_successful_run_reports_its_cost_tokens_turns_and_session(
    name: str, cost: float, tokens: tuple[int, int], turns: int
) -> None:
    text, code = fixture(name)
    assert code == 0
    usage = run_usage(text, "opencode")
    assert usage is not None
    assert usage.cost_usd == pytest.approx(cost, rel=1e-6)
    assert (usage.input_tokens, usage.output_tokens, usage.num_turns) == (*tokens, turns)
    assert usage.session_id and usage.session_id.startswith("ses_")
    assert usage.is_error is False and usage.api_error_status is None
    assert classify_output(text, exit_code=code, now=NOW, kind="opencode") is None


def test_the_default_text_format_reports_nothing() -> None:
    text, code = fixture("200-text")
    assert code == 0 and text.strip().endswith("hi")
    assert run_usage(text, "opencode") is None  # "not reported": the profile uses --format json


@pytest.mark.parametrize(
    ("name", "kind", "reason", "retry_after"),
    [
        ("429-json", FailureKind.transient, "rate_limit", 7.0),
        ("profile-429-json", FailureKind.transient, "rate_limit", 7.0),
        ("529-json", FailureKind.transient, "overloaded", None),
        ("500-json", FailureKind.transient, "server_error", None),
        ("timeout-json", FailureKind.transient, "timeout_api", None),
        ("connection-refused-json", FailureKind.transient, "network", None),
        ("401-json", FailureKind.permanent, "authentication", None),
        ("credit-balance-json", FailureKind.usage_limit, "quota_exhausted", None),
        ("free-usage-limit-json", FailureKind.usage_limit, "quota_exhausted", None),
        ("unknown-model-json", FailureKind.permanent, "exit_code", None),
        # The default format prints the message only (no status, no retry-after): read generically.
        ("429-text", FailureKind.transient, "rate_limit", None),
        ("401-text", FailureKind.permanent, "authentication", None),
    ],
)
def test_failures_are_classified_from_what_opencode_printed(
    name: str, kind: FailureKind, reason: str, retry_after: float | None
) -> None:
    failure = classify(name)
    assert failure is not None
    assert (failure.kind, failure.reason, failure.retry_after_seconds) == (kind, reason, retry_after), failure
    assert failure.message and len(failure.message) <= 300


@pytest.mark.parametrize("name", ["429-json", "401-json", "connection-refused-json", "credit-balance-json"])
def test_a_failed_run_reports_no_cost_or_tokens(name: str) -> None:
    text, _ = fixture(name)
    usage = run_usage(text, "opencode")
    assert usage is not None and usage.is_error is True
    assert (usage.cost_usd, usage.input_tokens, usage.output_tokens, usage.num_turns) == (None, None, None, None)
    assert usage.session_id and usage.session_id.startswith("ses_")
    status = {"429-json": 429, "401-json": 401, "credit-balance-json": 400}.get(name)
    assert usage.api_error_status == status


def test_a_zen_usage_limit_waits_for_its_retry_after() -> None:
    failure = classify("go-usage-limit-json")
    assert failure is not None and (failure.kind, failure.reason) == (FailureKind.usage_limit, "usage_limit")
    printed = datetime.fromtimestamp(1795900000000 / 1000, UTC)
    assert failure.resets_at == printed + timedelta(seconds=12000)


def _event(kind: str, session: str, **fields: object) -> str:
    return json.dumps({"type": kind, "timestamp": 1795900000000, "sessionID": session, **fields})


def _step(session: str, cost: float) -> str:
    tokens = {"total": 17, "input": 12, "output": 5, "reasoning": 0, "cache": {"write": 0, "read": 0}}
    return _event("step_finish", session, part={"type": "step-finish", "tokens": tokens, "cost": cost})


def test_only_the_last_session_of_a_log_counts_and_the_agents_words_never_do() -> None:
    error_text = '{"type":"error","sessionID":"ses_B","error":{"name":"APIError","data":{"statusCode":401}}}'
    text = "\n".join(
        [
            "--- developer attempt 1 started",
            _step("ses_A", 1.0),
            _event("error", "ses_A", error={"name": "APIError", "data": {"message": "x", "statusCode": 500}}),
            _step("ses_B", 0.25),
            _event("text", "ses_B", part={"type": "text", "text": error_text}),
            _step("ses_B", 0.5),
            'ol","cost":9.0}}',  # the cut first line of a tail
            "--- developer attempt 1 ended",
        ]
    )
    usage = opencode.usage(text)
    assert usage is not None and usage.session_id == "ses_B"
    assert (usage.cost_usd, usage.input_tokens, usage.num_turns, usage.is_error) == (0.75, 24, 2, False)
    assert opencode.failure(text, 0, NOW) is None
    assert classify_output(text, exit_code=0, now=NOW, kind="opencode") is None


def test_retry_after_ms_and_http_dates() -> None:
    def with_headers(headers: dict[str, str]) -> str:
        data = {"message": "slow down", "statusCode": 429, "responseHeaders": headers}
        return _event("error", "ses_C", error={"name": "APIError", "data": data})

    def wait(headers: dict[str, str]) -> float | None:
        failure = opencode.failure(with_headers(headers), 1, NOW)
        assert failure is not None and failure.reason == "rate_limit"
        return failure.retry_after_seconds

    assert wait({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert wait({"Retry-After": "30"}) == 30.0
    printed = datetime.fromtimestamp(1795900000000 / 1000, UTC)
    http_date = (printed + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert wait({"retry-after": http_date}) == 90.0
    assert wait({"retry-after": "soon"}) is None
    assert wait({}) is None


def test_no_events_is_left_to_the_generic_classification() -> None:
    assert opencode.usage("Error: Session not found\n") is None
    assert opencode.failure("Error: Session not found\n", 1, NOW) is None
    failure = classify_output("Error: Session not found\n", exit_code=1, now=NOW, kind="opencode")
    assert failure is not None and failure.kind is FailureKind.permanent


def test_each_roles_tools_become_its_agents_permissions() -> None:
    assert opencode_permission(DEFAULT_TOOLS["developer"]) == {"edit": "allow", "bash": "allow"}
    assert opencode_permission(DEFAULT_TOOLS["analyst"]) == {"edit": "allow", "bash": "deny"}
    assert opencode_permission(DEFAULT_TOOLS["reviewer"]) == {
        "edit": "allow",
        "bash": {"*": "deny", "git diff *": "allow", "git log *": "allow"},
    }
    assert opencode_permission(["Read", "Grep"]) == {"edit": "deny", "bash": "deny"}
    config = json.loads(opencode_env({"analyst": ["Read"]})["OPENCODE_CONFIG_CONTENT"])
    assert set(config["agent"]) == {f"sdlc-{role}" for role in DEFAULT_TOOLS}
    assert config["agent"]["sdlc-analyst"]["permission"] == {"edit": "deny", "bash": "deny"}
    assert config["permission"]["webfetch"] == "deny" and config["snapshot"] is False


def test_a_long_runs_cost_is_read_from_the_whole_log(tmp_path: Path) -> None:
    """Forty steps, each after a 10 KB tool output: the 64 KiB tail holds only the last few."""
    output = "x" * 10_000
    lines = ["--- developer attempt 1 started"]
    for _ in range(40):
        lines.append(_event("tool_use", "ses_L", part={"type": "tool", "tool": "read", "state": {"output": output}}))
        lines.append(_step("ses_L", 0.01))
    log = tmp_path / "developer-1.log"
    log.write_text("\n".join(lines) + "\n")
    assert log.stat().st_size > 6 * LOG_TAIL_BYTES
    tail = opencode.usage(read_tail(log))
    assert tail is not None and tail.num_turns is not None and tail.num_turns < 10
    whole = opencode.usage_of_log(log)
    assert whole is not None and whole.num_turns == 40 and whole.input_tokens == 480
    assert whole.cost_usd == pytest.approx(0.4)
    assert opencode.usage_of_log(tmp_path / "missing.log") is None
    # What the runner records: the whole log's figures for opencode, the tail's for the others.
    from tasks.classify import run_usage

    assert run_usage(read_tail(log), "opencode", log) == whole
