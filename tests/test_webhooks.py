"""The webhook receiver (B61) on a real HTTP server: signatures, limits, duplicates, events, approvals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from blocks.webhooks import RunDefaults, WebhookSettings
from gitrepo import free_port
from processes import end
from demo.sample import create_sample_repo
from entrypoints.webhooks import SOURCES, signature_for, signature_valid

GITEA_SECRET = "gitea-webhook-secret"
GITHUB_SECRET = "github-webhook-secret"


def test_github_signature_matches_the_documented_test_vector() -> None:
    body = b"Hello, World!"
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_valid(SOURCES["github"], "It's a Secret to Everybody", body, {"x-hub-signature-256": header})
    assert not signature_valid(SOURCES["github"], "It's a Secret to Everybody", body, {"x-hub-signature-256": header[7:]})
    assert not signature_valid(SOURCES["gitea"], None, body, {"x-gitea-signature": signature_for("", body)})


class Receiver:
    """The receiver app under uvicorn on a free port, for one test module."""

    def __init__(self, settings: WebhookSettings) -> None:
        import uvicorn

        from entrypoints.webhooks import create_app

        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def send(self, source: str, event: str, payload: Any, *, secret: str | None, delivery: str | None = None,
             raw: bytes | None = None) -> httpx.Response:
        """Deliver as the source does; ``delivery=""`` sends no delivery header (a GitLab before 17.4)."""
        body = raw if raw is not None else json.dumps(payload).encode()
        spec = SOURCES[source]
        headers = {"content-type": "application/json", spec.event_header: event}
        if delivery != "":
            headers[spec.delivery_header] = delivery or str(uuid.uuid4())
        if secret is not None:  # GitLab sends its secret token itself; the others an HMAC of the body
            signed = secret if spec.scheme == "token" else spec.signature_prefix + signature_for(secret, body)
            headers[spec.signature_header] = signed
        return httpx.post(f"http://127.0.0.1:{self.port}/webhooks/{source}", content=body, headers=headers, timeout=60)


@pytest.fixture
def receiver(prefect_api: str, data_dir: Path) -> Iterator[Receiver]:
    settings = WebhookSettings(
        gitea_secret=GITEA_SECRET, github_secret=GITHUB_SECRET, approvers=["alice"], project_keys={"team/app": "APP"},
        defaults=RunDefaults(agent_profile="scripted-agent"),
    )
    with Receiver(settings) as running:
        yield running


def labelled(origin: Path, number: int = 7, title: str = "Export as CSV", label: str = "sdlc") -> dict[str, Any]:
    return {
        "action": "label_updated",
        "issue": {"number": number, "title": title, "body": "Finance needs it.", "labels": [{"name": label}]},
        "repository": {"full_name": "team/app", "name": "app", "clone_url": str(origin)},
        "sender": {"login": "bob"},
    }


def events_for(prefect_api: str, work_item: str, name: str, wait: float = 15) -> list[dict[str, Any]]:
    """Events of one work item as the Prefect server stored them (stored asynchronously)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + wait
    while True:
        answer = httpx.post(
            f"{prefect_api}/events/filter",
            json={"filter": {"event": {"name": [name]}, "resource": {"id": [f"sdlc.work-item.{work_item}"]}}, "limit": 50},
        )
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()["events"]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def test_a_labelled_issue_becomes_one_event_and_a_duplicate_starts_nothing(
    receiver: Receiver, prefect_api: str, tmp_path: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    delivery = str(uuid.uuid4())
    first = receiver.send("gitea", "issues", labelled(origin), secret=GITEA_SECRET, delivery=delivery)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": True, "event": "sdlc.work-item.requested", "work_item": "APP-7", "delivery": delivery}
    again = receiver.send("gitea", "issues", labelled(origin), secret=GITEA_SECRET, delivery=delivery)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    (event,) = events_for(prefect_api, "APP-7", "sdlc.work-item.requested")
    assert event["payload"]["title"] == "Export as CSV" and event["payload"]["repo"] == str(origin)
    time.sleep(2)
    assert len(events_for(prefect_api, "APP-7", "sdlc.work-item.requested", wait=0)) == 1


def test_github_labeled_action_is_understood(receiver: Receiver, prefect_api: str, tmp_path: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    payload = labelled(origin, number=8) | {"action": "labeled", "label": {"name": "sdlc"}}
    answer = receiver.send("github", "issues", payload, secret=GITHUB_SECRET)
    assert answer.status_code == 202 and answer.json()["work_item"] == "APP-8"


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("unsigned", 401),
        ("wrong secret", 401),
        ("signed by the other forge's secret", 401),
        ("oversized", 413),
        ("not json", 422),
        ("missing issue", 422),
        ("newline in title", 422),
        ("repository that does not exist", 422),
        ("unknown source event headers", 422),
    ],
)
def test_bad_deliveries_start_nothing(receiver: Receiver, prefect_api: str, tmp_path: Path, case: str, status: int) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    payload: Any = labelled(origin, number=90)
    secret: str | None = GITEA_SECRET
    raw = None
    event = "issues"
    if case == "unsigned":
        secret = None
    elif case == "wrong secret":
        secret = "guess"
    elif case == "signed by the other forge's secret":
        secret = GITHUB_SECRET
    elif case == "oversized":
        payload["issue"]["body"] = "x" * (1024 * 1024 + 10)
    elif case == "not json":
        raw = b"{not json"
    elif case == "missing issue":
        del payload["issue"]
    elif case == "newline in title":
        payload["issue"]["title"] = "two\nlines $(touch /tmp/x)"
    elif case == "repository that does not exist":
        payload["repository"]["clone_url"] = str(tmp_path / "nope.git")
    elif case == "unknown source event headers":
        event = ""
    answer = receiver.send("gitea", event, payload, secret=secret, raw=raw)
    assert answer.status_code == status, answer.text
    # A good delivery sent afterwards is stored; by then a stray event from the bad one would be too.
    assert receiver.send("gitea", "issues", labelled(origin, number=91), secret=GITEA_SECRET).status_code == 202
    assert events_for(prefect_api, "APP-91", "sdlc.work-item.requested")
    assert events_for(prefect_api, "APP-90", "sdlc.work-item.requested", wait=0) == []


def test_other_labels_and_comments_are_ignored(receiver: Receiver, tmp_path: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    answer = receiver.send("gitea", "issues", labelled(origin, label="bug"), secret=GITEA_SECRET)
    assert answer.status_code == 202 and "without the label" in answer.json()["ignored"]
    comment = {
        "action": "created", "issue": {"number": 7, "title": "t"}, "comment": {"body": "/approve", "user": {"login": "mallory"}},
        "repository": {"full_name": "team/app", "name": "app", "clone_url": str(origin)},
    }
    answer = receiver.send("gitea", "issue_comment", comment, secret=GITEA_SECRET)
    assert answer.status_code == 202 and answer.json()["ignored"] == "mallory is not an allowed approver"


def test_an_approve_comment_resumes_the_paused_pipeline(
    receiver: Receiver, prefect_api: str, cli_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    from tasks.ledger import Ledger
    from test_cli import wait_for_state

    origin = create_sample_repo(tmp_path / "repos")
    run = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", "APP-12", "--title", "Approve me",
         "--agent", "scripted"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_state(data_dir, "APP-12", "waiting_approval", run)
        comment = {
            "action": "created", "issue": {"number": 12, "title": "Approve me"},
            "comment": {"body": "/approve ship it", "user": {"login": "alice"}},
            "repository": {"full_name": "team/app", "name": "app", "clone_url": str(origin)},
        }
        answer = receiver.send("gitea", "issue_comment", comment, secret=GITEA_SECRET)
        assert answer.status_code == 202, answer.text
        out, err = run.communicate(timeout=180)
    finally:
        end(run)
    assert run.returncode == 0, out + err
    reasons = [t.reason for t in Ledger.from_settings().transitions("APP-12")]
    assert "approved by alice" in reasons
    assert events_for(prefect_api, "APP-12", "sdlc.work-item.approved")
