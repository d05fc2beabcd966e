"""Concurrency limits per provider and per repository (B64) across separate `sdlc run` processes.

Each agent appends its start and end time; with a limit of one, no two runs of the
limited kind overlap, while unrelated runs still do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sdlc.sample import create_sample_repo
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
        "runpy.run_module('sdlc.scripted_agent', run_name='__main__')\n"
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


def overlaps(intervals: list[dict[str, float]]) -> int:
    ordered = sorted(intervals, key=lambda i: i["start"])
    return sum(1 for a, b in zip(ordered, ordered[1:]) if b["start"] < a["end"])


def test_a_provider_limit_of_one_serialises_agents_of_all_work_items(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    agent, record = agent_recording_intervals(tmp_path)
    items = [(f"LIM-{n}", create_sample_repo(tmp_path / f"repo{n}")) for n in range(1, 3)]
    started = time.monotonic()
    run_all({**cli_env, "SDLC_PROVIDER_CONCURRENCY": json.dumps({"custom": 1})}, agent, items)
    intervals = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(intervals) == 12  # six roles for each of two work items
    assert overlaps(intervals) == 0
    assert time.monotonic() - started >= 12 * 0.4


def test_a_repository_limit_holds_per_repository_only(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    agent, record = agent_recording_intervals(tmp_path)
    shared = create_sample_repo(tmp_path / "shared")
    other = create_sample_repo(tmp_path / "other")
    run_all({**cli_env, "SDLC_REPO_CONCURRENCY": "1"}, agent, [("REP-1", shared), ("REP-2", shared), ("REP-3", other)])
    intervals = [json.loads(line) for line in record.read_text().splitlines()]
    on_shared = [i for i in intervals if i["item"] in ("REP-1", "REP-2")]
    assert len(on_shared) == 12 and overlaps(on_shared) == 0
    # The other repository's agents were not held back by the shared one's limit.
    assert overlaps(intervals) > 0
