"""One page per work item (issue 17, item 2) through a whole pipeline on a real Prefect server.

The work item waits for a person's approval of its analysis: its page (the markdown artifact
``work-item-<id>``, read back through the Prefect API as the UI reads it) already says so.
Approved, it goes on; the reviewer requests changes once, so development runs twice. Once
done, the page shows the state, every stage move with its reason in order, every agent run
(cost and tokens included: the agent reports them as the Claude CLI does), the spend against
the budget, the pull request and the documents on the branch; and the pipeline's flow run
carries the tags the UI's Runs page filters by.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from demo.sample import create_sample_repo
from sdlc.models import AgentSpec, WorkItemRequest, WorkItemState
from test_up_to_date import assert_done, ledger_of, pipeline_in_thread
from test_work_item_page import html_of, table_rows

pytestmark = pytest.mark.usefixtures("prefect_api", "data_dir")

WORK_ITEM = "PAGE-1"
KEY = "work-item-page-1"
RUN_COST, RUN_INPUT, RUN_OUTPUT = 0.0125, 1000, 200

# The scripted agent, then the JSON result line the Claude CLI prints last: cost and tokens for the ledger.
COSTED_AGENT = f"""
import json, subprocess, sys
code = subprocess.call([sys.executable, "-m", "demo.scripted_agent"])
if code == 0:
    print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "num_turns": 2,
                      "total_cost_usd": {RUN_COST}, "usage": {{"input_tokens": {RUN_INPUT}, "output_tokens": {RUN_OUTPUT}}}}}))
sys.exit(code)
"""


def costed_request(tmp_path: Path, scenario: dict[str, Any]) -> WorkItemRequest:
    origin = create_sample_repo(tmp_path / "repos")
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    script = tmp_path / "costed_agent.py"
    script.write_text(COSTED_AGENT)
    return WorkItemRequest(
        work_item=WORK_ITEM,
        title="Greet | by <b>name</b>",
        description="Greet a person by name.",
        repo=str(origin),
        budget_usd=5.0,
        agent=AgentSpec(kind="custom", command=[sys.executable, str(script)], scenario_file=str(scenario_file)),
    )


def latest_page(flow_run_id: str, key: str = KEY) -> Any:
    """The newest version of a work item's page that this pipeline run published, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return found[0] if found else None


def page_saying(flow_run_id: str, text: str, timeout: float = 30) -> Any:
    """The page once its newest version says ``text`` (it is published just after the ledger's writes)."""
    deadline = time.monotonic() + timeout
    while True:
        page = latest_page(flow_run_id)
        if page is not None and text in page.data:
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"no page of {WORK_ITEM} says {text!r}; the latest: {page and page.data}")
        time.sleep(0.2)


def approve(outcome: dict[str, Any]) -> None:
    """A person approves the analysis (once the run waits for it)."""
    from entrypoints.approvals import resume_waiting_run

    resume_waiting_run(WORK_ITEM, WorkItemState.waiting_approval, {"approve": True, "approver": "alice"})
    outcome["approved"] = True


def wait_for_state(state: str, timeout: float = 120) -> Any:
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = ledger.get_work_item(WORK_ITEM)
        if row is not None and row.state == state:
            return row
        time.sleep(0.1)
    raise AssertionError(f"{WORK_ITEM} did not become {state}")


def test_the_work_item_page_is_current_while_it_waits_and_tells_the_whole_story_once_done(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    request = costed_request(tmp_path, {"reviewer": {"request_changes": 1}})
    with pipeline_in_thread(request) as outcome:
        try:
            waiting = wait_for_state("waiting_approval")
            assert waiting.flow_run_id
            page = page_saying(waiting.flow_run_id, "**State:** waiting\\_approval")
            assert "**Stage:** analysis" in page.data and "/runs/flow-run/" in page.data
            assert page.description == f"{WORK_ITEM}: Greet \\| by \\<b\\>name\\</b\\> — waiting\\_approval at analysis"
            html = html_of(page.data)
            assert [cells[1:3] for cells in table_rows(html, "Timeline")] == [["start", "analysis"]]
            assert [cells[1] for cells in table_rows(html, "Agent runs")] == ["analyst"]
            assert "Business requirements: docs/work-items/PAGE-1/02-brd.md on branch feature/PAGE-1-" in html
        finally:
            approve(outcome)  # never leave the run waiting on a failed test
    assert outcome.get("approved"), outcome
    assert_done(outcome, WORK_ITEM)
    row, runs, transitions = ledger_of(WORK_ITEM)
    flow_run_id = str(outcome["state"].state_details.flow_run_id)
    assert row.flow_run_id == flow_run_id

    page = latest_page(flow_run_id)
    assert page is not None and page.type == "markdown"
    assert page.description == f"{WORK_ITEM}: Greet \\| by \\<b\\>name\\</b\\> — done"
    text, html = page.data, html_of(page.data)
    assert text.startswith(f"# {WORK_ITEM}: Greet \\| by \\<b\\>name\\</b\\>\n")
    assert "**State:** done · **Stage:** done" in text
    assert re.search(r"\*\*Pull request:\*\* #1 \(local://", text), text
    # Every stage move, in order, with its reason; the review sent the work back once.
    timeline = table_rows(html, "Timeline")
    assert [(cells[1], cells[2]) for cells in timeline] == [(t.from_stage or "start", t.to_stage) for t in transitions]
    assert [cells[2] for cells in timeline] == [
        "analysis", "architecture", "development", "review", "development", "review", "testing", "deploy", "done"
    ]
    assert all(cells[3] for cells in timeline)
    assert timeline[1][3] == transitions[1].reason.replace("<", "&lt;").replace(">", "&gt;")
    # Every agent run: role, attempt, exit, cost, tokens and its log.
    agent_runs = table_rows(html, "Agent runs")
    assert [(cells[1], cells[2]) for cells in agent_runs] == [
        ("analyst", "1"), ("architect", "1"), ("developer", "1"), ("reviewer", "1"),
        ("developer", "2"), ("reviewer", "2"), ("tester", "1"), ("deployer", "1"),
    ]
    assert all(cells[3] == "0" and cells[5] == "$0.0125" and cells[6] == "1,000 / 200" for cells in agent_runs)
    assert [cells[8] for cells in agent_runs] == [run.log_path for run in runs]
    total = len(runs) * RUN_COST
    assert f"**Spend:** ${total:.4f} of $5.00 budget (2 %) · **Tokens:** 8,000 in / 1,600 out" in text
    # The documents committed on the branch, in stage order (the local forge has no web view: their paths).
    documents = re.findall(r"<li>(.*?):", html.split("<h2>Documents</h2>", 1)[1])
    assert documents[:6] == [
        "Business requirements", "Requirements", "Acceptance criteria", "Test plan", "Architecture", "Review"
    ]
    assert "Test report" in documents
    # The Artifacts page lists the work item once, at this version.
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as client:
        (listed,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[KEY]))
        )
        assert listed.latest_id == page.id
        # The Runs page filters a work item's runs by its tags.
        tags = client.read_flow_run(UUID(flow_run_id)).tags
    assert f"work-item:{WORK_ITEM}" in tags and "repo:sample-origin" in tags


def test_a_run_that_fails_unexpectedly_leaves_the_page_saying_failed(tmp_path: Path) -> None:
    """Published by the run's on_failure hook, after the ledger says failed (B51)."""
    from flows.pipeline import sdlc_pipeline
    from gitrepo import clone_of, commit_file, git

    request = costed_request(tmp_path, {})
    person = clone_of(Path(request.repo), tmp_path / "person")
    commit_file(person, ".sdlc/config.yaml", "test_command: [unclosed\n", "a broken config")
    git(person, "push", "-q", "origin", "main")

    state = sdlc_pipeline(request=request.model_copy(update={"auto_approve": True}), return_state=True)

    assert state.is_failed()
    row, _, _ = ledger_of(WORK_ITEM)
    assert row.state == "failed" and row.stage == "development"  # its gate reads the config
    page = page_saying(str(state.state_details.flow_run_id), "**State:** failed · **Stage:** development")
    assert ".sdlc/config.yaml is not valid YAML" in page.data
    assert page.description.endswith("— failed at development")


@pytest.mark.parametrize("forge", ["gitea", "github"])
def test_a_forge_in_an_outage_costs_the_page_one_request_and_no_wait(tmp_path: Path, forge: str) -> None:
    """The page links documents to the forge's web view; while the forge fails it lists their paths,
    asking once (not through the client's backoff: a step in an outage would wait ~7.5 s for a link)
    and then not again for a while."""
    from blocks.forge import GiteaCredentials, GitHubCredentials
    from forge_servers.gitea import DEFAULT_TOKEN as GITEA_TOKEN
    from forge_servers.gitea import GiteaTestServer
    from forge_servers.github import DEFAULT_TOKEN as GITHUB_TOKEN
    from forge_servers.github import GitHubTestServer
    from sdlc.models import ForgeSpec
    from tasks.work_item_page import document_links

    server_class, credentials, token = {
        "gitea": (GiteaTestServer, GiteaCredentials, GITEA_TOKEN),
        "github": (GitHubTestServer, GitHubCredentials, GITHUB_TOKEN),
    }[forge]
    server = server_class(tmp_path / "forge").start()
    try:
        origin = server.create_repo("team", "app")
        block = f"{forge}-page-outage"
        credentials(api_url=server.api_url, token=token).save(block, overwrite=True)
        request = WorkItemRequest(
            work_item="OUT-1", title="t", repo=str(origin),
            forge=ForgeSpec(kind=forge, credentials_block=block, owner="team", name="app"),
        )
        server.chaos(1.0, kinds=(500,))
        links = document_links(request, ["analysis.md", "architecture.md"])
        again = document_links(request, ["analysis.md"])

        assert links == {name: f"docs/work-items/OUT-1/{name}" for name in ("analysis.md", "architecture.md")}
        assert again == {"analysis.md": "docs/work-items/OUT-1/analysis.md"}
        # One request in all: no retries with backoff, and none while the forge is left quiet.
        assert len(server.requests) == 1, [(r.method, r.path) for r in server.requests]

        server.chaos_off()  # the forge is back: the next page asks again once the quiet time is over
        from tasks import work_item_page

        work_item_page._FORGE_FAILED_AT.clear()
        links = document_links(request, ["analysis.md"])
        view = {"gitea": "src/branch", "github": "blob"}[forge]
        assert links["analysis.md"] == (
            f"{server.web_url}/team/app/{view}/{request.feature_branch}/docs/work-items/OUT-1/analysis.md"
        )
    finally:
        server.close()
