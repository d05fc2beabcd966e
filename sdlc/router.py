"""Where a work item goes next (B1): the pipeline's decisions as one pure function.

The pipeline flow does things (runs a stage, waits for a person, merges); this
module decides which thing comes next, from the stage graph, what just happened
and the budgets, with no Prefect and no I/O. :func:`start` gives the first
decision; :func:`decide` turns each event into the next one. The flow is a loop
that carries out decisions and reports events back, so every route and budget
edge is tested by a table of cases (tests/test_router.py) rather than through a
Prefect server.

Each :class:`Decision` says what to record first (a stage transition for the
ledger and the tracker, a gate notice for people), then the one action to take.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdlc.graph import BLOCKED, DONE, Route, StageGraph
from sdlc.models import Feedback, GateResult, PullRequestRef, Transition


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- where the work item is ----------------------------------------------------------------


class Progress(_Frozen):
    """Everything the router remembers between decisions; the flow only carries it."""

    stage: str
    visits: dict[str, int] = Field(default_factory=dict, description="Entries into each stage so far.")
    pull_request: PullRequestRef | None = None
    gate: GateResult | None = Field(default=None, description="The last gate's result, while a person decides on it.")
    judging_again: bool = Field(
        default=False, description="The default branch moved after the gates passed: the merged code is judged again."
    )
    gate_only_visits: dict[str, int] = Field(
        default_factory=dict, description="Visits that ran only the gate again; they spend no budget."
    )

    def visit(self) -> int:
        return self.visits.get(self.stage, 0)


# --- what the flow reports -------------------------------------------------------------------


class StageFinished(_Frozen):
    kind: Literal["stage_finished"] = "stage_finished"
    gate: GateResult
    pull_request: PullRequestRef | None = None


class StageFailed(_Frozen):
    """The stage could not run to its gate (an error a person must look at)."""

    kind: Literal["stage_failed"] = "stage_failed"
    reason: str


class ApprovalGiven(_Frozen):
    kind: Literal["approval"] = "approval"
    approve: bool
    approver: str
    comment: str = ""


class AnswersGiven(_Frozen):
    kind: Literal["answers"] = "answers"
    answers: str
    answered_by: str


class MergeFinished(_Frozen):
    """The pull request was merged (``pull_request`` as merged), merging failed (``error``), or it
    was not merged because the default branch moved since the gates passed (``main_moved``)."""

    kind: Literal["merge"] = "merge"
    pull_request: PullRequestRef | None = None
    error: str | None = None
    main_moved: str | None = None


Event = StageFinished | StageFailed | ApprovalGiven | AnswersGiven | MergeFinished


# --- what the flow does next ------------------------------------------------------------------


class RunStage(_Frozen):
    kind: Literal["run_stage"] = "run_stage"
    stage: str
    visit: int
    feedback: list[Feedback] = Field(default_factory=list)
    gate_only: bool = Field(default=False, description="Judge the merged code again: the gate, no agent.")


class AskForApproval(_Frozen):
    kind: Literal["ask_for_approval"] = "ask_for_approval"
    stage: str
    visit: int


class AskForAnswers(_Frozen):
    kind: Literal["ask_for_answers"] = "ask_for_answers"
    stage: str
    visit: int
    gate: GateResult = Field(description="The gate that asked: its reason, questions (details) and artifact.")


class MergePullRequest(_Frozen):
    kind: Literal["merge_pull_request"] = "merge_pull_request"
    stage: str
    pull_request: PullRequestRef


class Block(_Frozen):
    kind: Literal["block"] = "block"
    at: str
    reason: str


class Finish(_Frozen):
    kind: Literal["finish"] = "finish"
    reason: str
    pull_request: PullRequestRef | None = None


Action = RunStage | AskForApproval | AskForAnswers | MergePullRequest | Block | Finish


class GateNotice(_Frozen):
    """What people are told about a gate: it failed, or it passed with a warning."""

    event: Literal["gate_failed", "gate_warning"]
    message: str
    comment: str


class Decision(_Frozen):
    """Record ``transition``, tell ``notice``, then carry out ``action``; report back with ``progress``."""

    progress: Progress
    action: Action
    transition: Transition | None = None
    notice: GateNotice | None = None


# --- the decisions ------------------------------------------------------------------------------


def start(
    graph: StageGraph,
    at: str | None = None,
    *,
    reason: str = "work item started",
    feedback: list[Feedback] | None = None,
    pull_request: PullRequestRef | None = None,
) -> Decision:
    """The first decision: enter ``at`` (default: the graph's start) with fresh budgets.

    Starting elsewhere than the graph's start is how a person sends a work item on
    from the stage where it stopped, once they have fixed what stopped it (``sdlc retry``):
    with their ``feedback`` for the next agent and the work item's open ``pull_request``.
    """
    stage = at or graph.start
    graph.stage(stage)  # KeyError naming the stage when it is not in the graph
    progress = Progress(stage=stage, pull_request=pull_request)
    return _enter(graph, progress, stage, feedback or [], Transition(from_stage=None, to_stage=stage, reason=reason))


def decide(graph: StageGraph, progress: Progress, event: Event) -> Decision:
    """The next decision after ``event`` happened at ``progress.stage``."""
    stage = progress.stage
    if isinstance(event, StageFailed):
        return Decision(progress=progress, action=Block(at=stage, reason=event.reason))
    if isinstance(event, StageFinished):
        return _after_gate(graph, progress, event)
    if isinstance(event, ApprovalGiven):
        return _after_approval(graph, progress, event)
    if isinstance(event, AnswersGiven):
        return _after_answers(graph, progress, event)
    return _after_merge(graph, progress, event)


def _after_gate(graph: StageGraph, progress: Progress, event: StageFinished) -> Decision:
    spec = graph.stage(progress.stage)
    gate = event.gate
    progress = progress.model_copy(update={"pull_request": event.pull_request or progress.pull_request, "gate": gate})
    if not gate.passed:
        progress = progress.model_copy(update={"judging_again": False})  # back to the ordinary way through
    notice = _gate_notice(graph, progress, gate)
    route = graph.route(progress.stage, gate.outcome)
    if gate.passed and spec.requires_approval:
        action: Action = AskForApproval(stage=progress.stage, visit=progress.visit())
        return Decision(progress=progress, action=action, notice=notice)
    if route.wait_for == "answers":
        action = AskForAnswers(stage=progress.stage, visit=progress.visit(), gate=gate)
        return Decision(progress=progress, action=action, notice=notice)
    feedback = [] if route.feedback == "none" else [_feedback_from(progress.stage, gate)]
    decision = _follow(graph, progress, route, feedback, gate.reason)
    return decision.model_copy(update={"notice": notice})


def _after_approval(graph: StageGraph, progress: Progress, event: ApprovalGiven) -> Decision:
    stage = progress.stage
    if not event.approve:
        feedback = [Feedback(source=f"rejection by {event.approver}", summary=event.comment)]
        reason = f"rejected by {event.approver}: {event.comment}"
        return _enter(graph, progress, stage, feedback, Transition(from_stage=stage, to_stage=stage, reason=reason))
    gate = _pending_gate(progress)
    route = graph.route(stage, gate.outcome)
    feedback = [] if route.feedback == "none" else [_feedback_from(stage, gate)]
    return _follow(graph, progress, route, feedback, f"approved by {event.approver}")


def _after_answers(graph: StageGraph, progress: Progress, event: AnswersGiven) -> Decision:
    gate = _pending_gate(progress)
    route = graph.route(progress.stage, gate.outcome)
    feedback = [
        Feedback(
            source=f"answers from {event.answered_by}",
            summary=f"Questions:\n\n{gate.details}\n\nAnswers:\n\n{event.answers}",
            file=gate.artifact,
        )
    ]
    return _follow(graph, progress, route, feedback, gate.reason)


def _after_merge(graph: StageGraph, progress: Progress, event: MergeFinished) -> Decision:
    number = progress.pull_request.number if progress.pull_request else "?"
    if event.error is not None:
        return Decision(
            progress=progress, action=Block(at=progress.stage, reason=f"merging PR #{number} failed: {event.error}")
        )
    if event.main_moved is not None:
        first = graph.first_to_judge_again()
        if first is None:  # only a graph with up_to_date stages asks; nothing to judge again otherwise
            return Decision(progress=progress, action=Block(at=progress.stage, reason=event.main_moved))
        again = progress.model_copy(update={"judging_again": True})
        return _enter(
            graph, again, first, [], Transition(from_stage=progress.stage, to_stage=first, reason=event.main_moved)
        )
    progress = progress.model_copy(update={"pull_request": event.pull_request or progress.pull_request})
    gate = _pending_gate(progress)
    route = graph.route(progress.stage, gate.outcome).model_copy(update={"merge_pull_request": False})
    return _follow(graph, progress, route, [], gate.reason)


def _follow(graph: StageGraph, progress: Progress, route: Route, feedback: list[Feedback], reason: str) -> Decision:
    """Take ``route`` out of the current stage: merge, block, finish or enter the next stage."""
    stage = progress.stage
    if route.merge_pull_request and progress.pull_request is not None:
        # The merge comes first; its outcome comes back as MergeFinished and this route is followed then.
        return Decision(progress=progress, action=MergePullRequest(stage=stage, pull_request=progress.pull_request))
    gate = progress.gate
    if route.block or route.to == BLOCKED:
        at = route.to if route.to != BLOCKED else stage
        return Decision(progress=progress, action=Block(at=at, reason=gate.reason if gate else reason))
    if route.to == DONE:
        pr = progress.pull_request
        done = f"{stage} passed" + (f", PR #{pr.number} merged" if pr else "")
        return Decision(
            progress=progress.model_copy(update={"stage": DONE, "gate": None}),
            action=Finish(reason=done, pull_request=pr),
            transition=Transition(from_stage=stage, to_stage=DONE, reason=done),
        )
    return _enter(graph, progress, route.to, feedback, Transition(from_stage=stage, to_stage=route.to, reason=reason))


def _enter(
    graph: StageGraph, progress: Progress, stage: str, feedback: list[Feedback], transition: Transition
) -> Decision:
    """Enter ``stage``, spending one of its visits; a spent budget blocks there.

    While the merged code is judged again, stages that need not run again are passed
    over along their pass routes, a stage that judges again with its gate alone runs
    no agent and spends no budget, and the first stage that is not up_to_date ends it.
    """
    spec = graph.stage(stage)
    gate_only = False
    if progress.judging_again:
        passed_over: list[str] = []
        while (
            spec.up_to_date
            and spec.when_main_moves == "skip"
            and spec.routes["pass"].to in _stage_names(graph)
            and stage not in passed_over  # pass routes that go round in a circle end where they began
        ):
            passed_over.append(stage)
            stage = spec.routes["pass"].to
            spec = graph.stage(stage)
        if passed_over:
            note = f" ({', '.join(passed_over)} not run again)"
            transition = transition.model_copy(update={"to_stage": stage, "reason": transition.reason + note})
        gate_only = spec.up_to_date and spec.when_main_moves == "gate"
        if not spec.up_to_date:
            progress = progress.model_copy(update={"judging_again": False})
    visits = {**progress.visits, stage: progress.visits.get(stage, 0) + 1}
    gate_only_visits = dict(progress.gate_only_visits)
    if gate_only:
        gate_only_visits[stage] = gate_only_visits.get(stage, 0) + 1
    progress = progress.model_copy(
        update={"stage": stage, "visits": visits, "gate": None, "gate_only_visits": gate_only_visits}
    )
    spent = visits[stage] - gate_only_visits.get(stage, 0)
    if spec.max_visits is not None and spent > spec.max_visits:
        reason = f"manual intervention needed: {stage} ran {spec.max_visits} times (its budget)"
        return Decision(progress=progress, action=Block(at=stage, reason=reason), transition=transition)
    action = RunStage(stage=stage, visit=visits[stage], feedback=feedback, gate_only=gate_only)
    return Decision(progress=progress, action=action, transition=transition)


def _stage_names(graph: StageGraph) -> set[str]:
    return {s.name for s in graph.stages}


def _gate_notice(graph: StageGraph, progress: Progress, gate: GateResult) -> GateNotice | None:
    stage = progress.stage
    if not gate.passed:
        message = f"{stage} gate: {gate.reason}"
        if gate.report is not None and gate.report.url:
            message += f" (report: {gate.report.url})"
        return GateNotice(
            event="gate_failed", message=message, comment=message + (f"\n\n{gate.details}" if gate.details else "")
        )
    if gate.warning:  # passed, but people should know (e.g. it checked nothing)
        message = f"{stage} gate passed: {gate.warning}"
        return GateNotice(event="gate_warning", message=message, comment=message)
    return None


def _feedback_from(stage: str, gate: GateResult) -> Feedback:
    summary = f"{gate.reason}\n\n{gate.details}" if gate.details else gate.reason
    return Feedback(source=stage, summary=summary, file=gate.artifact, report=gate.report)


def _pending_gate(progress: Progress) -> GateResult:
    if progress.gate is None:
        raise ValueError(f"no gate result at {progress.stage!r} to decide on")
    return progress.gate
