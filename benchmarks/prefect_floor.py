"""What Prefect itself costs per flow run and per task run, with nothing of sdlc inside them.

A parent flow runs six empty subflows (as the pipeline runs its six stages, with the
subflows' heartbeats off as flows/pipeline.py runs them), first with no task in
them, then with four empty tasks each (as a stage has four). It reports, per subflow
and per task run, the wall time in the parent and the CPU time of the Prefect server
and of this process: the floor under the pipeline's stage gap and orchestration CPU.

    .venv/bin/python benchmarks/prefect_floor.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from common import SERVER_SETTINGS, start_server, stop_server

STAGES = 6
TASKS_PER_STAGE = 4


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Parent flow runs per kind (after one warm-up).")
    args = parser.parse_args()
    start_server()
    from prefect import flow, task

    from flows.pipeline import _without_subflow_heartbeat

    @task
    def empty(n: int) -> int:
        return n

    @flow(persist_result=True)
    def stage(n: int, tasks: int) -> int:
        for i in range(tasks):
            empty(i)
        return n

    @flow
    def parent(tasks: int) -> list[float]:
        walls = []
        for n in range(STAGES):
            started = time.perf_counter()
            with _without_subflow_heartbeat():
                stage(n, tasks)
            walls.append(time.perf_counter() - started)
        return walls

    server = int((SERVER_SETTINGS.root / "prefect" / "server.pid").read_text())
    results: dict[int, tuple[float, float, float]] = {}
    try:
        for tasks in (0, TASKS_PER_STAGE):
            parent(tasks)  # warm-up: imports, the flows' registration
            walls: list[float] = []
            server_before, own_before = cpu_seconds(server), time.process_time()
            for _ in range(args.rounds):
                walls += parent(tasks)
            runs = args.rounds * STAGES
            results[tasks] = (
                statistics.median(walls),
                (cpu_seconds(server) - server_before) / runs,
                (time.process_time() - own_before) / runs,
            )
    finally:
        stop_server()

    print(f"{datetime.now():%Y-%m-%d}; {os.cpu_count()} cores; {args.rounds} x {STAGES} subflows per kind")
    (wall0, server0, own0), (wall4, server4, own4) = results[0], results[TASKS_PER_STAGE]
    print(
        f"empty subflow: {wall0 * 1000:.0f} ms wall (median), server {server0 * 1000:.0f} ms CPU, "
        f"this process {own0 * 1000:.0f} ms CPU"
    )
    print(
        f"subflow with {TASKS_PER_STAGE} empty tasks: {wall4 * 1000:.0f} ms wall (median), "
        f"server {server4 * 1000:.0f} ms CPU, this process {own4 * 1000:.0f} ms CPU"
    )
    per_task = [(b - a) / TASKS_PER_STAGE * 1000 for a, b in ((wall0, wall4), (server0, server4), (own0, own4))]
    print(
        f"so one empty task run: {per_task[0]:.0f} ms wall, server {per_task[1]:.0f} ms CPU, "
        f"this process {per_task[2]:.0f} ms CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
