"""Replay on resume (B21): a flow run that runs again does not redo finished work, nor replay the wrong call.

A pipeline that is suspended for a person, resumed after a crash, or rescheduled
runs its flow function again from the top (that is how Prefect resumes). Finished
stage subflows are reused when their results are persisted; finished tasks are
reused through a cache key that names *which call* they were: the flow run, the
task and its ordinal among that task's calls in this execution. Flows are
deterministic given their earlier results, so the n-th call of a task on a rerun
is the n-th call of the first run, and its persisted result stands in for running
it again (the way Temporal replays an activity's recorded result).

When the code, the stage graph or the settings change between a suspend and the
resume, the n-th call may be another call. Each call therefore carries a digest
of its parameters, and a call whose slot was recorded with other parameters stops
the run (:class:`ReplayMismatch`) instead of replaying another call's result or
silently running again. Records live in the flow's result storage, next to the
results, so they are wherever results are (``$PREFECT_HOME/storage`` or a shared
storage block), whichever database the Prefect server uses:

``replay-v5-<flow run>-<task name>-<n>-<digest>``
    the n-th call's result, written by Prefect when the task completes. The task
    *name* (``run-agent``), not Prefect's task key, names the task: an edit to a
    task's body does not change which recorded call it is.
``replay-v5-<flow run>-<task name>-<n>.call``
    the slot's call: its digest and one digest per parameter, written just before
    the task body runs (so it can say which parameters changed).

A call whose result key is found is replayed and nothing else happens. A call that
is about to run reads its slot's ``.call`` record: another digest with a result
under it is a mismatch. Both keys contain the flow run's id, so concurrent work
items never share a slot, and one flow run executes in one process at a time.

Runs recorded before the keys had a version (``replay-<flow run>-<task key>-<n>``,
no parameters), or under another version (:data:`VERSION`: another set of tasks),
cannot be checked. The first task that is about to run in a rerun asks the Prefect
API for the flow run's finished task runs: one whose result lies under a replay key
of another layout makes the run stop with :class:`ReplayOutdated`.

Both errors say what to do: finish the run with the sdlc-flows version that
started it, or start the work item again as a new run. Their messages begin with
:data:`REFUSED`, which :func:`refused_resume` finds in a flow run's final state.

The same look at the finished task runs finds a rerun whose results are out of reach:
a run suspended on one machine and resumed on another, where results are stored in
another place (each machine's own ``$PREFECT_HOME/storage``, or another block). Its
calls would all miss their results and run again, agents included, so the run stops
with :class:`ResultsOutOfReach` before the first of them; given the same storage, it
goes on (README, "Several machines").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time
from enum import Enum
from pathlib import PurePath
from typing import Any, TypeVar
from uuid import UUID

from prefect.context import FlowRunContext, TaskRunContext
from prefect.results import ResultStore
from prefect.tasks import Task
from pydantic import BaseModel, SecretBytes, SecretStr

T = TypeVar("T", bound=Task[Any, Any])

VERSION = "v5"
"""The layout of the pipeline's replayed calls. Bump it when the tasks a pipeline calls, or
their order, change: a run recorded by another layout is told to start again (v3: a step's
ledger, tracker and notifier writes are one ``record-step`` task; the worktree is prepared
in ``prepare-agent-run``; v4: ``bring-up-to-date`` before a code gate and
``merge-tested-pull-request`` at the end; v5: ``publish-documents`` before an approval or
answers, ``tell-pull-request-story`` after a passing stage, ``publish-gate-report`` after a
failing gate, and the gate report's link in the next agent's invocation)."""
REFUSED = "Replay refused:"
_SLOT = "sdlc-replay"
_DIGEST_CHARS = 16
_TO_GO_ON = (
    "To go on, finish this run with the sdlc-flows version (and stage graph) that started it, "
    "or start the work item again as a new run (`sdlc run ...` with the same work item)."
)


class ReplayRefused(RuntimeError):
    """A rerun cannot replay its recorded calls safely; the run stops and says how to go on.

    Not an ``SdlcError``: nothing is wrong with the work item, the recorded run no longer
    matches the code that runs it. No retry condition retries it.
    """


class ReplayMismatch(ReplayRefused):
    """The n-th call of a task was recorded with other parameters than it has now."""


class ReplayOutdated(ReplayRefused):
    """The flow run was recorded by an sdlc-flows whose replay keys carry no version."""


class ResultsOutOfReach(RuntimeError):
    """A rerun's recorded results are not in the result storage this process reads (another machine's folder).

    Not a :class:`ReplayRefused`: the run is sound and goes on once this process is given the storage it was
    recorded in; the work item must not be started again.
    """


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a replayed task: its slot in the flow run and the digests of its parameters."""

    flow_run_id: str
    task: str
    ordinal: int
    digest: str
    parameters: dict[str, str]

    @property
    def slot(self) -> str:
        return f"replay-{VERSION}-{self.flow_run_id}-{_safe(self.task)}-{self.ordinal}"

    @property
    def result_key(self) -> str:
        return f"{self.slot}-{self.digest}"

    @property
    def record_key(self) -> str:
        return f"{self.slot}.call"


def replayed(task: T, *, ignore: Collection[str] = ()) -> T:
    """The same task, with its result persisted and replayed when its flow run runs again.

    ``ignore`` names parameters that may legitimately differ between the run that
    recorded the call and the one that replays it (e.g. a link built from this
    process's UI URL); they do not count in the call's digest. The task's name
    names its slot, so every replayed task needs a name of its own.
    """
    if task.isasync:
        raise TypeError(f"replayed() takes synchronous tasks; {task.name!r} is async")
    replaying = task.with_options(
        cache_key_fn=functools.partial(replay_key, ignore=frozenset(ignore)), persist_result=True
    )
    # with_options() copies `fn`, so copies made later (run_agent.with_options(retries=...)) keep the check.
    replaying.fn = _refusing_changed_calls(task.fn)
    return replaying  # type: ignore[return-value]


def replay_key(
    context: TaskRunContext, parameters: dict[str, Any], *, ignore: frozenset[str] = frozenset()
) -> str | None:
    """The result key of this call: ``replay-v5-<flow run>-<task>-<n>-<digest of its parameters>``."""
    flow_context = FlowRunContext.get()
    run = context.task_run
    if flow_context is None or flow_context.flow_run is None or run.flow_run_id is None:
        return None
    # The flow run context is new for every execution of the flow run, so its
    # per-task counters start at zero on a rerun. Retries of one call keep its ordinal.
    counters: dict[str, Any] = flow_context.task_run_dynamic_keys
    call_slot = f"{_SLOT}:call:{run.id}"
    if call_slot not in counters:
        count_slot = f"{_SLOT}:count:{context.task.name}"
        counters[count_slot] = int(counters.get(count_slot, -1)) + 1
        counters[call_slot] = counters[count_slot]
    digest, digests = call_digest(parameters, ignore=ignore)
    call = Call(str(run.flow_run_id), context.task.name, int(counters[call_slot]), digest, digests)
    counters[f"{_SLOT}:slot:{run.id}"] = json.dumps(dataclasses.asdict(call))  # for the task body's check
    return call.result_key


def call_digest(parameters: Mapping[str, Any], *, ignore: Collection[str] = ()) -> tuple[str, dict[str, str]]:
    """The digest of a call and of each of its parameters: stable across processes and machines."""
    digests = {name: _digest(_canonical(value)) for name, value in sorted(parameters.items()) if name not in ignore}
    return _digest(digests), digests


def check_call(call: Call, store: ResultStore) -> None:
    """Raise :class:`ReplayMismatch` when the call's slot holds a result of a call with other parameters."""
    if not store.exists(call.record_key):
        return
    recorded = store.read(call.record_key).result
    if not isinstance(recorded, dict) or recorded.get("digest") in (None, call.digest):
        return
    if not store.exists(f"{call.slot}-{recorded['digest']}"):
        return  # the recorded call never finished: nothing of it would be replayed
    changed = _changes(recorded.get("parameters") or {}, call.parameters)
    raise ReplayMismatch(
        f"{REFUSED} call {call.ordinal + 1} of task {call.task!r} in flow run {call.flow_run_id} was recorded "
        f"with other parameters ({changed}). The flow's code, its stage graph or its settings changed since "
        "the run was suspended, so the result recorded for this call belongs to another call: it was not "
        f"replayed, and the task did not run again. {_TO_GO_ON}"
    )


def check_flow_run(
    flow_run_id: UUID | str, store: ResultStore | None = None, *, wait_for_records_seconds: float = 0.0
) -> None:
    """Raise :class:`ReplayOutdated` when the flow run holds results under unversioned replay keys,
    and :class:`ResultsOutOfReach` when ``store`` (this process's) does not hold its recorded results.

    The replayed tasks call this themselves, once per rerun of a flow run, before the
    first of them runs; it may also be called at the start of a flow. The server learns of
    finished task runs through events, some time after they finished: a run known to have
    recorded results (it suspended, so tasks ran before its pause) waits up to
    ``wait_for_records_seconds`` for them to show, instead of taking "none yet" for "none".
    """
    import time as clock

    deadline = clock.monotonic() + wait_for_records_seconds
    while not _checked_records(flow_run_id, store) and clock.monotonic() < deadline:
        clock.sleep(0.5)


def _checked_records(flow_run_id: UUID | str, store: ResultStore | None) -> bool:
    """:func:`check_flow_run`'s look at the finished task runs: True once a replayed one was found (and
    was fine), False when the server shows none yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort

    run_id = UUID(str(flow_run_id))
    task_filter = TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED])),
    )
    page, offset = 200, 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                task_run_filter=task_filter, sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=page, offset=offset
            )
            for task_run in runs:
                key = _result_key(task_run.state)
                if key is None or not key.startswith("replay-"):
                    continue
                if key.startswith(f"replay-{VERSION}-"):
                    if store is not None and not store.exists(key):
                        raise _out_of_reach(client, run_id, task_run.name, task_run.state, store)
                    return True  # recorded by this version, where this process reads: later records are too
                layout = key.split("-")[1] if re.match(r"replay-v\d+-", key) else "unversioned, without parameters"
                raise ReplayOutdated(
                    f"{REFUSED} flow run {run_id} was recorded by an older sdlc-flows: its finished tasks "
                    f"(such as {task_run.name!r}) are stored under replay keys of another layout ({layout}), "
                    f"so this version cannot tell whether they are the calls it would replay. {_TO_GO_ON}"
                )
            if len(runs) < page:
                return False
            offset += page


def refused_resume(message: str | None) -> bool:
    """True when a flow run's final state says replay refused to resume it (start the work item again)."""
    return bool(message) and REFUSED in str(message)


def _refusing_changed_calls(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The task body, run only after its call is checked against what the flow run recorded."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        # Only calls whose result key was not found get here: a first run, or a changed call.
        context = TaskRunContext.get()
        flow_context = FlowRunContext.get()
        if context is not None and flow_context is not None and flow_context.flow_run is not None:
            counters: dict[str, Any] = flow_context.task_run_dynamic_keys
            recorded = counters.get(f"{_SLOT}:slot:{context.task_run.id}")
            if isinstance(recorded, str):
                call = Call(**json.loads(recorded))
                if _is_rerun(flow_context.flow_run) and f"{_SLOT}:checked" not in counters:
                    # A suspended run recorded results before its pause: wait for the server to show them.
                    suspended = _suspended_before(flow_context.flow_run)
                    check_flow_run(
                        call.flow_run_id,
                        context.result_store,
                        wait_for_records_seconds=RECORDS_WAIT if suspended else 0,
                    )
                    counters[f"{_SLOT}:checked"] = 1
                check_call(call, context.result_store)
                context.result_store.write(
                    {"task": call.task, "call": call.ordinal, "digest": call.digest, "parameters": call.parameters},
                    key=call.record_key,
                )
        return fn(*args, **kwargs)

    return checked


RECORDS_WAIT = 30.0
"""How long a resumed suspended run waits for the server to show its finished task runs (events lag)."""


def _suspended_before(flow_run: Any) -> bool:
    """Whether the flow run paused (suspended) in an earlier execution: it ran tasks before that."""
    policy = getattr(flow_run, "empirical_policy", None)
    return bool(getattr(policy, "pause_keys", None))


def _is_rerun(flow_run: Any) -> bool:
    """Whether an execution of this flow run went before: it ran before, or it suspended (resuming a
    suspended run keeps its run count at 1; the keys it paused under stay on the run)."""
    policy = getattr(flow_run, "empirical_policy", None)
    return flow_run.run_count != 1 or bool(getattr(policy, "pause_keys", None))


def _out_of_reach(client: Any, run_id: UUID, task_name: str, state: Any, store: ResultStore) -> ResultsOutOfReach:
    """The error for a finished task whose result this process's storage does not hold, saying where it is."""
    data = getattr(state, "data", None)
    metadata = getattr(data, "metadata", data)
    block_id = getattr(metadata, "storage_block_id", None)
    key = str(getattr(metadata, "storage_key", None) or _result_key(state))
    recorded = f"the folder {PurePath(key).parent}"
    if block_id is not None:
        recorded = f"the storage block with id {block_id}"
        try:
            document = client.read_block_document(block_id, include_secrets=False)
            recorded = f"the storage block {document.block_type.slug}/{document.name}"
        except Exception:  # noqa: BLE001 - the id says it as well, only less kindly
            pass
    return ResultsOutOfReach(
        f"flow run {run_id} cannot go on here: its finished tasks (such as {task_name!r}) stored their results "
        f"in {recorded}, and this process reads results from {_storage_name(store)}, where they are not. "
        "Run from here, every finished task would run again (agents, commits and notifications included), so "
        "nothing was run. Every machine that runs or resumes work items must use one shared result storage "
        'block (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK; README, "Several machines"): give this one that storage, '
        "then run the flow run again (`sdlc resume WORK-ITEM`)."
    )


def _storage_name(store: ResultStore) -> str:
    """How a person finds this process's result storage: its block's slug, else its folder."""
    storage = store.result_storage
    name = getattr(storage, "_block_document_name", None)
    if storage is not None and name:
        return f"the storage block {storage.get_block_type_slug()}/{name}"
    basepath = getattr(storage, "basepath", None)
    return f"the folder {basepath}" if basepath else f"the storage {type(storage).__name__}"


def _result_key(state: Any) -> str | None:
    """The last part of the storage key a finished task run's result lies under."""
    data = getattr(state, "data", None)
    key = getattr(data, "storage_key", None)
    if key is None:
        metadata = getattr(data, "metadata", None)
        key = getattr(metadata, "storage_key", None)
    if key is None and isinstance(data, dict):
        key = data.get("storage_key")
    return re.split(r"[\\/]", str(key))[-1] if key else None


def _changes(recorded: Mapping[str, str], current: Mapping[str, str]) -> str:
    changed = sorted(name for name in set(recorded) & set(current) if recorded[name] != current[name])
    added = sorted(set(current) - set(recorded))
    removed = sorted(set(recorded) - set(current))
    groups = (("changed", changed), ("new", added), ("gone", removed))
    parts = [f"{label}: {', '.join(names)}" for label, names in groups if names]
    return "; ".join(parts) or "their values differ"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def _canonical(value: Any) -> Any:
    """A JSON value that is equal for equal parameters in any process (not ``hash()``, not set order)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (SecretStr, SecretBytes)):
        return "**secret**"  # a secret that changed is still the same call
    if isinstance(value, BaseModel):
        return {name: _canonical(getattr(value, name)) for name in sorted(type(value).model_fields)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _canonical(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    # Anything else counts by its type only: a repr may hold a memory address.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"
