"""Two machines (issue 15 item 6): a work item suspended on one machine is finished on another.

Machines are simulated by data directories and `sdlc worker` processes. They share what
the README's "Several machines" section says must be shared: one Prefect server (each
names it with ``PREFECT_API_URL``; it keeps none of their state), one PostgreSQL ledger
(``SDLC_LEDGER_URL``), one result storage block (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``)
and the git origins. Nothing else: each machine has its own Prefect home, clones,
worktrees and logs under its data dir, and machine A's data dir is moved away once A
is stopped, so no other machine can read anything A kept locally.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from demo.sample import create_sample_repo
from operating import POOL, SDLC, deploy_all, stop_worker
from postgres import PostgresCluster, postgres_cluster  # noqa: F401 - the fixture

ROLES = ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
FINISHED_BY_B = "TWO-1"  # approved on machine B, which has the shared result storage
TRIED_ON_C = "TWO-2"  # approved on machine C, which was not given it; then resumed on B


def machine_env(
    data_dir: Path, *, api_url: str, ledger_url: str, results_block: str | None, scope: str, granted: Path
) -> dict[str, str]:
    """One machine's environment: the shared things (server, ledger, result storage) and its own data dir.

    No PREFECT_HOME: sdlc gives each data dir its own (``<data dir>/prefect``), so each
    machine's default local result folder is its own, as on two hosts.
    """
    from tasks.sandbox import scripted_agent_paths

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SDLC_"))}
    env.update(
        PREFECT_API_URL=api_url,
        SDLC_DATA_DIR=str(data_dir),
        SDLC_LEDGER_URL=ledger_url,
        SDLC_BREAKER_SCOPE=scope,
        SDLC_SANDBOX_READ_PATHS=":".join(scripted_agent_paths()),
        SDLC_SANDBOX_WRITE_PATHS=str(granted),
        PYTHONUNBUFFERED="1",
    )
    if results_block is not None:
        env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = results_block
    return env


def start_sdlc_worker(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*SDLC, "worker", "--pool", POOL, "--query-seconds", "0.5"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(what: str, condition: Callable[[], Any], *, timeout: float, logs: list[Path]) -> Any:
    """``condition()``'s value as soon as it is truthy; fails with the workers' last lines after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s\n{tails}")


def merged_head(origin: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(origin), "log", "-1", "--format=%s", "main"], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.timeout(600)
def test_a_work_item_suspended_on_one_machine_is_finished_by_a_worker_on_another(
    tmp_path: Path,
    prefect_api: str,
    postgres_cluster: PostgresCluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.filesystems import LocalFileSystem

    from entrypoints.server import server_home
    from tasks.ledger import Ledger

    ledger_url = postgres_cluster.url("ledger")
    monkeypatch.setenv("SDLC_LEDGER_URL", ledger_url)
    ledger = Ledger(ledger_url)
    origins = {item: create_sample_repo(tmp_path / f"origin-{item}") for item in (FINISHED_BY_B, TRIED_ON_C)}
    data_a, data_b, data_c = ((tmp_path / f"machine-{m}").resolve() for m in "abc")
    scope = uuid.uuid4().hex[:12]
    # The shared result storage: a LocalFileSystem block at a folder every "machine" sees stands for
    # storage every host reaches (an S3, GCS or Azure bucket block), saved on the shared server.
    shared_results = tmp_path / "shared-results"
    block = f"local-file-system/sdlc-two-machines-{scope}"
    LocalFileSystem(basepath=str(shared_results)).save(block.split("/")[1])
    machine = partial(machine_env, api_url=prefect_api, ledger_url=ledger_url, scope=scope, granted=tmp_path)
    env_a = machine(data_a, results_block=block)
    env_b = machine(data_b, results_block=block)
    env_c = machine(data_c, results_block=None)  # forgot the shared result storage
    log_a, log_b, log_c = (tmp_path / f"worker-{m}.log" for m in "abc")
    deploy_all(env_a)
    # The server keeps another data dir's state; named by PREFECT_API_URL, it is used, not refused.
    assert server_home(prefect_api) not in (None, data_a / "prefect", data_b / "prefect")
    named = subprocess.run([*SDLC, "server", "start"], env=env_b, capture_output=True, text=True, timeout=60)
    assert (named.returncode, named.stdout.strip()) == (0, f"Prefect API at {prefect_api}"), named.stderr

    def row_in(work_item: str, *states: str) -> Any:
        row = ledger.get_work_item(work_item)
        return row if row is not None and row.state in states and row.flow_run_id else None

    def suspended(work_item: str) -> bool:
        row = row_in(work_item, "waiting_approval")
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(row.flow_run_id)).state
        return state is not None and state.is_paused()

    def approve(work_item: str, env: dict[str, str]) -> None:
        approved = subprocess.run(
            [*SDLC, "approve", work_item, "--by", "erin"], env=env, capture_output=True, text=True, timeout=120
        )
        assert approved.returncode == 0, approved.stdout + approved.stderr

    workers: list[subprocess.Popen[bytes]] = []
    try:
        # Machine A runs both work items to their approval, where they suspend.
        workers.append(worker_a := start_sdlc_worker(env_a, tmp_path, log_a))
        for work_item, origin in origins.items():
            request = {
                "work_item": work_item,
                "title": f"Greet from two machines {work_item}",
                "repo": str(origin),
                "agent": {"kind": "scripted"},
                "auto_approve": False,
            }
            run_deployment("sdlc-pipeline/sdlc-pipeline", parameters={"request": request}, timeout=0)
        for work_item in origins:
            wait_until(
                f"{work_item} waiting_approval on A",
                partial(row_in, work_item, "waiting_approval"),
                timeout=180,
                logs=[log_a],
            )
            # Suspended: worker A's thread has let the run go. Then machine A goes away, data dir and all.
            wait_until(f"{work_item}'s suspension", partial(suspended, work_item), timeout=60, logs=[log_a])
        stop_worker(worker_a)
        data_a.rename(tmp_path / "machine-a-gone")

        # Machine C was not given the shared result storage: the resumed run stops before it redoes anything.
        workers.append(worker_c := start_sdlc_worker(env_c, tmp_path, log_c))
        approve(TRIED_ON_C, env_c)
        failed = wait_until(
            f"{TRIED_ON_C}'s end on C",
            lambda: row_in(TRIED_ON_C, "failed", "done", "blocked"),
            timeout=180,
            logs=[log_c],
        )
        stop_worker(worker_c)

        # Machine B has it: it finishes the work item from its analysis on, in a worktree of its own.
        workers.append(worker_b := start_sdlc_worker(env_b, tmp_path, log_b))
        approve(FINISHED_BY_B, env_b)
        done = wait_until(
            f"{FINISHED_BY_B}'s end on B",
            lambda: row_in(FINISHED_BY_B, "done", "failed", "blocked"),
            timeout=300,
            logs=[log_b],
        )
        stop_worker(worker_b)
        # What C was told to do: on a machine with the shared storage, `sdlc resume` goes on with the run.
        resumed = subprocess.run([*SDLC, "resume", TRIED_ON_C], env=env_b, capture_output=True, text=True, timeout=300)
    finally:
        for worker in workers:
            stop_worker(worker)

    assert failed.state == "failed", failed.reason
    assert "ResultsOutOfReach" in failed.reason and "Several machines" in failed.reason, failed.reason
    # C is told where the results are (the block A used) and where it looked (its own folder).
    assert f"stored their results in the storage block {block}," in failed.reason, failed.reason
    assert f"reads results from the folder {data_c / 'prefect' / 'storage'}," in failed.reason, failed.reason
    assert not (data_c / "worktrees").exists() and not (data_c / "repos").exists()  # nothing ran on C

    worker_b_log = log_b.read_text(errors="replace")
    assert (done.state, done.pr_number) == ("done", 1), (done.reason, worker_b_log[-3000:])
    # Analysis ran once, on A; B replayed it and ran every later stage.
    runs = ledger.agent_runs(FINISHED_BY_B)
    assert [run.role for run in runs] == ROLES
    assert Path(runs[0].log_path).is_relative_to(data_a)
    assert all(Path(run.log_path).is_relative_to(data_b) for run in runs[1:])
    assert worker_b_log.count("started flow run") == 1, worker_b_log[-3000:]
    # B made its own clone and a worktree of the feature branch from origin; no result is kept locally.
    worktrees = sorted(path.name for path in (data_b / "worktrees").glob("*/*") if path.is_dir())
    assert worktrees == sorted(row.branch.replace("/", "__") for row in (done, failed))  # TWO-2's: from `sdlc resume`
    assert not (data_b / "prefect" / "storage").exists()
    assert any(shared_results.iterdir())
    (pr,) = ledger.pull_requests(FINISHED_BY_B)
    assert pr.state == "merged"
    assert merged_head(origins[FINISHED_BY_B]).startswith(f"Merge pull request #1 from {done.branch}")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{TRIED_ON_C} done. PR #1 merged" in resumed.stdout
    assert [run.role for run in ledger.agent_runs(TRIED_ON_C)] == ROLES
    assert merged_head(origins[TRIED_ON_C]).startswith("Merge pull request #1")
