"""Retries with separate budgets, Retry-After and the shared circuit breaker (B31, B32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sdlc.models import AgentSpec, WorkItemRequest
from demo.sample import create_sample_repo
from tasks.breaker import BreakerState, after_success, after_transient
from tasks.retry_policy import RetryPolicy, backoff_seconds, decide_retry

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [(0, None, 5), (1, None, 10), (3, None, 40), (10, None, 300), (0, 7, 7), (3, 7, 40), (10, 900, 900)],
)
def test_backoff_is_capped_and_never_sooner_than_retry_after(attempt: int, retry_after: float | None, expected: float) -> None:
    assert backoff_seconds(attempt, base=5, cap=300, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("kind", "transient", "permanent", "retry", "why"),
    [
        ("transient", 1, 0, True, "transient retry 1 of 5"),
        ("transient", 5, 1, True, "transient retry 5 of 5"),
        ("transient", 6, 0, False, "transient budget of 5 retries spent"),
        ("permanent", 5, 1, True, "attempt 1 of 2 failed"),  # transient failures did not spend it
        ("permanent", 0, 2, False, "2 of 2 attempts failed"),
    ],
)
def test_budgets_are_separate(kind: str, transient: int, permanent: int, retry: bool, why: str) -> None:
    decision = decide_retry(
        kind=kind, reason="r", transient_failures=transient, permanent_failures=permanent,
        usage_limit_waits=0, policy=RetryPolicy(), now=NOW,
    )
    assert decision.retry is retry and why in decision.why


def test_usage_limit_waits_for_the_reset_without_spending_budgets() -> None:
    decision = decide_retry(
        kind="usage_limit", reason="usage_limit", transient_failures=5, permanent_failures=1,
        usage_limit_waits=1, policy=RetryPolicy(), resets_at=NOW + timedelta(minutes=10), now=NOW,
    )
    assert decision.retry and decision.wait_seconds == 600 + 30


def test_breaker_opens_after_threshold_and_one_success_closes_it() -> None:
    state = BreakerState()
    for _ in range(2):
        state = after_transient(state, now=NOW, threshold=3, cooldown_seconds=60)
        assert not state.is_open(NOW)
    state = after_transient(state, now=NOW, threshold=3, cooldown_seconds=60)
    assert state.is_open(NOW) and state.is_open(NOW + timedelta(seconds=59))
    assert not state.is_open(NOW + timedelta(seconds=60))
    assert after_success(state) == BreakerState()


# --- through the pipeline -----------------------------------------------------


def run_pipeline(tmp_path: Path, scenario: dict[str, Any], **agent: Any) -> Any:
    from flows.pipeline import sdlc_pipeline

    origin = create_sample_repo(tmp_path / "repos")
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    request = WorkItemRequest(
        work_item="ET-9", title="Retry me", repo=str(origin), auto_approve=True,
        agent=AgentSpec(kind="scripted", scenario_file=str(scenario_file), **agent),
    )
    return sdlc_pipeline(request=request, return_state=True)


def runs_of(role: str) -> list[Any]:
    from tasks.ledger import Ledger

    return [run for run in Ledger.from_settings().agent_runs("ET-9") if run.role == role]


@pytest.mark.usefixtures("prefect_api", "data_dir")
def test_retry_after_is_honoured_before_the_next_attempt(tmp_path: Path) -> None:
    state = run_pipeline(
        tmp_path, {"developer": {"rate_limit_times": 1, "retry_after_seconds": 3}}, backoff_base_seconds=0.1
    )
    assert state.is_completed(), state.message
    first, second = runs_of("developer")
    assert (first.failure_kind, first.failure_reason, first.retry_after_seconds) == ("transient", "rate_limit", 3)
    assert second.exit_code == 0
    assert (second.started_at - first.ended_at).total_seconds() >= 3


@pytest.mark.usefixtures("prefect_api", "data_dir")
def test_transient_failures_do_not_spend_the_permanent_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three transient failures in a row would open the provider's breaker (its own test is below).
    monkeypatch.setenv("SDLC_BREAKER_THRESHOLD", "10")
    state = run_pipeline(
        tmp_path, {"architect": {"rate_limit_times": 3}}, max_attempts=1, backoff_base_seconds=0.05
    )
    assert state.is_completed(), state.message
    assert [r.failure_kind for r in runs_of("architect")] == ["transient", "transient", "transient", None]


@pytest.mark.usefixtures("prefect_api", "data_dir")
def test_the_transient_budget_ends_in_blocked(tmp_path: Path) -> None:
    from tasks.ledger import Ledger

    state = run_pipeline(
        tmp_path, {"architect": {"rate_limit_times": 9}}, transient_retries=2, backoff_base_seconds=0.05
    )
    assert state.is_failed()
    assert len(runs_of("architect")) == 3
    row = Ledger.from_settings().get_work_item("ET-9")
    assert row.state == "blocked" and "transient: rate_limit" in row.reason


def test_an_open_breaker_holds_another_process_until_the_cooldown(
    tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdlc.settings import get_settings
    from tasks.breaker import CircuitBreaker
    from tasks.ledger import Ledger

    # This process sees three transient failures of the scripted provider in a row...
    scope = os.environ["SDLC_BREAKER_SCOPE"]
    breaker = CircuitBreaker("scripted", scope=scope, threshold=3, cooldown_seconds=4)
    for _ in range(3):
        state = breaker.record_transient()
    assert state.open_until is not None
    # ...so a pipeline in another process waits for the cool-down before its first agent.
    origin = create_sample_repo(tmp_path / "repos")
    status_line = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "status"], env=cli_env, capture_output=True, text=True
    ).stdout
    assert "breaker scripted: open until" in status_line
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", "ET-10",
         "--title", "Behind the breaker", "--auto-approve"],
        env=cli_env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    first = Ledger.from_settings().agent_runs("ET-10")[0]
    assert first.started_at >= state.open_until
    # One success closed it, for every process.
    assert breaker.read() == BreakerState()
    assert get_settings().breaker_scope == scope
