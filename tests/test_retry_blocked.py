"""Issue 15 item 2: a Blocked work item continues where it stopped once a person has fixed things.

`sdlc retry` drives it like `sdlc run`: finished stages are not run again, no new
approval is asked, the budgets are fresh, the comment reaches the next agent, and
the ledger (and `sdlc status`) says who sent it on, from where and why.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo.sample import create_sample_repo
from processes import end
from test_cli import sdlc, start_run, wait_for_state

if TYPE_CHECKING:
    from tasks.ledger import WorkItemRecord


def wait_for_row(work_item: str, condition: Callable[[WorkItemRecord], bool], log: Path, timeout: float = 240) -> Any:
    """The work item's ledger row once ``condition`` holds; the worker's log when it never does."""
    from tasks.ledger import Ledger

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = Ledger.from_settings().get_work_item(work_item)
        if row is not None and condition(row):
            return row
        time.sleep(0.5)
    raise AssertionError(f"{work_item}: no such state within {timeout:.0f} s; worker log:\n{log.read_text()[-4000:]}")

COMMENT = "Smoke check fixed on the staging box"


def test_retry_goes_on_at_the_blocked_stage_with_the_comment_and_no_new_approval(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"deployer": {"fail": 1}}))
    run = start_run(
        cli_env, "--repo", str(origin), "--work-item", "RT-1", "--title", "Ship it", "--agent", "scripted",
        "--scenario", str(scenario),
    )
    try:
        wait_for_state(data_dir, "RT-1", "waiting_approval", run)
        assert sdlc(cli_env, "approve", "RT-1", "--by", "erin").returncode == 0
        assert run.wait(timeout=240) == 1  # blocked at deploy
    finally:
        end(run)
    row = Ledger.from_settings().get_work_item("RT-1")
    # A failed deploy sends the work back to development (the graph's route), Blocked there.
    assert (row.state, row.stage, row.reason) == ("blocked", "development", "deployer exited 1")

    # What cannot be retried is refused plainly, and so is resuming a Blocked item.
    resumed = sdlc(cli_env, "resume", "RT-1")
    assert resumed.returncode == 2
    assert resumed.stderr.strip() == "sdlc: error: RT-1 is blocked: once it is fixed, send it on with `sdlc retry RT-1`"
    nowhere = sdlc(cli_env, "retry", "RT-1", "--stage", "staging")
    assert nowhere.returncode == 2 and "cannot go on at 'staging': the stages are analysis," in nowhere.stderr

    # No approval is asked again: a run that waited for one would not end within the timeout.
    retried = sdlc(cli_env, "retry", "RT-1", "--comment", COMMENT, "--by", "dana", timeout=300)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "RT-1 done. PR #1 merged" in retried.stdout

    ledger = Ledger.from_settings()
    runs = [(r.role, r.exit_code) for r in ledger.agent_runs("RT-1")]
    assert runs.count(("analyst", 0)) == 1 and runs.count(("architect", 0)) == 1  # finished: not run again
    assert runs.count(("developer", 0)) == 2  # the retry's first stage, then on through the gates
    assert [r for r in runs if r[0] == "deployer"] == [("deployer", 1), ("deployer", 0)]
    (move,) = [t for t in ledger.transitions("RT-1") if t.reason.startswith("retried by")]
    assert (move.from_stage, move.to_stage, move.reason) == (None, "development", f"retried by dana from cli: {COMMENT}")
    worktree = next((data_dir / "worktrees").glob("*/feature__RT-1-ship-it"))
    assert COMMENT in (worktree / ".task-developer.md").read_text()
    status = sdlc(cli_env, "status", "RT-1")
    assert f"retried by dana from cli: {COMMENT}" in status.stdout
    merged = subprocess.run(["git", "-C", str(origin), "log", "-1", "--format=%s", "main"], capture_output=True, text=True)
    assert merged.stdout.startswith("Merge pull request #1 from feature/RT-1-ship-it")

    done = sdlc(cli_env, "retry", "RT-1")
    assert done.returncode == 2
    assert done.stderr.strip() == "sdlc: error: RT-1 is done, not blocked: only a Blocked work item can be retried"


def test_the_uis_retry_and_telegrams_send_a_blocked_deployment_run_on(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from entrypoints.webhooks import Decision, act
    from operating import deploy_all, prefect_cli, start_worker, stop_worker
    from operating import wait_for_end as wait_for_end_state
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"deployer": {"fail": 2}}))  # the deployer's first two attempts fail
    deploy_all(cli_env)
    log = tmp_path / "worker.log"
    worker = start_worker(cli_env, tmp_path, log=log)
    try:
        request = {"work_item": "RT-2", "title": "Ship it", "repo": str(origin), "auto_approve": True,
                   "agent": {"kind": "scripted", "scenario_file": str(scenario)}}
        prefect_cli(cli_env, "deployment", "run", "sdlc-pipeline/sdlc-pipeline", "--params", json.dumps({"request": request}))
        row = wait_for_end_state("RT-2", data_dir, timeout=240)
        assert (row.state, row.stage) == ("blocked", "development"), row.reason
        blocked_run = row.flow_run_id

        # What the UI's Retry button does (its API call) once the run shows Failed: it goes on in a new run.
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while not client.read_flow_run(UUID(blocked_run)).state.is_failed():  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the Blocked run never ended Failed"
                time.sleep(0.2)
            answer = client.set_flow_run_state(
                UUID(blocked_run), Scheduled(name="AwaitingRetry", message="Retry from the UI"), force=False
            )
        assert answer.status.value == "ACCEPT", answer.details
        ledger = Ledger.from_settings()
        again = wait_for_row("RT-2", lambda r: r.flow_run_id != blocked_run and r.state in ("blocked", "done", "failed"), log)
        assert (again.state, again.stage) == ("blocked", "development"), again.reason
        with get_client(sync_client=True) as client:
            handed = client.read_flow_run(UUID(blocked_run)).state
        assert handed is not None and handed.is_completed()
        (ui,) = [t for t in ledger.transitions("RT-2") if t.reason.startswith("retried by")]
        assert (ui.to_stage, ui.reason) == ("development", "retried by Prefect UI from ui")

        # Telegram's /retry, as the receiver applies it, goes through the deployment too.
        telegram = Decision(kind="retry", work_item="RT-2", by="@dana", comment="deploy key rotated")
        said = act(telegram, "telegram", "update-1")
        assert said["accepted"] is True, said
        assert said["summary"].startswith("RT-2 retried by @dana from telegram: deploy key rotated; going on at development")
        final = wait_for_row("RT-2", lambda r: r.flow_run_id != again.flow_run_id and r.state in ("done", "failed"), log)
        assert final.state == "done", final.reason
    finally:
        stop_worker(worker)
    reasons = [t.reason for t in Ledger.from_settings().transitions("RT-2") if t.reason.startswith("retried by")]
    assert reasons == ["retried by Prefect UI from ui", "retried by @dana from telegram: deploy key rotated"]
    deployer = [r.exit_code for r in Ledger.from_settings().agent_runs("RT-2") if r.role == "deployer"]
    assert deployer == [1, 1, 0]
    analyst = [r for r in Ledger.from_settings().agent_runs("RT-2") if r.role == "analyst"]
    assert len(analyst) == 1


def test_a_retry_past_development_merges_the_gitea_pull_request(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from blocks.forge import GiteaCredentials
    from forge_servers.gitea import DEFAULT_TOKEN, GiteaTestServer

    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"deployer": {"fail": 1}}))
    with GiteaTestServer(tmp_path / "gitea") as gitea:
        origin = gitea.create_repo("team", "app")
        GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN, timeout_seconds=10).save("gitea-retry", overwrite=True)
        blocked = sdlc(
            cli_env, "run", "--repo", str(origin), "--work-item", "RT-3", "--title", "Ship it", "--agent", "scripted",
            "--scenario", str(scenario), "--auto-approve", "--forge", "gitea", "--forge-block", "gitea-retry",
            "--forge-repo", "team/app", timeout=300,
        )
        assert blocked.returncode == 1, blocked.stdout + blocked.stderr
        (pr,) = gitea.pull_requests("team", "app")
        assert pr["merged"] is False

        # Straight to deploy: the PR the development stage opened on Gitea is the one merged.
        retried = sdlc(cli_env, "retry", "RT-3", "--stage", "deploy", "--comment", "smoke host back", timeout=300)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        (pr,) = gitea.pull_requests("team", "app")
        assert pr["merged"] is True
        assert gitea.violations == []
    merged = subprocess.run(["git", "-C", str(origin), "log", "-1", "--format=%s", "main"], capture_output=True, text=True)
    assert merged.stdout.startswith(f"Merge pull request #{pr['number']}")
