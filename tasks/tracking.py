"""Where a work item stands: its ledger row, stage transitions and state (B1), and who is told (B50, B51).

A pipeline step (a transition, a state, a pull request, what people are told of it)
is one task run, :func:`record_step`: the flow has one call per step, and the
Prefect server one task run's events to keep instead of four.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from prefect import task

from blocks import load_block
from blocks.plane import StateKey
from sdlc.models import (
    RETRIED_BY,
    Announcement,
    Continuation,
    StepRecord,
    WorkItemRequest,
    WorkItemState,
)
from tasks.git import run_logger
from tasks.ledger import Ledger
from tasks.notify import announce, flow_run_url
from tasks.work_item_page import publish_work_item_page
from tasks.worktree import repo_slug

logger = logging.getLogger("sdlc.tracking")


@task(name="register-work-item")
def register_work_item(request: WorkItemRequest, flow_run_id: str | None) -> None:
    """The work item's ledger row, as this run starts it; the run's tags name the work item and its repository."""
    Ledger.from_settings().upsert_work_item(request, flow_run_id=flow_run_id)
    if flow_run_id is not None:
        tag_pipeline_run(flow_run_id, pipeline_tags(request))


def pipeline_tags(request: WorkItemRequest) -> list[str]:
    """``work-item:<ID>`` and ``repo:<name>``: the Prefect UI's Runs page filters a work item's runs by them."""
    return [f"work-item:{request.work_item}", f"repo:{repo_slug(request.repo)}"]


def tag_pipeline_run(flow_run_id: str, tags: list[str]) -> None:
    """Add ``tags`` to the flow run's own; one that cannot be tagged is a warning, never a failure."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            missing = [tag for tag in tags if tag not in run.tags]
            if missing:
                client.update_flow_run(uuid.UUID(flow_run_id), tags=[*run.tags, *missing])
    except Exception as exc:  # noqa: BLE001 - tags help people find runs; the run goes on without them
        _run_logger().warning("flow run %s not tagged %s: %s", flow_run_id, ", ".join(tags), exc)


@task(name="record-step")
def record_step(request: WorkItemRequest, flow_run_id: str | None, step: StepRecord) -> None:
    """One step of a pipeline run: the ledger's transition, state and pull request, then each
    announcement to the notifiers and the tracker.

    One task run rather than one per write: each task run costs the Prefect server
    about 30 ms of CPU for its events and the flow's process about 15 ms for its
    engine, and a step's writes read as one thing in the UI. Notifiers and the
    tracker never fail the step; the ledger does (the pipeline cannot go on without it). The work
    item's page (the artifact ``work-item-<id>``) is published again after the ledger's writes.
    """
    ledger = Ledger.from_settings()
    work_item = request.work_item
    if step.transition is not None:
        move = step.transition
        ledger.record_transition(work_item, from_stage=move.from_stage, to_stage=move.to_stage, reason=move.reason)
    if step.state is not None:
        ledger.set_state(work_item, step.state, stage=step.stage, reason=step.reason)
    if step.pull_request is not None:
        ledger.set_pull_request(work_item, step.pull_request.number, step.pull_request.url)
    publish_work_item_page(request, flow_run_id, ledger=ledger)  # the work item's page, as of this step
    link, log = flow_run_url(flow_run_id), _run_logger()
    for said in step.announcements:
        tell(request, said, link=link, log=log)


def tell(
    request: WorkItemRequest, said: Announcement, *, link: str | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """One announcement: to the notifiers when it names an event, to the work item's tracker when it has one."""
    if said.event is not None:
        announce(said.event, said.message, work_item=request.work_item, link=link, log=log, details=said.details)
    if request.tracker is not None and (said.comment is not None or said.tracker_state is not None):
        sync_tracker(request, said.tracker_state, said.comment, link=link)


def record_failure(work_item: str, request: WorkItemRequest | None, flow_run_id: str | None, reason: str) -> None:
    """A pipeline run that ended otherwise than Blocked or done (an unexpected error, a crash): its
    ledger row says failed, and the notifiers and the tracker are told (B51, B50).

    ``request`` is None when the run's parameters no longer validate: then only the notifiers hear.
    """
    ledger = Ledger.from_settings()
    row = ledger.get_work_item(work_item)
    if row is not None and row.state in (WorkItemState.blocked.value, WorkItemState.done.value):
        return  # decided, and said, by the pipeline itself
    if row is not None:
        ledger.set_state(work_item, WorkItemState.failed, reason=reason)
        if request is not None:
            publish_work_item_page(request, flow_run_id, ledger=ledger)
    message = f"{work_item} failed: {reason}"
    link, log = flow_run_url(flow_run_id), _run_logger()
    if request is None:
        announce("failed", message, work_item=work_item, link=link, log=log, details={"reason": reason})
    else:
        said = Announcement(
            event="failed", message=message, details={"reason": reason}, tracker_state="blocked", comment=message
        )
        tell(request, said, link=link, log=log)


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return run_logger(logger)


def sync_tracker(
    request: WorkItemRequest,
    state: StateKey | None,
    comment: str | None,
    *,
    link: str | None = None,
    external_id: str | None = None,
) -> bool:
    """Keep the work item's Plane item in step (B50): its state and a comment; a GitLab issue gets the
    comment as a note (:func:`note_on_gitlab_issue`).

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
    if request.tracker.kind == "gitlab":
        return note_on_gitlab_issue(request, comment, link=link)
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
                    _run_logger().warning("Plane work item %s keeps its state: %s", ref, missing)
            if comment:
                plane.add_comment(item_id, comment, link=link, external_id=external_id)
    except Exception as exc:  # noqa: BLE001 - the tracker is optional (B50, B51)
        _run_logger().warning("Plane work item %s not updated: %s", ref, exc)
        return False
    return True


def note_on_gitlab_issue(request: WorkItemRequest, comment: str | None, *, link: str | None = None) -> bool:
    """Tell the GitLab issue the work item came from (issue 19): one note per comment, with the run's
    link. GitLab issues have no workflow state to move. Optional like every tracker: a failure is a warning."""
    from blocks.forge import GitLabCredentials
    from tasks.forge_gitlab import GitLabForge

    spec = request.tracker
    if spec is None or not comment:
        return False
    owner, name, iid = spec.gitlab_issue
    try:
        credentials = load_block(GitLabCredentials, spec.credentials_block)
        with GitLabForge(credentials=credentials, owner=owner, repo=name) as gitlab:
            gitlab.comment_on_issue(issue=iid, body=comment + (f"\n\n[The run in Prefect]({link})" if link else ""))
    except Exception as exc:  # noqa: BLE001 - the tracker is optional (B50, B51)
        _run_logger().warning("GitLab issue %s not told: %s", spec.ref, exc)
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


def next_retry(work_item: str, *, stage: str, by: str, source: str, comment: str = "") -> Continuation:
    """The work item's next retry at ``stage``, numbered after the earlier ones (each one's start
    transition in the ledger says so)."""
    transitions = Ledger.from_settings().transitions(work_item)
    number = 1 + sum(1 for t in transitions if t.from_stage is None and t.reason.startswith(RETRIED_BY))
    return Continuation(stage=stage, number=number, by=by, source=source, comment=comment)


def blocked_at(work_item: str, flow_run_id: str) -> str | None:
    """The stage where this flow run left the work item Blocked, else None (a rerun of it is a person's Retry)."""
    row = Ledger.from_settings().get_work_item(work_item)
    if row is None or row.flow_run_id != flow_run_id or row.state != WorkItemState.blocked.value:
        return None
    return row.stage


def had_pull_request(work_item: str) -> bool:
    """Whether a stage of the work item opened its pull request (the ledger keeps its number, whatever the forge)."""
    row = Ledger.from_settings().get_work_item(work_item)
    return row is not None and row.pr_number is not None
