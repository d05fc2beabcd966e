"""Settings are read once where a process starts and handed down; nothing else reads the environment."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prefect import flow

from sdlc.models import Announcement, StepRecord, WorkItemRequest
from sdlc.settings import SdlcSettings, get_settings, settings_in_force
from tasks.tracking import record_step

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "blocks", "sdlc", "entrypoints", "demo", "deployments")
# The scripted agent is an agent, not sdlc: a separate program that reads its B5 protocol
# variables from its own environment, as Claude Code or Codex would.
READS_THE_ENVIRONMENT = {"sdlc/settings.py", "demo/scripted_agent.py"}


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that touch ``os.environ``, ``os.getenv`` or ``os.putenv`` (or import them)."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for alias in node.names if alias.name in ("environ", "getenv", "putenv")]
    return lines


def test_only_the_settings_module_reads_the_process_environment() -> None:
    found = {
        path.relative_to(ROOT).as_posix(): lines
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := environment_reads(path))
    }
    assert set(found) == READS_THE_ENVIRONMENT, {p: found[p] for p in set(found) - READS_THE_ENVIRONMENT}


@flow
def one_step(work_item: str) -> None:
    request = WorkItemRequest(work_item=work_item, title="Settings", repo="https://git.example/acme/shop.git")
    record_step(request, None, StepRecord(announcements=[Announcement(event="done", message=f"{work_item} done")]))


def notifications(root: Path) -> list[str]:
    path = root / "notifications.jsonl"
    return [json.loads(line)["message"] for line in path.read_text().splitlines()] if path.exists() else []


def test_settings_handed_down_are_what_flows_and_tasks_use_whatever_the_environment_says_later(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `sdlc worker` runs: read at its start, handed to each run's thread; a later change of
    the environment (another command's, a test's) does not move a run that is going on."""
    handed = SdlcSettings(data_dir=tmp_path / "handed-down")
    monkeypatch.setenv("SDLC_DATA_DIR", str(tmp_path / "from-the-environment"))

    def run() -> None:
        with settings_in_force(handed):
            assert get_settings() is handed
            one_step("ET-1")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)

    assert notifications(handed.root) == ["ET-1 done"]
    assert notifications(tmp_path / "from-the-environment") == []
    # Outside the block the environment's settings are in force again.
    assert get_settings().root == (tmp_path / "from-the-environment").resolve()
    one_step("ET-2")
    assert notifications(tmp_path / "from-the-environment") == ["ET-2 done"]


def test_a_bad_setting_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "SDLC_DATA_DIR": str(tmp_path / "data"), "SDLC_BREAKER_THRESHOLD": "many"}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "status"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "sdlc: error: invalid SDLC_* setting: breaker_threshold: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
    assert not (tmp_path / "data").exists()


def test_retry_budgets_come_from_the_run_else_its_profile_else_the_installation(tmp_path: Path) -> None:
    from blocks.agent_profile import AgentProfile
    from sdlc.models import AgentSpec
    from tasks.taskfile import retry_policy

    installation = SdlcSettings(
        data_dir=tmp_path,
        agent_max_attempts=4,
        agent_transient_retries=7,
        agent_backoff_base_seconds=2,
        agent_backoff_cap_seconds=50,
    )
    profile = AgentProfile(kind="scripted", transient_retries=3, backoff_cap_seconds=90)
    with settings_in_force(installation):
        policy = retry_policy(AgentSpec(max_attempts=1), profile, retry_agent=True)
        assert (policy.max_attempts, policy.transient_retries) == (1, 3)  # the run's, the profile's
        assert (policy.backoff_base_seconds, policy.backoff_cap_seconds) == (2, 90)  # the installation's, the profile's
        assert retry_policy(AgentSpec(), AgentProfile(), retry_agent=True).max_attempts == 4
        # Where the exit code is the gate (the deployer), one run whatever is set.
        assert retry_policy(AgentSpec(max_attempts=5), profile, retry_agent=False).max_attempts == 1
