"""Stage gap: from one agent's exit to the next agent's start, through the real pipeline.

Runs work items through all six stages the way `sdlc run` does (a flow run of the
CLI deployment, executed in this process) with an instant agent that notes its
start and end, and takes the gaps between consecutive agents of each work item.
Beside it, in the same run, a plain script does the same process and git work
per stage without Prefect (fetch, run the agent, commit, push; the tests at
development) and its gaps are measured the same way: the difference is what the
orchestration costs.

    .venv/bin/python benchmarks/stage_gap.py [--items 3]
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

STAGES = ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
TEST_COMMAND = ["python3", "-m", "unittest", "discover", "-s", "tests", "-t", "."]


def pipeline_gaps(items: int, record: Path) -> list[float]:
    from entrypoints import runner
    from sdlc.models import AgentSpec, WorkItemRequest
    from demo.sample import create_sample_repo

    agent = timing_agent(record)
    for n in range(1, items + 1):
        origin = create_sample_repo(ROOT / f"repo-{n}")
        request = WorkItemRequest(
            work_item=f"GAP-{n}", title="Measure the gap", repo=str(origin), auto_approve=True,
            agent=AgentSpec(kind="custom", command=[sys.executable, str(agent)]),
        )
        final = runner.drive(runner.start_run(request), request.work_item)
        assert final.state is not None and final.state.is_completed(), final.state
    return gaps_of(read_intervals(record))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def plain_script_gaps(items: int, record: Path) -> list[float]:
    """The same work without Prefect: one checkout, and per stage fetch, agent, commit, push."""
    from demo.sample import create_sample_repo

    agent = timing_agent(record)
    for n in range(1, items + 1):
        origin = create_sample_repo(ROOT / f"plain-repo-{n}")
        work = ROOT / f"plain-work-{n}"
        subprocess.run(["git", "clone", "--quiet", str(origin), str(work)], check=True)
        git(work, "checkout", "--quiet", "-b", f"feature/plain-{n}")
        for role in STAGES:
            git(work, "fetch", "--quiet", "origin")
            env = {**os.environ, "SDLC_WORK_ITEM": f"PLAIN-{n}", "SDLC_ROLE": role, "SDLC_STAGE": role,
                   "SDLC_TASK_FILE": ".task.md", "SDLC_ARTIFACTS_DIR": f"docs/work-items/PLAIN-{n}",
                   "SDLC_ATTEMPT": "1"}
            (work / ".task.md").write_text(f"# {role}\n")
            subprocess.run([sys.executable, str(agent)], cwd=work, env=env, check=True, capture_output=True)
            if role == "developer":
                subprocess.run(TEST_COMMAND, cwd=work, check=True, capture_output=True)
            git(work, "add", "--all", "--", "docs", "src", "tests")
            git(work, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "--quiet",
                "--allow-empty", "-m", f"{role} for PLAIN-{n}")
            git(work, "push", "--quiet", "origin", "HEAD")
    return gaps_of(read_intervals(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3, help="Work items (each gives five gaps).")
    args = parser.parse_args()
    started = time.monotonic()
    start_server()
    print(f"server up in {time.monotonic() - started:.1f} s; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    try:
        pipeline = pipeline_gaps(args.items, ROOT / "pipeline.jsonl")
        plain = plain_script_gaps(args.items, ROOT / "plain.jsonl")
    finally:
        stop_server()
    print(f"pipeline (Prefect flows):   {summary(pipeline)}")
    print(f"plain script (same work):   {summary(plain)}")
    print(f"orchestration cost per gap: {statistics.median(pipeline) - statistics.median(plain):.2f} s (median)")
    print(f"target: median stage gap <= 1.5 s -> {'met' if statistics.median(pipeline) <= 1.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
