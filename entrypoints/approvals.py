"""Give typed input to the paused pipeline of a work item, from any process (B11, B20).

The CLI (`sdlc approve / reject / answer`), the demo and the webhook receiver
(`/approve` comments) all resume a waiting run through this one function.
"""

from __future__ import annotations

import time
from typing import Any

from sdlc.models import WorkItemState
from sdlc.settings import get_settings

RESUME_WAIT_SECONDS = 30.0


class NotWaiting(RuntimeError):
    """The work item is not waiting for this kind of input."""


def _form_saved(client: Any, flow_run_id: Any, state: Any) -> bool:
    """Whether the paused run has saved the schema of its input form yet.

    Prefect sets Paused first and saves the form's schema just after, so an
    answer in between is refused with "Run input schema not found"."""
    import httpx

    keyset = state.state_details.run_input_keyset
    if not keyset:
        return True
    try:
        client.read_flow_run_input(flow_run_id, keyset["schema"])
    except httpx.HTTPStatusError as error:
        if error.response.status_code == 404:
            return False
        raise
    return True


def resume_waiting_run(work_item: str, expected_state: WorkItemState, run_input: dict[str, Any]) -> None:
    """Give typed input to the paused pipeline of a work item, from any process."""
    from uuid import UUID

    from entrypoints.server import ensure_prefect_api

    ensure_prefect_api(get_settings(), start=False)
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from tasks.ledger import Ledger

    deadline = time.monotonic() + RESUME_WAIT_SECONDS
    ledger = Ledger.from_settings()
    while True:
        row = ledger.get_work_item(work_item)
        if row is None or row.state != expected_state.value:
            now = row.state if row is not None else "unknown"
            raise NotWaiting(f"{work_item} is not {expected_state.value.replace('_', ' ')} (it is {now})")
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(row.flow_run_id)).state
            ready = state is not None and state.is_paused() and _form_saved(client, UUID(row.flow_run_id), state)
        if ready:
            resume_flow_run(UUID(row.flow_run_id), run_input=run_input)
            # Answered: the run is no longer waiting, even before it is running again.
            ledger.set_state(work_item, WorkItemState.running, reason=None)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run of {work_item} did not pause within {RESUME_WAIT_SECONDS:.0f} s")
        time.sleep(0.3)
