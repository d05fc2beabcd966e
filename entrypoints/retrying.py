"""Sending a Blocked work item on (issue 15): `sdlc retry`, Telegram's /retry.

A Blocked work item's pipeline run has ended. Once a person has fixed what stopped
it, a new run of the pipeline continues where it stopped (or at a stage they name),
with the same request, fresh per-visit budgets and their comment for the next agent;
finished stages are not run again. The ledger's transition records who, from where
and why.
"""

from __future__ import annotations

from uuid import UUID

from sdlc.models import (
    Continuation,
    WorkItemRequest,
    WorkItemState,
    pipeline_parameters,
    validate_comment,
    validate_person,
    validate_work_item_id,
)


class NotRetryable(ValueError):
    """The work item cannot be retried (unknown, or not Blocked); the message says why."""


def retry_point(work_item: str, *, stage: str | None, comment: str, by: str) -> tuple[str, str]:
    """The stage a Blocked work item goes on at, and its last run's id, from the ledger alone;
    NotRetryable when it cannot be retried."""
    from sdlc.config import current_graph
    from tasks.ledger import Ledger

    try:
        validate_work_item_id(work_item)
        validate_comment(comment, "--comment")
        validate_person(by, "--by")
    except ValueError as exc:
        raise NotRetryable(str(exc)) from None
    row = Ledger.from_settings().get_work_item(work_item)
    if row is None:
        raise NotRetryable(f"unknown work item {work_item}")
    if row.state != WorkItemState.blocked.value:
        raise NotRetryable(f"{work_item} is {row.state}, not blocked: only a Blocked work item can be retried")
    at = stage or row.stage
    names = [spec.name for spec in current_graph().stages]
    if at not in names:
        raise NotRetryable(f"{work_item} cannot go on at {at!r}: the stages are {', '.join(names)}")
    if not row.flow_run_id:
        raise NotRetryable(f"{work_item} has no run to take its request from; start it with `sdlc run`")
    return at, row.flow_run_id


def continuation_for(
    work_item: str, point: tuple[str, str], *, comment: str, by: str, source: str
) -> tuple[WorkItemRequest, Continuation]:
    """The request of the work item's last run (from Prefect) and its next retry at ``point`` (from retry_point)."""
    from prefect.client.orchestration import get_client

    from tasks.tracking import next_retry

    at, flow_run_id = point
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(UUID(flow_run_id)).parameters
    request = WorkItemRequest.model_validate(parameters["request"])
    return request, next_retry(work_item, stage=at, by=by, source=source, comment=comment)


def retry_blocked(work_item: str, *, stage: str | None, comment: str, by: str, source: str) -> str:
    """Send a Blocked work item on through the sdlc-pipeline deployment (a worker runs it); one line saying so."""
    from prefect.deployments import run_deployment

    from sdlc.sync import sync_result

    point = retry_point(work_item, stage=stage, comment=comment, by=by)
    request, retry = continuation_for(work_item, point, comment=comment, by=by, source=source)
    flow_run = sync_result(
        run_deployment(
            "sdlc-pipeline/sdlc-pipeline", parameters=pipeline_parameters(request, retry), timeout=0, as_subflow=False
        )
    )
    return f"{work_item} {retry.reason}; going on at {retry.stage} (flow run {flow_run.name})"
