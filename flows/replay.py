"""Replay on resume (B21): a flow run that runs again does not redo finished work.

A pipeline that is suspended for a person, resumed after a crash, or retried runs
its flow function again from the top (that is how Prefect resumes). Finished stage
subflows are reused when their results are persisted; finished tasks are reused
through a cache key that names *which call* they were: the flow run, the task and
its ordinal among that task's calls in this execution. Flows are deterministic
given their earlier results, so the n-th call of a task on a rerun is the n-th
call of the first run, and its persisted result stands in for running it again
(the way Temporal replays an activity's recorded result).
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.context import FlowRunContext, TaskRunContext
from prefect.tasks import Task

T = TypeVar("T", bound=Task[Any, Any])

_SLOT = "sdlc-replay"


def replay_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """`<flow run>-<task>-<n>` for the n-th call of this task in this flow run execution."""
    flow_context = FlowRunContext.get()
    run = context.task_run
    if flow_context is None or flow_context.flow_run is None or run.flow_run_id is None:
        return None
    # The flow run context is new for every execution of the flow run, so its
    # per-task counters start at zero on a rerun. Retries of one call keep its ordinal.
    counters: dict[str, Any] = flow_context.task_run_dynamic_keys
    call_slot = f"{_SLOT}:call:{run.id}"
    if call_slot not in counters:
        count_slot = f"{_SLOT}:count:{run.task_key}"
        counters[count_slot] = int(counters.get(count_slot, -1)) + 1
        counters[call_slot] = counters[count_slot]
    return f"replay-{run.flow_run_id}-{run.task_key}-{counters[call_slot]}"


def replayed(task: T) -> T:
    """The same task, with its result persisted and reused when its flow run runs again."""
    return task.with_options(cache_key_fn=replay_key, persist_result=True)  # type: ignore[return-value]
