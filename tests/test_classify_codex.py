"""The Codex CLI's output read by tasks/agent_outputs/codex.py, against what the real CLI printed
(tests/fixtures/codex/, captured by its capture.py from Codex 0.169.0 against the fake Responses API)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.agent_outputs import codex
from tasks.classify import FailureKind, classify_output, run_usage

FIXTURES = Path(__file__).parent / "fixtures" / "codex"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
CAPTURED_AT = datetime.fromisoformat(MANIFEST["captured_at"])

# fixture: (failure kind, reason) or None for a success
EXPECTED: dict[str, tuple[FailureKind, str] | None] = {
    "200": None,
    "200-tool-call": None,
    "unknown-model": None,  # its "Model metadata ... not found" warning is an item, not a failed turn
    "profile-200": None,
    "in-sdlc-bwrap-danger-full-access": None,
    "in-sdlc-bwrap-workspace-write": None,  # exit 0 although its command never ran: see below
    "429": (FailureKind.transient, "rate_limit"),
    "429-own-retry": (FailureKind.transient, "rate_limit"),
    "profile-429": (FailureKind.transient, "rate_limit"),
    "429-insufficient-quota": (FailureKind.usage_limit, "quota_exhausted"),
    "500": (FailureKind.transient, "server_error"),
    "502": (FailureKind.transient, "server_error"),
    "503": (FailureKind.transient, "server_error"),
    "503-overloaded": (FailureKind.transient, "overloaded"),
    "401": (FailureKind.permanent, "authentication"),
    "403": (FailureKind.permanent, "authentication"),
    "404-model-not-found": (FailureKind.permanent, "exit_code"),
    "usage-limit-today": (FailureKind.usage_limit, "usage_limit"),
    "usage-limit-date": (FailureKind.usage_limit, "usage_limit"),
    "usage-limit-team": (FailureKind.usage_limit, "usage_limit"),
    "usage-limit-no-reset": (FailureKind.usage_limit, "usage_limit"),
    "connection-refused": (FailureKind.transient, "network"),
}


@pytest.fixture
def utc_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fixtures were captured with TZ=UTC: Codex prints a usage limit's reset in local time."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fixture(name: str) -> tuple[str, dict[str, Any]]:
    return (FIXTURES / f"{name}.txt").read_text(), MANIFEST["fixtures"][name]


def test_every_captured_fixture_is_expected() -> None:
    assert set(MANIFEST["fixtures"]) == set(EXPECTED) | {"connection-refused-waiting"}
    assert all(not entry["foreign_requests"] for entry in MANIFEST["fixtures"].values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_classified(name: str, utc_local_time: None) -> None:
    text, entry = fixture(name)
    failure = classify_output(text, exit_code=entry["exit_code"], now=CAPTURED_AT, kind="codex")
    expected = EXPECTED[name]
    if expected is None:
        assert entry["exit_code"] == 0 and failure is None, failure
        return
    assert entry["exit_code"] == 1
    assert failure is not None and (failure.kind, failure.reason) == expected, failure
    assert failure.retry_after_seconds is None  # Codex never prints a wait (it honours retry-after silently)
    sent = ((entry["fake_answer"] or {}).get("error_fields") or {}).get("resets_at")
    if sent is None:
        assert failure.resets_at is None
    else:  # printed to the minute, read as the end of that minute: never sooner than the real reset
        reset = datetime.fromtimestamp(math.floor(sent / 60) * 60 + 60, UTC)
        assert failure.resets_at == reset and failure.resets_at >= datetime.fromtimestamp(sent, UTC)


def test_codexs_own_sandbox_cannot_start_inside_sdlcs() -> None:
    """Why the profile runs Codex with danger-full-access under sdlc's bwrap: with workspace-write every
    command (and apply_patch) fails, bubblewrap in bubblewrap, and the run still exits 0."""
    own = MANIFEST["fixtures"]["in-sdlc-bwrap-workspace-write"]
    assert own["sandbox"].startswith("bwrap") and own["exit_code"] == 0 and own["files"] == []
    assert "bwrap: setting up uid map: Operation not permitted" in own["tool_output"]
    full = MANIFEST["fixtures"]["in-sdlc-bwrap-danger-full-access"]
    assert full["sandbox"].startswith("bwrap") and full["exit_code"] == 0 and full["files"] == ["inside.txt"]


def test_usage_is_codexs_turn_usage_and_no_cost() -> None:
    text, _ = fixture("200-tool-call")  # two model requests, 12 in / 5 out each: one turn
    usage = run_usage(text, "codex")
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (24, 10, None)
    assert usage.session_id is not None and usage.session_id in text and usage.is_error is False


def test_a_failed_turn_reports_no_tokens_never_zero() -> None:
    text, _ = fixture("429")
    usage = run_usage(text, "codex")
    assert usage is not None and usage.is_error is True and usage.api_error_status == 429
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (None, None, None)


def test_a_start_up_error_is_left_to_the_generic_classification() -> None:
    text = 'Error loading config.toml: invalid type: string "fake", expected a boolean\n'
    assert codex.usage(text) is None and codex.failure(text, 1, CAPTURED_AT) is None
    failure = classify_output(text, exit_code=1, now=CAPTURED_AT, kind="codex")
    assert failure is not None and (failure.kind, failure.reason) == (FailureKind.permanent, "exit_code")


def test_waiting_for_the_network_ends_at_the_agents_timeout() -> None:
    """Without the profile's --disable unbounded_connection_retries Codex never gives up by itself."""
    text, entry = fixture("connection-refused-waiting")
    assert entry["exit_code"] is None and "Reconnecting... waiting for network" in text
    failure = classify_output(text, exit_code=None, timed_out=True, kind="codex")
    assert failure is not None and (failure.kind, failure.reason) == (FailureKind.permanent, "agent_timeout")


def test_only_the_last_run_in_a_log_counts() -> None:
    failed, _ = fixture("429")
    succeeded, _ = fixture("200")
    assert codex.failure(failed + succeeded, 0, CAPTURED_AT) is None
    usage = codex.usage(failed + succeeded)
    assert usage is not None and (usage.input_tokens, usage.is_error) == (12, False)


@pytest.mark.parametrize(
    "said, now, expected",
    [
        ("try again at 11:59 PM.", "2026-11-29T23:30:00", "2026-11-30T00:00:00"),
        ("try again at 12:05 AM.", "2026-11-29T23:30:00", "2026-11-30T00:06:00"),
        ("try again at 9:00 AM.", "2026-11-29T09:00:30", "2026-11-29T09:01:00"),
        ("try again at Jan 3rd, 2028 1:12 AM.", "2026-11-29T09:00:00", "2028-01-03T01:13:00"),
        ("try again later.", "2026-11-29T09:00:00", None),
    ],
)
def test_reset_times(said: str, now: str, expected: str | None, utc_local_time: None) -> None:
    text = json.dumps({"type": "turn.failed", "error": {"message": f"You’ve hit your usage limit. Or {said}"}})
    failure = codex.failure(text, 1, datetime.fromisoformat(now).replace(tzinfo=UTC))
    assert failure is not None and failure.kind is FailureKind.usage_limit
    assert failure.resets_at == (datetime.fromisoformat(expected).replace(tzinfo=UTC) if expected else None)
