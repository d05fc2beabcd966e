"""The router when the default branch moves after the gates passed (issue 16), and the graph's checks.

Plain function calls, as tests/test_router.py: no Prefect, no git. A pull request that
cannot be merged because main moved comes back as ``MergeFinished(main_moved=...)``; the
merged code is then judged again from the graph's first up_to_date stage, each stage as
its ``when_main_moves`` says (``SDLC_WHEN_MAIN_MOVES`` through ``with_when_main_moves``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdlc import router
from sdlc.graph import CONFLICT, DEFAULT_GRAPH, StageGraph, StageSpec, structural_problems, with_when_main_moves
from sdlc.models import GateResult, PullRequestRef

PR = PullRequestRef(number=7, url="local://pulls/7", branch="feature/X-1", base="main", title="X-1", state="open")
MERGED = PR.model_copy(update={"state": "merged", "merge_commit": "abc123"})
MOVED = "main moved since the code gates passed (now 0123456789ab, 1 commit(s) feature/X-1 does not have)"
EVERY_STAGE_ONCE = {"analysis": 1, "architecture": 1, "development": 1, "review": 1, "testing": 1, "deploy": 1}


def gate(outcome: str, *, details: str = "", artifact: str | None = None) -> GateResult:
    return GateResult(
        outcome=outcome, passed=outcome == "pass", reason=f"gate said {outcome}", details=details, artifact=artifact
    )


def finished(outcome: str, **kw: Any) -> router.StageFinished:
    return router.StageFinished(gate=gate(outcome, **kw))


def at_deploy(visits: dict[str, int] | None = None) -> router.Progress:
    return router.Progress(stage="deploy", visits=visits or dict(EVERY_STAGE_ONCE), pull_request=PR)


def main_moved_at_merge(graph: StageGraph = DEFAULT_GRAPH, visits: dict[str, int] | None = None) -> router.Decision:
    """Deploy passed, the merge was asked for, and the forge said main moved."""
    merge = router.decide(graph, at_deploy(visits), finished("pass"))
    assert merge.action == router.MergePullRequest(stage="deploy", pull_request=PR)
    return router.decide(graph, merge.progress, router.MergeFinished(main_moved=MOVED))


def kind(decision: router.Decision) -> tuple[str, str | None, bool | None]:
    action = decision.action
    return (
        action.kind,
        getattr(action, "stage", None) or getattr(action, "at", None),
        getattr(action, "gate_only", None),
    )


# --- the default graph ------------------------------------------------------------------------------


def test_main_moved_judges_the_merged_code_again_then_merges() -> None:
    again = main_moved_at_merge()
    assert again.action == router.RunStage(stage="development", visit=2, gate_only=True)
    assert again.transition == router.Transition(from_stage="deploy", to_stage="development", reason=MOVED)
    assert again.progress.judging_again and again.progress.pull_request == PR
    assert again.progress.gate_only_visits == {"development": 1}
    assert again.progress.gate is None

    # The tests pass on the merged code: review is passed over, the tester runs again.
    tested = router.decide(DEFAULT_GRAPH, again.progress, finished("pass"))
    assert tested.action == router.RunStage(stage="testing", visit=2, gate_only=False)
    assert tested.transition is not None
    assert (tested.transition.from_stage, tested.transition.to_stage) == ("development", "testing")
    assert tested.transition.reason == "gate said pass (review not run again)"
    assert tested.progress.visits["review"] == 1  # not entered
    assert tested.progress.judging_again

    deployed = router.decide(DEFAULT_GRAPH, tested.progress, finished("pass"))
    assert deployed.action == router.RunStage(stage="deploy", visit=2)
    assert deployed.transition == router.Transition(from_stage="testing", to_stage="deploy", reason="gate said pass")
    assert not deployed.progress.judging_again  # deploy is not up_to_date: the ordinary way again

    merge = router.decide(DEFAULT_GRAPH, deployed.progress, finished("pass"))
    assert merge.action == router.MergePullRequest(stage="deploy", pull_request=PR)
    done = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(pull_request=MERGED))
    assert done.action == router.Finish(reason="deploy passed, PR #7 merged", pull_request=MERGED)


def test_main_moving_twice_judges_again_twice() -> None:
    again = main_moved_at_merge()
    step = router.decide(DEFAULT_GRAPH, again.progress, finished("pass"))  # development's tests
    step = router.decide(DEFAULT_GRAPH, step.progress, finished("pass"))  # testing
    merge = router.decide(DEFAULT_GRAPH, step.progress, finished("pass"))  # deploy
    assert kind(merge) == ("merge_pull_request", "deploy", None)
    second = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(main_moved=MOVED))
    assert second.action == router.RunStage(stage="development", visit=3, gate_only=True)
    assert second.progress.gate_only_visits == {"development": 2}


def test_a_gate_only_visit_spends_no_development_budget() -> None:
    """Development ran its 3 visits (max_visits); judging the merged code again still runs."""
    visits = {**EVERY_STAGE_ONCE, "development": 3}
    again = main_moved_at_merge(visits=visits)
    assert again.action == router.RunStage(stage="development", visit=4, gate_only=True)
    # A second main move: still no budget spent.
    step = router.decide(DEFAULT_GRAPH, again.progress, finished("pass"))
    step = router.decide(DEFAULT_GRAPH, step.progress, finished("pass"))
    merge = router.decide(DEFAULT_GRAPH, step.progress, finished("pass"))
    second = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(main_moved=MOVED))
    assert kind(second) == ("run_stage", "development", True)


def test_failing_tests_on_the_merged_code_send_the_developer_back_with_the_findings() -> None:
    again = main_moved_at_merge()
    failed = router.decide(DEFAULT_GRAPH, again.progress, finished("fail", details="2 tests failed", artifact="ci.log"))
    assert failed.action == router.RunStage(
        stage="development",
        visit=3,
        gate_only=False,
        feedback=failed.action.feedback,  # type: ignore[union-attr]
    )
    [feedback] = failed.action.feedback  # type: ignore[union-attr]
    assert feedback.source == "development" and feedback.file == "ci.log" and "2 tests failed" in feedback.summary
    assert not failed.progress.judging_again
    assert failed.notice is not None and failed.notice.event == "gate_failed"
    # The ordinary way through after that: the developer's pass goes to review, which runs.
    fixed = router.decide(DEFAULT_GRAPH, failed.progress, finished("pass"))
    assert fixed.action == router.RunStage(stage="review", visit=2)
    assert fixed.transition is not None and "not run again" not in fixed.transition.reason


def test_a_failing_gate_only_visit_when_development_ran_its_budget_blocks() -> None:
    """The gate-only visit was free; the developer running again is not."""
    again = main_moved_at_merge(visits={**EVERY_STAGE_ONCE, "development": 3})
    failed = router.decide(DEFAULT_GRAPH, again.progress, finished("fail"))
    assert kind(failed) == ("block", "development", None)
    assert failed.action.reason == "manual intervention needed: development ran 3 times (its budget)"  # type: ignore[union-attr]


def test_a_conflict_on_the_merged_code_sends_the_developer_back() -> None:
    again = main_moved_at_merge()
    conflict = router.decide(
        DEFAULT_GRAPH, again.progress, finished(CONFLICT, details="- `src/app.py`, changed on main by: ...")
    )
    assert kind(conflict) == ("run_stage", "development", False)
    [feedback] = conflict.action.feedback  # type: ignore[union-attr]
    assert "src/app.py" in feedback.summary
    assert not conflict.progress.judging_again


@pytest.mark.parametrize("stage", ["review", "testing"])
def test_a_conflict_at_review_or_testing_goes_to_the_developer_with_the_paths(stage: str) -> None:
    progress = router.Progress(stage=stage, visits={"development": 1, "review": 1, "testing": 1})
    decision = router.decide(
        DEFAULT_GRAPH, progress, finished(CONFLICT, details="- `src/app.py`, changed on main by: abc Say hi (Ana)")
    )
    assert decision.action == router.RunStage(
        stage="development",
        visit=2,
        feedback=decision.action.feedback,  # type: ignore[union-attr]
    )
    [feedback] = decision.action.feedback  # type: ignore[union-attr]
    assert feedback.source == stage and "src/app.py" in feedback.summary and "Say hi (Ana)" in feedback.summary
    assert decision.transition == router.Transition(
        from_stage=stage, to_stage="development", reason="gate said conflict"
    )


def test_a_conflict_at_development_comes_back_to_development() -> None:
    progress = router.Progress(stage="development", visits={"development": 1})
    decision = router.decide(DEFAULT_GRAPH, progress, finished(CONFLICT, details="- `src/app.py`"))
    assert kind(decision) == ("run_stage", "development", False)
    assert decision.action.visit == 2  # type: ignore[union-attr]
    assert DEFAULT_GRAPH.stage("development").resolves_conflicts
    assert not DEFAULT_GRAPH.stage("review").resolves_conflicts


def test_a_merge_without_main_moving_is_not_judged_again() -> None:
    merge = router.decide(DEFAULT_GRAPH, at_deploy(), finished("pass"))
    done = router.decide(DEFAULT_GRAPH, merge.progress, router.MergeFinished(pull_request=MERGED))
    assert kind(done) == ("finish", None, None)
    assert not done.progress.judging_again


def test_the_default_graph_keeps_up_to_date_from_development() -> None:
    assert DEFAULT_GRAPH.keeps_up_to_date
    assert DEFAULT_GRAPH.first_to_judge_again() == "development"
    assert [s.name for s in DEFAULT_GRAPH.stages if s.up_to_date] == ["development", "review", "testing"]
    assert {s.name: s.when_main_moves for s in DEFAULT_GRAPH.stages if s.up_to_date} == {
        "development": "gate",
        "review": "skip",
        "testing": "stage",
    }
    assert structural_problems(DEFAULT_GRAPH) == []


# --- SDLC_WHEN_MAIN_MOVES ------------------------------------------------------------------------------


def test_when_main_moves_tests_runs_only_the_development_gate() -> None:
    graph = with_when_main_moves(DEFAULT_GRAPH, "tests")
    assert structural_problems(graph) == []
    again = main_moved_at_merge(graph)
    assert again.action == router.RunStage(stage="development", visit=2, gate_only=True)
    passed = router.decide(graph, again.progress, finished("pass"))
    assert passed.action == router.RunStage(stage="deploy", visit=2)
    assert passed.transition == router.Transition(
        from_stage="development", to_stage="deploy", reason="gate said pass (review, testing not run again)"
    )
    assert passed.progress.visits["testing"] == 1 and passed.progress.visits["review"] == 1
    assert not passed.progress.judging_again


def test_when_main_moves_all_runs_review_again_as_a_whole_stage() -> None:
    graph = with_when_main_moves(DEFAULT_GRAPH, "all")
    assert structural_problems(graph) == []
    assert graph.stage("development").when_main_moves == "gate"
    again = main_moved_at_merge(graph)
    assert again.action == router.RunStage(stage="development", visit=2, gate_only=True)
    reviewed = router.decide(graph, again.progress, finished("pass"))
    assert reviewed.action == router.RunStage(stage="review", visit=2, gate_only=False)
    assert reviewed.transition == router.Transition(
        from_stage="development", to_stage="review", reason="gate said pass"
    )
    tested = router.decide(graph, reviewed.progress, finished("pass"))
    assert tested.action == router.RunStage(stage="testing", visit=2, gate_only=False)
    deployed = router.decide(graph, tested.progress, finished("pass"))
    assert deployed.action == router.RunStage(stage="deploy", visit=2)


def test_when_main_moves_graph_is_the_graph_itself() -> None:
    assert with_when_main_moves(DEFAULT_GRAPH, "graph") == DEFAULT_GRAPH


def test_a_stage_run_whole_when_main_moves_spends_its_budget() -> None:
    """Only gate-only visits are free: testing run again as a stage counts against its max_visits."""
    data = DEFAULT_GRAPH.model_dump()
    testing = next(s for s in data["stages"] if s["name"] == "testing")
    testing["max_visits"] = 1
    graph = StageGraph.model_validate(data)
    again = main_moved_at_merge(graph)
    blocked = router.decide(graph, again.progress, finished("pass"))
    assert kind(blocked) == ("block", "testing", None)


# --- graphs that keep up to date ---------------------------------------------------------------------


def _graph_without_up_to_date() -> StageGraph:
    data = DEFAULT_GRAPH.model_dump()
    for stage in data["stages"]:
        stage["up_to_date"] = False
        stage["when_main_moves"] = "skip"
        if stage["name"] != "architecture":  # its conflict is an artifact of its own, not a merge
            stage["routes"].pop(CONFLICT, None)
    return StageGraph.model_validate(data)


def test_a_graph_that_does_not_keep_up_to_date_blocks_when_main_moved() -> None:
    graph = _graph_without_up_to_date()
    assert not graph.keeps_up_to_date and graph.first_to_judge_again() is None
    blocked = main_moved_at_merge(graph)
    assert blocked.action == router.Block(at="deploy", reason=MOVED)


def _with(stage: str, **changes: Any) -> dict[str, Any]:
    data = DEFAULT_GRAPH.model_dump()
    spec = next(s for s in data["stages"] if s["name"] == stage)
    spec.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(
            _with(
                "review",
                routes={
                    "pass": {"to": "testing"},
                    "request_changes": {"to": "development"},
                    "missing": {"to": "blocked"},
                },
            ),
            "stage 'review' is up_to_date: its merge can name 'conflict', which has no route",
            id="up_to_date-without-conflict-route",
        ),
        pytest.param(
            _with("deploy", when_main_moves="stage"),
            "stage 'deploy': when_main_moves 'stage' needs up_to_date: true",
            id="when_main_moves-without-up_to_date",
        ),
        pytest.param(
            _with("review", when_main_moves="gate"),
            "stage 'review': when_main_moves 'gate' needs a gate that runs the code (ci, tests), not 'verdict'",
            id="gate-only-on-a-verdict-gate",
        ),
    ],
)
def test_graph_problems_of_keeping_up_to_date_are_named(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        StageGraph.model_validate(data)
    assert problem in str(raised.value)
    # The same problem, alone, from the check itself (the graph built without validation).
    graph = StageGraph.model_construct(
        start=data["start"], stages=[StageSpec.model_validate(s) for s in data["stages"]]
    )
    assert structural_problems(graph) == [problem]


def test_every_problem_is_named_at_once() -> None:
    data = _with("deploy", when_main_moves="gate")
    review = next(s for s in data["stages"] if s["name"] == "review")
    review["routes"].pop(CONFLICT)
    with pytest.raises(ValueError) as raised:
        StageGraph.model_validate(data)
    message = str(raised.value)
    assert "stage 'review' is up_to_date: its merge can name 'conflict', which has no route" in message
    assert "stage 'deploy': when_main_moves 'gate' needs up_to_date: true" in message
    assert (
        "stage 'deploy': when_main_moves 'gate' needs a gate that runs the code (ci, tests), not 'exit_code'" in message
    )


def test_up_to_date_on_a_tests_gate_may_be_judged_again_by_its_gate() -> None:
    data = _with("development", gate="tests")
    graph = StageGraph.model_validate(data)
    assert graph.stage("development").when_main_moves == "gate"
    assert kind(main_moved_at_merge(graph)) == ("run_stage", "development", True)


def test_a_custom_graph_starts_judging_again_at_its_first_up_to_date_stage() -> None:
    """Development not up_to_date: judging again starts at review, run whole."""
    data = DEFAULT_GRAPH.model_dump()
    for spec in data["stages"]:
        if spec["name"] == "development":
            spec["up_to_date"] = False
            spec["when_main_moves"] = "skip"
        if spec["name"] == "review":
            spec["when_main_moves"] = "stage"
    graph = StageGraph.model_validate(data)
    assert graph.first_to_judge_again() == "review"
    again = main_moved_at_merge(graph)
    assert again.action == router.RunStage(stage="review", visit=2, gate_only=False)
    assert again.transition == router.Transition(from_stage="deploy", to_stage="review", reason=MOVED)


def test_skipped_stages_at_the_start_of_judging_again_are_passed_over_too() -> None:
    """The first up_to_date stage itself is 'skip': the transition from deploy goes on to the next."""
    data = DEFAULT_GRAPH.model_dump()
    for spec in data["stages"]:
        if spec["name"] == "development":
            spec["when_main_moves"] = "skip"
    graph = StageGraph.model_validate(data)
    again = main_moved_at_merge(graph)
    assert again.action == router.RunStage(stage="testing", visit=2, gate_only=False)
    assert again.transition == router.Transition(
        from_stage="deploy", to_stage="testing", reason=MOVED + " (development, review not run again)"
    )


def test_skipped_stages_whose_pass_routes_loop_do_not_hang_the_router() -> None:
    """Two up_to_date stages that skip, each passing to the other: the router must still decide."""
    graph = StageGraph.model_validate(
        {
            "start": "build",
            "stages": [
                {
                    "name": "build",
                    "role": "developer",
                    "gate": "tests",
                    "up_to_date": True,
                    "routes": {"pass": {"to": "check"}, "fail": {"to": "build"}, CONFLICT: {"to": "build"}},
                },
                {
                    "name": "check",
                    "role": "reviewer",
                    "gate": "exit_code",
                    "up_to_date": True,
                    "routes": {
                        "pass": {"to": "build"},
                        "fail": {"to": "done", "merge_pull_request": True},
                        CONFLICT: {"to": "build"},
                    },
                },
            ],
        }
    )
    # In a child process, ended at the timeout: a router that loops would otherwise spin for the whole session.
    script = (
        "import json, sys\n"
        "from sdlc import router\n"
        "from sdlc.graph import StageGraph\n"
        "graph = StageGraph.model_validate_json(sys.stdin.read())\n"
        "progress = router.Progress(stage='check', visits={'build': 1, 'check': 1})\n"
        f"decision = router.decide(graph, progress, router.MergeFinished(main_moved={MOVED!r}))\n"
        "print(decision.action.kind)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=graph.model_dump_json(),
            capture_output=True,
            text=True,
            timeout=10,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("router.decide did not return: _enter loops over skipped stages whose pass routes form a cycle")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"run_stage", "block"}
