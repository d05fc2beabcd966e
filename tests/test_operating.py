"""Operating it as documented (B60, B63): the embedded default and a deployment run by a worker.

The deployment test also guards the pinned dependencies: a prefect / fastapi pair
whose server rejects its own client (seen with fastapi 0.154) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

from demo.sample import create_sample_repo
from gitrepo import free_port
from operating import SDLC, deploy_all, prefect_cli, start_worker, stop_worker, wait_for_end, wait_for_state


def test_demo_starts_its_own_server_and_ends_with_the_pr_merged(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SDLC_"))}
    env.update(SDLC_PREFECT_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    data = tmp_path / "state"
    try:
        demo = subprocess.run(
            [*SDLC, "--data-dir", str(data), "demo", "--approve-after", "0.5"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        port = env["SDLC_PREFECT_PORT"]
        assert f"http://127.0.0.1:{port}/runs/flow-run/" in demo.stdout
        assert "sdlc approve DEMO-1" in demo.stdout
        assert "review -> development: 12-review.md: request_changes" in demo.stdout
        assert "DEMO-1 done. PR #1 merged" in demo.stdout
        # The server outlives the command, with its state in the data directory.
        assert (data / "prefect" / "prefect.db").exists()
        server = subprocess.run([*SDLC, "--data-dir", str(data), "server", "status"], env=env, capture_output=True, text=True)
        assert server.returncode == 0 and "up" in server.stdout
        # A second data directory (another checkout) on the same port is refused that server, in one line.
        other = tmp_path / "second-checkout"
        refused = subprocess.run(
            [*SDLC, "--data-dir", str(other), "server", "start"], env=env, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert f"keeps the state of another installation ({(data / 'prefect').resolve()})" in line
        assert "SDLC_PREFECT_PORT" in line and not (other / "prefect" / "server.pid").exists()
        status = subprocess.run(
            [*SDLC, "--data-dir", str(data), "status", "--json"], env=env, capture_output=True, text=True
        )
        (item,) = json.loads(status.stdout)
        assert item["state"] == "done" and len(item["agent_runs"]) == 8
        merged = subprocess.run(
            ["git", "-C", str(data / "demo" / "sample-origin.git"), "log", "-1", "--format=%s", "main"],
            capture_output=True, text=True,
        ).stdout
        assert merged.startswith("Merge pull request #1")
    finally:
        subprocess.run([*SDLC, "--data-dir", str(data), "server", "stop"], env=env, capture_output=True)


def requested_of(work_item: str) -> Any:
    """The WorkItemRequest of the work item's pipeline run, from the parameters Prefect stored."""
    from prefect.client.orchestration import get_client

    from sdlc.models import WorkItemRequest
    from tasks.ledger import Ledger

    row = Ledger.from_settings().get_work_item(work_item)
    assert row is not None and row.flow_run_id
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(UUID(row.flow_run_id)).parameters
    return WorkItemRequest.model_validate(parameters["request"])


def test_deploy_all_then_deployment_run_through_a_process_worker(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    deploy_all(cli_env)
    worker = start_worker(cli_env, tmp_path)
    try:
        params = {"request": {"work_item": "ET-40", "title": "Via deployment", "repo": str(origin), "auto_approve": True,
                              "agent": {"kind": "scripted"}}}
        prefect_cli(cli_env, "deployment", "run", "sdlc-pipeline/sdlc-pipeline", "--params", json.dumps(params))
        row = wait_for_end("ET-40", data_dir)
        assert row.state == "done", row.reason
        assert row.pr_number == 1
        merged = subprocess.run(
            ["git", "-C", str(origin), "log", "-1", "--format=%s", "main"], capture_output=True, text=True
        ).stdout
        assert merged.startswith("Merge pull request #1")

        # B61: a signed Gitea "issue labelled" delivery -> event -> the deployment trigger starts a run
        # whose PR lives on Gitea (a real HTTP server following Gitea's swagger, over real git repositories).
        from blocks.agent_profile import AgentProfile
        from blocks.forge import GiteaCredentials
        from blocks.webhooks import RunDefaults, WebhookSettings
        from forge_servers.gitea import DEFAULT_TOKEN, GiteaTestServer
        from test_webhooks import Receiver

        with GiteaTestServer(tmp_path / "gitea") as gitea:
            gitea_origin = gitea.create_repo("team", "app")
            GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN, timeout_seconds=10).save("gitea-e2e", overwrite=True)
            settings = WebhookSettings(
                gitea_secret="s3cret", approvers=["alice"], project_keys={"team/app": "APP"},
                gitea_credentials_block="gitea-e2e",
                # Issue 15: what the labelled issue runs with comes from the block, through the trigger.
                defaults=RunDefaults(agent_profile="no-such-profile", budget_usd=50),
                repositories={"team/app": RunDefaults(agent_profile="scripted-e2e", transient_retries=3)},
            )
            AgentProfile(kind="scripted").save("scripted-e2e", overwrite=True)
            repository = {"full_name": "team/app", "name": "app", "clone_url": str(gitea_origin)}
            gitea.inject("GET", r"/repos/team/app/pulls$", status=500, times=2)
            gitea.inject("POST", r"/repos/team/app/pulls$", status=500, after=True)
            with Receiver(settings) as receiver:
                issue = {"number": 41, "title": "From a webhook", "body": "Say hi.", "labels": [{"name": "sdlc"}]}
                delivery = {"action": "label_updated", "issue": issue, "repository": repository}
                answer = receiver.send("gitea", "issues", delivery, secret="s3cret")
                assert answer.status_code == 202, answer.text
                # The triggered run pauses for approval like any other; an allowed user's comment resumes it.
                wait_for_state("APP-41", "waiting_approval", data_dir)
                request = requested_of("APP-41")  # what the trigger rendered, as the pipeline reads it
                assert (request.agent.profile_block, request.agent.transient_retries) == ("scripted-e2e", 3)
                assert (request.agent.kind, request.agent.max_attempts, request.budget_usd) == (None, None, 50)
                assert request.tracker is None
                comment = {"action": "created", "issue": issue, "comment": {"body": "/approve", "user": {"login": "alice"}},
                           "repository": repository}
                answer = receiver.send("gitea", "issue_comment", comment, secret="s3cret")
                assert answer.status_code == 202, answer.text
                row = wait_for_end("APP-41", data_dir)
            assert row.state == "done", row.reason
            (pr,) = gitea.pull_requests("team", "app")  # exactly one, despite the 500s on list and create
            assert pr["merged"] is True
            assert sum(r.injected for r in gitea.requests) == 3
            assert gitea.violations == []
            log = subprocess.run(["git", "-C", str(gitea_origin), "log", "-1", "--format=%s", "main"], capture_output=True, text=True).stdout
            assert log.startswith(f"Merge pull request #{pr['number']}")
    finally:
        stop_worker(worker)
