"""When to try again, for everything sdlc-flows retries (B31, B42, B52). Pure: no Prefect, no I/O.

A classified failure goes in, a decision comes out::

    Classification(kind, reason, retry_after, resets_at, counts)
        -- decide_retry(policy, now) -->  RetryDecision(retry, wait_seconds, why)

The agent task, the forge and Plane clients and the Telegram notifier all decide with
:func:`decide_retry` and wait :func:`backoff_seconds`; only their policies differ:

* :class:`RetryPolicy` (the agent): separate budgets for transient and permanent
  failures, so a storm of rate limits does not use up the attempts a real failure
  gets; a usage limit with a reset time waits for the reset and spends neither.
* :class:`HttpRetry` (one HTTP request): ``max_attempts`` requests in all, every
  retried failure transient; a 4xx the API meant is permanent and never retried.

Every default lives here, once.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, Field

# -- the one set of defaults ---------------------------------------------------------------

AGENT_MAX_ATTEMPTS = 2
"""Runs of an agent per stage visit while its failures are permanent."""
AGENT_TRANSIENT_RETRIES = 5
"""Further runs after rate limits, overloads, 5xx and network errors."""
AGENT_BACKOFF_BASE_SECONDS = 5.0
AGENT_BACKOFF_CAP_SECONDS = 300.0
USAGE_LIMIT_WAITS = 3
"""Usage-limit resets an agent waits for per stage visit."""
USAGE_LIMIT_MARGIN_SECONDS = 30.0
"""Wait this long past a usage-limit reset: the provider's clock and ours differ."""

HTTP_MAX_ATTEMPTS = 5
"""Requests in all for one forge, Plane or Telegram call, the first included."""
HTTP_BACKOFF_BASE_SECONDS = 0.5
HTTP_BACKOFF_CAP_SECONDS = 30.0

STEP_RETRY_DELAYS_SECONDS = [5.0, 20.0, 60.0]
"""Prefect's retries of a git step (clone/fetch, push) that failed transiently: a remote that is
down for a minute does not block the work item."""
HTTP_STEP_RETRY_DELAYS_SECONDS = [5.0, 30.0]
"""Prefect's retries of a forge step (PR, merge, CI read) whose HTTP client already retried
HTTP_MAX_ATTEMPTS times: shorter, so a forge that is really down is reported in bounded time."""

NOTIFY_BACKOFF_BASE_SECONDS = 1.0
NOTIFY_BACKOFF_CAP_SECONDS = 10.0
NOTIFY_MAX_RETRY_AFTER_SECONDS = 300.0
"""Longest flood-control wait a notifier honours; a longer one fails at once."""


class FailureKind(str, Enum):
    """What to do about a failure."""

    transient = "transient"
    """Retry later: rate limit (429), overload (529), other 5xx, timeouts, network errors."""
    permanent = "permanent"
    """Retrying will not help, or only within the permanent budget (the agent's own mistakes)."""
    usage_limit = "usage_limit"
    """A subscription limit that resets at a named time: wait for it."""


class Classification(BaseModel):
    """One failure as the retry decision sees it. The counts include this failure."""

    kind: FailureKind
    reason: str = Field(description="Short cause, e.g. rate_limit or 'HTTP 502: Bad Gateway'.")
    retry_after: float | None = Field(default=None, ge=0, description="Seconds the API asked us to wait.")
    resets_at: datetime | None = Field(default=None, description="When a usage limit resets.")
    transient_failures: int = Field(default=0, ge=0)
    permanent_failures: int = Field(default=0, ge=0)
    usage_limit_waits: int = Field(default=0, ge=0)


class RetryDecision(BaseModel):
    """Whether to try again, after how long, and why: the why goes into logs and reasons."""

    retry: bool
    why: str
    wait_seconds: float = 0.0


MaxAttempts = Annotated[int, Field(ge=1, le=10)]
TransientRetries = Annotated[int, Field(ge=0, le=50)]
BackoffBaseSeconds = Annotated[float, Field(gt=0, le=3600)]
BackoffCapSeconds = Annotated[float, Field(gt=0, le=24 * 3600)]


class RetryKnobs(BaseModel):
    """An agent's budgets and backoff as a run or a profile may set them; unset: the next in line.

    The line is the run's ``agent`` parameter, its AgentProfile block, then the
    installation's ``SDLC_AGENT_*`` settings (tasks/taskfile.retry_policy).
    """

    max_attempts: MaxAttempts | None = Field(
        default=None, description="Runs per stage visit while failures are permanent."
    )
    transient_retries: TransientRetries | None = Field(
        default=None, description="Retries after rate limits, overloads, 5xx and network errors."
    )
    backoff_base_seconds: BackoffBaseSeconds | None = Field(
        default=None, description="Transient wait: min(2^n x base, cap)."
    )
    backoff_cap_seconds: BackoffCapSeconds | None = Field(default=None, description="Longest transient wait.")


class RetryPolicy(BaseModel):
    """The agent's policy: two budgets, backoff, and how usage limits are waited for."""

    max_attempts: int = Field(default=AGENT_MAX_ATTEMPTS, ge=1, description="Runs while failures are permanent.")
    transient_retries: int = Field(
        default=AGENT_TRANSIENT_RETRIES, ge=0, description="Retries after transient failures."
    )
    backoff_base_seconds: float = Field(default=AGENT_BACKOFF_BASE_SECONDS, gt=0)
    backoff_cap_seconds: float = Field(default=AGENT_BACKOFF_CAP_SECONDS, gt=0)
    max_retry_after_seconds: float | None = Field(
        default=None, ge=0, description="Longest wait an API may ask for; a longer one stops at once (unset: any)."
    )
    usage_limit_waits: int = Field(default=USAGE_LIMIT_WAITS, ge=0, description="Usage-limit resets waited for.")
    usage_limit_margin_seconds: float = Field(default=USAGE_LIMIT_MARGIN_SECONDS, ge=0)

    @property
    def task_retries(self) -> int:
        """Upper bound for Prefect's ``retries``; :func:`decide_retry` enforces each budget.

        One more than the budgets: a rerun after a crash may find the crashed run's
        wait not over yet and reschedule itself once (tasks/agent.py).
        """
        return self.max_attempts - 1 + self.transient_retries + self.usage_limit_waits + 1


class HttpRetry(BaseModel):
    """The policy of one HTTP call (forges, Plane, Telegram): attempts in all, backoff, Retry-After."""

    max_attempts: int = Field(default=HTTP_MAX_ATTEMPTS, ge=1, description="Requests in all, the first included.")
    backoff_base_seconds: float = Field(default=HTTP_BACKOFF_BASE_SECONDS, gt=0)
    backoff_cap_seconds: float = Field(default=HTTP_BACKOFF_CAP_SECONDS, gt=0)
    max_retry_after_seconds: float | None = Field(
        default=None, ge=0, description="Longest Retry-After honoured; a longer one fails at once (unset: any)."
    )

    @property
    def policy(self) -> RetryPolicy:
        """The same rules as :class:`RetryPolicy`: every retry is transient, a permanent failure is final."""
        return RetryPolicy(
            max_attempts=1,
            transient_retries=self.max_attempts - 1,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_cap_seconds=self.backoff_cap_seconds,
            max_retry_after_seconds=self.max_retry_after_seconds,
            usage_limit_waits=0,
        )

    def decide(
        self, attempt: int, reason: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> RetryDecision:
        """After failed request ``attempt`` (from 0): try again, after how long, or stop."""
        if permanent:
            failure = Classification(
                kind=FailureKind.permanent, reason=reason, retry_after=retry_after, permanent_failures=1
            )
        else:
            failure = Classification(
                kind=FailureKind.transient, reason=reason, retry_after=retry_after, transient_failures=attempt + 1
            )
        return decide_retry(failure, self.policy)


def backoff_seconds(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """``min(2**attempt * base, cap)``, never sooner than a wait the API named; ``attempt`` starts at 0."""
    if attempt < 0:
        raise ValueError("attempt starts at 0")
    delay = min(base * 2.0 ** min(attempt, 100), cap)
    return max(delay, retry_after) if retry_after is not None else delay


def decide_retry(failure: Classification, policy: RetryPolicy, *, now: datetime | None = None) -> RetryDecision:
    """Whether to try again after ``failure``, and how long to wait first.

    ``now`` is needed only to wait for a usage limit's ``resets_at``.
    """
    reason = failure.reason
    if failure.kind is FailureKind.transient:
        budget = policy.transient_retries
        if failure.transient_failures > budget:
            return RetryDecision(retry=False, why=f"{reason}: transient budget of {budget} retries spent")
        limit = policy.max_retry_after_seconds
        if limit is not None and failure.retry_after is not None and failure.retry_after > limit:
            return RetryDecision(
                retry=False,
                why=f"{reason}: asks to wait {failure.retry_after:g} s (over max_retry_after_seconds={limit:g})",
            )
        wait = backoff_seconds(
            max(failure.transient_failures - 1, 0),
            base=policy.backoff_base_seconds,
            cap=policy.backoff_cap_seconds,
            retry_after=failure.retry_after,
        )
        return RetryDecision(
            retry=True, why=f"{reason}: transient retry {failure.transient_failures} of {budget}", wait_seconds=wait
        )
    if failure.kind is FailureKind.usage_limit:
        if failure.resets_at is None or failure.usage_limit_waits > policy.usage_limit_waits:
            return RetryDecision(retry=False, why=f"{reason}: usage limit without a usable reset time")
        if now is None:
            raise ValueError("waiting for a usage-limit reset needs the time now")
        wait = max(0.0, (failure.resets_at - now).total_seconds()) + policy.usage_limit_margin_seconds
        return RetryDecision(
            retry=True,
            why=f"{reason}: waiting for the usage-limit reset at {failure.resets_at.isoformat()}",
            wait_seconds=wait,
        )
    if failure.permanent_failures >= policy.max_attempts:
        return RetryDecision(
            retry=False, why=f"{reason}: {failure.permanent_failures} of {policy.max_attempts} attempts failed"
        )
    return RetryDecision(
        retry=True, why=f"{reason}: attempt {failure.permanent_failures} of {policy.max_attempts} failed"
    )
