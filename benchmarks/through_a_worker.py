"""Trigger to first agent, makespan of concurrent work items, and memory per work item, through a worker.

Registers the deployments of prefect.yaml on a private server (`prefect deploy
--all`), starts one worker (`sdlc worker`, or `prefect worker start` with
`--worker prefect`; both poll every second), then:

1. trigger to first agent: `prefect deployment run` for one work item at a time,
   timed from the command's start and from the flow run's creation to the
   analyst's start (the agent notes its own start time);
2. makespan: N work items at once whose every agent takes S seconds; the ideal is
   six agents in a row, 6 x S, since the work items are independent;
3. memory: the resident memory of the worker and every process under it
   (flow-run processes, agents, git), sampled every 0.5 s during the makespan
   run; its peak divided by N.

    .venv/bin/python benchmarks/through_a_worker.py [--triggers 5] [--items 20] [--agent-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from common import ROOT, read_intervals, start_server, stop_server, summary, timing_agent

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect(*args: str) -> str:
    done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def run_params(work_item: str, origin: Path, agent: Path) -> str:
    return json.dumps({"request": {
        "work_item": work_item, "title": "Benchmark", "repo": str(origin), "auto_approve": True,
        "agent": {"kind": "custom", "command": [sys.executable, str(agent)]},
    }})


def flow_run_created(work_item: str) -> float:
    """When the server created the flow run of this work item (its parameters name it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(limit=200):
            if (run.parameters.get("request") or {}).get("work_item") == work_item and run.created:
                return run.created.timestamp()
    raise LookupError(work_item)


def wait_for_done(work_items: list[str], timeout: float) -> None:
    from tasks.ledger import Ledger

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [Ledger.from_settings().get_work_item(w) for w in work_items] if (ROOT / "data" / "ledger.db").exists() else []
        states = [r.state if r else None for r in rows]
        if len(states) == len(work_items) and all(s in ("done", "blocked", "failed") for s in states):
            bad = [w for w, s in zip(work_items, states) if s != "done"]
            if bad:
                raise RuntimeError(f"not done: {bad}")
            return
        time.sleep(0.5)
    raise TimeoutError(f"work items not done within {timeout} s")


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1])
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack += children.get(current, [])
    return total


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process itself, and of its children it has waited for (utime+stime, cutime+cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_cpu_seconds() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick


def server_pid() -> int:
    from common import SERVER_SETTINGS

    return int((SERVER_SETTINGS.root / "prefect" / "server.pid").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=5)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--agent-seconds", type=float, default=5.0)
    parser.add_argument("--worker", choices=("sdlc", "prefect"), default="sdlc",
                        help="`sdlc worker` (runs in one process) or `prefect worker start` (a process per run).")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="The Prefect server's database: SQLite (sdlc's default) or a private PostgreSQL cluster.")
    args = parser.parse_args()
    start_server(args.database)
    from demo.sample import create_sample_repo

    prefect("work-pool", "create", "sdlc-process", "--type", "process", "--overwrite")
    prefect("deploy", "--all")
    command = (
        [sys.executable, "-m", "entrypoints.cli", "worker", "--pool", "sdlc-process"] if args.worker == "sdlc"
        else [PREFECT, "worker", "start", "--pool", "sdlc-process"]
    )
    worker = subprocess.Popen(
        command,
        env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        time.sleep(5)  # the worker's first poll
        # 1. trigger to first agent
        record = ROOT / "trigger.jsonl"
        instant = timing_agent(record)
        from_command, from_creation = [], []
        for n in range(1, args.triggers + 1):
            work_item = f"TRG-{n}"
            origin = create_sample_repo(ROOT / f"trigger-{n}")
            started = time.time()
            prefect("deployment", "run", "sdlc-pipeline/sdlc-pipeline", "--params", run_params(work_item, origin, instant))
            wait_for_done([work_item], 300)
            analyst = next(i for i in read_intervals(record) if i["item"] == work_item and i["role"] == "analyst")
            from_command.append(analyst["start"] - started)
            from_creation.append(analyst["start"] - flow_run_created(work_item))

        # 2 and 3. makespan and memory of N concurrent work items
        record = ROOT / "makespan.jsonl"
        slow = timing_agent(record, args.agent_seconds)
        origins = [create_sample_repo(ROOT / f"load-{n}") for n in range(1, args.items + 1)]
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.5):
                peak[0] = max(peak[0], tree_rss_kib(worker.pid))

        baseline = tree_rss_kib(worker.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = (cpu_seconds(server_pid()), cpu_seconds(worker.pid), machine_cpu_seconds())
        started = time.time()
        items = [f"LOAD-{n}" for n in range(1, args.items + 1)]
        from prefect.deployments import run_deployment

        for work_item, origin in zip(items, origins):
            run_deployment("sdlc-pipeline/sdlc-pipeline", parameters=json.loads(run_params(work_item, origin, slow)),
                           timeout=0)
        wait_for_done(items, 1800)
        makespan = max(i["end"] for i in read_intervals(record)) - started
        cpu_after = (cpu_seconds(server_pid()), cpu_seconds(worker.pid), machine_cpu_seconds())
        sampling.set()
        sampler.join()
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        stop_server()

    ideal = 6 * args.agent_seconds
    print(f"worker: {args.worker}; database: {args.database}; machine: {os.cpu_count()} cores; {datetime.now():%Y-%m-%d}")
    print(f"trigger to first agent, from `prefect deployment run`: {summary(from_command)}")
    print(f"trigger to first agent, from the flow run's creation: {summary(from_creation)}")
    print(f"makespan of {args.items} work items, agents {args.agent_seconds:g} s: {makespan:.1f} s; "
          f"ideal {ideal:.0f} s; ratio {makespan / ideal:.2f} (target <= 1.3)")
    (server_before, _), (worker_before, children_before), (busy_before, all_before) = cpu_before
    (server_after, _), (worker_after, children_after), (busy_after, all_after) = cpu_after
    print(f"CPU during the makespan: machine {busy_after - busy_before:.0f} of {all_after - all_before:.0f} CPU-s busy; "
          f"Prefect server {server_after - server_before:.0f} s, worker {worker_after - worker_before:.0f} s, "
          f"its processes (agents, git, gate commands) {children_after - children_before:.0f} s")
    print(f"memory: worker tree {baseline / 1024:.0f} MiB idle, peak {peak[0] / 1024:.0f} MiB with {args.items} "
          f"work items: {(peak[0] - baseline) / 1024 / args.items:.0f} MiB per work item")
    print(f"targets: trigger median <= 3 s -> {'met' if statistics.median(from_command) <= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
