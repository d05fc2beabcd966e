"""Crash and resume (issue 7, B21): SIGKILL mid-development, then `sdlc resume`.

The resumed run goes on from development: analyst and architect do not run
again, no commit is made twice, and there is exactly one pull request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdlc.sample import create_sample_repo
from test_cli import SDLC, sdlc, status


def commits_on(origin: Path, branch: str) -> list[str]:
    log = subprocess.run(["git", "-C", str(origin), "log", "--format=%s", branch], capture_output=True, text=True, check=True)
    return log.stdout.splitlines()


def test_sigkill_during_development_then_resume_goes_on_from_development(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    hang_marker = tmp_path / "developer-hung-once"
    agent_pid = tmp_path / "hung-agent.pid"
    agent = tmp_path / "agent.py"
    # The first developer run hangs (it is killed with everything else); every other run is the scripted agent.
    agent.write_text(
        "import os, runpy, sys, time\n"
        f"marker, pid_file = {str(hang_marker)!r}, {str(agent_pid)!r}\n"
        "if os.environ['SDLC_ROLE'] == 'developer' and not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    open(pid_file, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "sys.argv = ['scripted']\n"
        "runpy.run_module('sdlc.scripted_agent', run_name='__main__')\n"
    )
    run = subprocess.Popen(
        [*SDLC, "run", "--repo", str(origin), "--work-item", "ET-41", "--title", "Survive a crash",
         "--agent-command", f"{sys.executable} {agent}", "--auto-approve"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not agent_pid.exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the developer never started"
            time.sleep(0.2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        if agent_pid.exists():  # the hung agent outlives the killed process: end it as an operator would
            try:
                os.kill(int(agent_pid.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass

    ledger = Ledger.from_settings()
    assert ledger.get_work_item("ET-41").state == "running"  # cut off: nothing ended it
    branch = ledger.get_work_item("ET-41").branch
    before = commits_on(origin, branch)

    resumed = sdlc(cli_env, "resume", "ET-41", timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "unfinished run" in resumed.stdout and "ET-41 done. PR #1 merged" in resumed.stdout

    item = status(cli_env, "ET-41")
    roles = [r["role"] for r in item["agent_runs"]]
    # The killed developer run stays on record (never ended); analyst and architect ran once.
    assert roles == ["analyst", "architect", "developer", "developer", "reviewer", "tester", "deployer"]
    assert item["agent_runs"][2]["exit_code"] is None
    # One PR, and every commit message appears once on the merged branch.
    assert item["pull_request"]["number"] == 1
    after = commits_on(origin, "main")
    work_commits = [c for c in after if "ET-41" in c and not c.startswith("Merge")]
    assert len(work_commits) == len(set(work_commits)), json.dumps(after, indent=1)
    assert set(before) <= set(after)
    targets = [t["to"] for t in item["transitions"]]
    assert targets == ["analysis", "architecture", "development", "review", "testing", "deploy", "done"]
