"""What the agent sandbox costs (issue 13): per agent run, and in the stage gap, with and without it, in one run.

1. Per agent run: the project's runner (`execute_agent`) starts an agent that exits
   at once (`/bin/true`) in a real worktree, alternately unconfined and confined
   (bwrap, its private git copy, a network namespace with pasta); the difference
   of the medians is what the sandbox adds to each run's start.
2. Stage gap: work items through all six stages (as benchmarks/stage_gap.py), half
   of them with `sandbox: none` and half with `bwrap`, interleaved.

    .venv/bin/python benchmarks/sandbox_cost.py [--runs 40] [--items 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, gaps_of, read_intervals, start_server, stop_server, summary, timing_agent

TARGET_MS = 50.0


def runner_start_ms(runs: int) -> dict[str, list[float]]:
    """Wall time of one whole agent run of /bin/true through the runner, per sandbox mode."""
    from demo.sample import create_sample_repo
    from tasks.agent import AgentInvocation, execute_agent
    from tasks.sandbox import SandboxSpec
    from tasks.worktree import ensure_worktree

    origin = create_sample_repo(ROOT / "cost-repo")
    worktree = ensure_worktree(str(origin), "feature/COST-1")
    times: dict[str, list[float]] = {"none": [], "bwrap": []}
    for n in range(runs):
        for mode in ("none", "bwrap") if n % 2 == 0 else ("bwrap", "none"):
            invocation = AgentInvocation(
                work_item="COST-1", stage="development", role="developer", worktree=str(worktree),
                argv=["/bin/true"], timeout_seconds=60, protocol_env={"SDLC_ROLE": "developer"},
                sandbox=SandboxSpec(mode=mode),
            )
            started = time.perf_counter()
            result = execute_agent(invocation, attempt=1, log_path=ROOT / "cost-logs" / f"{mode}-{n}.log")
            times[mode].append((time.perf_counter() - started) * 1000)
            assert result.exit_code == 0 and (result.sandbox or "").startswith("bwrap" if mode == "bwrap" else "unconfined")
    return times


def pipeline_gaps(items: int) -> dict[str, list[float]]:
    from entrypoints import runner
    from sdlc.models import AgentSpec, WorkItemRequest
    from demo.sample import create_sample_repo
    from tasks.sandbox import scripted_agent_paths

    records = ROOT / "records"
    records.mkdir(exist_ok=True)
    # The timing agent records its times outside its worktree and hands over to the scripted agent.
    os.environ["SDLC_SANDBOX_WRITE_PATHS"] = str(records)
    os.environ["SDLC_SANDBOX_READ_PATHS"] = ":".join(scripted_agent_paths())
    gaps: dict[str, list[float]] = {}
    for n in range(1, items + 1):
        for mode in ("none", "bwrap"):
            record = records / f"{mode}.jsonl"
            agent = timing_agent(record)
            origin = create_sample_repo(ROOT / f"repo-{mode}-{n}")
            request = WorkItemRequest(
                work_item=f"{'OPEN' if mode == 'none' else 'BOX'}-{n}", title="Measure the gap", repo=str(origin), auto_approve=True,
                agent=AgentSpec(kind="custom", command=[sys.executable, str(agent)], sandbox=mode),
            )
            final = runner.drive(runner.start_run(request), request.work_item)
            assert final.state is not None and final.state.is_completed(), final.state
    for mode in ("none", "bwrap"):
        gaps[mode] = gaps_of(read_intervals(records / f"{mode}.jsonl"))
    return gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="Agent runs per mode for the per-run cost.")
    parser.add_argument("--items", type=int, default=2, help="Work items per mode for the stage gap.")
    args = parser.parse_args()
    from tasks.sandbox import sandbox_problem

    problem = sandbox_problem()
    if problem is not None:
        raise SystemExit(f"no sandbox on this machine: {problem}")
    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {bwrap}")
    started = time.monotonic()
    start_server()
    print(f"server up in {time.monotonic() - started:.1f} s")
    try:
        times = runner_start_ms(args.runs)
        gaps = pipeline_gaps(args.items)
    finally:
        stop_server()
    cost = statistics.median(times["bwrap"]) - statistics.median(times["none"])
    for mode in ("none", "bwrap"):
        values = sorted(times[mode])
        print(f"agent run of /bin/true, {mode:<5}: median {statistics.median(values):.1f} ms, "
              f"p90 {values[int(len(values) * 0.9) - 1]:.1f} ms ({len(values)} runs)")
    print(f"sandbox cost per agent run: {cost:.1f} ms (median difference) -> target <= {TARGET_MS:g} ms "
          f"{'met' if cost <= TARGET_MS else 'NOT met'}")
    for mode in ("none", "bwrap"):
        print(f"stage gap, {mode:<5}: {summary(gaps[mode])}")
    print(f"stage gap difference: {statistics.median(gaps['bwrap']) - statistics.median(gaps['none']):.3f} s (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
