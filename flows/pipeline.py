"""The parent pipeline flow: runs the stage flows in the graph's order and follows its routes.

Decisions come from the stage graph (sdlc/graph.py); people decide in pauses with
typed input (approval after the analysis gate, answers to the analyst's
questions). Everything that touches git, processes or the ledger is a task.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.runtime import flow_run

from flows.inputs import AnalystAnswers, ApprovalDecision
from flows.stages import stage_flow
from sdlc.config import current_graph
from sdlc.graph import BLOCKED, DONE
from sdlc.models import (
    Feedback,
    PipelineResult,
    PullRequestRef,
    StageInput,
    StageResult,
    WorkItemRequest,
    WorkItemState,
)
from sdlc.settings import get_settings
from tasks.failures import SdlcError
from tasks.forge import merge_pull_request
from tasks.notify import notify
from tasks.tracking import record_transition, register_work_item, set_work_item_state


class WorkItemBlocked(SdlcError):
    """The work item needs a person: the pipeline run ends Failed with the reason."""


def _pipeline_run_name() -> str:
    request: Any = flow_run.parameters.get("request", {})
    if isinstance(request, WorkItemRequest):
        return request.work_item
    return str(request.get("work_item", "work-item"))


def _mark_failed(flow: Any, run: Any, state: Any) -> None:
    """on_failure / on_crashed: a run that ended without deciding leaves a clear ledger row."""
    from tasks.ledger import Ledger

    request = run.parameters.get("request") or {}
    work_item = request.get("work_item") if isinstance(request, dict) else getattr(request, "work_item", None)
    if not work_item:
        return
    ledger = Ledger.from_settings()
    row = ledger.get_work_item(work_item)
    if row is not None and row.state in (WorkItemState.blocked.value, WorkItemState.done.value):
        return
    ledger.set_state(work_item, WorkItemState.failed, reason=state.message or "pipeline run failed")


def _feedback_from(result: StageResult) -> Feedback:
    gate = result.gate
    summary = f"{gate.reason}\n\n{gate.details}" if gate.details else gate.reason
    return Feedback(source=result.stage, summary=summary, file=gate.artifact)


def _wait_for_approval(request: WorkItemRequest, stage: str, visit: int, run_id: str | None) -> ApprovalDecision:
    if request.auto_approve:
        return ApprovalDecision(approve=True, approver="auto-approve", comment="")
    set_work_item_state(request.work_item, WorkItemState.waiting_approval, stage, "waiting for approval of the analysis")
    notify(
        "approval_requested",
        f"{request.work_item} analysis is ready: approve in the UI or run `sdlc approve {request.work_item}`",
        work_item=request.work_item,
        flow_run_id=run_id,
    )
    decision = pause_flow_run(
        wait_for_input=ApprovalDecision.with_initial_data(
            description=f"Approve the analysis of {request.work_item}: {request.title}", approver="", comment=""
        ),
        timeout=request.approval_timeout_seconds,
        poll_interval=get_settings().approval_poll_seconds,
        key=f"approval-{stage}-{visit}",
    )
    set_work_item_state(request.work_item, WorkItemState.running, stage, None)
    return decision


def _wait_for_answers(request: WorkItemRequest, result: StageResult, run_id: str | None) -> AnalystAnswers:
    set_work_item_state(request.work_item, WorkItemState.needs_input, result.stage, result.gate.reason)
    notify(
        "input_requested",
        f"{request.work_item} needs input: the analyst asked questions ({result.gate.artifact}); "
        f"answer in the UI or run `sdlc answer {request.work_item} --file ANSWERS.md`",
        work_item=request.work_item,
        flow_run_id=run_id,
    )
    answers = pause_flow_run(
        wait_for_input=AnalystAnswers.with_initial_data(
            description=f"Questions from the analyst of {request.work_item}:\n\n{result.gate.details}"
        ),
        timeout=request.approval_timeout_seconds,
        poll_interval=get_settings().approval_poll_seconds,
        key=f"answers-{result.stage}-{result.visit}",
    )
    set_work_item_state(request.work_item, WorkItemState.running, result.stage, None)
    return answers


@flow(name="sdlc-pipeline", flow_run_name=_pipeline_run_name, on_failure=[_mark_failed], on_crashed=[_mark_failed])
def sdlc_pipeline(request: WorkItemRequest) -> PipelineResult:
    """Take one work item from analysis to a merged pull request, or to Blocked with the reason."""
    graph = current_graph()
    run_id = str(flow_run.id) if flow_run.id else None
    work_item = request.work_item
    register_work_item(request, run_id)
    notify("work_item_started", f"{work_item} started: {request.title}", work_item=work_item, flow_run_id=run_id)

    stage = graph.start
    record_transition(work_item, None, stage, "work item started")
    feedback: list[Feedback] = []
    visits: Counter[str] = Counter()
    pull_request: PullRequestRef | None = None

    def block(at: str, reason: str) -> PipelineResult:
        set_work_item_state(work_item, WorkItemState.blocked, at, reason)
        notify("blocked", f"{work_item} blocked at {at}: {reason}", work_item=work_item, flow_run_id=run_id)
        raise WorkItemBlocked(f"{work_item} blocked at {at}: {reason}")

    while True:
        spec = graph.stage(stage)
        visits[stage] += 1
        if spec.max_visits is not None and visits[stage] > spec.max_visits:
            return block(stage, f"manual intervention needed: {stage} ran {spec.max_visits} times (its budget)")
        try:
            result = stage_flow(StageInput(request=request, stage=stage, visit=visits[stage], feedback=feedback))
        except SdlcError as exc:
            return block(stage, str(exc))
        pull_request = result.pull_request or pull_request
        route = graph.route(stage, result.gate.outcome)
        feedback = [] if route.feedback == "none" else [_feedback_from(result)]
        if not result.gate.passed:
            notify(
                "gate_failed",
                f"{work_item} {stage} gate: {result.gate.reason}",
                work_item=work_item,
                flow_run_id=run_id,
            )

        if result.gate.passed and spec.requires_approval:
            decision = _wait_for_approval(request, stage, visits[stage], run_id)
            if not decision.approve:
                feedback = [Feedback(source=f"rejection by {decision.approver}", summary=decision.comment)]
                record_transition(work_item, stage, stage, f"rejected by {decision.approver}: {decision.comment}")
                continue
            record_transition(work_item, stage, route.to, f"approved by {decision.approver}")
        elif route.wait_for == "answers":
            answers = _wait_for_answers(request, result, run_id)
            feedback = [
                Feedback(
                    source=f"answers from {answers.answered_by}",
                    summary=f"Questions:\n\n{result.gate.details}\n\nAnswers:\n\n{answers.answers}",
                    file=result.gate.artifact,
                )
            ]

        if route.merge_pull_request and pull_request is not None:
            pull_request = merge_pull_request(request.repo, request.forge, pull_request.number)
        if route.block or route.to == BLOCKED:
            at = route.to if route.to != BLOCKED else stage
            return block(at, result.gate.reason)
        if route.to == DONE:
            reason = f"{stage} passed" + (f", PR #{pull_request.number} merged" if pull_request else "")
            record_transition(work_item, stage, DONE, reason)
            set_work_item_state(work_item, WorkItemState.done, DONE, reason)
            notify("done", f"{work_item} {reason}", work_item=work_item, flow_run_id=run_id)
            return PipelineResult(
                work_item=work_item, state=WorkItemState.done, stage=DONE, reason=reason, pull_request=pull_request
            )
        if not (result.gate.passed and spec.requires_approval):
            record_transition(work_item, stage, route.to, result.gate.reason)
        stage = route.to
