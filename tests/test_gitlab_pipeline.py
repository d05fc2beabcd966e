"""A work item from a GitLab issue to a merged merge request (issue 19), as it runs in production.

The deployments of prefect.yaml and a process worker; the webhook receiver; a GitLab test server
(tests/forge_servers/gitlab.py, every request checked against tests/contracts/gitlab-endpoints.md)
over a real bare repository in a nested group. A labelled Issue Hook starts the work item through
the deployment trigger; it waits for approval; a Note Hook ``/approve`` from an allowed user resumes
it; the development gate waits while the branch's pipeline runs, then it succeeds; one merge
request is created and merged; the issue hears how it went in notes. The forge calls one work item
costs are counted (BENCHMARKS.md: at most 30 per work item on every forge).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from blocks.agent_profile import AgentProfile
from blocks.forge import GitLabCredentials
from blocks.webhooks import RunDefaults, WebhookSettings
from forge_servers.gitlab import DEFAULT_TOKEN, GitLabTestServer
from operating import deploy_all, start_worker, stop_worker, wait_for_end, wait_for_state
from test_gitlab_webhooks import issue_hook, note_hook
from test_webhooks import Receiver

GROUP, NAME = "team/platform", "app"
SECRET = "gitlab-e2e-token"
MAX_FORGE_CALLS = 30
PROJECT_PATH = "/projects/team%2Fplatform%2Fapp"
NUMBERS = re.compile(r"/[0-9a-f]{40}|/\d+")  # shas and iids, for counting calls by kind


def test_a_labelled_gitlab_issue_ends_with_its_merge_request_merged_and_the_issue_told(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    deploy_all(cli_env)
    worker = start_worker(cli_env, tmp_path)
    try:
        with GitLabTestServer(tmp_path / "gitlab") as gitlab:
            origin = gitlab.create_repo(GROUP, NAME)
            iid = gitlab.create_issue(GROUP, NAME, "Export as CSV", "Finance needs it.")
            gitlab.ci_script = [("running", 0), ("success", 2)]  # the branch's pipeline runs, then passes
            GitLabCredentials(api_url=gitlab.api_url, token=DEFAULT_TOKEN, timeout_seconds=10).save(
                "gitlab-e2e", overwrite=True
            )
            AgentProfile(kind="scripted").save("scripted-gitlab", overwrite=True)
            settings = WebhookSettings(
                gitlab_secret=SECRET, approvers=["alice"], project_keys={f"{GROUP}/{NAME}": "GLP"},
                gitlab_credentials_block="gitlab-e2e", defaults=RunDefaults(agent_profile="scripted-gitlab"),
            )
            work_item = f"GLP-{iid}"
            with Receiver(settings) as receiver:
                hook = issue_hook(origin, iid, before=("backend",))  # the label given to issue #iid
                assert hook["project"]["path_with_namespace"] == f"{GROUP}/{NAME}"
                answer = receiver.send("gitlab", "Issue Hook", hook, secret=SECRET)
                assert answer.status_code == 202 and answer.json()["work_item"] == work_item, answer.text
                wait_for_state(work_item, "waiting_approval", data_dir)
                answer = receiver.send("gitlab", "Note Hook", note_hook(origin, iid, "/approve looks right"), secret=SECRET)
                assert answer.status_code == 202, answer.text
                row = wait_for_end(work_item, data_dir, timeout=300)
            assert row.state == "done", row.reason

            # One merge request, merged once, its merge commit on main.
            (mr,) = gitlab.merge_requests(GROUP, NAME)
            assert mr["state"] == "merged" and mr["source_branch"].startswith(f"feature/{work_item}")
            assert len(gitlab.merges) == 1
            main = subprocess.run(["git", "-C", str(origin), "rev-parse", "main"], capture_output=True, text=True)
            assert main.stdout.strip() == mr["merge_commit_sha"]
            # The development gate waited while the pipeline ran: the pipelines of its head were read again.
            reads = [r for r in gitlab.requests if r.method == "GET" and r.path.endswith("/pipelines")]
            assert len(reads) >= 2, [(r.method, r.path) for r in gitlab.requests]
            # The issue heard of it: the approval asked for, and the outcome.
            told = [n["body"] for n in gitlab.notes(GROUP, NAME, iid) if not n.get("system")]
            assert any("ready for approval" in body for body in told), told
            assert any("merged" in body.lower() for body in told), told
            assert gitlab.violations == [], gitlab.violations
            calls = len(gitlab.requests)
            kinds = Counter(f"{r.method} {NUMBERS.sub('/N', r.path.split(PROJECT_PATH, 1)[-1])}" for r in gitlab.requests)
            print(f"\nGitLab calls for one work item: {calls}: {dict(kinds)}")
            assert calls <= MAX_FORGE_CALLS, "\n".join(f"{r.method} {r.path} {r.query}" for r in gitlab.requests)
    finally:
        stop_worker(worker)
