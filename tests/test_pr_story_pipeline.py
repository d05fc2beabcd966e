"""The pull request tells the story (issue 17) through a whole pipeline on Gitea and GitHub.

The PR's body is read back through the forge's own API while the work item waits in testing
(the tester holds until the test says go): it already holds the analysis, the architecture and
the review's verdict, not yet a test result. A person then adds notes below the marked line
through the API, as they would in the web editor; after the merge the body holds the test
result too, and the person's notes word for word. The work item's page in the Prefect UI
(issue 17, item 2) links the same documents to their web view on the forge.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdlc.pr_body import MARKER
from test_up_to_date import assert_done, pipeline_in_thread, request_for, wait_for_stage
from test_up_to_date_forges import OWNER, REPO, RemoteRepo, on_forge, remote  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("prefect_api", "data_dir")

NOTES = "Reviewed by a person: please keep the greeting short. <!-- not a marker --> `code` & *emphasis*"


def body_of(forge: RemoteRepo, number: int) -> str:
    answer = forge.client.get(f"/repos/{OWNER}/{REPO}/pulls/{number}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["body"] or "")


def test_the_pr_body_tells_the_story_as_stages_pass_and_keeps_what_a_person_wrote_below_the_line(
    remote: RemoteRepo, tmp_path: Path
) -> None:
    go = tmp_path / "tester-go"
    request = on_forge(request_for(remote.origin, tmp_path, "ST-1", {"tester": {"wait_for_file": str(go)}}), remote)
    request = request.model_copy(update={"description": "Greet a person by name."})
    with pipeline_in_thread(request) as outcome:
        try:
            wait_for_stage("ST-1", "testing")
            number = remote.pull_of(request.feature_branch)["number"]
            # Development and review have passed: the story so far, and the line to write below.
            body = body_of(remote, number)
            assert body.count(MARKER) == 1
            story, _ = body.split(MARKER)
            assert "ST-1" in story and "Greet a person by name." in story
            assert "Acceptance criteria" in story and "Architecture" in story
            assert "**Verdict:** APPROVE" in story and "**Result:**" not in story
            assert "docs/work-items/ST-1/02-brd.md" in story  # a link to the document on the branch
            assert "/runs/flow-run/" in story
            # A person adds notes below the line, in the forge's editor.
            edited = remote.client.patch(f"/repos/{OWNER}/{REPO}/pulls/{number}", json={"body": body + NOTES})
            assert edited.status_code in (200, 201), edited.text
        finally:
            go.touch()  # never leave the tester waiting on a failed test
    assert_done(outcome, "ST-1")

    final = body_of(remote, number)
    story, notes = final.split(MARKER)
    assert "**Result:** PASS" in story and "**Verdict:** APPROVE" in story
    assert notes.endswith(NOTES) and NOTES in notes
    assert remote.pull_of(request.feature_branch)["merged"]
    # The work item's page in the Prefect UI links the documents to their web view on the forge (issue 17).
    from test_work_item_page import html_of
    from test_work_item_page_pipeline import latest_page

    page = latest_page(str(outcome["state"].state_details.flow_run_id), "work-item-st-1")
    assert page is not None and "**State:** done" in page.data
    links = dict(re.findall(r'<a href="([^"]+)">([^<]+)</a>', html_of(page.data)))
    web = {label: url for url, label in links.items()}
    assert web["Business requirements"].startswith("http") and web["Business requirements"].endswith(
        f"/{request.feature_branch}/docs/work-items/ST-1/02-brd.md"
    )
    assert web["Test report"].endswith("/docs/work-items/ST-1/13-test-report.md")
    assert web[f"#{number}"].startswith("http")
