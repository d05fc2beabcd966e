"""Where a work item stands: its ledger row, stage transitions and state (B1, B50).

The tracker sync (Plane) hooks in here, so the pipeline flow has one call per change.
"""

from __future__ import annotations

import uuid

from prefect import task

from blocks import load_block
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
def set_work_item_state(
    work_item: str, state: WorkItemState, stage: str | None = None, reason: str | None = None
) -> None:
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

    Plane allows 60 requests a minute per key, so an update spends as few as it
    can: the item is read (ref to id, and its state) only until the ledger links
    it, after which an update is a PATCH of the state and a comment; state ids
    come from the process-wide cache in :mod:`tasks.plane`.
    """
    if request.tracker is None:
        return False
    from prefect.logging import get_run_logger

    from blocks.plane import PlaneCredentials
    from tasks.plane import PlaneStateMissing, PlaneTracker, PlaneWorkItem

    spec = request.tracker
    ref = spec.ref or request.work_item
    try:
        credentials = load_block(PlaneCredentials, spec.credentials_block)
        ledger = Ledger.from_settings()
        with PlaneTracker(credentials) as plane:
            item_id = _linked_item_id(ledger, request.work_item, spec.credentials_block, ref)
            current: PlaneWorkItem | None = None
            if item_id is None:  # the first update: find the item (and check its project), then link it
                current = plane.work_item(ref)
                item_id = current.id
                ledger.link_tracker_item(request.work_item, "plane", item_id, spec.credentials_block)
            if state is not None:
                try:
                    if current is not None:
                        plane.set_state(item_id, state, current=current)
                    else:
                        plane.move(item_id, state)
                except PlaneStateMissing as missing:  # reported clearly; the comment still goes out
                    get_run_logger().warning("Plane work item %s keeps its state: %s", ref, missing)
            if comment:
                plane.add_comment(item_id, comment, link=link, external_id=external_id)
    except Exception as exc:  # noqa: BLE001 - the tracker is optional (B50, B51)
        get_run_logger().warning("Plane work item %s not updated: %s", ref, exc)
        return False
    return True


def _linked_item_id(ledger: Ledger, work_item: str, credentials_block: str, ref: str) -> str | None:
    """The Plane item id the ledger links the work item to through this block, unless it cannot be ``ref``.

    A link made through another block may be another project's item; a UUID ref is
    checked against the link. A human ref (ENG-42) is trusted: comparing it would
    take the very GET the link spares.
    """
    link = ledger.tracker_link(work_item)
    if link is None or link.tracker != "plane" or link.credentials_block != credentials_block:
        return None
    try:
        if str(uuid.UUID(ref)) != link.tracker_item_id:
            return None
    except ValueError:
        pass  # a human id
    return link.tracker_item_id
