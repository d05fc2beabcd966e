"""A work item kept in step with Plane (B11, B20, B50) through the whole pipeline.

The Plane test server follows tests/contracts/plane-endpoints.md; the pipeline runs as
`sdlc run` in its own process; people answer and approve by commenting in Plane,
which reaches sdlc as signed `issue_comment` webhook deliveries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from blocks.plane import PlaneCredentials
from blocks.webhooks import WebhookSettings
from forge_servers.plane import DEFAULT_API_KEY, PlaneServer
from demo.sample import create_sample_repo
from processes import end, wait_for
from test_cli import finish, wait_for_state
from test_webhooks import Receiver

PLANE_SECRET = "plane-webhook-secret"
APPROVER = str(uuid.uuid4())
STRANGER = str(uuid.uuid4())


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[PlaneServer]:
    with PlaneServer(tmp_path / "plane") as server:
        yield server
        assert [r.path for r in server.requests if not r.path.endswith("/")] == []
        assert server.unpaged_lists == []


def save_block(plane: PlaneServer, project: str, name: str) -> None:
    PlaneCredentials(
        api_url=plane.api_url,
        api_key=DEFAULT_API_KEY,
        workspace_slug=plane.workspace,
        project_id=project,
        approvers=[APPROVER],
        timeout_seconds=5,
    ).save(name, overwrite=True)


def comment_delivery(plane: PlaneServer, item_id: str, actor: str, text: str) -> dict[str, Any]:
    """What Plane sends for a new comment (issue_comment, action created)."""
    made = plane.add_comment(item_id, f"<p>{text}</p>", actor=actor)
    return {
        "event": "issue_comment",
        "action": "created",
        "webhook_id": str(uuid.uuid4()),
        "workspace_id": str(uuid.uuid4()),
        "data": {**made, "issue": item_id},
        "activity": {"field": None, "actor": {"id": actor}},
    }


def state_names(plane: PlaneServer, project: str) -> dict[str, str]:
    return {state["id"]: state["name"] for state in plane.states(project)}


def wait_for_plane_state(plane: PlaneServer, project: str, item_id: str, name: str, timeout: float = 30) -> None:
    """The tracker is told right after the ledger; give it that moment."""
    names = state_names(plane, project)
    deadline = time.monotonic() + timeout
    while names[plane.work_item(item_id)["state"]] != name:
        assert time.monotonic() < deadline, f"Plane item stayed {names[plane.work_item(item_id)['state']]}, not {name}"
        time.sleep(0.2)


def wait_for_comment(plane: PlaneServer, item_id: str, *needles: str, timeout: float = 30) -> str:
    """The first comment on the item holding every one of ``needles``, as soon as it has arrived."""
    found: list[str] = []

    def arrived() -> bool:
        found[:] = [c["comment_html"] for c in plane.comments(item_id) if all(n in c["comment_html"] for n in needles)]
        return bool(found)

    assert wait_for(arrived, timeout), f"no comment with {needles} on the item: {plane.comments(item_id)}"
    return found[0]


def test_plane_follows_the_work_item_and_people_decide_by_commenting(
    plane: PlaneServer, prefect_api: str, cli_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    project = plane.add_project("ENG")
    for name in ("In Review", "Needs Input", "Blocked"):
        plane.add_state(project, name)
    item = plane.add_work_item(project, "Export to CSV", state="Todo")
    block = f"plane-{uuid.uuid4().hex[:8]}"
    save_block(plane, project, block)
    names = state_names(plane, project)
    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"analyst": {"questions": 1}}))
    work_item = f"ENG-{item['sequence_id']}"

    run = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", work_item,
         "--title", "Export to CSV", "--agent", "scripted", "--scenario", str(scenario), "--plane-block", block],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with Receiver(WebhookSettings(plane_secret=PLANE_SECRET)) as receiver:
            wait_for_state(data_dir, work_item, "needs_input", run)
            wait_for_plane_state(plane, project, item["id"], "Needs Input")
            # The questions comment follows the state change; wait for it by what it says.
            questions = wait_for_comment(plane, item["id"], "has questions")
            assert "/answer" in questions and "/runs/flow-run/" in questions

            answer = receiver.send("plane", "issue_comment", comment_delivery(plane, item["id"], APPROVER,
                                   "/answer Use semicolons as separators."), secret=PLANE_SECRET)
            assert answer.status_code == 202, answer.text
            wait_for_state(data_dir, work_item, "waiting_approval", run)
            wait_for_plane_state(plane, project, item["id"], "In Review")

            # Someone who is not an approver cannot approve; the run keeps waiting.
            refused = receiver.send("plane", "issue_comment", comment_delivery(plane, item["id"], STRANGER, "/approve"),
                                    secret=PLANE_SECRET)
            assert refused.status_code == 409 and "not an approver" in refused.json()["reason"]
            unsigned = receiver.send("plane", "issue_comment", comment_delivery(plane, item["id"], APPROVER, "/approve"),
                                     secret=None)
            assert unsigned.status_code == 401
            time.sleep(1)  # nothing is to happen: a second in which the run could wrongly go on
            wait_for_state(data_dir, work_item, "waiting_approval", run, timeout=1)

            approved = receiver.send("plane", "issue_comment", comment_delivery(plane, item["id"], APPROVER,
                                     "/approve ship it"), secret=PLANE_SECRET)
            assert approved.status_code == 202, approved.text
            code, out, err = finish(run, timeout=180)
    finally:
        end(run)
    assert code == 0, out + err

    assert names[plane.work_item(item["id"])["state"]] == "Done"
    bot_comments = [c["comment_html"] for c in plane.comments(item["id"]) if c["actor"] == plane.bot_id]
    text = "\n".join(bot_comments)
    for expected in ("starts at analysis", "analysis -&gt; architecture: approved by " + APPROVER, "review -&gt; testing",
                     "deploy passed, PR #1 merged"):
        assert expected in text
    assert all("/runs/flow-run/" in comment for comment in bot_comments)
    # The answers given in Plane reached the analyst's second run.
    brd = subprocess.run(["git", "-C", str(origin), "show", f"main:docs/work-items/{work_item}/02-brd.md"],
                         capture_output=True, text=True).stdout
    assert "Use semicolons as separators." in brd


def test_missing_plane_states_are_named_and_the_pipeline_still_finishes(
    plane: PlaneServer, prefect_api: str, cli_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    project = plane.add_project("OPS")  # Plane's default states only
    item = plane.add_work_item(project, "Rotate logs", state="Todo")
    block = f"plane-{uuid.uuid4().hex[:8]}"
    save_block(plane, project, block)
    origin = create_sample_repo(tmp_path / "repos")
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", f"OPS-{item['sequence_id']}",
         "--title", "Rotate logs", "--agent", "scripted", "--auto-approve", "--plane-block", block, "--verbose"],
        env=cli_env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "has no state named 'In Review' (in_review), 'Needs Input' (needs_input), 'Blocked' (blocked)" in output
    # The item keeps its state rather than moving to a wrong one, and the comments still arrived.
    assert state_names(plane, project)[plane.work_item(item["id"])["state"]] == "Todo"
    text = "\n".join(c["comment_html"] for c in plane.comments(item["id"]))
    assert "starts at analysis" in text and "PR #1 merged" in text
