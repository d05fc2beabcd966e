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

from demo.sample import create_sample_repo
import pytest

from processes import end, processes_with
from test_cli import SDLC, sdlc, status


def commits_on(origin: Path, branch: str) -> list[str]:
    log = subprocess.run(["git", "-C", str(origin), "log", "--format=%s", branch], capture_output=True, text=True, check=True)
    return log.stdout.splitlines()


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_sigkill_during_development_then_resume_goes_on_from_development(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path, sandbox: str
) -> None:
    """Also issue 13: the killed driver's agent does not run on. Confined, it ends with its driver
    (--die-with-parent); unconfined, it outlives it and `sdlc resume` ends it before the stage goes on."""
    from tasks.ledger import Ledger

    from tasks.sandbox import scripted_agent_paths

    origin = create_sample_repo(tmp_path / "repos")
    markers = tmp_path / "markers"  # granted to the sandbox; its path also marks the agent's processes
    markers.mkdir()
    agent = tmp_path / "agent.py"
    # The first developer run hangs (its driver is killed); every other run is the scripted agent.
    agent.write_text(
        "import os, runpy, sys, time\n"
        "marker = os.path.join(sys.argv[1], 'developer-hung-once')\n"
        "if os.environ['SDLC_ROLE'] == 'developer' and not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    time.sleep(600)\n"
        "sys.argv = ['scripted']\n"
        "runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
    )
    env = {
        **cli_env,
        "SDLC_AGENT_SANDBOX": sandbox,
        "SDLC_SANDBOX_READ_PATHS": ":".join(scripted_agent_paths()),
        "SDLC_SANDBOX_WRITE_PATHS": str(markers),
    }
    run = subprocess.Popen(
        [*SDLC, "run", "--repo", str(origin), "--work-item", "ET-41", "--title", "Survive a crash",
         "--agent-command", f"{sys.executable} {agent} {markers}", "--auto-approve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (markers / "developer-hung-once").exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the developer never started"
            time.sleep(0.2)
        assert processes_with(str(markers)), "the hung developer is not running"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        if sandbox == "bwrap":
            deadline = time.monotonic() + 10
            while processes_with(str(markers)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not processes_with(str(markers)), "a confined agent outlived its driver"
        else:
            assert processes_with(str(markers)), "unconfined, the agent outlives its killed driver"

        ledger = Ledger.from_settings()
        assert ledger.get_work_item("ET-41").state == "running"  # cut off: nothing ended it
        branch = ledger.get_work_item("ET-41").branch
        before = commits_on(origin, branch)

        resumed = sdlc(env, "resume", "ET-41", timeout=240)
        assert not processes_with(str(markers)), "`sdlc resume` left the dead driver's agent running"
    finally:
        end(run)
        for pid in processes_with(str(markers)):
            os.kill(pid, signal.SIGKILL)
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
