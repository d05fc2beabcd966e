"""The parent pipeline flow: runs the stage flows in the graph's order and follows its routes.

Decisions come from the stage graph (sdlc/graph.py); people decide in pauses with
typed input (approval after the analysis gate, answers to the analyst's
questions). Everything that touches git, processes or the ledger is a task.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.runtime import deployment, flow_run

from flows.inputs import AnalystAnswers, ApprovalDecision
from flows.replay import replayed
from flows.stages import stage_flow
from blocks.plane import StateKey
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
from tasks import forge, notify as notifications, tracking
from tasks.failures import SdlcError, UsageLimitWait

# A resumed run (after a pause, a crash or a retry) replays these instead of redoing them (B21).
merge_pull_request = replayed(forge.merge_pull_request)
notify = replayed(notifications.notify)
record_transition = replayed(tracking.record_transition)
register_work_item = replayed(tracking.register_work_item)
set_work_item_state = replayed(tracking.set_work_item_state)
sync_tracker = replayed(tracking.sync_tracker)


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


_quiet_settings: list[tuple[Any, Any]] = []  # (settings, the same without heartbeats), last seen


@contextlib.contextmanager
def _without_subflow_heartbeat() -> Iterator[None]:
    """Stage subflows send no heartbeats of their own: the pipeline's heartbeat already covers
    the process they run in, and each subflow's heartbeat thread costs up to 1 s to join
    when it ends (measured: the median gap between stages drops by about that much).

    The quiet copy of the settings is made once per settings object: copying Prefect's
    settings validates them all again (about 0.1 s of CPU, per stage, measured).
    """
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    context = get_settings_context()
    cached = next((quiet for settings, quiet in _quiet_settings if settings is context.settings), None)
    if cached is None:
        cached = context.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        _quiet_settings[:] = [(context.settings, cached)]
    with SettingsContext(profile=context.profile, settings=cached):
        yield


def _feedback_from(result: StageResult) -> Feedback:
    gate = result.gate
    summary = f"{gate.reason}\n\n{gate.details}" if gate.details else gate.reason
    return Feedback(source=result.stage, summary=summary, file=gate.artifact)


def _wait_for_input(form: Any, *, key: str, timeout: float | None) -> Any:
    """Wait for a person. A deployed run suspends: no process stays alive while they think (B21)."""
    if deployment.id:
        return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
    # A run without a deployment can only pause in its own process.
    return pause_flow_run(
        wait_for_input=form,
        timeout=timeout,
        poll_interval=get_settings().approval_poll_seconds,
        key=key,
    )


def _tell(
    request: WorkItemRequest,
    run_id: str | None,
    event: notifications.Event,
    message: str,
    *,
    tracker_state: StateKey | None = None,
    comment: str | None = None,
) -> None:
    """One event, to everyone who follows the work item: notifiers (B51) and its tracker (B50)."""
    notify(event, message, work_item=request.work_item, flow_run_id=run_id)
    if request.tracker is not None:
        sync_tracker(request, tracker_state, comment or message, link=notifications.flow_run_url(run_id))


def _move(request: WorkItemRequest, run_id: str | None, from_stage: str | None, to_stage: str, reason: str) -> None:
    """A stage transition: in the ledger, and as the tracker's state and a comment (B50)."""
    record_transition(request.work_item, from_stage, to_stage, reason)
    if request.tracker is not None and to_stage not in (DONE, BLOCKED):
        arrow = f"{from_stage} -> {to_stage}" if from_stage else f"starts at {to_stage}"
        sync_tracker(
            request,
            current_graph().stage(to_stage).tracker_state,
            f"{request.work_item} {arrow}: {reason}",
            link=notifications.flow_run_url(run_id),
        )


def _wait_for_approval(request: WorkItemRequest, stage: str, visit: int, run_id: str | None) -> ApprovalDecision:
    if request.auto_approve:
        return ApprovalDecision(approve=True, approver="auto-approve", comment="")
    set_work_item_state(request.work_item, WorkItemState.waiting_approval, stage, "waiting for approval of the analysis")
    _tell(
        request,
        run_id,
        "approval_requested",
        f"{request.work_item} analysis is ready: approve in the UI or run `sdlc approve {request.work_item}`",
        tracker_state="in_review",
        comment=f"The analysis of {request.work_item} is ready for approval. "
        "Reply /approve to go on, or /reject with what to change.",
    )
    decision: ApprovalDecision = _wait_for_input(
        ApprovalDecision.with_initial_data(
            description=f"Approve the analysis of {request.work_item}: {request.title}", approver="", comment=""
        ),
        key=f"approval-{stage}-{visit}",
        timeout=request.approval_timeout_seconds,
    )
    set_work_item_state(request.work_item, WorkItemState.running, stage, None)
    return decision


def _wait_for_answers(request: WorkItemRequest, result: StageResult, run_id: str | None) -> AnalystAnswers:
    set_work_item_state(request.work_item, WorkItemState.needs_input, result.stage, result.gate.reason)
    _tell(
        request,
        run_id,
        "input_requested",
        f"{request.work_item} needs input: the analyst asked questions ({result.gate.artifact}); "
        f"answer in the UI or run `sdlc answer {request.work_item} --file ANSWERS.md`",
        tracker_state="needs_input",
        comment=f"The analyst of {request.work_item} has questions:\n\n{result.gate.details}\n\n"
        "Reply /answer followed by your answers.",
    )
    answers: AnalystAnswers = _wait_for_input(
        AnalystAnswers.with_initial_data(
            description=f"Questions from the analyst of {request.work_item}:\n\n{result.gate.details}"
        ),
        key=f"answers-{result.stage}-{result.visit}",
        timeout=request.approval_timeout_seconds,
    )
    set_work_item_state(request.work_item, WorkItemState.running, result.stage, None)
    return answers


def _wait_for_usage_reset(request: WorkItemRequest, stage: str, wait: UsageLimitWait, run_id: str | None) -> None:
    """Reschedule this flow run for the reset and end the process (B31): nothing waits in memory.

    The worker (or `sdlc run`, which drives CLI runs) starts the run again at the
    reset; finished stages and tasks are replayed, the stage that hit the limit
    runs again. Without a deployment Prefect cannot reschedule, and the agent task
    waits in-process instead (it never raises this then).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Pause
    from prefect.states import Scheduled

    from tasks.agent import usage_reset_note

    note = usage_reset_note(wait.until)
    # Not replayed: the run that goes on after the reset does not pass here, so these
    # calls must not take ordinals that later calls of the same tasks would replay.
    tracking.set_work_item_state(request.work_item, WorkItemState.waiting_usage_limit, stage, note)
    message = f"{request.work_item} {stage}: {wait.reason}; {note}"
    notifications.notify("usage_limit", message, work_item=request.work_item, flow_run_id=run_id)
    if request.tracker is not None:
        tracking.sync_tracker(request, None, message, link=notifications.flow_run_url(run_id))
    assert run_id is not None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            UUID(run_id), Scheduled(scheduled_time=wait.until, name="AwaitingUsageReset", message=note), force=True
        )
        state = client.read_flow_run(UUID(run_id)).state
    raise Pause(state=state)


@flow(name="sdlc-pipeline", flow_run_name=_pipeline_run_name, on_failure=[_mark_failed], on_crashed=[_mark_failed])
def sdlc_pipeline(request: WorkItemRequest) -> PipelineResult:
    """Take one work item from analysis to a merged pull request, or to Blocked with the reason."""
    graph = current_graph()
    run_id = str(flow_run.id) if flow_run.id else None
    work_item = request.work_item
    register_work_item(request, run_id)
    notify("work_item_started", f"{work_item} started: {request.title}", work_item=work_item, flow_run_id=run_id)

    stage = graph.start
    _move(request, run_id, None, stage, "work item started")
    feedback: list[Feedback] = []
    visits: Counter[str] = Counter()
    pull_request: PullRequestRef | None = None

    def block(at: str, reason: str) -> PipelineResult:
        set_work_item_state(work_item, WorkItemState.blocked, at, reason)
        _tell(request, run_id, "blocked", f"{work_item} blocked at {at}: {reason}", tracker_state="blocked")
        raise WorkItemBlocked(f"{work_item} blocked at {at}: {reason}")

    while True:
        spec = graph.stage(stage)
        visits[stage] += 1
        if spec.max_visits is not None and visits[stage] > spec.max_visits:
            return block(stage, f"manual intervention needed: {stage} ran {spec.max_visits} times (its budget)")
        try:
            with _without_subflow_heartbeat():
                result = stage_flow(StageInput(request=request, stage=stage, visit=visits[stage], feedback=feedback))
        except UsageLimitWait as wait:
            _wait_for_usage_reset(request, stage, wait, run_id)
            raise  # not reached: the run is rescheduled
        except SdlcError as exc:
            return block(stage, str(exc))
        pull_request = result.pull_request or pull_request
        route = graph.route(stage, result.gate.outcome)
        feedback = [] if route.feedback == "none" else [_feedback_from(result)]
        if not result.gate.passed:
            gate = result.gate
            _tell(
                request,
                run_id,
                "gate_failed",
                f"{work_item} {stage} gate: {gate.reason}",
                comment=f"{work_item} {stage} gate: {gate.reason}" + (f"\n\n{gate.details}" if gate.details else ""),
            )
        elif result.gate.warning:  # passed, but people should know (e.g. it checked nothing)
            _tell(request, run_id, "gate_warning", f"{work_item} {stage} gate passed: {result.gate.warning}")

        if result.gate.passed and spec.requires_approval:
            decision = _wait_for_approval(request, stage, visits[stage], run_id)
            if not decision.approve:
                feedback = [Feedback(source=f"rejection by {decision.approver}", summary=decision.comment)]
                _move(request, run_id, stage, stage, f"rejected by {decision.approver}: {decision.comment}")
                continue
            _move(request, run_id, stage, route.to, f"approved by {decision.approver}")
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
            try:
                pull_request = merge_pull_request(request.repo, request.forge, pull_request.number)
            except SdlcError as exc:
                return block(stage, f"merging PR #{pull_request.number} failed: {exc}")
        if route.block or route.to == BLOCKED:
            at = route.to if route.to != BLOCKED else stage
            return block(at, result.gate.reason)
        if route.to == DONE:
            reason = f"{stage} passed" + (f", PR #{pull_request.number} merged" if pull_request else "")
            _move(request, run_id, stage, DONE, reason)
            set_work_item_state(work_item, WorkItemState.done, DONE, reason)
            _tell(request, run_id, "done", f"{work_item} {reason}", tracker_state="done")
            return PipelineResult(
                work_item=work_item, state=WorkItemState.done, stage=DONE, reason=reason, pull_request=pull_request
            )
        if not (result.gate.passed and spec.requires_approval):
            _move(request, run_id, stage, route.to, result.gate.reason)
        stage = route.to
