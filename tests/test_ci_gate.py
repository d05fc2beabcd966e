"""The development gate reads CI on the branch head where the forge has CI (B1 development row)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from blocks.forge import GiteaCredentials
from forge_servers.gitea import DEFAULT_TOKEN, GiteaTestServer
from sdlc.graph import DEFAULT_GRAPH
from sdlc.models import ForgeSpec
from tasks.gates import GateContext, evaluate_gate

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def gitea(tmp_path: Path, data_dir: Path) -> Iterator[GiteaTestServer]:
    with GiteaTestServer(tmp_path / "gitea") as server:
        yield server
        assert server.violations == []


def context(
    gitea: GiteaTestServer, tmp_path: Path, timeout: float = 10, config: str | None = None
) -> tuple[GateContext, str]:
    """The development gate's context on the work item's worktree of a new Gitea repository (made as the
    pipeline makes it); ``config``: the `.sdlc/config.yaml` a person pushed to its default branch first."""
    from tasks.worktree import ensure_worktree

    origin = gitea.create_repo("team", "app")
    if config is not None:
        person = tmp_path / "person"
        subprocess.run(["git", "clone", "-q", str(origin), str(person)], check=True)
        (person / ".sdlc").mkdir(exist_ok=True)
        (person / ".sdlc" / "config.yaml").write_text(config)
        identity = ["-c", "user.name=Test Person", "-c", "user.email=person@example.test", "-c", "commit.gpgsign=false"]
        for args in (["add", ".sdlc/config.yaml"], [*identity, "commit", "-q", "-m", "test command"], ["push", "-q", "origin", "HEAD"]):
            subprocess.run(["git", "-C", str(person), *args], check=True)
    worktree = ensure_worktree(str(origin), "feature/ET-1-gate")
    sha = subprocess.run(["git", "-C", str(worktree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    block = f"gitea-{uuid.uuid4().hex[:8]}"
    GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN).save(block)
    forge = ForgeSpec(kind="gitea", credentials_block=block, owner="team", name="app", ci_timeout_seconds=timeout, ci_poll_seconds=0.2)
    ctx = GateContext(
        worktree=worktree, work_item="ET-1", visit=1, spec=DEFAULT_GRAPH.stage("development"), agent=None,
        repo=str(origin), forge=forge,
    )
    return ctx, sha


def test_gate_waits_while_ci_is_pending_then_passes(gitea: GiteaTestServer, tmp_path: Path) -> None:
    ctx, sha = context(gitea, tmp_path)
    gitea.add_status("team", "app", sha, "pending", context="ci/build")
    threading.Timer(1.0, gitea.add_status, args=("team", "app", sha, "success"), kwargs={"context": "ci/build"}).start()
    started = time.monotonic()
    result = evaluate_gate(ctx)
    assert result.outcome == "pass" and result.reason == f"CI green on {sha[:12]}"
    assert time.monotonic() - started >= 0.9


def test_gate_fails_on_red_ci_and_on_ci_that_never_finishes(gitea: GiteaTestServer, tmp_path: Path) -> None:
    ctx, sha = context(gitea, tmp_path, timeout=1)
    gitea.add_status("team", "app", sha, "pending", context="ci/build")
    pending = evaluate_gate(ctx)
    assert pending.outcome == "fail" and "still pending" in pending.reason
    gitea.add_status("team", "app", sha, "failure", context="ci/build")
    failed = evaluate_gate(ctx)
    assert failed.outcome == "fail" and failed.reason == f"CI failed on {sha[:12]}"


FAILING_TESTS = (
    "import pathlib, sys; pathlib.Path('local-tests-ran').write_text('yes'); "
    "print('LOCAL SUITE: 1 failed, 2 passed'); sys.exit(3)"
)


def test_gate_without_ci_on_the_forge_runs_the_local_tests(
    gitea: GiteaTestServer, tmp_path: Path, data_dir: Path
) -> None:
    """No CI status on the head: the default branch's test command runs in the worktree, and its failure
    (exit code, output) is the gate's."""
    import json

    ctx, sha = context(gitea, tmp_path, config=f"test_command: {json.dumps(['python3', '-c', FAILING_TESTS])}\n")
    result = evaluate_gate(ctx)
    assert (ctx.worktree / "local-tests-ran").read_text() == "yes"
    assert result.outcome == "fail" and not result.passed
    assert result.reason == f"no CI reported for {sha[:12]}; tests failed (exit 3): python3 -c {FAILING_TESTS}"
    assert "LOCAL SUITE: 1 failed, 2 passed" in result.details
    assert result.artifact is not None and "LOCAL SUITE" in Path(result.artifact).read_text()
    status_reads = [r for r in gitea.requests if r.method == "GET" and r.path.endswith(f"/commits/{sha}/status")]
    assert len(status_reads) == 1  # the forge was asked first


def test_gate_without_ci_or_a_test_command_passes_and_says_it_checked_nothing(
    gitea: GiteaTestServer, tmp_path: Path, data_dir: Path
) -> None:
    ctx, sha = context(gitea, tmp_path)
    result = evaluate_gate(ctx)
    assert result.passed and result.reason.startswith(f"no CI reported for {sha[:12]}; no test command configured")


def test_a_ci_read_that_keeps_failing_is_read_again_by_the_gate_task_not_the_end_of_the_work_item(
    gitea: GiteaTestServer, tmp_path: Path
) -> None:
    from prefect import flow

    from tasks.gates import run_gate

    ctx, sha = context(gitea, tmp_path)
    gitea.add_status("team", "app", sha, "success", context="ci/build")
    gitea.inject("GET", r"/commits/[0-9a-f]+/status$", status=500, times=5)  # every attempt of the first read

    @flow
    def development_gate() -> object:
        gate = run_gate.with_options(retry_delay_seconds=0)  # the task's retries and condition, without the wait
        return gate(str(ctx.worktree), ctx.work_item, 1, ctx.spec, None, ctx.repo, ctx.forge)

    result = development_gate()
    assert result.outcome == "pass" and result.reason == f"CI green on {sha[:12]}"
    status_reads = [r for r in gitea.requests if r.method == "GET" and r.path.endswith(f"/commits/{sha}/status")]
    assert len(status_reads) == 6  # five failed in the first gate run, the retried run read green


def test_on_gitlab_the_gate_waits_for_the_pipeline_and_names_the_failed_jobs(tmp_path: Path, data_dir: Path) -> None:
    """Issue 19: the latest pipeline of the branch head and its jobs: running waits, a failed job fails
    the gate with its name in the details the developer's next task file quotes; allow_failure jobs do
    not count; no pipeline at all is no CI (the local tests run, as on the other forges)."""
    from blocks.forge import GitLabCredentials
    from forge_servers.gitlab import DEFAULT_TOKEN as GITLAB_TOKEN
    from forge_servers.gitlab import GitLabTestServer
    from tasks.worktree import ensure_worktree

    with GitLabTestServer(tmp_path / "gitlab") as gitlab:
        origin = gitlab.create_repo("team/platform", "app")
        worktree = ensure_worktree(str(origin), "feature/ET-2-gate")
        sha = subprocess.run(["git", "-C", str(worktree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        block = f"gitlab-{uuid.uuid4().hex[:8]}"
        GitLabCredentials(api_url=gitlab.api_url, token=GITLAB_TOKEN).save(block)
        forge = ForgeSpec(kind="gitlab", credentials_block=block, owner="team/platform", name="app",
                          ci_timeout_seconds=10, ci_poll_seconds=0.2)
        ctx = GateContext(worktree=worktree, work_item="ET-2", visit=1, spec=DEFAULT_GRAPH.stage("development"),
                          agent=None, repo=str(origin), forge=forge)

        no_ci = evaluate_gate(ctx)
        assert no_ci.reason.startswith(f"no CI reported for {sha[:12]}"), no_ci.reason

        pipeline = gitlab.add_pipeline("team/platform", "app", sha=sha, status="running",
                                       jobs=[("lint", "success"), ("unit", "running"), ("flaky", "failed", True)])
        gitlab.set_pipeline_status("team/platform", "app", pipeline, "failed", after_reads=2,
                                   jobs=[("lint", "success"), ("unit", "failed"), ("flaky", "failed", True)])
        failed = evaluate_gate(ctx)
        assert failed.outcome == "fail" and failed.reason == f"CI failed on {sha[:12]}"
        assert "job unit: failed" in failed.details and "flaky" not in failed.details
        reads = [r for r in gitlab.requests if r.method == "GET" and r.path.endswith("/pipelines")]
        assert len(reads) >= 2  # it waited while the pipeline ran
        assert gitlab.violations == []
