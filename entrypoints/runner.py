"""`sdlc run` and `sdlc resume` drive a pipeline run in their own process (B21, B62).

Runs are created from the `sdlc-pipeline/cli` deployment, which no worker serves:
the command that created the run executes it itself with Prefect's flow engine.
Because the run has a deployment it can *suspend* when it waits for a person, so
the flow run holds no process while they think; the command only watches. When
the input arrives the run is rescheduled and the watching command runs it again,
and finished stages and tasks are replayed from their persisted results
(flows/replay.py). If the command is gone (closed terminal, crash, SIGKILL),
`sdlc resume ID` takes the run over and goes on from where it stopped.

Prefect must already be configured (entrypoints.server.ensure_prefect_api) when this
module is imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

from sdlc.models import Continuation, WorkItemRequest, WorkItemState, pipeline_parameters
from sdlc.settings import get_settings
from sdlc.sync import sync_result

CLI_DEPLOYMENT = "cli"
WATCH_SECONDS = 0.5


class RunnerError(RuntimeError):
    """The run cannot be driven from here; the message says why and what to do."""


def _pid_file(work_item: str) -> Path:
    return get_settings().root / "runs" / f"{work_item}.pid"


def driving_process(work_item: str) -> int | None:
    """The pid of a live `sdlc run` / `sdlc resume` on this machine that drives the work item."""
    try:
        pid = int(_pid_file(work_item).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _claim(work_item: str) -> None:
    holder = driving_process(work_item)
    if holder is not None and holder != os.getpid():
        raise RunnerError(f"{work_item} is already driven by process {holder}; it goes on there")
    path = _pid_file(work_item)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


def _release(work_item: str) -> None:
    path = _pid_file(work_item)
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def start_run(request: WorkItemRequest, retry: Continuation | None = None) -> UUID:
    """A new flow run of the pipeline from the CLI deployment (registered on first use)."""
    from flows.pipeline import sdlc_pipeline

    cli_deployment = sync_result(
        sdlc_pipeline.to_deployment(
            name=CLI_DEPLOYMENT,
            description="Runs started by `sdlc run`; the command runs them itself (no worker serves this deployment).",
        )
    )
    cli_deployment.apply()
    flow_run = sync_result(
        run_deployment(
            f"sdlc-pipeline/{CLI_DEPLOYMENT}",
            parameters=pipeline_parameters(request, retry),
            timeout=0,
        )
    )
    return flow_run.id


def _read(flow_run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def execute(flow: Any, flow_run: FlowRun) -> None:
    """One execution of the flow run in this process, until it ends or suspends.

    A suspended run (waiting for a person or for a usage-limit reset) holds nothing
    until it is rescheduled; whoever runs it next replays its finished work.
    """
    try:
        run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    except Pause:
        pass


def _due(state: Any) -> bool:
    """A scheduled run is due at its time (a usage-limit wait is scheduled for the reset)."""
    when = state.state_details.scheduled_time
    return when is None or when <= datetime.now(UTC)


def drive(flow_run_id: UUID, work_item: str, *, on_wait: Callable[[FlowRun], None] | None = None) -> FlowRun:
    """Run, watch while suspended, run again when resumed, until the flow run is final."""
    _claim(work_item)
    try:
        while True:
            flow_run = _read(flow_run_id)
            state = flow_run.state
            if state is None or state.type == StateType.PENDING or (state.type == StateType.SCHEDULED and _due(state)):
                from flows.pipeline import sdlc_pipeline

                execute(sdlc_pipeline, flow_run)
                continue
            if state.is_final():
                return flow_run
            if on_wait is not None:
                on_wait(flow_run)
            time.sleep(WATCH_SECONDS)
    finally:
        _release(work_item)


def take_over(flow_run_id: UUID, work_item: str) -> None:
    """Make a run whose process is gone runnable again; finished work is replayed, not redone."""
    from tasks.ledger import Ledger

    flow_run = _read(flow_run_id)
    state = flow_run.state
    if state is None or state.is_paused() or state.type in (StateType.SCHEDULED, StateType.PENDING):
        return
    if state.is_completed():
        raise RunnerError(f"{work_item} has finished (its run {flow_run.name} completed)")
    holder = driving_process(work_item)
    if holder is not None and holder != os.getpid():
        raise RunnerError(f"{work_item} is running in process {holder}; it goes on there")
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(name="Resuming"), force=True)
    Ledger.from_settings().set_state(work_item, WorkItemState.running, reason=None)


def unfinished_run(work_item: str) -> UUID | None:
    """The work item's flow run when it has not ended (waiting, scheduled, or cut off)."""
    from flows.replay import refused_resume
    from tasks.ledger import Ledger

    row = Ledger.from_settings().get_work_item(work_item)
    if row is None or not row.flow_run_id or row.state in (WorkItemState.done.value, WorkItemState.blocked.value):
        return None
    try:
        state = _read(UUID(row.flow_run_id)).state
    except Exception:  # noqa: BLE001 - a run the server no longer knows cannot be resumed
        return None
    # A run that refused to replay its recorded calls (recorded by another version) cannot go on:
    # the work item starts again as a new run.
    if state is not None and (state.is_completed() or refused_resume(state.message)):
        return None
    return UUID(row.flow_run_id)


def waits_for_a_driver(work_item: str, flow_run_id: str) -> bool:
    """True when the run belongs to `sdlc run` and no such process is left to go on with it."""
    if driving_process(work_item) is not None:
        return False
    flow_run = _read(UUID(flow_run_id))
    if flow_run.deployment_id is None:
        return False
    with get_client(sync_client=True) as client:
        return client.read_deployment(flow_run.deployment_id).name == CLI_DEPLOYMENT
