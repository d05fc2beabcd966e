"""Issue 15 item 1: no fake agent on a real repository unless asked.

`sdlc run`, a deployment run and a labelled issue each take the agent someone named
(the run's own, SDLC_AGENT_PROFILE, the repository's `.sdlc/config.yaml`, the
WebhookSettings block); with none named anywhere they refuse, and nothing starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from blocks.webhooks import RunDefaults, WebhookSettings
from demo.sample import create_sample_repo
from sdlc.models import AgentSpec, WorkItemRequest
from sdlc.settings import SdlcSettings, settings_in_force

SDLC = [sys.executable, "-m", "entrypoints.cli"]
NO_AGENT = "no agent is named for"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def with_repo_profile(origin: Path, tmp_path: Path, profile: str) -> None:
    """Commit `.sdlc/config.yaml` naming ``profile`` to origin's default branch."""
    work = tmp_path / f"edit-{uuid.uuid4().hex[:6]}"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True)
    (work / ".sdlc").mkdir(exist_ok=True)
    (work / ".sdlc" / "config.yaml").write_text(f"agent_profile: {profile}\n")
    git(work, "add", ".sdlc/config.yaml")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "name the agent")
    git(work, "push", "-q", "origin", "HEAD")


def environment_without_an_agent(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SDLC_AGENT_PROFILE"}
    return {**env, "SDLC_DATA_DIR": str(data_dir), **extra}


def test_run_with_no_agent_named_anywhere_exits_2_with_one_line_and_creates_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    refs_before = git(origin, "for-each-ref")
    # An unreachable Prefect API: the refusal comes before any server or run is needed.
    env = environment_without_an_agent(data_dir, PREFECT_API_URL="http://127.0.0.1:9/api")
    done = subprocess.run(
        [*SDLC, "run", "--repo", str(origin), "--work-item", "AS-1", "--title", "No agent", "--auto-approve"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"sdlc: error: {NO_AGENT} AS-1")
    for way in ("--agent claude", "--agent-profile NAME", "SDLC_AGENT_PROFILE", "agent_profile: NAME"):
        assert way in line
    assert not data_dir.exists()
    assert git(origin, "for-each-ref") == refs_before


def test_scenario_without_the_scripted_agent_named_is_refused(tmp_path: Path, data_dir: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text("{}")
    env = environment_without_an_agent(data_dir, PREFECT_API_URL="http://127.0.0.1:9/api")
    done = subprocess.run(
        [*SDLC, "run", "--repo", str(origin), "--work-item", "AS-2", "--title", "t", "--scenario", str(scenario)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "sdlc: error: --scenario is a file of the scripted agent: name it with --agent scripted"
    assert not data_dir.exists()


def test_the_agent_is_the_runs_own_else_the_setting_else_the_repositorys(tmp_path: Path, data_dir: Path) -> None:
    from tasks.taskfile import AgentNotNamed, named_agent

    origin = create_sample_repo(tmp_path / "repos")
    request = WorkItemRequest(work_item="AS-3", title="Pick", repo=str(origin))
    plain = SdlcSettings(data_dir=data_dir)
    with settings_in_force(plain), pytest.raises(AgentNotNamed, match=NO_AGENT):
        named_agent(request)

    with_repo_profile(origin, tmp_path, "team-claude")
    with settings_in_force(plain):
        assert named_agent(request).profile_block == "team-claude"
    assert not data_dir.exists()  # read from the local origin itself: nothing cloned to find out
    with settings_in_force(plain.model_copy(update={"agent_profile": "ops-codex"})):
        assert named_agent(request).profile_block == "ops-codex"
        own = request.model_copy(update={"agent": AgentSpec(kind="aider")})
        assert named_agent(own) == own.agent
        chosen = request.model_copy(update={"agent": AgentSpec(profile_block="mine", max_attempts=2)})
        assert named_agent(chosen) == chosen.agent


def test_a_deployment_run_naming_no_agent_fails_before_any_agent_runs(
    prefect_api: str, tmp_path: Path, data_dir: Path
) -> None:
    from flows.pipeline import sdlc_pipeline
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    request = WorkItemRequest(work_item="AS-4", title="Nobody named", repo=str(origin), auto_approve=True)
    state = sdlc_pipeline(request=request, return_state=True)
    assert state.is_failed()
    row = Ledger.from_settings().get_work_item("AS-4")
    assert row is not None and row.state == "failed"
    assert NO_AGENT in (row.reason or "")
    assert Ledger.from_settings().agent_runs("AS-4") == []
    assert "AS-4" not in git(origin, "for-each-ref")


def test_sdlc_run_takes_the_profile_block_named_by_the_setting(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    from blocks.agent_profile import AgentProfile
    from tasks.ledger import Ledger

    AgentProfile(kind="scripted").save("scripted-by-setting", overwrite=True)
    origin = create_sample_repo(tmp_path / "repos")
    env = {**cli_env, "SDLC_AGENT_PROFILE": "scripted-by-setting"}
    done = subprocess.run(
        [*SDLC, "run", "--repo", str(origin), "--work-item", "AS-5", "--title", "By setting", "--auto-approve"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AS-5 done" in done.stdout
    from test_operating import requested_of

    assert requested_of("AS-5").agent.profile_block == "scripted-by-setting"  # what the run was started with
    assert {run.role for run in Ledger.from_settings().agent_runs("AS-5")} >= {"analyst", "developer", "deployer"}


def labelled(origin: Path, number: int) -> dict[str, Any]:
    return {
        "action": "label_updated",
        "issue": {"number": number, "title": "Export as CSV", "body": "", "labels": [{"name": "sdlc"}]},
        "repository": {"full_name": "team/app", "name": "app", "clone_url": str(origin)},
    }


def test_a_labelled_issue_with_no_agent_anywhere_is_refused_and_a_named_one_is_passed_on(
    prefect_api: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_webhooks import GITEA_SECRET, Receiver, events_for

    monkeypatch.delenv("SDLC_AGENT_PROFILE", raising=False)
    origin = create_sample_repo(tmp_path / "repos")
    bare = WebhookSettings(gitea_secret=GITEA_SECRET, project_keys={"team/app": "APP"})
    with Receiver(bare) as receiver:
        refused = receiver.send("gitea", "issues", labelled(origin, 1), secret=GITEA_SECRET)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert detail.startswith("no agent for team/app: set agent_profile in the WebhookSettings block")
        assert events_for(prefect_api, "APP-1", "sdlc.work-item.requested", wait=0) == []

        with_repo_profile(origin, tmp_path, "repo-claude")  # the repository names one: accepted
        accepted = receiver.send("gitea", "issues", labelled(origin, 2), secret=GITEA_SECRET)
        assert accepted.status_code == 202, accepted.text
        (event,) = events_for(prefect_api, "APP-2", "sdlc.work-item.requested")
        assert event["payload"]["agent"] == {"profile_block": "repo-claude"}

    per_repository = WebhookSettings(
        gitea_secret=GITEA_SECRET, project_keys={"team/app": "APP"},
        defaults=RunDefaults(agent_profile="everyone", budget_usd=20, max_attempts=2),
        repositories={"team/app": RunDefaults(agent_profile="app-claude", plane_block="plane-app", backoff_cap_seconds=90)},
    )
    with Receiver(per_repository) as receiver:
        accepted = receiver.send("gitea", "issues", labelled(origin, 3), secret=GITEA_SECRET)
        assert accepted.status_code == 202, accepted.text
        (event,) = events_for(prefect_api, "APP-3", "sdlc.work-item.requested")
    payload = event["payload"]
    assert payload["agent"] == {"profile_block": "app-claude", "max_attempts": 2, "backoff_cap_seconds": 90}
    assert (payload["budget_usd"], payload["tracker"]) == (20, {"credentials_block": "plane-app"})
