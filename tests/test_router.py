"""The router (sdlc/router.py) as a table: every route of the default graph, every budget edge, a custom graph.

Plain function calls: no Prefect, no git, no server.
"""

from __future__ import annotations

from typing import Any

import pytest

from sdlc import router
from sdlc.graph import DEFAULT_GRAPH, StageGraph
from sdlc.models import GateResult, PullRequestRef, ReportLink

PR = PullRequestRef(number=7, url="local://pulls/7", branch="feature/X-1", base="main", title="X-1", state="open")
MERGED = PR.model_copy(update={"state": "merged", "merge_commit": "abc123"})


def gate(outcome: str, *, passed: bool | None = None, details: str = "", artifact: str | None = None, **kw: Any) -> GateResult:
    passed = outcome == "pass" if passed is None else passed
    return GateResult(outcome=outcome, passed=passed, reason=f"gate said {outcome}", details=details, artifact=artifact, **kw)


def at(stage: str, visits: dict[str, int] | None = None, **kw: Any) -> router.Progress:
    return router.Progress(stage=stage, visits=visits or {stage: 1}, **kw)


def finished(outcome: str, **kw: Any) -> router.StageFinished:
    return router.StageFinished(gate=gate(outcome, **kw))


def summary(decision: router.Decision) -> tuple[str, str | None, int | None]:
    """(action kind, stage or place, visit) of a decision, for the tables."""
    action = decision.action
    where = getattr(action, "stage", None) or getattr(action, "at", None)
    return action.kind, where, getattr(action, "visit", None)


# Every route of the default graph: stage, gate outcome -> what comes next.
@pytest.mark.parametrize(
    ("stage", "outcome", "expected", "feedback_from"),
    [
        ("analysis", "pass", ("ask_for_approval", "analysis", 1), None),
        ("analysis", "questions", ("ask_for_answers", "analysis", 1), None),
        ("analysis", "missing", ("block", "analysis", None), None),
        ("architecture", "pass", ("run_stage", "development", 1), None),
        ("architecture", "conflict", ("run_stage", "analysis", 2), "architecture"),
        ("architecture", "missing", ("block", "architecture", None), None),
        ("development", "pass", ("run_stage", "review", 1), None),
        ("development", "fail", ("run_stage", "development", 2), "development"),
        ("review", "pass", ("run_stage", "testing", 1), None),
        ("review", "request_changes", ("run_stage", "development", 2), "review"),
        ("review", "missing", ("block", "review", None), None),
        ("testing", "pass", ("run_stage", "deploy", 1), None),
        ("testing", "fail", ("run_stage", "development", 2), "testing"),
        ("testing", "missing", ("block", "testing", None), None),
        ("deploy", "fail", ("block", "development", None), None),
        ("review", "an-outcome-nobody-routes", ("block", "review", None), None),
    ],
)
def test_every_route_of_the_default_graph(
    stage: str, outcome: str, expected: tuple[str, str, int | None], feedback_from: str | None
) -> None:
    order = [spec.name for spec in DEFAULT_GRAPH.stages]
    visits = {name: 1 for name in order[: order.index(stage) + 1]}  # each stage so far entered once
    decision = router.decide(DEFAULT_GRAPH, at(stage, visits), finished(outcome, details="the findings", artifact="a.md"))
    assert summary(decision) == expected
    if expected[0] == "run_stage":
        assert decision.transition == router.Transition(from_stage=stage, to_stage=expected[1], reason=f"gate said {outcome}")
        feedback = decision.action.feedback  # type: ignore[union-attr]
        if feedback_from is None:
            assert feedback == []
        else:  # the failing gate's findings, not only its file name, reach the next agent
            [item] = feedback
            assert (item.source, item.file) == (feedback_from, "a.md")
            assert "the findings" in item.summary and f"gate said {outcome}" in item.summary
    if expected[0] == "block":
        assert decision.action.reason == f"gate said {outcome}"  # type: ignore[union-attr]
        assert decision.transition is None


def test_start_enters_the_graph_start_with_fresh_budgets() -> None:
    decision = router.start(DEFAULT_GRAPH)
    assert summary(decision) == ("run_stage", "analysis", 1)
    assert decision.transition == router.Transition(from_stage=None, to_stage="analysis", reason="work item started")
    assert decision.progress.visits == {"analysis": 1}


def test_start_at_any_stage_with_fresh_budgets() -> None:
    decision = router.start(DEFAULT_GRAPH, "development", reason="retried by ana")
    assert summary(decision) == ("run_stage", "development", 1)
    assert decision.progress.visits == {"development": 1}
    assert decision.transition and decision.transition.reason == "retried by ana"
    with pytest.raises(KeyError, match="nowhere"):
        router.start(DEFAULT_GRAPH, "nowhere")


def test_a_retry_at_deploy_carries_the_comment_and_merges_the_open_pull_request() -> None:
    from sdlc.models import Feedback

    said = Feedback(source="retry by ana", summary="smoke host is back")
    decision = router.start(DEFAULT_GRAPH, "deploy", reason="retried by ana", feedback=[said], pull_request=PR)
    assert isinstance(decision.action, router.RunStage) and decision.action.feedback == [said]
    after = router.decide(DEFAULT_GRAPH, decision.progress, finished("pass"))
    assert isinstance(after.action, router.MergePullRequest) and after.action.pull_request == PR


@pytest.mark.parametrize(("visits_so_far", "expected"), [(1, ("run_stage", "development", 2)), (2, ("run_stage", "development", 3)), (3, ("block", "development", None))])
def test_development_budget_edges(visits_so_far: int, expected: tuple[str, str, int | None]) -> None:
    """Development may run 3 times (max_visits); the 4th entry blocks, after its transition is recorded."""
    decision = router.decide(DEFAULT_GRAPH, at("development", {"development": visits_so_far}), finished("fail"))
    assert summary(decision) == expected
    assert decision.transition is not None and decision.transition.to_stage == "development"
    if expected[0] == "block":
        assert decision.action.reason == "manual intervention needed: development ran 3 times (its budget)"  # type: ignore[union-attr]


def test_a_review_sending_work_back_spends_the_development_budget() -> None:
    decision = router.decide(DEFAULT_GRAPH, at("review", {"development": 3, "review": 1}), finished("request_changes"))
    assert summary(decision) == ("block", "development", None)


def test_approval_and_rejection() -> None:
    asked = router.decide(DEFAULT_GRAPH, at("analysis"), finished("pass"))
    assert summary(asked) == ("ask_for_approval", "analysis", 1)
    assert asked.transition is None and asked.notice is None

    approved = router.decide(DEFAULT_GRAPH, asked.progress, router.ApprovalGiven(approve=True, approver="ana"))
    assert summary(approved) == ("run_stage", "architecture", 1)
    assert approved.transition == router.Transition(from_stage="analysis", to_stage="architecture", reason="approved by ana")
    assert approved.action.feedback == []  # type: ignore[union-attr]

    rejected = router.decide(DEFAULT_GRAPH, asked.progress, router.ApprovalGiven(approve=False, approver="bo", comment="too vague"))
    assert summary(rejected) == ("run_stage", "analysis", 2)
    assert rejected.transition == router.Transition(from_stage="analysis", to_stage="analysis", reason="rejected by bo: too vague")
    [feedback] = rejected.action.feedback  # type: ignore[union-attr]
    assert (feedback.source, feedback.summary) == ("rejection by bo", "too vague")


def test_rejections_spend_the_analysis_budget() -> None:
    asked = router.decide(DEFAULT_GRAPH, at("analysis", {"analysis": 5}), finished("pass"))
    rejected = router.decide(DEFAULT_GRAPH, asked.progress, router.ApprovalGiven(approve=False, approver="bo"))
    assert summary(rejected) == ("block", "analysis", None)


def test_answers_go_back_to_the_analyst_with_the_questions() -> None:
    asked = router.decide(DEFAULT_GRAPH, at("analysis"), finished("questions", details="Which database?", artifact="q.md"))
    assert summary(asked) == ("ask_for_answers", "analysis", 1)
    assert asked.action.gate.details == "Which database?"  # type: ignore[union-attr]
    assert asked.notice and asked.notice.event == "gate_failed"
    answered = router.decide(DEFAULT_GRAPH, asked.progress, router.AnswersGiven(answers="PostgreSQL", answered_by="ana"))
    assert summary(answered) == ("run_stage", "analysis", 2)
    [feedback] = answered.action.feedback  # type: ignore[union-attr]
    assert feedback.source == "answers from ana" and feedback.file == "q.md"
    assert "Which database?" in feedback.summary and "PostgreSQL" in feedback.summary


def test_deploy_passes_merges_then_finishes() -> None:
    progress = at("deploy", pull_request=PR)
    merge = router.decide(DEFAULT_GRAPH, progress, finished("pass"))
    assert merge.action == router.MergePullRequest(stage="deploy", pull_request=PR)
    assert merge.transition is None
    done = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(pull_request=MERGED))
    assert done.action == router.Finish(reason="deploy passed, PR #7 merged", pull_request=MERGED)
    assert done.transition == router.Transition(from_stage="deploy", to_stage="done", reason="deploy passed, PR #7 merged")


def test_a_failed_merge_blocks_with_the_forge_reason() -> None:
    merge = router.decide(DEFAULT_GRAPH, at("deploy", pull_request=PR), finished("pass"))
    blocked = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(error="conflicts in src/app.py"))
    assert blocked.action == router.Block(at="deploy", reason="merging PR #7 failed: conflicts in src/app.py")


def test_without_a_pull_request_deploy_finishes_without_merging() -> None:
    done = router.decide(DEFAULT_GRAPH, at("deploy"), finished("pass"))
    assert done.action == router.Finish(reason="deploy passed", pull_request=None)


def test_the_pull_request_a_stage_opened_is_remembered() -> None:
    decision = router.decide(DEFAULT_GRAPH, at("development"), router.StageFinished(gate=gate("pass"), pull_request=PR))
    assert decision.progress.pull_request == PR
    later = router.decide(DEFAULT_GRAPH, decision.progress, finished("pass"))  # review passes, opens none
    assert later.progress.pull_request == PR


def test_a_stage_that_failed_to_run_blocks_where_it_was() -> None:
    decision = router.decide(DEFAULT_GRAPH, at("review"), router.StageFailed(reason="push rejected"))
    assert decision.action == router.Block(at="review", reason="push rejected")


@pytest.mark.parametrize(
    ("gate_result", "notice"),
    [
        (gate("fail", details="2 tests failed"), ("gate_failed", "development gate: gate said fail", "development gate: gate said fail\n\n2 tests failed")),
        (
            gate("fail", report=ReportLink(key="development-report-et-7", url="http://ui/artifacts/artifact/1")),
            ("gate_failed", "development gate: gate said fail (report: http://ui/artifacts/artifact/1)", None),
        ),
        (gate("pass", warning="no test command: checked nothing"), ("gate_warning", "development gate passed: no test command: checked nothing", None)),
        (gate("pass"), None),
    ],
)
def test_people_are_told_about_failed_gates_and_warnings(gate_result: GateResult, notice: tuple[str, str, str | None] | None) -> None:
    decision = router.decide(DEFAULT_GRAPH, at("development"), router.StageFinished(gate=gate_result))
    if notice is None:
        assert decision.notice is None
        return
    assert decision.notice is not None
    assert (decision.notice.event, decision.notice.message) == notice[:2]
    assert decision.notice.comment == (notice[2] or notice[1])


def test_a_custom_graph_routes_through_its_own_stages() -> None:
    """A security stage between architecture and development, which sends findings back to the architect."""
    data = DEFAULT_GRAPH.model_dump()
    data["stages"].insert(2, {
        "name": "security", "role": "security", "gate": "verdict", "artifacts": ["11b-security.md"],
        "verdicts": {"pass": "(?m)^Verdict: pass", "fail": "(?m)^Verdict: fail"}, "max_visits": 2,
        "routes": {"pass": {"to": "development", "feedback": "none"}, "fail": {"to": "architecture"}, "missing": {"to": "blocked"}},
    })
    data["stages"][1]["routes"]["pass"]["to"] = "security"
    graph = StageGraph.model_validate(data)

    step = router.decide(graph, at("architecture", {"analysis": 1, "architecture": 1}), finished("pass"))
    assert summary(step) == ("run_stage", "security", 1)
    step = router.decide(graph, step.progress, finished("fail", details="SQL built by string concatenation"))
    assert summary(step) == ("run_stage", "architecture", 2)
    assert "SQL built by string concatenation" in step.action.feedback[0].summary  # type: ignore[union-attr]
    step = router.decide(graph, step.progress, finished("pass"))
    assert summary(step) == ("run_stage", "security", 2)
    step = router.decide(graph, step.progress, finished("fail"))
    step = router.decide(graph, step.progress, finished("pass"))
    assert summary(step) == ("block", "security", None)  # its third entry: max_visits is 2


def test_the_whole_default_path_is_the_order_people_expect() -> None:
    """Analysis -> approval -> architecture -> development -> review -> testing -> deploy -> merge -> done."""
    decision = router.start(DEFAULT_GRAPH)
    seen = []
    events = iter([
        finished("pass"), router.ApprovalGiven(approve=True, approver="ana"), finished("pass"),
        router.StageFinished(gate=gate("pass"), pull_request=PR), finished("pass"), finished("pass"),
        finished("pass"), router.MergeFinished(pull_request=MERGED),
    ])
    while not isinstance(decision.action, router.Finish):
        seen.append(summary(decision)[:2])
        decision = router.decide(DEFAULT_GRAPH, decision.progress, next(events))
    assert seen == [
        ("run_stage", "analysis"), ("ask_for_approval", "analysis"), ("run_stage", "architecture"),
        ("run_stage", "development"), ("run_stage", "review"), ("run_stage", "testing"), ("run_stage", "deploy"),
        ("merge_pull_request", "deploy"),
    ]
    assert decision.progress.stage == "done"
