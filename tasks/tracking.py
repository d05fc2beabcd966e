"""Where a work item stands: its ledger row, stage transitions and state (B1, B50).

The tracker sync (Plane) hooks in here, so the pipeline flow has one call per change.
"""

from __future__ import annotations

from prefect import task

from sdlc.models import WorkItemRequest, WorkItemState
from tasks.ledger import Ledger


@task(name="register-work-item")
def register_work_item(request: WorkItemRequest, flow_run_id: str | None) -> None:
    Ledger.from_settings().upsert_work_item(request, flow_run_id=flow_run_id)


@task(name="record-transition")
def record_transition(work_item: str, from_stage: str | None, to_stage: str, reason: str) -> None:
    Ledger.from_settings().record_transition(work_item, from_stage=from_stage, to_stage=to_stage, reason=reason)


@task(name="set-work-item-state")
def set_work_item_state(work_item: str, state: WorkItemState, stage: str | None = None, reason: str | None = None) -> None:
    Ledger.from_settings().set_state(work_item, state, stage=stage, reason=reason)


@task(name="record-pull-request")
def record_pull_request(work_item: str, number: int, url: str) -> None:
    Ledger.from_settings().set_pull_request(work_item, number, url)
