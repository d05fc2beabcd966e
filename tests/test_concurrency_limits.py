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
from processes import end
from test_cli import SDLC


def agent_recording_intervals(tmp_path: Path) -> tuple[Path, Path]:
    """An agent that appends its work item, start and end (the whole run) to a record, then hands over
    to the scripted agent. The first agent of REP-3 (on its own repository) waits, at most 30 s, until an
    agent of the shared repository runs too, so the two meet by design rather than by timing luck;
    serialized runs never meet, and the test fails."""
    record = tmp_path / "intervals.jsonl"
    running = tmp_path / "running"
    running.mkdir()
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import json, os, runpy, sys, time, uuid\n"
        f"running = {str(running)!r}\n"
        "item, role = os.environ['SDLC_WORK_ITEM'], os.environ['SDLC_ROLE']\n"
        "mine = os.path.join(running, f'{item}-{role}-{uuid.uuid4().hex}')\n"
        "start = time.time()\n"
        "open(mine, 'w').close()\n"
        "if (item, role) == ('REP-3', 'analyst'):\n"
        "    deadline = time.monotonic() + 30\n"
        "    while not any(n.startswith(('REP-1', 'REP-2')) for n in os.listdir(running)) and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "time.sleep(0.4)\n"
        "try:\n"
        "    sys.argv = ['scripted']\n"
        "    runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
        "finally:\n"
        "    os.unlink(mine)\n"
        f"    with open({str(record)!r}, 'a') as f:\n"
        "        f.write(json.dumps({'item': item, 'start': start, 'end': time.time(), 'cwd': os.getcwd()}) + '\\n')\n"
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
    try:
        for run in runs:
            out, err = run.communicate(timeout=300)
            assert run.returncode == 0, out + err
    finally:
        for run in runs:
            end(run)


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


def meet(some: list[dict[str, float]], others: list[dict[str, float]]) -> bool:
    """Whether a run of ``some`` and a run of ``others`` were running at one instant."""
    return any(a["start"] < b["end"] and b["start"] < a["end"] for a in some for b in others)


def test_provider_and_repository_limits_hold_across_processes(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    """Three work items, two on one repository: that repository's agents never overlap (its limit
    is 1), and never more than two agents of the provider run at once (its limit is 2); the third work
    item's agents, on another repository, did run beside the shared repository's."""
    from prefect.client.orchestration import get_client

    agent, record = agent_recording_intervals(tmp_path)
    shared = create_sample_repo(tmp_path / "shared")
    other = create_sample_repo(tmp_path / "other")
    env = {**cli_env, "SDLC_REPO_CONCURRENCY": "1", "SDLC_PROVIDER_CONCURRENCY": json.dumps({"custom": 2})}
    run_all(env, agent, [("REP-1", shared), ("REP-2", shared), ("REP-3", other)])
    intervals = [json.loads(line) for line in record.read_text().splitlines()]
    # Six roles for each of three work items; a work item on the shared repository whose branch was
    # behind main when it came to merge (the other one merged first) ran testing and deploy again.
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    judged_again = [
        t for item in ("REP-1", "REP-2", "REP-3") for t in ledger.transitions(item) if "main moved" in t.reason
    ]
    assert len(intervals) == 18 + 2 * len(judged_again)
    on_shared = [i for i in intervals if i["item"] in ("REP-1", "REP-2")]
    assert overlaps(on_shared) == 0
    assert most_at_once(intervals) <= 2
    # What no limit covers still runs side by side: the limits hold back only what they name.
    on_other = [i for i in intervals if i["item"] == "REP-3"]
    assert meet(on_other, on_shared), json.dumps(sorted(intervals, key=lambda i: i["start"]), indent=1)
    assert most_at_once(intervals) == 2
    # Each repository has its own limit on the server, beside the provider's.
    with get_client(sync_client=True) as client:
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=200)}
    repo_limits = {name: size for name, size in limits.items() if name.startswith("sdlc-repo-sample-origin")}
    assert len(repo_limits) >= 2 and set(repo_limits.values()) == {1}
    assert limits["sdlc-provider-custom"] == 2
