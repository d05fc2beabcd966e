"""The value of a Prefect call made from sync code, typed as that value.

Prefect's dual sync/async APIs (``@async_dispatch``: ``Block.load``,
``Flow.to_deployment``, ``RunnerDeployment.apply``, ``run_deployment``...) are typed
``T | Coroutine[Any, Any, T]``: they return a coroutine only in an async context (an
async flow or task, or a thread with a running event loop). This project calls them
from sync code only (sync flows and tasks, CLI commands, FastAPI's thread pool), where
they return the value itself. Standard library only.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


def sync_result(value: T | Coroutine[Any, Any, T]) -> T:
    """``value``, typed as what a sync call returns. A type-only cast: nothing is checked or awaited."""
    return cast(T, value)
