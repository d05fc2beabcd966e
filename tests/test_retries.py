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
from sdlc.retry import backoff_seconds
from tasks.breaker import BreakerState, after_success, after_transient

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [(0, None, 5), (1, None, 10), (3, None, 40), (10, None, 300), (0, 7, 7), (3, 7, 40), (10, 900, 900)],
)
def test_backoff_is_capped_and_never_sooner_than_retry_after(attempt: int, retry_after: float | None, expected: float) -> None:
    """The agent's defaults (base 5 s, cap 300 s); the decision table is tests/test_retry.py's."""
    assert backoff_seconds(attempt, base=5, cap=300, retry_after=retry_after) == expected


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
    # Prefect scheduled the wait (issue 14): the task run went to AwaitingRetry until the Retry-After,
    # it did not sleep through it while Running.
    awaiting = [s for s in run_agent_states(first.flow_run_id) if s.name == "AwaitingRetry"]
    assert len(awaiting) == 1, awaiting
    scheduled = awaiting[0].state_details.scheduled_time
    assert scheduled is not None and scheduled >= first.ended_at + timedelta(seconds=3)
    assert second.started_at >= scheduled


@pytest.mark.usefixtures("prefect_api", "data_dir")
def test_a_usage_limit_without_a_deployment_is_a_task_retry_scheduled_for_the_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: nothing can reschedule a pipeline without a deployment, so Prefect schedules the
    agent task's retry for the reset (AwaitingRetry) and no task body sleeps through it; no budget is spent."""
    import time

    from flows.pipeline import sdlc_pipeline

    monkeypatch.setenv("SDLC_USAGE_LIMIT_MARGIN_SECONDS", "0")
    reset = int(time.time()) + 4
    agent = tmp_path / "limited_agent.py"
    agent.write_text(
        "import os, sys\n"
        "if os.environ['SDLC_ATTEMPT'] == '1':\n"
        f"    print('Claude AI usage limit reached|{reset}')\n"
        "    sys.exit(1)\n"
    )
    request = WorkItemRequest(
        work_item="ET-9", title="Wait for the reset", repo=str(create_sample_repo(tmp_path / "repos")), auto_approve=True,
        agent=AgentSpec(kind="custom", command=[sys.executable, str(agent)], max_attempts=1, transient_retries=0),
    )
    sdlc_pipeline(request=request, return_state=True)  # the analyst writes nothing: its gate stops the run later
    first, second = runs_of("analyst")[:2]
    assert (first.failure_kind, second.failure_kind, second.exit_code) == ("usage_limit", None, 0)
    reset_at = datetime.fromtimestamp(reset, timezone.utc)
    # Not before the reset; on a loaded machine the agent may only end after it, and then at once.
    assert first.retry_not_before == max(reset_at, first.ended_at) and second.started_at >= reset_at
    # The server records task run states from events, a moment after they happen: wait for it.
    awaiting_states = wait_for(
        lambda: [s for s in run_agent_states(first.flow_run_id) if s.name == "AwaitingRetry"], "an AwaitingRetry state"
    )
    (awaiting,) = awaiting_states
    assert awaiting.state_details.scheduled_time >= reset_at


def wait_for(found: Any, what: str, timeout: float = 30) -> Any:
    """``found()`` once it is truthy; fails after ``timeout`` seconds naming ``what``."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)
    return value


def run_agent_states(flow_run_id: str | None) -> list[Any]:
    """Every state the stage flow run's run-agent task run went through, oldest first."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="run-agent")),
        )
        return sorted(client.read_task_run_states(task_run.id), key=lambda state: state.timestamp)


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


@pytest.mark.usefixtures("prefect_api", "data_dir")
def test_the_installation_sets_the_budgets_a_run_leaves_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.ledger import Ledger

    monkeypatch.setenv("SDLC_AGENT_TRANSIENT_RETRIES", "1")
    monkeypatch.setenv("SDLC_AGENT_BACKOFF_BASE_SECONDS", "0.05")
    monkeypatch.setenv("SDLC_BREAKER_THRESHOLD", "10")
    state = run_pipeline(tmp_path, {"architect": {"rate_limit_times": 9}})
    assert state.is_failed()
    assert len(runs_of("architect")) == 2  # the first run and one retry
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
    # A cool-down long enough for `sdlc status` to start and answer on a loaded machine (4 s was not).
    breaker = CircuitBreaker("scripted", scope=scope, threshold=3, cooldown_seconds=12)
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
         "--title", "Behind the breaker", "--agent", "scripted", "--auto-approve"],
        env=cli_env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    first = Ledger.from_settings().agent_runs("ET-10")[0]
    assert first.started_at >= state.open_until
    # One success closed it, for every process.
    assert breaker.read() == BreakerState()
    assert get_settings().breaker_scope == scope
