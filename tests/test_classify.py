"""B30/B31: classify failed agent runs from the tail of their log (the backoff is tests/test_retry.py's).

Table-driven over every fixture in tests/fixtures/claude (captured from the real CLI by
capture.py, plus the hand-written forms the contract documents), then synthetic cases.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tasks.classify import (
    LOG_TAIL_BYTES,
    Failure,
    FailureKind,
    RunUsage,
    classify_log_tail,
    classify_output,
    parse_result_json,
    read_tail,
)

FIXTURES = Path(__file__).parent / "fixtures" / "claude"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
T, P, U = FailureKind.transient, FailureKind.permanent, FailureKind.usage_limit

# fixture: (kind, reason, resets_at) for NOW; None = success
EXPECTED: dict[str, tuple[FailureKind, str, datetime | None] | None] = {
    "200-text": None,
    "200-json": None,
    "profile-200-json": None,
    "429-text": (T, "rate_limit", None),
    "429-json": (T, "rate_limit", None),
    "profile-429-json": (T, "rate_limit", None),
    "529-text": (T, "overloaded", None),
    "529-json": (T, "overloaded", None),
    "repeated-529-text": (T, "overloaded", None),
    "repeated-529-json": (T, "overloaded", None),
    "529-real-api-text": (T, "overloaded", None),
    "500-text": (T, "server_error", None),
    "500-json": (T, "server_error", None),
    "timeout-text": (T, "timeout_api", None),
    "timeout-json": (T, "timeout_api", None),
    "request-timed-out-text": (T, "timeout_api", None),
    "connection-refused-text": (T, "network", None),
    "connection-refused-json": (T, "network", None),
    "unable-to-connect-text": (T, "network", None),
    "temporarily-limiting-text": (T, "rate_limit", None),
    "401-text": (P, "authentication", None),
    "401-json": (P, "authentication", None),
    "root-skip-permissions-text": (P, "exit_code", None),
    "root-skip-permissions-json": (P, "exit_code", None),
    "session-limit-text": (U, "usage_limit", datetime(2026, 11, 25, 2, 7, tzinfo=timezone.utc)),
    "session-limit-json": (U, "usage_limit", datetime(2026, 11, 25, 2, 7, tzinfo=timezone.utc)),
    "weekly-limit-text": (U, "usage_limit", datetime(2027, 10, 9, 17, 0, tzinfo=timezone.utc)),
    "usage-limit-reached-text": (U, "usage_limit", datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)),
}


def runner_log(body: str, exit_code: int) -> str:
    """The fixture as tasks.agent.execute_agent frames it in a log file."""
    return (
        "--- developer attempt 1 started 2026-11-24T09:00:00+00:00 in /tmp/wt: claude -p 'You are the "
        "developer ... rate limit 429 ...' --output-format json\n"
        f"{body}"
        f"--- developer attempt 1 ended: exit {exit_code}, 529.0 s\n"
    )


def test_every_fixture_file_is_in_the_table_and_the_manifest() -> None:
    files = {path.stem for path in FIXTURES.glob("*.txt")}
    assert files == set(EXPECTED) == set(MANIFEST["fixtures"])


@pytest.mark.parametrize("framed", [False, True], ids=["bare", "framed"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str, framed: bool, tmp_path: Path) -> None:
    exit_code = MANIFEST["fixtures"][name]["exit_code"]
    text = (FIXTURES / f"{name}.txt").read_text()
    log = tmp_path / "run.log"
    log.write_text(runner_log(text, exit_code) if framed else text)
    failure = classify_log_tail(log, exit_code=exit_code, now=NOW)
    expected = EXPECTED[name]
    if expected is None:
        assert exit_code == 0 and failure is None
        return
    assert failure is not None
    assert (failure.kind, failure.reason, failure.resets_at) == expected
    # The CLI does not print the server's retry-after (captured with `retry-after: 7`).
    assert failure.retry_after_seconds is None
    assert 0 < len(failure.message) <= 300
    if failure.resets_at is not None:
        assert failure.resets_at.tzinfo is not None and failure.resets_at > NOW


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.endswith("-json") and "root" not in n))
def test_json_fixtures_give_a_result(name: str) -> None:
    usage = parse_result_json((FIXTURES / f"{name}.txt").read_text())
    assert usage is not None and usage.session_id and usage.num_turns == 1
    assert usage.is_error is (EXPECTED[name] is not None)


def test_success_result_figures() -> None:
    usage = parse_result_json((FIXTURES / "200-json.txt").read_text())
    assert usage == RunUsage(cost_usd=usage.cost_usd, input_tokens=12, output_tokens=5, num_turns=1,
                             session_id=usage.session_id, is_error=False, api_error_status=None)
    assert usage.cost_usd and usage.cost_usd > 0
    assert parse_result_json((FIXTURES / "429-json.txt").read_text()).api_error_status == 429  # type: ignore[union-attr]


# -- parse_result_json --------------------------------------------------------------------

RESULT = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3, "session_id": "s-1",
          "total_cost_usd": 0.25, "api_error_status": None,
          "usage": {"input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3000,
                    "output_tokens": 42}}


@pytest.mark.parametrize(
    "text, expected",
    [
        (json.dumps(RESULT), RunUsage(cost_usd=0.25, input_tokens=3210, output_tokens=42, num_turns=3,
                                      session_id="s-1", is_error=False)),
        # stream-json: other lines around it; the last result wins
        ('{"type":"system","subtype":"init"}\n' + json.dumps({**RESULT, "session_id": "old"}) + "\nnoise\n"
         + json.dumps(RESULT) + "\n--- developer attempt 1 ended: exit 0, 1.0 s\n",
         RunUsage(cost_usd=0.25, input_tokens=3210, output_tokens=42, num_turns=3, session_id="s-1",
                  is_error=False)),
        ("prefix " + json.dumps({**RESULT, "usage": {}}) + " suffix",
         RunUsage(cost_usd=0.25, num_turns=3, session_id="s-1", is_error=False)),
        ('{"type":"assistant","message":{}}\n', None),
        ('{"type": "result", "is_error": tru', None),
        ("plain text answer\n", None),
        ("", None),
    ],
    ids=["whole", "stream-json", "prefix-suffix", "no-result", "cut", "text", "empty"],
)
def test_parse_result_json(text: str, expected: RunUsage | None) -> None:
    assert parse_result_json(text) == expected


# -- classify_output, synthetic -----------------------------------------------------------

def result_line(**fields: object) -> str:
    return json.dumps({**RESULT, **fields}) + "\n"


@pytest.mark.parametrize(
    "text, exit_code, kind, reason, retry_after",
    [
        # exit 0 is not enough: the JSON result's is_error decides
        (result_line(is_error=True, api_error_status=429, result="API Error: Request rejected (429)"), 0,
         T, "rate_limit", None),
        (result_line(is_error=True, api_error_status=529, result="x"), 0, T, "overloaded", None),
        (result_line(is_error=True, api_error_status=503, result="x"), 0, T, "server_error", None),
        (result_line(is_error=True, api_error_status=403, result="x"), 0, P, "authentication", None),
        (result_line(is_error=True, api_error_status=None, result="Request timed out"), 0, T, "timeout_api", None),
        (result_line(is_error=True, api_error_status=None, result="Reached maximum budget"), 0, P, "is_error", None),
        (result_line(is_error=True, api_error_status=429, result="rejected, retry-after: 12"), 1,
         T, "rate_limit", 12.0),
        (result_line(is_error=False), 0, None, None, None),
        ("all done\n", 0, None, None, None),
        # generic forms, non-zero exit
        ('Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"slow"}}\n', 1,
         T, "rate_limit", None),
        ("HTTP/1.1 429 Too Many Requests\nretry-after: 7\n", 1, T, "rate_limit", 7.0),
        ("rate limited\nRetry-After: 7\n", 1, T, "rate_limit", 7.0),
        ('{"error": {"type": "rate_limit_error", "retry_after": 7}}\n', 1, T, "rate_limit", 7.0),
        ("Rate limit hit, retry in 7s\n", 1, T, "rate_limit", 7.0),
        ("Error: 529 overloaded\n", 1, T, "overloaded", None),
        ('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n', 1, T, "overloaded", None),
        ('Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal server error"}}\n', 1,
         T, "server_error", None),
        ("API Error: 502 Bad Gateway\n", 1, T, "server_error", None),
        ("status: 503\n", 1, T, "server_error", None),
        ("connect ECONNREFUSED 127.0.0.1:443\n", 1, T, "network", None),
        ("Error: getaddrinfo ENOTFOUND api.anthropic.com\n", 1, T, "network", None),
        ("Unable to connect to API\n", 1, T, "network", None),
        ("Error: connect ETIMEDOUT 1.2.3.4:443\n", 1, T, "timeout_api", None),
        ('Error: 401 {"type":"error","error":{"type":"authentication_error"}}\n', 1, P, "authentication", None),
        ("OAuth token has expired. Please run /login\n", 1, P, "authentication", None),
        ("Traceback (most recent call last):\nKeyError: 'x'\n", 1, P, "exit_code", None),
        ("", 2, P, "exit_code", None),
        ("", None, P, "exit_code", None),
        # numbers that only look like statuses do not decide
        ("wrote 429.5 KB in 529 ms\n", 1, P, "exit_code", None),
        # usage limit in the text beats the 429 status
        (result_line(is_error=True, api_error_status=429, result="You've hit your Opus limit · resets 10am (UTC)"),
         1, U, "usage_limit", None),
    ],
)
def test_classify_output(text: str, exit_code: int | None, kind: FailureKind | None, reason: str | None,
                         retry_after: float | None) -> None:
    failure = classify_output(text, exit_code=exit_code, now=NOW)
    if kind is None:
        assert failure is None
        return
    assert failure is not None
    assert (failure.kind, failure.reason, failure.retry_after_seconds) == (kind, reason, retry_after)
    assert len(failure.message) <= 300


def test_timeout_is_permanent_whatever_the_text() -> None:
    failure = classify_output("API Error: Request rejected (429)\n", exit_code=None, timed_out=True, now=NOW)
    assert failure == Failure(kind=P, reason="agent_timeout", message=failure.message)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line, now, resets_at",
    [
        ("You've hit your session limit · resets 2:07am (UTC)", NOW, datetime(2026, 11, 25, 2, 7, tzinfo=timezone.utc)),
        ("You've hit your session limit · resets 2:07am (UTC)", NOW.replace(hour=1),
         datetime(2026, 11, 24, 2, 7, tzinfo=timezone.utc)),
        ("You've hit your session limit · resets 9am (UTC)", NOW, datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)),
        ("Usage limit reached, resets at 14:30 (UTC+02:00)", NOW, datetime(2026, 11, 24, 12, 30, tzinfo=timezone.utc)),
        ("limit reached · resets 12am (UTC-05:00)", NOW, datetime(2026, 11, 25, 5, 0, tzinfo=timezone.utc)),
        ("You've hit your session limit · resets 3pm (Europe/Berlin)", NOW,
         datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)),
        ("You've hit your session limit · resets 3pm (Mars/Olympus)", NOW,
         datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)),
        ("You've hit your session limit · resets 3pm", NOW, datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)),
        ("Claude AI usage limit reached|1795600000", NOW, datetime.fromtimestamp(1795600000, timezone.utc)),
        ("You've hit your session limit · resets soon", NOW, None),
    ],
)
def test_usage_limit_reset_times(line: str, now: datetime, resets_at: datetime | None) -> None:
    failure = classify_output(line + "\n", exit_code=1, now=now)
    assert failure is not None and failure.kind is U and failure.reason == "usage_limit"
    assert failure.resets_at == resets_at
    assert failure.resets_at is None or failure.resets_at.utcoffset() is not None


# -- tails of big logs -------------------------------------------------------------------

def test_one_mib_log_with_the_error_at_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with open(log, "w") as handle:
        line = "working on it: reading files, running tests, all fine\n"
        handle.write(line * (1024 * 1024 // len(line) + 1))
        handle.write("API Error: 529 Overloaded. This is a server-side issue\n")
    assert log.stat().st_size > 1024 * 1024
    failure = classify_log_tail(log, exit_code=1, now=NOW)
    assert failure is not None and (failure.kind, failure.reason) == (T, "overloaded")


def test_early_rate_limit_then_auth_error_at_the_end_is_permanent(tmp_path: Path) -> None:
    log = tmp_path / "mixed.log"
    log.write_text(
        "API Error: Request rejected (429) · rate_limit_error retry-after: 7\n"
        + "progress line\n" * 2000
        + "Invalid API key · Fix external API key\n"
    )
    failure = classify_log_tail(log, exit_code=1, now=NOW)
    assert failure is not None and (failure.kind, failure.reason) == (P, "authentication")
    assert failure.retry_after_seconds is None


def test_error_beyond_the_tail_is_not_seen(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    log.write_text("API Error: Request rejected (429)\n" + ("x" * 80 + "\n") * (LOG_TAIL_BYTES // 80))
    failure = classify_log_tail(log, exit_code=1, now=NOW)
    assert failure is not None and failure.reason == "exit_code"


def test_read_tail(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_bytes(b"first line\n" + b"a" * 100 + b"\nlast \xc3\xa9 line\n")
    assert read_tail(log) == log.read_text()
    assert read_tail(log, max_bytes=20) == "last é line\n"  # the partial line is dropped
    assert read_tail(tmp_path / "missing.log") == ""
    assert len(read_tail(log, max_bytes=5).encode()) <= 5


def test_reset_time_is_relative_to_now() -> None:
    text = "You've hit your session limit · resets 2:07am (UTC)\n"
    later = NOW + timedelta(days=30)
    failure = classify_output(text, exit_code=1, now=later)
    assert failure is not None and failure.resets_at == datetime(2026, 12, 25, 2, 7, tzinfo=timezone.utc)
