"""The error tree of sdlc-flows: callers decide by class, not by message.

::

    SdlcError(Exception)                  anything sdlc-flows raises on purpose
    +-- TransientError                    retry later (rate limit, network, busy)
    |   +-- AgentRunTransient *           the agent hit a 429, an overload, a 5xx or the network
    |   +-- RetryNotDue                   a rerun came before the wait its last failure decided
    +-- UsageLimitWait                    the provider's usage limit resets at a named time
    +-- AgentRunFailed                    any failed agent run: its result and retry decision
    |   +-- AgentRunTransient *
    |   +-- AgentUsageLimited             the agent hit its subscription's usage limit
    |   +-- AgentRunPermanent *
    +-- PermanentError                    stop and notify a person
        +-- AgentRunPermanent *           the agent's own failure (exit code, timeout, auth)
        +-- BudgetExceeded                the work item spent its budget
        +-- PushRejected                  origin refused the push (non-fast-forward, hook)
        +-- GitOperationError             a git command failed (merge conflict, bad ref)

    * under two parents: catch ``AgentRunFailed`` for any failed run, or the kind you handle.

The agent's classes live in ``tasks/agent.py``; whether and when a failure is retried
is :func:`sdlc.retry.decide_retry`'s to say, not the class's.
Wrap lower-level exceptions with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class SdlcError(Exception):
    """Base of every error raised on purpose by sdlc-flows."""


class TransientError(SdlcError):
    """The same step may succeed if retried later."""


class UsageLimitWait(SdlcError):
    """The agent hit a usage limit that resets at ``until``: wait for it without holding a process (B31)."""

    def __init__(self, until: datetime, reason: str) -> None:
        self.until, self.reason = until, reason
        super().__init__(f"{reason}; waiting for the usage-limit reset until {until.isoformat(timespec='seconds')}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.until, self.reason))


class PermanentError(SdlcError):
    """Retrying will not help: stop the work item and notify."""


class PushRejected(PermanentError):
    """Origin refused a push; carries git's stderr in the message. We never force."""


class GitOperationError(PermanentError):
    """A git command failed in a way that needs a person (conflict, missing ref, ...)."""


def retried_on_transient(delays: list[float]) -> dict[str, Any]:
    """Prefect task options: after a transient failure, run again after each of ``delays`` in turn.

    A permanent failure is never retried; the retries are as many as the delays.
    """
    return {"retries": len(delays), "retry_delay_seconds": delays, "retry_condition_fn": retry_on_transient}


def retry_on_transient(task: object, task_run: object, state: object) -> bool:
    """A Prefect ``retry_condition_fn``: retry a task only when it failed with a :class:`TransientError`."""
    try:
        state.result()  # type: ignore[attr-defined]
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False
