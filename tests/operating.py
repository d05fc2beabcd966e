"""Operating sdlc-flows as documented, from tests: the `prefect` CLI, process workers, waiting on the ledger.

Tests import this module directly (``from operating import ...``); it is not a conftest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SDLC = [sys.executable, "-m", "entrypoints.cli"]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "sdlc-process"
ROLES = ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
# An agent log's first line names the worktree the agent ran in.
WORKTREE = re.compile(r"^--- \w+ attempt \d+ started \S+ in (\S+) \[[^\]]*\]: ")

Interval = tuple[datetime, datetime]


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`prefect --no-prompt ARGS` from the repository root (where prefect.yaml is); fails the test on error."""
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def deploy_all(env: dict[str, str]) -> None:
    """The process pool and every deployment of prefect.yaml, as the README says."""
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect_cli(env, "deploy", "--all")


def start_worker(
    env: dict[str, str], cwd: Path, *, name: str | None = None, log: Path | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`prefect worker start --pool sdlc-process` in its own process group, polling every second unless
    ``env`` says otherwise; output to ``log`` or nowhere."""
    command = [PREFECT, "worker", "start", "--pool", POOL, *(["--name", name] if name else []), *extra]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            command,
            env={"PREFECT_WORKER_QUERY_SECONDS": "1", **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the worker's process group (its flow runs included), SIGKILL it if it lingers."""
    try:
        os.killpg(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


def wait_for_state(work_item: str, states: str | tuple[str, ...], data_dir: Path, timeout: float = 180) -> Any:
    from tasks.ledger import Ledger

    wanted = (states,) if isinstance(states, str) else states
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (data_dir / "ledger.db").exists():
            row = Ledger.from_settings().get_work_item(work_item)
            if row is not None and row.state in wanted:
                return row
        time.sleep(0.5)
    raise AssertionError(f"{work_item} did not reach {wanted} within {timeout:.0f} s")


def wait_for_end(work_item: str, data_dir: Path, timeout: float = 180) -> Any:
    return wait_for_state(work_item, ("done", "blocked", "failed"), data_dir, timeout=timeout)


def most_at_once(intervals: list[Interval]) -> int:
    """The largest number of intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def check_done_apart(
    items: dict[str, Path], ledger: Any, again: tuple[str, ...] = ("tester", "deployer")
) -> tuple[list[Interval], dict[Path, list[Interval]]]:
    """Every work item done on its own branch and worktree, each role run once (testing and deploy again when
    main moved before its merge: the roles ``again`` names), each PR merged once into its
    repository (numbered 1..n there); returns the agents' intervals, all and per repository."""
    rows = {row.id: row for row in ledger.list_work_items() if row.id in items}
    assert sorted(rows) == sorted(items)
    assert {row.id: (row.state, row.reason) for row in rows.values() if row.state != "done"} == {}
    assert len({row.branch for row in rows.values()}) == len(items)
    intervals: list[Interval] = []
    by_repo: dict[Path, list[Interval]] = defaultdict(list)
    worktree_of: dict[str, str] = {}
    for work_item, origin in items.items():
        agent_runs = ledger.agent_runs(work_item)
        # Each role once; a work item whose branch was behind main when it came to merge (another one on its
        # repository merged first) had its merged code tested again: testing and deploy ran once more each time.
        judged_again = sum("main moved" in t.reason for t in ledger.transitions(work_item))
        expected = Counter({role: 1 + (judged_again if role in again else 0) for role in ROLES})
        assert Counter(run.role for run in agent_runs) == expected, work_item
        assert all(run.exit_code == 0 and run.ended_at is not None for run in agent_runs), work_item
        paths = {WORKTREE.search(Path(run.log_path).read_text()).group(1) for run in agent_runs}  # type: ignore[union-attr]
        assert len(paths) == 1, (work_item, paths)
        worktree_of[work_item] = paths.pop()
        spans = [(run.started_at, run.ended_at) for run in agent_runs if run.ended_at is not None]
        intervals += spans
        by_repo[origin] += spans
        (pr,) = ledger.pull_requests(work_item)
        assert (pr.state, pr.branch, pr.number) == ("merged", rows[work_item].branch, rows[work_item].pr_number)
    assert len(set(worktree_of.values())) == len(items), worktree_of
    for origin in set(items.values()):
        mine = [w for w, o in items.items() if o == origin]
        assert sorted(rows[w].pr_number for w in mine) == list(range(1, len(mine) + 1)), origin
        merges = subprocess.run(
            ["git", "-C", str(origin), "log", "--merges", "--first-parent", "--format=%s", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert sorted(merges) == sorted(f"Merge pull request #{rows[w].pr_number} from {rows[w].branch}" for w in mine)
    return intervals, by_repo
