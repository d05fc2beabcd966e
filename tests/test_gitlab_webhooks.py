"""GitLab deliveries on the webhook receiver (issue 19, item 4), on a real HTTP server.

Payloads follow ``tests/contracts/gitlab-endpoints.md`` §4: the secret token comes back as
``X-Gitlab-Token`` (not an HMAC), an Issue Hook's labels are objects named by ``title``, a label
given is an ``update`` whose ``changes.labels`` show before and after, a Note Hook's ``user`` is
the comment's author, REST calls take ``iid`` (never the global ``id``), and ``Idempotency-Key``
is the delivery id that stays the same on a resend.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from blocks.webhooks import RunDefaults, WebhookSettings
from demo.sample import create_sample_repo
from entrypoints.webhooks import SOURCES, signature_valid
from processes import end
from test_webhooks import Receiver, events_for

GITLAB_SECRET = "gitlab-webhook-token"
PROJECT = "team/platform/app"  # groups nest on GitLab


@pytest.fixture
def receiver(prefect_api: str, data_dir: Path) -> Iterator[Receiver]:
    settings = WebhookSettings(
        gitlab_secret=GITLAB_SECRET, approvers=["alice"], project_keys={PROJECT: "GL"},
        gitlab_credentials_block="gitlab-team", defaults=RunDefaults(agent_profile="scripted-agent"),
    )
    with Receiver(settings) as running:
        yield running


def label(title: str) -> dict[str, Any]:
    return {"id": 206, "title": title, "color": "#dc143c", "project_id": 14, "type": "ProjectLabel", "group_id": None}


def issue_hook(origin: Path, iid: int, *, given: str | None = "sdlc", before: tuple[str, ...] = (),
               action: str = "update", title: str = "Export as CSV") -> dict[str, Any]:
    """An Issue Hook as GitLab sends it when ``given`` is added to the issue's labels."""
    now = [*before, *([given] if given else [])]
    hook: dict[str, Any] = {
        "object_kind": "issue", "event_type": "issue",
        "user": {"id": 1, "name": "Bob", "username": "bob"},
        "project": {"id": 14, "name": "App", "path_with_namespace": PROJECT, "git_http_url": str(origin),
                    "web_url": f"https://gitlab.example.com/{PROJECT}"},
        "object_attributes": {"id": 301, "iid": iid, "title": title, "description": "Finance needs it.",
                              "state": "opened", "action": action, "labels": [label(t) for t in now]},
        "labels": [label(t) for t in now],
    }
    if action == "update" and given:
        hook["changes"] = {"labels": {"previous": [label(t) for t in before], "current": [label(t) for t in now]}}
    return hook


def note_hook(origin: Path, iid: int, note: str, *, by: str = "alice", on: str = "Issue") -> dict[str, Any]:
    hook: dict[str, Any] = {
        "object_kind": "note", "event_type": "note",
        "user": {"id": 2, "name": by.title(), "username": by},
        "project": {"id": 14, "name": "App", "path_with_namespace": PROJECT, "git_http_url": str(origin)},
        "object_attributes": {"id": 1244, "note": note, "noteable_type": on, "noteable_id": 301 + iid,
                              "action": "create", "system": False, "internal": False},
    }
    if on == "Issue":
        hook["issue"] = {"id": 301 + iid, "iid": iid, "title": "t", "state": "opened", "labels": []}
    else:
        hook["merge_request"] = {"id": 99, "iid": iid, "source_branch": "feature/x", "target_branch": "main"}
    return hook


def test_the_token_is_compared_as_sent_not_as_an_hmac() -> None:
    spec = SOURCES["gitlab"]
    assert signature_valid(spec, GITLAB_SECRET, b"{}", {"x-gitlab-token": GITLAB_SECRET})
    assert not signature_valid(spec, GITLAB_SECRET, b"{}", {"x-gitlab-token": GITLAB_SECRET + "x"})
    assert not signature_valid(spec, None, b"{}", {"x-gitlab-token": ""})


def test_a_label_given_to_an_issue_becomes_one_work_item_on_its_gitlab_project(
    receiver: Receiver, prefect_api: str, tmp_path: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    delivery = str(uuid.uuid4())
    first = receiver.send("gitlab", "Issue Hook", issue_hook(origin, 7, before=("bug",)), secret=GITLAB_SECRET,
                          delivery=delivery)
    assert first.status_code == 202, first.text
    assert first.json()["work_item"] == "GL-7" and first.json()["event"] == "sdlc.work-item.requested"
    # A resend keeps its Idempotency-Key: nothing starts again.
    again = receiver.send("gitlab", "Issue Hook", issue_hook(origin, 7, before=("bug",)), secret=GITLAB_SECRET,
                          delivery=delivery)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    (event,) = events_for(prefect_api, "GL-7", "sdlc.work-item.requested")
    payload = event["payload"]
    assert (payload["forge_kind"], payload["forge_credentials_block"]) == ("gitlab", "gitlab-team")
    assert (payload["forge_owner"], payload["forge_name"]) == ("team/platform", "app")  # the group path, nested
    assert payload["repo"] == str(origin) and payload["title"] == "Export as CSV"
    # The issue it came from hears of it: notes through the same credentials.
    assert payload["tracker"] == {"kind": "gitlab", "credentials_block": "gitlab-team", "ref": f"{PROJECT}#7"}


def test_a_gitlab_without_idempotency_key_is_deduplicated_by_its_event_and_body(
    receiver: Receiver, prefect_api: str, tmp_path: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    hook = issue_hook(origin, 8, action="open")
    first = receiver.send("gitlab", "Issue Hook", hook, secret=GITLAB_SECRET, delivery="")
    assert first.status_code == 202 and first.json()["work_item"] == "GL-8", first.text
    again = receiver.send("gitlab", "Issue Hook", hook, secret=GITLAB_SECRET, delivery="")
    assert again.status_code == 200 and again.json()["duplicate"] is True


@pytest.mark.parametrize(
    ("case", "status", "answer"),
    [
        ("no token", 401, "missing or invalid signature"),
        ("wrong token", 401, "missing or invalid signature"),
        ("oversized", 413, "over 1 MiB"),
        ("no event header", 422, "missing x-gitlab-event"),
        ("iid missing", 422, "object_attributes.iid"),
        ("title with a newline", 422, "title"),
        ("label already there, another changed", 202, "without the label"),
        ("another label given", 202, "without the label"),
        ("issue closed with the label", 202, "without the label"),
    ],
)
def test_deliveries_that_start_nothing(
    receiver: Receiver, prefect_api: str, tmp_path: Path, case: str, status: int, answer: str
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    hook = issue_hook(origin, 90)
    secret: str | None = GITLAB_SECRET
    event = "Issue Hook"
    if case == "no token":
        secret = None
    elif case == "wrong token":
        secret = "guess"
    elif case == "oversized":
        hook["object_attributes"]["description"] = "x" * (1024 * 1024 + 10)
    elif case == "no event header":
        event = ""
    elif case == "iid missing":
        del hook["object_attributes"]["iid"]
    elif case == "title with a newline":
        hook["object_attributes"]["title"] = "two\nlines $(touch /tmp/x)"
    elif case == "label already there, another changed":
        hook = issue_hook(origin, 90, given="bug", before=("sdlc",))
    elif case == "another label given":
        hook = issue_hook(origin, 90, given="bug")
    elif case == "issue closed with the label":
        hook = issue_hook(origin, 90, given=None, before=("sdlc",), action="close")
    reply = receiver.send("gitlab", event, hook, secret=secret)
    assert reply.status_code == status, reply.text
    assert answer in reply.text
    # A good delivery sent afterwards is stored; by then a stray event from the bad one would be too.
    assert receiver.send("gitlab", "Issue Hook", issue_hook(origin, 91), secret=GITLAB_SECRET).status_code == 202
    assert events_for(prefect_api, "GL-91", "sdlc.work-item.requested")
    assert events_for(prefect_api, "GL-90", "sdlc.work-item.requested", wait=0) == []


@pytest.mark.parametrize(
    ("note", "by", "on", "ignored"),
    [
        ("/approve", "mallory", "Issue", "mallory is not an allowed approver"),
        ("/approve", "alice", "MergeRequest", "a note without"),
        ("looks good to me", "alice", "Issue", "a note without"),
    ],
)
def test_notes_that_decide_nothing(receiver: Receiver, tmp_path: Path, note: str, by: str, on: str, ignored: str) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    reply = receiver.send("gitlab", "Note Hook", note_hook(origin, 7, note, by=by, on=on), secret=GITLAB_SECRET)
    assert reply.status_code == 202 and ignored in reply.json()["ignored"], reply.text


def test_answers_over_the_limit_are_refused(receiver: Receiver, tmp_path: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    hook = note_hook(origin, 7, "/answer " + "x" * 65_537)
    reply = receiver.send("gitlab", "Note Hook", hook, secret=GITLAB_SECRET)
    assert reply.status_code == 422 and "answers" in reply.text, reply.text


def test_an_approve_note_resumes_the_paused_pipeline(
    receiver: Receiver, prefect_api: str, cli_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    from tasks.ledger import Ledger
    from test_cli import wait_for_state

    origin = create_sample_repo(tmp_path / "repos")
    run = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", "GL-12", "--title",
         "Approve me", "--agent", "scripted"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_state(data_dir, "GL-12", "waiting_approval", run)
        reply = receiver.send("gitlab", "Note Hook", note_hook(origin, 12, "/approve ship it"), secret=GITLAB_SECRET)
        assert reply.status_code == 202 and reply.json()["event"] == "sdlc.work-item.approved", reply.text
        out, err = run.communicate(timeout=180)
    finally:
        end(run)
    assert run.returncode == 0, out + err
    assert "approved by alice" in [t.reason for t in Ledger.from_settings().transitions("GL-12")]
