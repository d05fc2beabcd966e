"""Concurrency limits per provider and per repository (B64) across separate `sdlc run` processes.

Each agent appends its start and end time; with a limit of one, no two runs of the
limited kind overlap, while unrelated runs still do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from demo.sample import create_sample_repo
from test_cli import SDLC


def agent_recording_intervals(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "intervals.jsonl"
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import json, os, runpy, sys, time\n"
        "start = time.time()\n"
        "time.sleep(0.4)\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'item': os.environ['SDLC_WORK_ITEM'], 'start': start, 'end': time.time(),"
        " 'cwd': os.getcwd()}) + '\\n')\n"
        "sys.argv = ['scripted']\n"
        "runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
    )
    return agent, record


def run_all(env: dict[str, str], agent: Path, items: list[tuple[str, Path]]) -> None:
    runs = [
        subprocess.Popen(
            [*SDLC, "run", "--repo", str(origin), "--work-item", item, "--title", f"Item {item}",
             "--agent-command", f"{sys.executable} {agent}", "--auto-approve"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for item, origin in items
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err


def most_at_once(intervals: list[dict[str, float]]) -> int:
    events = sorted([(i["start"], 1) for i in intervals] + [(i["end"], -1) for i in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def overlaps(intervals: list[dict[str, float]]) -> int:
    ordered = sorted(intervals, key=lambda i: i["start"])
    return sum(1 for a, b in zip(ordered, ordered[1:]) if b["start"] < a["end"])


def test_provider_and_repository_limits_hold_across_processes(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    """Three work items, two on one repository: that repository's agents never overlap (its limit
    is 1), and never more than two agents of the provider run at once (its limit is 2)."""
    from prefect.client.orchestration import get_client

    agent, record = agent_recording_intervals(tmp_path)
    shared = create_sample_repo(tmp_path / "shared")
    other = create_sample_repo(tmp_path / "other")
    env = {**cli_env, "SDLC_REPO_CONCURRENCY": "1", "SDLC_PROVIDER_CONCURRENCY": json.dumps({"custom": 2})}
    run_all(env, agent, [("REP-1", shared), ("REP-2", shared), ("REP-3", other)])
    intervals = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(intervals) == 18  # six roles for each of three work items
    on_shared = [i for i in intervals if i["item"] in ("REP-1", "REP-2")]
    assert overlaps(on_shared) == 0
    assert most_at_once(intervals) <= 2
    # Each repository has its own limit on the server, beside the provider's.
    with get_client(sync_client=True) as client:
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=200)}
    repo_limits = {name: size for name, size in limits.items() if name.startswith("sdlc-repo-sample-origin")}
    assert len(repo_limits) >= 2 and set(repo_limits.values()) == {1}
    assert limits["sdlc-provider-custom"] == 2
