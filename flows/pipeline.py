"""The parent pipeline flow: runs the stage flows in the graph's order and follows its routes.

Decisions come from the stage graph (sdlc/graph.py); people decide in pauses with
typed input (approval after the analysis gate, answers to the analyst's
questions). Everything that touches git, processes or the ledger is a task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import Flow, State, flow
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.runtime import deployment, flow_run

from blocks.plane import StateKey
from flows.inputs import AnalystAnswers, ApprovalDecision
from flows.replay import replayed
from flows.stages import stage_flow
from sdlc import router
from sdlc.config import current_graph
from sdlc.graph import BLOCKED, DONE, StageGraph
from sdlc.models import PipelineResult, StageInput, WorkItemRequest, WorkItemState
from sdlc.settings import get_settings
from tasks import forge, tracking
from tasks import notify as notifications
from tasks.failures import SdlcError, UsageLimitWait
from tasks.graph_check import require_valid_graph

# A resumed run (after a pause, a crash or a retry) replays these instead of redoing them (B21).
merge_pull_request = replayed(forge.merge_pull_request)
notify = replayed(notifications.notify)
record_transition = replayed(tracking.record_transition)
register_work_item = replayed(tracking.register_work_item)
set_work_item_state = replayed(tracking.set_work_item_state)
sync_tracker = replayed(tracking.sync_tracker, ignore=("link",))  # the UI address may differ on resume


class WorkItemBlocked(SdlcError):
    """The work item needs a person: the pipeline run ends Failed with the reason."""


def _pipeline_run_name() -> str:
    request: Any = flow_run.parameters.get("request", {})
    if isinstance(request, WorkItemRequest):
        return request.work_item
    return str(request.get("work_item", "work-item"))


def _mark_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_failure / on_crashed: a run that ended without deciding leaves a clear ledger row.

    The parameters are named as in Prefect's ``FlowStateHook``; ``flow_run`` is the ended
    run here, not ``prefect.runtime.flow_run``.
    """
    from tasks.ledger import Ledger

    request = flow_run.parameters.get("request") or {}
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


def _wait_for_input(form: Any, *, key: str, timeout: int) -> Any:
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


def _move(request: WorkItemRequest, run_id: str | None, graph: StageGraph, transition: router.Transition) -> None:
    """A stage transition: in the ledger, and as the tracker's state and a comment (B50)."""
    from_stage, to_stage, reason = transition.from_stage, transition.to_stage, transition.reason
    record_transition(request.work_item, from_stage, to_stage, reason)
    if request.tracker is not None and to_stage not in (DONE, BLOCKED):
        arrow = f"{from_stage} -> {to_stage}" if from_stage else f"starts at {to_stage}"
        sync_tracker(
            request,
            graph.stage(to_stage).tracker_state,
            f"{request.work_item} {arrow}: {reason}",
            link=notifications.flow_run_url(run_id),
        )


def _wait_for_approval(request: WorkItemRequest, stage: str, visit: int, run_id: str | None) -> ApprovalDecision:
    if request.auto_approve:
        return ApprovalDecision(approve=True, approver="auto-approve", comment="")
    set_work_item_state(
        request.work_item, WorkItemState.waiting_approval, stage, "waiting for approval of the analysis"
    )
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
        # Resume relies on this key: the resumed run finds the person's decision under it (B21).
        key=f"approval-{stage}-{visit}",
        timeout=request.approval_timeout_seconds,
    )
    set_work_item_state(request.work_item, WorkItemState.running, stage, None)
    return decision


def _wait_for_answers(request: WorkItemRequest, action: router.AskForAnswers, run_id: str | None) -> AnalystAnswers:
    gate = action.gate
    set_work_item_state(request.work_item, WorkItemState.needs_input, action.stage, gate.reason)
    _tell(
        request,
        run_id,
        "input_requested",
        f"{request.work_item} needs input: the analyst asked questions ({gate.artifact}); "
        f"answer in the UI or run `sdlc answer {request.work_item} --file ANSWERS.md`",
        tracker_state="needs_input",
        comment=f"The analyst of {request.work_item} has questions:\n\n{gate.details}\n\n"
        "Reply /answer followed by your answers.",
    )
    answers: AnalystAnswers = _wait_for_input(
        AnalystAnswers.with_initial_data(
            description=f"Questions from the analyst of {request.work_item}:\n\n{gate.details}"
        ),
        # Resume relies on this key: the resumed run finds the person's input under it (B21).
        key=f"answers-{action.stage}-{action.visit}",
        timeout=request.approval_timeout_seconds,
    )
    set_work_item_state(request.work_item, WorkItemState.running, action.stage, None)
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
    """Take one work item from analysis to a merged pull request, or to Blocked with the reason.

    A loop over the router's decisions (sdlc/router.py): this flow carries them out and
    reports what happened; where the work item goes next is decided there.
    """
    graph = current_graph()
    run_id = str(flow_run.id) if flow_run.id else None
    work_item = request.work_item
    register_work_item(request, run_id)
    require_valid_graph(graph, request.repo)  # every problem named before any agent runs
    notify("work_item_started", f"{work_item} started: {request.title}", work_item=work_item, flow_run_id=run_id)

    decision = router.start(graph)
    while True:
        progress, action = decision.progress, decision.action
        if decision.transition is not None:
            _move(request, run_id, graph, decision.transition)
        if decision.notice is not None:
            notice = decision.notice
            _tell(
                request, run_id, notice.event, f"{work_item} {notice.message}", comment=f"{work_item} {notice.comment}"
            )
        event: router.Event
        if isinstance(action, router.RunStage):
            event = _run_stage(request, action, run_id)
        elif isinstance(action, router.AskForApproval):
            decided = _wait_for_approval(request, action.stage, action.visit, run_id)
            event = router.ApprovalGiven(approve=decided.approve, approver=decided.approver, comment=decided.comment)
        elif isinstance(action, router.AskForAnswers):
            answers = _wait_for_answers(request, action, run_id)
            event = router.AnswersGiven(answers=answers.answers, answered_by=answers.answered_by)
        elif isinstance(action, router.MergePullRequest):
            try:
                merged = merge_pull_request(request.repo, request.forge, action.pull_request.number)
                event = router.MergeFinished(pull_request=merged)
            except SdlcError as exc:
                event = router.MergeFinished(error=str(exc))
        elif isinstance(action, router.Block):
            set_work_item_state(work_item, WorkItemState.blocked, action.at, action.reason)
            message = f"{work_item} blocked at {action.at}: {action.reason}"
            _tell(request, run_id, "blocked", message, tracker_state="blocked")
            raise WorkItemBlocked(message)
        else:
            set_work_item_state(work_item, WorkItemState.done, DONE, action.reason)
            _tell(request, run_id, "done", f"{work_item} {action.reason}", tracker_state="done")
            return PipelineResult(
                work_item=work_item,
                state=WorkItemState.done,
                stage=DONE,
                reason=action.reason,
                pull_request=action.pull_request,
            )
        decision = router.decide(graph, progress, event)


def _run_stage(request: WorkItemRequest, action: router.RunStage, run_id: str | None) -> router.Event:
    """Run one stage's subflow; its gate's result, or the error that stopped it, is the event."""
    stage_input = StageInput(request=request, stage=action.stage, visit=action.visit, feedback=action.feedback)
    try:
        with _without_subflow_heartbeat():
            result = stage_flow(stage_input)
    except UsageLimitWait as wait:
        _wait_for_usage_reset(request, action.stage, wait, run_id)
        raise  # not reached: the run is rescheduled
    except SdlcError as exc:
        return router.StageFailed(reason=str(exc))
    return router.StageFinished(gate=result.gate, pull_request=result.pull_request)
