"""Many work items on one repository (issue 16): branches kept in step with the default branch,
conflicts sent back to the developer, and only what was tested merged.

Pipelines run in threads against the session's Prefect server with the scripted agent; a
scenario's ``wait_for_file`` holds one agent until the test says go, so the order of events
(which work item merges first, when main moves) is the test's, not the machine's.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from demo.sample import create_sample_repo
from sdlc.models import AgentSpec, WorkItemRequest

pytestmark = pytest.mark.usefixtures("prefect_api", "data_dir")

SHARED = "docs/CHANGES.md"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def request_for(origin: Path, tmp_path: Path, work_item: str, scenario: dict[str, Any]) -> WorkItemRequest:
    scenario_file = tmp_path / f"scenario-{work_item}.json"
    scenario_file.write_text(json.dumps(scenario))
    return WorkItemRequest(
        work_item=work_item,
        title=f"Change for {work_item}",
        repo=str(origin),
        auto_approve=True,
        agent=AgentSpec(kind="scripted", scenario_file=str(scenario_file)),
    )


@contextmanager
def pipeline_in_thread(request: WorkItemRequest) -> Iterator[dict[str, Any]]:
    """Run the pipeline of ``request`` in a thread; the dict gets its final ``state`` (or ``error``)."""
    from flows.pipeline import sdlc_pipeline

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["state"] = sdlc_pipeline(request=request, return_state=True)
        except BaseException as error:  # noqa: BLE001 - reported to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"pipeline-{request.work_item}")
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(timeout=600)
        assert not thread.is_alive(), f"the pipeline of {request.work_item} did not end"


def run_pipeline(request: WorkItemRequest) -> Any:
    from flows.pipeline import sdlc_pipeline

    return sdlc_pipeline(request=request, return_state=True)


def wait_for_stage(work_item: str, stage: str, timeout: float = 300) -> None:
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = ledger.get_work_item(work_item)
        if row is not None and row.stage == stage:
            return
        time.sleep(0.1)
    raise AssertionError(f"{work_item} did not reach {stage}")


def ledger_of(work_item: str) -> tuple[Any, list[Any], list[Any]]:
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    return ledger.get_work_item(work_item), ledger.agent_runs(work_item), ledger.transitions(work_item)


def assert_done(outcome: dict[str, Any], work_item: str) -> None:
    assert "error" not in outcome, outcome.get("error")
    assert outcome["state"].is_completed(), outcome["state"].message
    row, _, _ = ledger_of(work_item)
    assert row.state == "done", row.reason


def roles(runs: list[Any]) -> list[str]:
    return [run.role for run in runs]


def test_two_work_items_changing_one_file_both_end_done_with_the_second_developer_resolving(
    tmp_path: Path, data_dir: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    first_done = tmp_path / "first-done"
    first = request_for(origin, tmp_path, "UP-1", {"developer": {"shared_file": SHARED}})
    # UP-2's developer starts on the same base and finishes only after UP-1 is merged.
    second = request_for(
        origin, tmp_path, "UP-2", {"developer": {"shared_file": SHARED, "wait_for_file": str(first_done)}}
    )
    with pipeline_in_thread(second) as outcome:
        try:
            wait_for_stage("UP-2", "development")
            state = run_pipeline(first)
            assert state.is_completed(), state.message
        finally:
            first_done.touch()  # never leave UP-2's developer waiting on a failed test
    assert_done(outcome, "UP-2")

    # main holds the second developer's resolution: both lines, no conflict marker.
    shared = git(origin, "show", f"main:{SHARED}")
    assert "UP-1 change 1" in shared and "UP-2 change" in shared
    assert "<<<<<<<" not in shared and ">>>>>>>" not in shared
    _, runs, transitions = ledger_of("UP-2")
    assert roles(runs) == ["analyst", "architect", "developer", "developer", "reviewer", "tester", "deployer"]
    conflict = [t for t in transitions if "conflict merging main" in t.reason]
    assert [(t.from_stage, t.to_stage) for t in conflict] == [("development", "development")]
    assert SHARED in conflict[0].reason
    # The resolving developer was told which file, and what of main touched it.
    (worktree,) = (data_dir / "worktrees").glob("*/feature__UP-2-change-for-up-2")
    task = (worktree / ".task-developer.md").read_text()
    assert "## Merge in progress" in task and f"`{SHARED}`" in task and "developer(UP-1)" in task
    # The branch's history holds sdlc's merge commit of the resolution; the tester judged it after.
    merges = git(origin, "log", "--merges", "--format=%s", "main")
    assert "developer(UP-2): merge main into" in merges
    resolving = next(r for r in runs if r.role == "developer" and r.attempt == 2)
    tester = next(r for r in runs if r.role == "tester")
    assert tester.started_at > resolving.ended_at


def test_two_work_items_changing_different_files_both_merge_without_an_agent_running_again(
    tmp_path: Path, data_dir: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    first_done = tmp_path / "first-done"
    first = request_for(origin, tmp_path, "UP-3", {})
    second = request_for(origin, tmp_path, "UP-4", {"developer": {"wait_for_file": str(first_done)}})
    with pipeline_in_thread(second) as outcome:
        try:
            wait_for_stage("UP-4", "development")
            assert run_pipeline(first).is_completed()
        finally:
            first_done.touch()
    assert_done(outcome, "UP-4")

    every_stage_once = ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
    for work_item in ("UP-3", "UP-4"):
        _, runs, _ = ledger_of(work_item)
        assert roles(runs) == every_stage_once, work_item
    tree = git(origin, "ls-tree", "-r", "--name-only", "main")
    assert "src/up_3.py" in tree and "src/up_4.py" in tree
    # UP-4 was brought up to date before its tests ran: a merge commit of main on its branch.
    _, _, transitions = ledger_of("UP-4")
    brought = [t for t in transitions if t.reason.startswith("brought up to date")]
    assert brought and brought[0].from_stage == brought[0].to_stage == "development"
    assert "Merge main (" in git(origin, "log", "--merges", "--format=%s", "main")
    # People are told too: a stage_changed event for the merge (notifications.jsonl gets every event).
    told = [json.loads(line) for line in (data_dir / "notifications.jsonl").read_text().splitlines()]
    assert any(
        event.get("event") == "stage_changed" and "UP-4 development: brought up to date" in event.get("message", "")
        for event in told
    ), told[-5:]


def test_a_branch_behind_main_when_deploy_passes_is_tested_again_before_it_is_merged(tmp_path: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    go = tmp_path / "deploy-go"
    request = request_for(origin, tmp_path, "UP-5", {"deployer": {"wait_for_file": str(go)}})
    with pipeline_in_thread(request) as outcome:
        try:
            wait_for_stage("UP-5", "deploy")
            # Someone else's change lands on main while the deployer runs: a file no one else touches.
            clone = tmp_path / "someone"
            subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
            (clone / "NOTICE.md").write_text("Someone else's change.\n")
            git(clone, "add", "NOTICE.md")
            git(
                clone,
                "-c",
                "user.name=Someone",
                "-c",
                "user.email=someone@example.com",
                "commit",
                "-qm",
                "Add a notice",
            )
            git(clone, "push", "-q", "origin", "HEAD:main")
            pushed_at = time.time()
        finally:
            go.touch()
    assert_done(outcome, "UP-5")

    _, runs, transitions = ledger_of("UP-5")
    # Tests (the development gate, no developer) and the tester again; review is not asked again.
    assert roles(runs) == ["analyst", "architect", "developer", "reviewer", "tester", "deployer", "tester", "deployer"]
    assert runs[6].started_at.timestamp() >= pushed_at - 1
    moved = [t for t in transitions if "moved since the code gates passed" in t.reason]
    assert [(t.from_stage, t.to_stage) for t in moved] == [("deploy", "development")]
    after = transitions[transitions.index(moved[0]) + 1 :]
    assert any(t.reason.startswith("brought up to date") for t in after)
    assert any(
        t.from_stage == "development" and t.to_stage == "testing" and "review not run again" in t.reason for t in after
    )
    tree = git(origin, "ls-tree", "-r", "--name-only", "main")
    assert "NOTICE.md" in tree and "src/up_5.py" in tree
