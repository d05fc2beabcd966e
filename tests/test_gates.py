"""Gates judge what this run wrote (B10): artifacts, verdicts, tests, exit codes, stale files."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from gitrepo import clone_of, commit_file, git, isolate, make_origin
from processes import processes_with, wait_for

from sdlc.graph import DEFAULT_GRAPH
from sdlc.models import AgentResult
from tasks.gates import GateContext, archive_stale_artifacts_in, evaluate_gate
from tasks.worktree import ensure_worktree

WI = "ET-12"


def ctx(worktree: Path, stage: str, agent: AgentResult | None = None) -> GateContext:
    return GateContext(worktree=worktree, work_item=WI, visit=1, spec=DEFAULT_GRAPH.stage(stage), agent=agent)


def write(worktree: Path, name: str, text: str = "content\n") -> None:
    path = worktree / "docs" / "work-items" / WI / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def agent(exit_code: int | None, timed_out: bool = False) -> AgentResult:
    now = datetime.now(timezone.utc)
    return AgentResult(
        role="deployer", attempt=1, exit_code=exit_code, duration_seconds=1.0, log_path="/tmp/x.log",
        output_tail="smoke check failed", timed_out=timed_out, started_at=now, ended_at=now,
    )


def test_analysis_passes_with_all_four_artifacts(tmp_path: Path) -> None:
    for name in ("02-brd.md", "03-requirements.md", "04-acceptance-criteria.md", "05-test-plan.md"):
        write(tmp_path, name)
    assert evaluate_gate(ctx(tmp_path, "analysis")).outcome == "pass"


def test_analysis_questions_decide_before_artifacts(tmp_path: Path) -> None:
    write(tmp_path, "02-brd.md")
    write(tmp_path, "01-questions.md", "1. Which users?\n")
    result = evaluate_gate(ctx(tmp_path, "analysis"))
    assert (result.outcome, result.passed) == ("questions", False)
    assert "Which users?" in result.details


def test_analysis_with_nothing_is_a_warning_and_fails(tmp_path: Path) -> None:
    result = evaluate_gate(ctx(tmp_path, "analysis"))
    assert result.outcome == "missing" and result.reason.startswith("warning:")


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("# Review\nVerdict: APPROVE\n", "pass"),
        ("# Review\n**Verdict:** REQUEST_CHANGES\n- fix the thing\n", "request_changes"),
        ("# Review\nlooks fine\n", "missing"),
    ],
)
def test_review_verdicts(tmp_path: Path, text: str, outcome: str) -> None:
    write(tmp_path, "12-review.md", text)
    assert evaluate_gate(ctx(tmp_path, "review")).outcome == outcome


def test_test_report_verdicts(tmp_path: Path) -> None:
    write(tmp_path, "13-test-report.md", "Result: FAIL\ncase 3 broke\n")
    result = evaluate_gate(ctx(tmp_path, "testing"))
    assert result.outcome == "fail" and "case 3 broke" in result.details


def test_a_stale_verdict_never_decides_again(tmp_path: Path) -> None:
    write(tmp_path, "12-review.md", "Verdict: APPROVE\n")
    moved = archive_stale_artifacts_in(tmp_path, WI, DEFAULT_GRAPH.stage("review"))
    assert moved == {f"docs/work-items/{WI}/12-review.md": f"docs/work-items/{WI}/history/12-review.1.md"}
    assert evaluate_gate(ctx(tmp_path, "review")).outcome == "missing"
    write(tmp_path, "12-review.md", "Verdict: REQUEST_CHANGES\n")
    archive_stale_artifacts_in(tmp_path, WI, DEFAULT_GRAPH.stage("review"))
    history = sorted(p.name for p in (tmp_path / "docs" / "work-items" / WI / "history").iterdir())
    assert history == ["12-review.1.md", "12-review.2.md"]


def test_deploy_gate_reads_the_exit_code(tmp_path: Path) -> None:
    assert evaluate_gate(ctx(tmp_path, "deploy", agent(0))).outcome == "pass"
    failed = evaluate_gate(ctx(tmp_path, "deploy", agent(1)))
    assert failed.outcome == "fail" and "smoke check failed" in failed.details


def test_failed_agent_is_agent_failed_for_artifact_gates(tmp_path: Path) -> None:
    result = evaluate_gate(ctx(tmp_path, "review", agent(None, timed_out=True)))
    assert result.outcome == "agent_failed" and "timeout" in result.reason


def origin_with_config(tmp_path: Path, config: str | None) -> tuple[Path, Path]:
    """A bare origin whose main has ``config`` as `.sdlc/config.yaml`, its main clone, and a worktree of a branch."""
    origin = make_origin(tmp_path)
    if config is not None:
        person = clone_of(origin, tmp_path / "person")
        commit_file(person, ".sdlc/config.yaml", config, "test command")
        git(person, "push", "-q", "origin", "main")
    return origin, ensure_worktree(str(origin), "feature/ET-12-gate")


def dev_ctx(origin: Path, worktree: Path) -> GateContext:
    return GateContext(
        worktree=worktree, work_item=WI, visit=1, spec=DEFAULT_GRAPH.stage("development"), agent=None, repo=str(origin)
    )


def test_development_gate_runs_the_default_branchs_test_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    failing = f"test_command: ['{sys.executable}', '-c', 'import sys; print(\"2 failed\"); sys.exit(1)']\n"
    origin, worktree = origin_with_config(tmp_path, failing)
    result = evaluate_gate(dev_ctx(origin, worktree))
    assert result.outcome == "fail" and "2 failed" in result.details
    # The worktree's copy is the agent's to rewrite: the gate never reads it.
    (worktree / ".sdlc" / "config.yaml").write_text(f"test_command: {sys.executable} -c pass\n")
    assert evaluate_gate(dev_ctx(origin, worktree)).outcome == "fail"
    person = tmp_path / "person"
    commit_file(person, ".sdlc/config.yaml", f"test_command: {sys.executable} -c pass\n", "green")
    git(person, "push", "-q", "origin", "main")
    ensure_worktree(str(origin), "feature/ET-12-gate")  # fetches: no work item recorded a base, so main as it is
    assert evaluate_gate(dev_ctx(origin, worktree)).outcome == "pass"


def test_development_gate_without_test_command_passes_and_says_it_checked_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, tmp_path)
    origin, worktree = origin_with_config(tmp_path, None)
    (worktree / ".sdlc").mkdir()
    (worktree / ".sdlc" / "config.yaml").write_text(f"test_command: {sys.executable} -c 'import sys; sys.exit(1)'\n")
    result = evaluate_gate(dev_ctx(origin, worktree))
    reason = (
        "no test command configured in .sdlc/config.yaml on the default branch; the development gate checked nothing"
    )
    assert result.passed and result.reason == reason and result.warning == reason


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_a_test_command_that_times_out_ends_with_its_whole_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: str
) -> None:
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("SDLC_AGENT_SANDBOX", sandbox)
    marker = f"sdlc-slow-test-child-{uuid.uuid4().hex}"
    script = tmp_path / "slow_tests.py"
    # The test command starts a background child and waits for ever, as `cmd & sleep` does.
    script.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}])\n"
        "print('child started', flush=True)\n"
        "time.sleep(300)\n"
    )
    config = f"test_command: ['{sys.executable}', '{script}']\ntest_timeout_seconds: 2\n"
    origin, worktree = origin_with_config(tmp_path, config)
    try:
        started = time.monotonic()
        result = evaluate_gate(dev_ctx(origin, worktree))
        assert result.outcome == "fail" and "timed out after 2 s" in result.reason
        assert time.monotonic() - started < 10
        assert wait_for(lambda: not processes_with(marker)), "the test command's child is still running"
        log = Path(result.artifact or "").read_text()
        assert log.startswith("--- test command [bwrap" if sandbox == "bwrap" else "--- test command [unconfined")
        assert "child started" in log
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
