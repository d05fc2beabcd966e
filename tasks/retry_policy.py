"""Retry decisions for failed agent runs (B31): pure functions, no Prefect.

Transient and permanent failures spend separate budgets: a storm of rate limits
does not use up the attempts a real failure gets, and the other way round. A
usage limit with a reset time waits for the reset and spends neither.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

USAGE_LIMIT_MARGIN_SECONDS = 30.0
MAX_USAGE_LIMIT_WAITS = 3


class RetryPolicy(BaseModel):
    max_attempts: int = Field(default=2, ge=1, description="Runs while failures are permanent.")
    transient_retries: int = Field(default=5, ge=0, description="Retries after transient failures.")
    backoff_base_seconds: float = Field(default=5, gt=0)
    backoff_cap_seconds: float = Field(default=300, gt=0)

    @property
    def task_retries(self) -> int:
        """Upper bound for Prefect's `retries`; the decision below enforces each budget."""
        return self.max_attempts - 1 + self.transient_retries + MAX_USAGE_LIMIT_WAITS


class RetryDecision(BaseModel):
    retry: bool
    why: str
    wait_seconds: float = 0.0


def backoff_seconds(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """min(2^attempt x base, cap), never sooner than a Retry-After the API named."""
    wait = min((2**attempt) * base, cap)
    return max(wait, retry_after or 0.0)


def decide_retry(
    *,
    kind: str,
    reason: str,
    transient_failures: int,
    permanent_failures: int,
    usage_limit_waits: int,
    policy: RetryPolicy,
    retry_after: float | None = None,
    resets_at: datetime | None = None,
    now: datetime,
    usage_limit_margin_seconds: float = USAGE_LIMIT_MARGIN_SECONDS,
) -> RetryDecision:
    """Whether to run the agent again after a failure, and how long to wait first.

    The counts include the failure being decided on.
    """
    if kind == "transient":
        if transient_failures > policy.transient_retries:
            return RetryDecision(retry=False, why=f"{reason}: transient budget of {policy.transient_retries} retries spent")
        wait = backoff_seconds(
            transient_failures - 1,
            base=policy.backoff_base_seconds,
            cap=policy.backoff_cap_seconds,
            retry_after=retry_after,
        )
        return RetryDecision(
            retry=True,
            why=f"{reason}: transient retry {transient_failures} of {policy.transient_retries}",
            wait_seconds=wait,
        )
    if kind == "usage_limit":
        if resets_at is None or usage_limit_waits > MAX_USAGE_LIMIT_WAITS:
            return RetryDecision(retry=False, why=f"{reason}: usage limit without a usable reset time")
        wait = max(0.0, (resets_at - now).total_seconds()) + usage_limit_margin_seconds
        return RetryDecision(retry=True, why=f"{reason}: waiting for the usage-limit reset at {resets_at.isoformat()}", wait_seconds=wait)
    if permanent_failures >= policy.max_attempts:
        return RetryDecision(retry=False, why=f"{reason}: {permanent_failures} of {policy.max_attempts} attempts failed")
    return RetryDecision(retry=True, why=f"{reason}: attempt {permanent_failures} of {policy.max_attempts} failed")


def not_before(ended_at: datetime, wait_seconds: float) -> datetime:
    return ended_at + timedelta(seconds=wait_seconds)
