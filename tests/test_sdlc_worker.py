"""`sdlc worker`: deployment runs executed in one long-lived process (B60, B21, B64).

The worker claims due runs of the `sdlc-process` pool and runs them in threads; a
run that waits for approval is suspended (its thread ends) and comes back through
the pool after `sdlc approve`, with every finished agent replayed, not rerun.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from operating import POOL, SDLC, check_done_apart, deploy_all, most_at_once, stop_worker, wait_for_end, wait_for_state
from demo.sample import create_sample_repo


def test_the_sdlc_worker_runs_deployments_in_its_own_process_and_resumes_suspended_runs(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from prefect.deployments import run_deployment

    from tasks.ledger import Ledger

    deploy_all(cli_env)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*SDLC, "worker", "--pool", POOL, "--query-seconds", "0.5"],
            env=cli_env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        items = {"WRK-1": False, "WRK-2": True, "WRK-3": True}  # work item -> auto-approve
        for work_item, auto in items.items():
            origin = create_sample_repo(tmp_path / work_item)
            request = {
                "work_item": work_item,
                "title": f"Through the worker {work_item}",
                "repo": str(origin),
                "agent": {"kind": "scripted"},
                "auto_approve": auto,
            }
            run_deployment("sdlc-pipeline/sdlc-pipeline", parameters={"request": request}, timeout=0)

        wait_for_state("WRK-1", "waiting_approval", data_dir)
        approved = subprocess.run(
            [*SDLC, "approve", "WRK-1", "--by", "erin"], env=cli_env, capture_output=True, text=True, timeout=120
        )
        assert approved.returncode == 0, approved.stderr
        assert "sdlc resume" not in approved.stdout  # the worker goes on with it; nobody needs to drive it
        rows = {work_item: wait_for_end(work_item, data_dir) for work_item in items}
    finally:
        stop_worker(worker)
    worker_log = log.read_text(errors="replace")
    assert all(row.state == "done" and row.pr_number == 1 for row in rows.values()), (rows, worker_log[-3000:])
    roles = [run.role for run in Ledger.from_settings().agent_runs("WRK-1")]
    assert roles == ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
    # Four runs went through this one process: three started, and WRK-1 again after its approval.
    assert worker_log.count("started flow run") == 4, worker_log[-3000:]


PROVIDER_LIMIT = 6
REPO_LIMIT = 3


@pytest.mark.timeout(600)
@pytest.mark.xdist_group("twenty-work-items")  # one after another (Makefile)
def test_twenty_work_items_at_once_on_one_sdlc_worker_stay_apart_and_within_the_limits(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path, prefect_server_log: Path
) -> None:
    """B64 on the default setup (Prefect on SQLite, the ledger on SQLite): one worker process, twenty
    pipelines in its threads, five per repository; nothing collides and the limits hold."""
    from prefect.deployments import run_deployment

    from tasks.ledger import Ledger

    limits = {
        "SDLC_PROVIDER_CONCURRENCY": json.dumps({"scripted": PROVIDER_LIMIT}),
        "SDLC_REPO_CONCURRENCY": str(REPO_LIMIT),
        # Five per repository reach their merge together: when main moved, the tests (and the deployer) judge
        # the merged code again, not the tester (tests/test_up_to_date.py covers the default).
        "SDLC_WHEN_MAIN_MOVES": "tests",
    }
    deploy_all(cli_env)
    log_start = prefect_server_log.stat().st_size
    origins = [create_sample_repo(tmp_path / f"repo{n}") for n in range(1, 5)]
    items = {f"ONE-{r}{i}": origin for r, origin in enumerate(origins, 1) for i in range(1, 6)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*SDLC, "worker", "--pool", POOL, "--query-seconds", "0.5"],
            env={**cli_env, **limits},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for work_item, origin in items.items():
            request = {
                "work_item": work_item,
                "title": f"Greeting {work_item}",
                "repo": str(origin),
                "agent": {"kind": "scripted"},
                "auto_approve": True,
            }
            run_deployment("sdlc-pipeline/sdlc-pipeline", parameters={"request": request}, timeout=0)
        rows = {work_item: wait_for_end(work_item, data_dir, timeout=420) for work_item in items}
    finally:
        stop_worker(worker)
    worker_log = log.read_text(errors="replace")
    assert {w: (r.state, r.reason) for w, r in rows.items() if r.state != "done"} == {}, worker_log[-3000:]
    assert worker_log.count("started flow run") == len(items), worker_log[-3000:]  # all in this one process

    intervals, by_repo = check_done_apart(items, Ledger.from_settings(), again=("deployer",))
    assert most_at_once(intervals) <= PROVIDER_LIMIT
    assert max(most_at_once(spans) for spans in by_repo.values()) <= REPO_LIMIT
    assert most_at_once(intervals) > 1  # agents of different work items did run side by side
    # SQLite's lock never outlasted the server's own retries: no 503 went back to a client.
    with open(prefect_server_log, "rb") as server_log:
        server_log.seek(log_start)
        assert b"still answered 503" not in server_log.read()
