"""Circuit breaker per agent provider (B32), shared by every process through a Prefect Variable.

After `threshold` consecutive transient failures of a provider, no new run of that
provider starts until `cooldown` has passed; one success closes it. The state
lives in the Prefect Variable ``sdlc-breaker-<provider>`` (visible in the UI's
Variables page and in ``sdlc status``), not in process memory, so it holds across
workers. The transitions are pure functions, tested without Prefect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

VARIABLE_PREFIX = "sdlc-breaker-"


class BreakerState(BaseModel):
    consecutive_transient: int = 0
    open_until: datetime | None = None

    def is_open(self, now: datetime) -> bool:
        return self.open_until is not None and now < self.open_until

    def describe(self, now: datetime) -> str:
        if self.is_open(now):
            assert self.open_until is not None
            return f"open until {self.open_until.astimezone(UTC):%H:%M:%S} UTC ({self.consecutive_transient} transient failures in a row)"
        return f"closed ({self.consecutive_transient} transient failures in a row)"


def after_transient(state: BreakerState, *, now: datetime, threshold: int, cooldown_seconds: float) -> BreakerState:
    count = state.consecutive_transient + 1
    open_until = now + timedelta(seconds=cooldown_seconds) if count >= threshold else state.open_until
    return BreakerState(consecutive_transient=count, open_until=open_until)


def after_success(state: BreakerState) -> BreakerState:
    return BreakerState()


def _now() -> datetime:
    return datetime.now(UTC)


class CircuitBreaker:
    """The breaker of one provider, read and written through Prefect Variables."""

    def __init__(self, provider: str, *, scope: str = "", threshold: int, cooldown_seconds: float) -> None:
        self.provider = provider
        self.name = f"{VARIABLE_PREFIX}{scope + '-' if scope else ''}{provider}"
        self.threshold = threshold
        self.cooldown_seconds = cooldown_seconds

    def read(self) -> BreakerState:
        from prefect.variables import Variable

        value = Variable.get(self.name, default=None)
        return BreakerState.model_validate(value) if value else BreakerState()

    def _write(self, state: BreakerState) -> None:
        from prefect.variables import Variable

        Variable.set(self.name, state.model_dump(mode="json"), overwrite=True)

    def record_transient(self) -> BreakerState:
        state = after_transient(
            self.read(), now=_now(), threshold=self.threshold, cooldown_seconds=self.cooldown_seconds
        )
        self._write(state)
        return state

    def record_success(self) -> None:
        state = self.read()
        if state != BreakerState():
            self._write(after_success(state))

    def wait_until_closed(
        self, logger: logging.Logger | logging.LoggerAdapter[Any], sleep: Callable[[float], None] = time.sleep
    ) -> float:
        """Hold a new run while the breaker is open; returns the seconds waited."""
        waited = 0.0
        while True:
            state = self.read()
            now = _now()
            if not state.is_open(now):
                return waited
            assert state.open_until is not None
            pause = min((state.open_until - now).total_seconds(), 5.0)
            logger.warning("circuit breaker for %s is %s: waiting", self.provider, state.describe(now))
            sleep(max(pause, 0.05))
            waited += max(pause, 0.05)


def breaker_states(scope: str = "") -> dict[str, BreakerState]:
    """Every provider's breaker in a scope, for `sdlc status`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        variables = client.read_variables()
    return {
        v.name.removeprefix(VARIABLE_PREFIX).removeprefix(f"{scope}-" if scope else ""): BreakerState.model_validate(
            v.value
        )
        for v in variables
        if v.name.startswith(f"{VARIABLE_PREFIX}{scope + '-' if scope else ''}") and isinstance(v.value, dict)
    }
