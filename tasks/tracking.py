"""Where a work item stands: its ledger row, stage transitions and state (B1, B50).

The tracker sync (Plane) hooks in here, so the pipeline flow has one call per change.
"""

from __future__ import annotations

from prefect import task

from blocks.plane import StateKey
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


@task(name="sync-tracker")
def sync_tracker(
    request: WorkItemRequest,
    state: StateKey | None,
    comment: str | None,
    *,
    link: str | None = None,
    external_id: str | None = None,
) -> bool:
    """Keep the work item's Plane item in step (B50): its state and a comment.

    Optional: without a tracker nothing happens. A tracker that fails (down,
    wrong key, missing states) is logged with its reason and never stops the
    pipeline. Returns whether the tracker was updated.
    """
    if request.tracker is None:
        return False
    from prefect.logging import get_run_logger

    from blocks.plane import PlaneCredentials
    from tasks.plane import PlaneStateMissing, PlaneTracker

    spec = request.tracker
    ref = spec.ref or request.work_item
    try:
        credentials = PlaneCredentials.load(spec.credentials_block)
        with PlaneTracker(credentials) as plane:
            item = plane.work_item(ref)
            Ledger.from_settings().link_tracker_item(request.work_item, "plane", item.id, spec.credentials_block)
            if state is not None:
                try:
                    plane.set_state(item.id, state)
                except PlaneStateMissing as missing:  # reported clearly; the comment still goes out
                    get_run_logger().warning("Plane work item %s keeps its state: %s", ref, missing)
            if comment:
                plane.add_comment(item.id, comment, link=link, external_id=external_id)
    except Exception as exc:  # noqa: BLE001 - the tracker is optional (B50, B51)
        get_run_logger().warning("Plane work item %s not updated: %s", ref, exc)
        return False
    return True
