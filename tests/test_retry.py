"""Issue 14: one retry module (sdlc/retry.py): a classified failure in, a decision out. Pure, table-driven."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from sdlc.retry import (
    HTTP_BACKOFF_BASE_SECONDS,
    HTTP_MAX_ATTEMPTS,
    USAGE_LIMIT_MARGIN_SECONDS,
    Classification,
    FailureKind,
    HttpRetry,
    RetryPolicy,
    backoff_seconds,
    decide_retry,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
T, P, U = FailureKind.transient, FailureKind.permanent, FailureKind.usage_limit


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "retry_after", "expected"),
    [
        (0, 2.0, 60.0, None, 2.0),
        (1, 2.0, 60.0, None, 4.0),
        (4, 2.0, 60.0, None, 32.0),
        (5, 2.0, 60.0, None, 60.0),  # capped
        (5000, 2.0, 60.0, None, 60.0),  # no overflow
        (0, 2.0, 60.0, 7.0, 7.0),  # the API's wait is longer: it wins
        (3, 2.0, 60.0, 7.0, 16.0),  # the backoff is longer: it wins
        (10, 2.0, 60.0, 120.0, 120.0),  # a named wait above the cap still wins
        (0, 0.5, 30.0, 0.0, 0.5),
    ],
)
def test_backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None, expected: float) -> None:
    assert backoff_seconds(attempt, base=base, cap=cap, retry_after=retry_after) == expected


def test_backoff_rejects_negative_attempts() -> None:
    with pytest.raises(ValueError):
        backoff_seconds(-1, base=1, cap=10)


RESET = NOW + timedelta(minutes=10)
MARGIN = USAGE_LIMIT_MARGIN_SECONDS


@pytest.mark.parametrize(
    ("failure", "retry", "wait", "why"),
    [
        # transient: within the budget, backoff from the policy's base (5 s), capped at 300 s
        (dict(kind=T, transient_failures=1), True, 5, "rate_limit: transient retry 1 of 5"),
        (dict(kind=T, transient_failures=5, permanent_failures=1), True, 80, "transient retry 5 of 5"),
        (dict(kind=T, transient_failures=6), False, 0, "transient budget of 5 retries spent"),
        # a Retry-After longer than the backoff wins; a shorter one does not shorten it
        (dict(kind=T, transient_failures=1, retry_after=42), True, 42, "transient retry 1 of 5"),
        (dict(kind=T, transient_failures=3, retry_after=1), True, 20, "transient retry 3 of 5"),
        # permanent: its own budget, whatever transient failures came first
        (dict(kind=P, transient_failures=5, permanent_failures=1), True, 0, "attempt 1 of 2 failed"),
        (dict(kind=P, permanent_failures=2), False, 0, "2 of 2 attempts failed"),
        # usage limit: wait for the reset (plus a margin), spending neither budget
        (dict(kind=U, transient_failures=5, permanent_failures=1, usage_limit_waits=1, resets_at=RESET),
         True, 600 + MARGIN, "waiting for the usage-limit reset"),
        (dict(kind=U, usage_limit_waits=1, resets_at=NOW - timedelta(minutes=1)), True, MARGIN, "usage-limit reset"),
        (dict(kind=U, usage_limit_waits=1), False, 0, "usage limit without a usable reset time"),
        (dict(kind=U, usage_limit_waits=4, resets_at=RESET), False, 0, "usage limit without a usable reset time"),
    ],
    ids=[
        "transient-first", "transient-last", "transient-spent", "retry-after-wins", "backoff-wins",
        "permanent-separate", "permanent-spent", "usage-reset", "usage-reset-past", "usage-no-reset", "usage-spent",
    ],
)
def test_the_agent_policy(failure: dict[str, Any], retry: bool, wait: float, why: str) -> None:
    decision = decide_retry(Classification(reason="rate_limit", **failure), RetryPolicy(), now=NOW)
    assert (decision.retry, decision.wait_seconds) == (retry, wait)
    assert why in decision.why


def test_the_cap_bounds_the_backoff() -> None:
    policy = RetryPolicy(transient_retries=20, backoff_base_seconds=5, backoff_cap_seconds=300)
    decision = decide_retry(Classification(kind=T, reason="overloaded", transient_failures=20), policy)
    assert decision.retry and decision.wait_seconds == 300


def test_a_usage_limit_needs_the_time_now() -> None:
    with pytest.raises(ValueError):
        decide_retry(Classification(kind=U, reason="usage_limit", usage_limit_waits=1, resets_at=RESET), RetryPolicy())


def test_prefect_retries_cover_every_budget() -> None:
    policy = RetryPolicy(max_attempts=2, transient_retries=5, usage_limit_waits=3)
    assert policy.task_retries == 1 + 5 + 3 + 1  # and one reschedule of a rerun that came early


# -- the HTTP policy (forges, Plane, Telegram) -------------------------------------------


def test_http_defaults() -> None:
    retry = HttpRetry()
    assert (retry.max_attempts, retry.backoff_base_seconds) == (HTTP_MAX_ATTEMPTS, HTTP_BACKOFF_BASE_SECONDS)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "permanent", "retry", "wait"),
    [
        (0, None, False, True, 0.5),
        (2, None, False, True, 2.0),
        (3, None, False, True, 4.0),
        (4, None, False, False, 0.0),  # the fifth request failed: no sixth
        (0, 3.0, False, True, 3.0),  # Retry-After
        (0, 301.0, False, False, 0.0),  # over max_retry_after_seconds
        (0, None, True, False, 0.0),  # a 4xx the API meant
    ],
)
def test_the_http_policy(attempt: int, retry_after: float | None, permanent: bool, retry: bool, wait: float) -> None:
    decision = HttpRetry(max_retry_after_seconds=300).decide(attempt, "502: Bad Gateway", retry_after=retry_after, permanent=permanent)
    assert (decision.retry, decision.wait_seconds) == (retry, wait)
    assert decision.why.startswith("502: Bad Gateway")


def test_a_wait_over_the_cap_says_so() -> None:
    decision = HttpRetry(max_retry_after_seconds=5).decide(0, "HTTP 429: Too Many Requests", retry_after=120)
    assert not decision.retry and "asks to wait 120 s (over max_retry_after_seconds=5)" in decision.why


# -- the agent's errors are named for what they are -------------------------------------------


@pytest.mark.parametrize(
    ("kind", "transient", "permanent"),
    [("transient", True, False), ("permanent", False, True), (None, False, True), ("usage_limit", False, False)],
)
def test_agent_failures_are_named_for_their_kind(kind: str | None, transient: bool, permanent: bool) -> None:
    import pickle

    from sdlc.models import AgentResult
    from sdlc.retry import RetryDecision
    from tasks.agent import AgentRunFailed, agent_failure
    from tasks.failures import PermanentError, TransientError

    result = AgentResult(
        role="developer", attempt=1, exit_code=1, duration_seconds=1.0, log_path="/tmp/x.log",
        started_at=NOW, ended_at=NOW, failure_kind=kind, failure_reason="rate_limit" if kind else None,
    )
    error = agent_failure(result, RetryDecision(retry=True, why="r", wait_seconds=5))
    assert isinstance(error, AgentRunFailed)
    assert (isinstance(error, TransientError), isinstance(error, PermanentError)) == (transient, permanent)
    copy = pickle.loads(pickle.dumps(error))  # Prefect persists the failed state's exception
    assert type(copy) is type(error) and copy.result == result


def test_the_retry_condition_sets_the_delay_prefect_schedules() -> None:
    """Prefect reads ``task.retry_delay_seconds`` right after ``retry_condition_fn`` says yes."""
    from prefect.logging import disable_run_logger
    from prefect.states import Failed

    from sdlc.models import AgentResult
    from sdlc.retry import RetryDecision
    from tasks.agent import _retry_agent_failures, agent_failure, run_agent

    ended = datetime.now(timezone.utc)
    result = AgentResult(
        role="developer", attempt=1, exit_code=1, duration_seconds=1.0, log_path="/tmp/x.log",
        started_at=ended, ended_at=ended, failure_kind="transient", failure_reason="rate_limit",
        retry_not_before=ended + timedelta(seconds=30),
    )
    task = run_agent.with_options(retries=3)
    task_run: Any = type("TaskRun", (), {"id": None, "name": "run-agent-0", "flow_run_id": None})()
    failed = Failed(data=agent_failure(result, RetryDecision(retry=True, why="rate_limit: transient retry 1 of 5", wait_seconds=30)))
    spent = Failed(data=agent_failure(result, RetryDecision(retry=False, why="transient budget of 5 retries spent")))
    with disable_run_logger():
        assert _retry_agent_failures(task, task_run, failed) is True
        assert 28 < task.retry_delay_seconds <= 30  # type: ignore[operator]
        assert _retry_agent_failures(run_agent.with_options(retries=3), task_run, spent) is False


def test_a_rerun_before_the_decided_wait_is_rescheduled_not_slept_through() -> None:
    """After a crash, the stage may run again before its last failure's wait is over: Prefect schedules the rest."""
    from types import SimpleNamespace

    from prefect.logging import disable_run_logger
    from prefect.states import Failed

    from tasks.agent import RetryNotDue, _enter_retry_window, _retry_agent_failures, run_agent

    not_before = datetime.now(timezone.utc) + timedelta(seconds=20)
    earlier = [SimpleNamespace(retry_not_before=not_before, failure_kind="transient", failure_reason="rate_limit")]
    states: list[str] = []
    ledger: Any = SimpleNamespace(set_state=lambda work_item, state, reason: states.append(state.value))
    invocation: Any = SimpleNamespace(work_item="ET-1", role="developer")
    with pytest.raises(RetryNotDue) as early:
        _enter_retry_window(earlier, ledger, invocation)
    task = run_agent.with_options(retries=3)
    task_run: Any = SimpleNamespace(id=None, name="run-agent-0", flow_run_id=None)
    with disable_run_logger():
        assert _retry_agent_failures(task, task_run, Failed(data=early.value)) is True
    assert 18 < task.retry_delay_seconds <= 20  # type: ignore[operator]
    # Once the wait is over the run goes ahead; after a usage-limit wait the work item says it runs again.
    earlier[0].retry_not_before = datetime.now(timezone.utc) - timedelta(seconds=1)
    earlier[0].failure_kind = "usage_limit"
    _enter_retry_window(earlier, ledger, invocation)
    assert states == ["running"]


def test_the_core_and_the_blocks_import_no_tasks() -> None:
    """Configuration does no work: blocks/ and sdlc/ import nothing from tasks/, flows/ or entrypoints/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("sdlc/*.py"), *root.glob("blocks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {name}" for name in names if name.split(".")[0] in ("tasks", "flows", "entrypoints")]
    assert offenders == []
