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
from pydantic import ValidationError

from flows.inputs import AnalystAnswers, ApprovalDecision
from flows.replay import replayed
from flows.stages import ensure_pull_request, stage_flow
from sdlc import router
from sdlc.config import current_graph
from sdlc.graph import BLOCKED, DONE, StageGraph
from sdlc.models import (
    Announcement,
    Continuation,
    Feedback,
    NotifyEvent,
    PipelineResult,
    StageInput,
    StepRecord,
    TrackerState,
    Transition,
    WorkItemRequest,
    WorkItemState,
    pipeline_parameters,
)
from sdlc.settings import get_settings, settings_in_force
from tasks import artifacts, forge, tracking
from tasks.artifacts import PublishedDocuments
from tasks.failures import SdlcError, UsageLimitWait
from tasks.graph_check import require_valid_graph
from tasks.notify import flow_run_url
from tasks.taskfile import named_agent

# A resumed run (after a pause, a crash or a retry) replays these instead of redoing them (B21).
merge_pull_request = replayed(forge.merge_pull_request)
merge_tested_pull_request = replayed(forge.merge_tested_pull_request)
publish_documents = replayed(artifacts.publish_documents)
tell_pull_request_story = replayed(artifacts.tell_pull_request_story)
record_step = replayed(tracking.record_step)
register_work_item = replayed(tracking.register_work_item)


class WorkItemBlocked(SdlcError):
    """The work item needs a person: the pipeline run ends Failed with the reason."""


def _pipeline_run_name() -> str:
    request: Any = flow_run.parameters.get("request", {})
    retry: Any = flow_run.parameters.get("retry")
    work_item = (
        request.work_item if isinstance(request, WorkItemRequest) else str(request.get("work_item", "work-item"))
    )
    number = retry.number if isinstance(retry, Continuation) else (retry or {}).get("number")
    return f"{work_item}-retry-{number}" if number else work_item


def _mark_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_failure / on_crashed: a run that ended without deciding leaves a clear ledger row and says so.

    The parameters are named as in Prefect's ``FlowStateHook``; ``flow_run`` is the ended
    run here, not ``prefect.runtime.flow_run``.
    """
    given = flow_run.parameters.get("request") or {}
    try:
        request: WorkItemRequest | None = WorkItemRequest.model_validate(given)
    except ValidationError:
        request = None  # told to the notifiers only
    work_item = request.work_item if request else (given.get("work_item") if isinstance(given, dict) else None)
    if work_item:
        tracking.record_failure(work_item, request, str(flow_run.id), state.message or "pipeline run failed")


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


def _decision_record(
    request: WorkItemRequest, graph: StageGraph, decision: router.Decision, carried: StepRecord
) -> StepRecord:
    """What a decision leaves behind before its action: its transition (ledger, notifiers, tracker) and gate notice."""
    work_item = request.work_item
    said = list(carried.announcements)
    move = decision.transition
    if move is not None and move.to_stage not in (DONE, BLOCKED):
        arrow = f"{move.from_stage} -> {move.to_stage}" if move.from_stage else f"starts at {move.to_stage}"
        text = f"{work_item} {arrow}: {move.reason}"
        said.append(
            Announcement(
                event="stage_changed",
                message=text,
                details=move.model_dump(),
                tracker_state=graph.stage(move.to_stage).tracker_state,
                comment=text,
            )
        )
    if decision.notice is not None:
        notice = decision.notice
        said.append(
            Announcement(
                event=notice.event, message=f"{work_item} {notice.message}", comment=f"{work_item} {notice.comment}"
            )
        )
    return carried.model_copy(update={"transition": move, "announcements": said})


def _said(
    event: NotifyEvent, message: str, *, tracker_state: TrackerState | None = None, comment: str | None = None
) -> Announcement:
    """An event for the notifiers and the tracker (whose comment is the message unless given)."""
    return Announcement(event=event, message=message, tracker_state=tracker_state, comment=comment or message)


def _with_state(
    record: StepRecord, state: WorkItemState, stage: str | None, reason: str | None, *said: Announcement
) -> StepRecord:
    return record.model_copy(
        update={"state": state, "stage": stage, "reason": reason, "announcements": [*record.announcements, *said]}
    )


# After a person answered, the work item runs again; its stage is the one the next transition names.
_RUNNING_AGAIN = StepRecord(state=WorkItemState.running)


def _approval_form_text(request: WorkItemRequest, stage: str, published: PublishedDocuments) -> str:
    """The Resume form's description: what is approved, where to read it, the acceptance criteria quoted."""
    lines = [f"Approve the {stage} of {request.work_item}: {request.title}"]
    if published.url:
        names = ", ".join(name for name, text in published.documents.items() if text is not None)
        lines += ["", f"**Read the {stage}:** [{published.key}]({published.url}) ({names})"]
    criteria = published.quote("acceptance")
    if criteria:
        lines += ["", "**Acceptance criteria:**", "", criteria]
    return "\n".join(lines)


def _wait_for_approval(
    request: WorkItemRequest,
    graph: StageGraph,
    action: router.AskForApproval,
    run_id: str | None,
    record: StepRecord,
) -> tuple[router.Event, StepRecord]:
    """The approval event, and what the next step records; ``record`` is written before the wait."""
    work_item = request.work_item
    if request.auto_approve:
        _record(request, run_id, record)
        return router.ApprovalGiven(approve=True, approver="auto-approve", comment=""), StepRecord()
    stage = action.stage
    # What is approved, on the run's page: the person reads it there, through the form's link.
    published = publish_documents(
        request, stage, f"The {stage} of {work_item}: {request.title}", graph.stage(stage).artifacts
    )
    read_it = f"; read it: {published.url}" if published.url else ""
    asked = _said(
        "approval_requested",
        f"{work_item} {stage} is ready{read_it}; approve in the UI or run `sdlc approve {work_item}`; "
        f"in chat: /approve {work_item} [comment], /reject {work_item} what to change",
        tracker_state="in_review",
        comment=f"The {stage} of {work_item} is ready for approval"
        + (f": {published.url}" if published.url else ".")
        + "\n\nReply /approve to go on, or /reject with what to change.",
    )
    _record(
        request,
        run_id,
        _with_state(
            record, WorkItemState.waiting_approval, action.stage, "waiting for approval of the analysis", asked
        ),
    )
    decided: ApprovalDecision = _wait_for_input(
        ApprovalDecision.with_initial_data(
            description=_approval_form_text(request, stage, published), approver="", comment=""
        ),
        # Resume relies on this key: the resumed run finds the person's decision under it (B21).
        key=f"approval-{action.stage}-{action.visit}",
        timeout=request.approval_timeout_seconds,
    )
    event = router.ApprovalGiven(approve=decided.approve, approver=decided.approver, comment=decided.comment)
    return event, _RUNNING_AGAIN


def _wait_for_answers(
    request: WorkItemRequest, action: router.AskForAnswers, run_id: str | None, record: StepRecord
) -> tuple[router.Event, StepRecord]:
    """The analyst's answers as an event, and what the next step records; ``record`` is written before the wait."""
    gate, work_item = action.gate, request.work_item
    questions = [gate.artifact.rsplit("/", 1)[-1]] if gate.artifact else []
    published = publish_documents(request, "questions", f"Questions about {work_item}: {request.title}", questions)
    read_it = f" ({published.url})" if published.url and questions else ""
    asked = _said(
        "input_requested",
        f"{work_item} needs input: the analyst asked questions ({gate.artifact}){read_it}; "
        f"answer in the UI or run `sdlc answer {work_item} --file ANSWERS.md`; in chat: /answer {work_item} your answers",
        tracker_state="needs_input",
        comment=f"The analyst of {work_item} has questions:\n\n{gate.details}\n\n"
        "Reply /answer followed by your answers.",
    )
    _record(request, run_id, _with_state(record, WorkItemState.needs_input, action.stage, gate.reason, asked))
    answers: AnalystAnswers = _wait_for_input(
        AnalystAnswers.with_initial_data(
            description=f"Questions from the analyst of {work_item}{read_it}:\n\n{gate.details}"
        ),
        # Resume relies on this key: the resumed run finds the person's input under it (B21).
        key=f"answers-{action.stage}-{action.visit}",
        timeout=request.approval_timeout_seconds,
    )
    return router.AnswersGiven(answers=answers.answers, answered_by=answers.answered_by), _RUNNING_AGAIN


def _record(request: WorkItemRequest, run_id: str | None, record: StepRecord) -> None:
    """Write a step's record, unless there is nothing in it (no task run for nothing)."""
    if record != StepRecord():
        record_step(request, run_id, record)


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
    # Not replayed: the run that goes on after the reset does not pass here, so this
    # call must not take an ordinal that later calls of the same task would replay.
    message = f"{request.work_item} {stage}: {wait.reason}; {note}"
    said = Announcement(event="usage_limit", message=message, comment=message)
    tracking.record_step(
        request,
        run_id,
        StepRecord(state=WorkItemState.waiting_usage_limit, stage=stage, reason=note, announcements=[said]),
    )
    assert run_id is not None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            UUID(run_id), Scheduled(scheduled_time=wait.until, name="AwaitingUsageReset", message=note), force=True
        )
        state = client.read_flow_run(UUID(run_id)).state
    raise Pause(state=state)


@flow(name="sdlc-pipeline", flow_run_name=_pipeline_run_name, on_failure=[_mark_failed], on_crashed=[_mark_failed])
def sdlc_pipeline(request: WorkItemRequest, retry: Continuation | None = None) -> PipelineResult:
    """Take one work item from analysis to a merged pull request, or to Blocked with the reason.

    A loop over the router's decisions (sdlc/router.py): this flow carries them out and
    reports what happened; where the work item goes next is decided there.
    """
    # The settings the process that runs this flow handed down (the CLI, `sdlc worker`), or,
    # when Prefect's own worker started the process, read here once for the whole run.
    with settings_in_force():
        return _follow_the_graph(request, retry)


def _first_decision(
    request: WorkItemRequest, graph: StageGraph, retry: Continuation | None
) -> tuple[router.Decision, StepRecord]:
    """Where the run begins: the graph's start, or where a person sent the Blocked work item on."""
    work_item = request.work_item
    if retry is None:
        started = Announcement(event="work_item_started", message=f"{work_item} started: {request.title}")
        return router.start(graph), StepRecord(announcements=[started])
    feedback = [Feedback(source=f"retry by {retry.by}", summary=retry.comment)] if retry.comment else []
    pull_request = None
    if tracking.had_pull_request(work_item):  # the forge's open PR of the branch, to merge at the end
        pull_request = ensure_pull_request(
            request.repo,
            request.forge,
            request.feature_branch,
            f"{work_item}: {request.title}",
            request.description,
            work_item,
        )
    decision = router.start(graph, retry.stage, reason=retry.reason, feedback=feedback, pull_request=pull_request)
    continued = Announcement(
        event="work_item_started", message=f"{work_item} {retry.reason}; going on at {retry.stage}"
    )
    return decision, StepRecord(announcements=[continued])


def _retried_from_the_ui(request: WorkItemRequest, run_id: str | None) -> PipelineResult | None:
    """The UI's Retry on a Blocked run: the work item goes on where it stopped, as with `sdlc retry`.

    The Blocked run's own replayed calls and stage subflows stand for the way that led to
    the block, so the work item goes on in a new run of this deployment (fresh budgets),
    and this one ends saying which.
    """
    if run_id is None or flow_run.run_count < 2 or not deployment.id:
        return None  # a first execution (no ledger read on this path), or no deployment to go on in
    stage = tracking.blocked_at(request.work_item, run_id)
    if stage is None:
        return None
    from prefect.deployments import run_deployment

    from sdlc.sync import sync_result

    retry = tracking.next_retry(request.work_item, stage=stage, by="Prefect UI", source="ui")
    continued: Any = sync_result(
        run_deployment(UUID(deployment.id), parameters=pipeline_parameters(request, retry), timeout=0, as_subflow=False)
    )
    reason = f"{retry.reason}; going on at {stage} in flow run {continued.name}"
    return PipelineResult(work_item=request.work_item, state=WorkItemState.running, stage=stage, reason=reason)


def _follow_the_graph(request: WorkItemRequest, retry: Continuation | None) -> PipelineResult:
    graph = current_graph()
    run_id = str(flow_run.id) if flow_run.id else None
    work_item = request.work_item
    if retry is None and (handed_on := _retried_from_the_ui(request, run_id)) is not None:
        return handed_on
    register_work_item(request, run_id)
    require_valid_graph(graph, request.repo, request.agent)  # every problem named before any agent runs
    # No default agent: a run that names none takes SDLC_AGENT_PROFILE or the repository's, or stops here.
    request = request.model_copy(update={"agent": named_agent(request)})

    # What the next step records besides its decision: here the start, later a person's answer or a PR.
    decision, carried = _first_decision(request, graph, retry)
    retries = retry.number if retry is not None else 0
    while True:
        progress, action = decision.progress, decision.action
        record = _decision_record(request, graph, decision, carried)
        carried = StepRecord()
        event: router.Event
        if isinstance(action, router.RunStage):
            _record(request, run_id, record)
            event = _run_stage(request, graph, action, run_id, retries)
            if isinstance(event, router.StageFinished) and event.pull_request is not None:
                carried = StepRecord(pull_request=event.pull_request)
            if isinstance(event, router.StageFinished) and event.gate.passed:
                pull_request = event.pull_request or progress.pull_request
                if pull_request is not None:  # reviewers on the forge read the story so far in the PR
                    tell_pull_request_story(request, pull_request, action.stage, flow_run_url(run_id))
        elif isinstance(action, router.AskForApproval):
            event, carried = _wait_for_approval(request, graph, action, run_id, record)
        elif isinstance(action, router.AskForAnswers):
            event, carried = _wait_for_answers(request, action, run_id, record)
        elif isinstance(action, router.MergePullRequest):
            _record(request, run_id, record)
            event = _merge(request, graph, action)
        elif isinstance(action, router.Block):
            message = f"{work_item} blocked at {action.at}: {action.reason}"
            once_fixed = f"; once fixed: `sdlc retry {work_item} --comment WHAT-CHANGED`, or /retry {work_item} in chat"
            blocked = _said("blocked", message + once_fixed, tracker_state="blocked")
            _record(request, run_id, _with_state(record, WorkItemState.blocked, action.at, action.reason, blocked))
            raise WorkItemBlocked(message)
        else:
            done = _said("done", f"{work_item} {action.reason}", tracker_state="done")
            _record(request, run_id, _with_state(record, WorkItemState.done, DONE, action.reason, done))
            return PipelineResult(
                work_item=work_item,
                state=WorkItemState.done,
                stage=DONE,
                reason=action.reason,
                pull_request=action.pull_request,
            )
        decision = router.decide(graph, progress, event)


def _merge(request: WorkItemRequest, graph: StageGraph, action: router.MergePullRequest) -> router.MergeFinished:
    """Merge the work item's PR while its branch is the commit the gates judged; where stages judge merged
    code, only when its branch holds the default branch as it is now (else it comes back saying what moved)."""
    number = action.pull_request.number
    try:
        if graph.keeps_up_to_date:
            outcome = merge_tested_pull_request(request.repo, request.forge, number, request.feature_branch)
            return router.MergeFinished(pull_request=outcome.pull_request, main_moved=outcome.main_moved)
        merged = merge_pull_request(request.repo, request.forge, number, request.feature_branch)
        return router.MergeFinished(pull_request=merged)
    except SdlcError as exc:
        return router.MergeFinished(error=str(exc))


def _run_stage(
    request: WorkItemRequest, graph: StageGraph, action: router.RunStage, run_id: str | None, retries: int
) -> router.Event:
    """Run one stage's subflow; its gate's result, or the error that stopped it, is the event."""
    stage_input = StageInput(
        request=request,
        stage=action.stage,
        visit=action.visit,
        feedback=action.feedback,
        retry=retries,
        gate_only=action.gate_only,
    )
    try:
        with _without_subflow_heartbeat():
            result = stage_flow(stage_input)
    except UsageLimitWait as wait:
        _wait_for_usage_reset(request, action.stage, wait, run_id)
        raise  # not reached: the run is rescheduled
    except SdlcError as exc:
        return router.StageFailed(reason=str(exc))
    for update in result.brought_up_to_date:  # each merge of the default branch, in the ledger and for people
        move = Transition(from_stage=action.stage, to_stage=action.stage, reason=update.reason())
        text = f"{request.work_item} {action.stage}: {update.reason()}"
        said = Announcement(
            event="stage_changed",
            message=text,
            details=move.model_dump(),
            tracker_state=graph.stage(action.stage).tracker_state,
            comment=text,
        )
        _record(request, run_id, StepRecord(transition=move, announcements=[said]))
    return router.StageFinished(gate=result.gate, pull_request=result.pull_request)
