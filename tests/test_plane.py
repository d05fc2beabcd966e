"""PlaneTracker against a real HTTP server built from tests/contracts/plane-endpoints.md.

Every test's server also checks two rules of the contract on every request the
client sent: the path ends with ``/``, and a list carries ``per_page`` (Plane's
code default is 1000 items, not the documented 20).
"""

from __future__ import annotations

import logging
import pickle
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from blocks.plane import PlaneCredentials
from forge_servers.plane import DEFAULT_API_KEY, PlaneServer
from sdlc.models import TrackerSpec, WorkItemRequest
from tasks.failures import PermanentError
from tasks.forge_http import ForgeHTTPError, HttpRetry
from tasks.ledger import Ledger
from tasks.plane import (
    STATES_TTL_SECONDS,
    PlaneAuthError,
    PlaneStateMissing,
    PlaneTracker,
    StateCache,
    clear_state_cache,
)
from tasks.tracking import sync_tracker

FAST_RETRY = HttpRetry(max_attempts=4, backoff_base_seconds=0.01, backoff_cap_seconds=0.05)
PIPELINE_ONLY_STATES = ("In Review", "Needs Input", "Blocked")  # not among a new project's states
APPROVER = str(uuid.uuid4())
STRANGER = str(uuid.uuid4())
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def check_contract(server: PlaneServer) -> None:
    assert [r.path for r in server.requests if not r.path.endswith("/")] == []
    assert server.unpaged_lists == [], "list requests without per_page"


@pytest.fixture(autouse=True)
def fresh_state_cache() -> Iterator[None]:
    """Resolved states are shared by the whole process: no test sees another's."""
    clear_state_cache()
    yield
    clear_state_cache()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[PlaneServer]:
    with PlaneServer(tmp_path / "plane") as server:
        yield server
        check_contract(server)


@pytest.fixture
def project(plane: PlaneServer) -> str:
    """A new project: Plane's default states only."""
    return plane.add_project("ENG")


@pytest.fixture
def ready_project(plane: PlaneServer, project: str) -> str:
    """A project whose admin added the states the pipeline uses."""
    for name in PIPELINE_ONLY_STATES:
        plane.add_state(project, name)
    return project


def credentials(plane: PlaneServer, project: str, **overrides: Any) -> PlaneCredentials:
    fields: dict[str, Any] = {
        "api_url": plane.api_url, "api_key": DEFAULT_API_KEY, "workspace_slug": plane.workspace,
        "project_id": project, "approvers": [APPROVER], "timeout_seconds": 5,
    }
    return PlaneCredentials(**(fields | overrides))


@pytest.fixture
def tracker(plane: PlaneServer, ready_project: str) -> Iterator[PlaneTracker]:
    with PlaneTracker(credentials(plane, ready_project), retry=FAST_RETRY) as made:
        yield made


@pytest.fixture
def item(plane: PlaneServer, ready_project: str) -> dict[str, Any]:
    """ENG-1, in Todo."""
    return plane.add_work_item(ready_project, "Login page", state="Todo")


def statuses(plane: PlaneServer, method: str, path_end: str) -> list[int | None]:
    return [r.status for r in plane.requests if r.method == method and r.path.endswith(path_end)]


def calls(plane: PlaneServer) -> list[tuple[str, str]]:
    """Each request as (method, what it named): ``states``, ``comments``, ``ENG-1`` or ``item``."""
    named = []
    for r in plane.requests:
        last = r.path.rstrip("/").rsplit("/", 1)[-1]
        named.append((r.method, "item" if last not in ("states", "comments") and "-" in last and len(last) == 36 else last))
    return named


def delete_state(plane: PlaneServer, project: str, name: str) -> str:
    """Delete the state called ``name`` as a person would in Plane's UI; returns its former id."""
    states = plane.projects[project].states
    [gone] = [state for state in states if state["name"] == name]
    states.remove(gone)
    return str(gone["id"])


# -- the block ---------------------------------------------------------------------------




def test_block_checks_its_configuration_at_load() -> None:
    project = str(uuid.uuid4())
    made = PlaneCredentials(api_url="https://plane.example.com/", api_key="plane_api_secret-123",
                            workspace_slug="acme", project_id=project.upper(), state_names={"blocked": "On Hold"})
    assert made.base_url == "https://plane.example.com/api/v1"
    assert made.project_id == project  # Plane's spelling: lower case
    assert made.state_names == {"in_progress": "In Progress", "in_review": "In Review", "needs_input": "Needs Input",
                                "blocked": "On Hold", "done": "Done"}
    assert "plane_api_secret-123" not in repr(made) and "plane_api_secret-123" not in str(made.model_dump())
    base = {"api_key": "k", "workspace_slug": "acme", "project_id": project}
    for bad, complaint in [
        ({"api_url": "ftp://plane"}, "http"),
        ({"api_url": "https://api.plane.so/api/v1/"}, "leave out /api/v1"),
        ({"project_id": "ENG"}, "not a UUID"),
        ({"state_names": {"review": "In Review"}}, "unknown keys"),
        ({"approvers": ["alice"]}, "not a UUID"),
        ({"api_key": " "}, "api_key is empty"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            PlaneCredentials(**(base | bad))


# -- states ------------------------------------------------------------------------------


def test_states_are_resolved_by_name_once(plane: PlaneServer, ready_project: str, tracker: PlaneTracker) -> None:
    expected = {
        "in_progress": plane.state_id(ready_project, "In Progress"),
        "in_review": plane.state_id(ready_project, "In Review"),
        "needs_input": plane.state_id(ready_project, "Needs Input"),
        "blocked": plane.state_id(ready_project, "Blocked"),
        "done": plane.state_id(ready_project, "Done"),
    }
    assert tracker.resolve_states() == expected
    assert tracker.resolve_states() == expected
    assert statuses(plane, "GET", "/states/") == [200]


def test_missing_states_are_named_together_in_one_error(plane: PlaneServer, project: str) -> None:
    block = credentials(plane, project, state_names={"done": "Shipped"})
    with PlaneTracker(block, retry=FAST_RETRY) as fresh, pytest.raises(PlaneStateMissing) as caught:
        fresh.resolve_states()
    message = str(caught.value)
    assert caught.value.missing == {"in_review": "In Review", "needs_input": "Needs Input", "blocked": "Blocked",
                                    "done": "Shipped"}
    for name in (*PIPELINE_ONLY_STATES, "Shipped"):
        assert repr(name) in message
    assert "'In Progress' (" not in message  # it exists
    assert "create_missing_states=True" in message and "Project settings > States" in message
    assert isinstance(caught.value, PermanentError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == message  # survives Prefect's result storage
    assert statuses(plane, "POST", "/states/") == []


def test_missing_states_are_created_when_allowed(plane: PlaneServer, project: str) -> None:
    plane.inject("POST", r"/states/$", status=502, after=True)  # the first create is made, its answer lost
    block = credentials(plane, project, create_missing_states=True)
    with PlaneTracker(block, retry=FAST_RETRY) as fresh:
        states = fresh.resolve_states()
    by_name = {state["name"]: state for state in plane.states(project)}
    assert [name for name in by_name if name in PIPELINE_ONLY_STATES] == list(PIPELINE_ONLY_STATES)  # once each
    assert len(plane.states(project)) == 6 + 3
    assert {by_name[name]["group"] for name in PIPELINE_ONLY_STATES} == {"started"}
    assert states["in_review"] == by_name["In Review"]["id"] and states["done"] == by_name["Done"]["id"]
    with PlaneTracker(block, retry=FAST_RETRY) as again:
        assert again.resolve_states() == states
    assert statuses(plane, "POST", "/states/") == [502, 400, 201, 201]


def test_trackers_of_one_process_share_resolved_states(plane: PlaneServer, ready_project: str,
                                                       item: dict[str, Any]) -> None:
    """A tracker per update (as sync_tracker makes) does not list the states each time."""
    block = credentials(plane, ready_project)
    with PlaneTracker(block, retry=FAST_RETRY) as first, PlaneTracker(block, retry=FAST_RETRY) as second:
        first.set_state("ENG-1", "in_progress")
        second.set_state("ENG-1", "in_review")
        assert first.resolve_states() == second.resolve_states()
    assert plane.work_item(item["id"])["state"] == plane.state_id(ready_project, "In Review")
    assert statuses(plane, "GET", "/states/") == [200]
    # Other block settings may resolve to other ids: they are read for themselves.
    with PlaneTracker(credentials(plane, ready_project, state_names={"done": "Cancelled"}), retry=FAST_RETRY) as other:
        assert other.resolve_states()["done"] == plane.state_id(ready_project, "Cancelled")
    assert statuses(plane, "GET", "/states/") == [200, 200]


def test_trackers_in_threads_resolve_states_once(plane: PlaneServer, ready_project: str) -> None:
    """Pipelines run in threads of one worker: the first resolves, the others wait for its answer."""
    block = credentials(plane, ready_project)
    plane.inject("GET", r"/states/$", timeout=0.3)  # slow enough that every thread asks before the answer
    start, answers = threading.Barrier(8), []

    def update() -> None:
        with PlaneTracker(block, retry=FAST_RETRY) as tracker:
            start.wait()
            answers.append(tracker.resolve_states())

    threads = [threading.Thread(target=update) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 8 and all(answer == answers[0] for answer in answers)
    assert statuses(plane, "GET", "/states/") == [200]


def test_states_are_read_again_after_their_time_to_live(plane: PlaneServer, ready_project: str,
                                                        item: dict[str, Any]) -> None:
    assert STATES_TTL_SECONDS == 300
    now = [1000.0]
    cache = StateCache(clock=lambda: now[0])
    assert cache.ttl_seconds == STATES_TTL_SECONDS
    block = credentials(plane, ready_project, state_names={"in_review": "Review"})
    plane.add_state(ready_project, "Review")
    with PlaneTracker(block, retry=FAST_RETRY, states_cache=cache) as tracker:
        tracker.set_state("ENG-1", "in_review")
        renamed = plane.state_id(ready_project, "Review")
        assert plane.work_item(item["id"])["state"] == renamed
        plane.projects[ready_project].states[-1]["name"] = "Old Review"  # renamed in Plane, and a new one made
        fresh = plane.add_state(ready_project, "Review")
        now[0] += STATES_TTL_SECONDS - 1
    with PlaneTracker(block, retry=FAST_RETRY, states_cache=cache) as later:
        assert later.resolve_states()["in_review"] == renamed  # still fresh: no request
        assert statuses(plane, "GET", "/states/") == [200]
        now[0] += 1
        later.set_state("ENG-1", "in_review")
    assert statuses(plane, "GET", "/states/") == [200, 200]
    assert plane.work_item(item["id"])["state"] == fresh


def test_a_state_deleted_after_caching_is_resolved_again(plane: PlaneServer, ready_project: str,
                                                         item: dict[str, Any]) -> None:
    block = credentials(plane, ready_project)
    with PlaneTracker(block, retry=FAST_RETRY) as first:
        first.set_state("ENG-1", "in_progress")
    old = delete_state(plane, ready_project, "In Review")
    made_again = plane.add_state(ready_project, "In Review")
    plane.reset_log()
    with PlaneTracker(block, retry=FAST_RETRY) as second:
        moved = second.move(item["id"], "in_review")  # the cached id is the deleted state's
    assert moved.state == made_again == plane.work_item(item["id"])["state"]
    assert calls(plane) == [("PATCH", "item"), ("GET", "states"), ("PATCH", "item")]
    assert [r.body["state"] for r in plane.requests if r.method == "PATCH"] == [old, made_again]
    assert statuses(plane, "PATCH", f"/work-items/{item['id']}/") == [400, 200]  # one retry

    # A state gone for good is reported as missing, after one listing; no PATCH is tried with nothing.
    delete_state(plane, ready_project, "Blocked")
    plane.reset_log()
    with PlaneTracker(block, retry=FAST_RETRY) as third, pytest.raises(PlaneStateMissing) as caught:
        third.move(item["id"], "blocked")
    assert caught.value.missing == {"blocked": "Blocked"}
    assert calls(plane) == [("PATCH", "item"), ("GET", "states")]

    # Any other 4xx is Plane's answer, not a stale cache: no listing, no retry.
    plane.add_state(ready_project, "Blocked")
    stray = plane.add_work_item(plane.add_project("OPS"), "Elsewhere")
    plane.reset_log()
    with PlaneTracker(block, retry=FAST_RETRY) as fourth, pytest.raises(ForgeHTTPError) as refused:
        fourth.move(stray["id"], "done")
    assert refused.value.status == 404 and calls(plane) == [("GET", "states"), ("PATCH", "item")]


# -- work items and state changes ---------------------------------------------------------


def test_state_changes_land_on_the_work_item(plane: PlaneServer, ready_project: str, tracker: PlaneTracker,
                                            item: dict[str, Any]) -> None:
    found = tracker.work_item("ENG-1")
    assert (found.id, found.sequence_id, found.name, found.project) == (item["id"], 1, "Login page", ready_project)
    moved = tracker.set_state("ENG-1", "in_review")
    assert plane.work_item(item["id"])["state"] == plane.state_id(ready_project, "In Review") == moved.state
    tracker.set_state("ENG-1", "in_review")  # already there: no PATCH
    assert statuses(plane, "PATCH", f"/work-items/{item['id']}/") == [200]
    tracker.set_state(item["id"], "done")  # by UUID
    assert plane.work_item(item["id"])["state"] == plane.state_id(ready_project, "Done")
    assert statuses(plane, "PATCH", f"/work-items/{item['id']}/") == [200, 200]


def test_a_work_item_of_another_project_is_refused(plane: PlaneServer, tracker: PlaneTracker) -> None:
    other = plane.add_project("OPS")
    stray = plane.add_work_item(other, "Elsewhere")
    with pytest.raises(PermanentError, match=f"OPS-1 belongs to project {other}"):
        tracker.work_item("OPS-1")
    with pytest.raises(ForgeHTTPError, match="The requested resource does not exist") as caught:
        tracker.set_state(stray["id"], "done")
    assert caught.value.status == 404
    with pytest.raises(ValueError, match="neither a human id"):
        tracker.work_item("ENG 1; DROP")


def test_five_hundreds_and_timeouts_are_retried(plane: PlaneServer, ready_project: str, item: dict[str, Any]) -> None:
    plane.inject("GET", r"^/workspaces/acme/work-items/ENG-1/$", status=503, times=2)
    with PlaneTracker(credentials(plane, ready_project, timeout_seconds=0.3), retry=FAST_RETRY) as fresh:
        assert fresh.work_item("ENG-1").id == item["id"]
        plane.inject("GET", r"/work-items/ENG-1/$", timeout=1.0)
        assert fresh.work_item("ENG-1").id == item["id"]
    answered = statuses(plane, "GET", "/work-items/ENG-1/")
    assert len(answered) == 5 and answered[:3] == [503, 503, 200] and answered[4] == 200  # [3] timed out


# -- comments ----------------------------------------------------------------------------


def test_comments_arrive_as_escaped_html(plane: PlaneServer, tracker: PlaneTracker, item: dict[str, Any]) -> None:
    text = 'PR for "Fix <script>alert(1)</script> & co"\n\nChecks passed\nReview next'
    comment_id = tracker.add_comment("ENG-1", text, link="http://forge.test/pr/1?x=1&y=2")
    [stored] = plane.comments(item["id"])
    assert stored["id"] == comment_id
    assert stored["comment_html"] == (
        "<p>PR for &quot;Fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; co&quot;</p>"
        "<p>Checks passed<br>Review next</p>"
        '<p><a href="http://forge.test/pr/1?x=1&amp;y=2">http://forge.test/pr/1?x=1&amp;y=2</a></p>'
    )
    [read] = tracker.list_comments("ENG-1")
    assert read.text == text + "\n\nhttp://forge.test/pr/1?x=1&y=2"
    assert (read.id, read.actor, read.html) == (comment_id, plane.bot_id, stored["comment_html"])
    with pytest.raises(ValueError, match="not an http"):
        tracker.add_comment("ENG-1", "see", link="javascript:alert(1)")


def test_a_comment_retried_after_a_lost_answer_is_not_duplicated(plane: PlaneServer, tracker: PlaneTracker,
                                                                  item: dict[str, Any]) -> None:
    plane.inject("POST", r"/comments/$", status=502, after=True)  # stored, then 502 answered
    comment_id = tracker.add_comment("ENG-1", "Review passed", external_id="run-7:review")
    assert [c["id"] for c in plane.comments(item["id"])] == [comment_id]
    assert plane.comments(item["id"])[0]["external_source"] == "sdlc-flows"
    assert statuses(plane, "POST", "/comments/") == [502, 409]
    assert tracker.add_comment("ENG-1", "Review passed", external_id="run-7:review") == comment_id
    assert len(plane.comments(item["id"])) == 1


def test_every_page_is_read_and_every_request_follows_the_contract(
    plane: PlaneServer, tracker: PlaneTracker, item: dict[str, Any]
) -> None:
    for n in range(150):
        plane.add_comment(item["id"], f"<p>note {n}</p>", actor=STRANGER, created_at=T0 + timedelta(seconds=n))
    tracker.set_state("ENG-1", "in_progress")
    tracker.add_comment("ENG-1", "hello")
    notes = tracker.list_comments("ENG-1")
    assert [c.text for c in notes] == [f"note {n}" for n in range(150)] + ["hello"]  # oldest first
    lists = [r for r in plane.requests if r.method == "GET" and r.path.endswith(("/states/", "/comments/"))]
    assert [r.query.get("per_page") for r in lists] == [["100"]] * 3
    assert [r.query.get("cursor") for r in lists if r.path.endswith("/comments/")] == [None, ["100:1:0"]]
    assert all(r.path.endswith("/") for r in plane.requests)
    check_contract(plane)


# -- rate limits and keys --------------------------------------------------------------


def test_a_429_waits_its_retry_after(plane: PlaneServer, tracker: PlaneTracker, item: dict[str, Any]) -> None:
    plane.inject("GET", r"/work-items/ENG-1/$", status=429, headers={"Retry-After": "1"})
    assert tracker.work_item("ENG-1").id == item["id"]
    (first, refused), (second, answered) = [(at, r) for at, r in plane.timeline if r.path.endswith("/ENG-1/")]
    assert (refused.status, answered.status) == (429, 200)
    assert 1.0 <= second - first < 2.5


def test_the_servers_own_rate_limit_is_waited_out(tmp_path: Path) -> None:
    with PlaneServer(tmp_path / "plane", rate_limit=3, rate_window_seconds=1.0) as limited:
        project = limited.add_project("ENG")
        limited.add_work_item(project, "Busy")
        with PlaneTracker(credentials(limited, project), retry=FAST_RETRY) as fresh:
            for _ in range(5):
                fresh.work_item("ENG-1")
        timed = [(at, r.status) for at, r in limited.timeline]
        assert [status for _, status in timed] == [200, 200, 200, 429, 200, 200]
        assert timed[4][0] - timed[3][0] >= 1.0
        with httpx.Client(base_url=limited.api_url + "/api/v1", headers={"X-API-Key": DEFAULT_API_KEY}) as raw:
            answer = raw.get("/workspaces/acme/work-items/ENG-1/")
        assert answer.status_code == 200
        assert int(answer.headers["X-RateLimit-Remaining"]) >= 0 and int(answer.headers["X-RateLimit-Reset"]) > 0
        check_contract(limited)


def test_a_wrong_key_is_reported_without_the_key(plane: PlaneServer, ready_project: str, item: dict[str, Any],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    secret = "plane_api_wrong-0f9e8d7c6b5a"
    caplog.set_level(logging.DEBUG)
    with PlaneTracker(credentials(plane, ready_project, api_key=secret), retry=FAST_RETRY) as wrong:
        with pytest.raises(PlaneAuthError) as caught:
            wrong.set_state("ENG-1", "in_review")
    assert caught.value.status == 403
    assert "API key" in str(caught.value) and "Given API token is not valid" in str(caught.value)
    assert secret not in str(caught.value) and secret not in caplog.text
    assert all(secret not in str(r.headers) for r in plane.requests)
    assert len(plane.requests) == 1  # not retried
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)


def test_server_follows_the_contract(tmp_path: Path) -> None:
    """The test double itself: Django's 404s, DRF's auth answers, default states, foreign states, per_page."""
    with PlaneServer(tmp_path / "plane") as plane:
        project, other = plane.add_project("ENG"), plane.add_project("OPS")
        work = plane.add_work_item(project, "W")
        base = f"/workspaces/acme/projects/{project}"
        with httpx.Client(base_url=plane.api_url + "/api/v1", headers={"X-API-Key": DEFAULT_API_KEY}) as raw:
            assert raw.get(f"{base}/states").status_code == 404  # no trailing slash
            assert raw.get(f"{base}/states/", headers={"X-API-Key": ""}).status_code == 401
            refused = raw.get(f"{base}/states/", headers={"X-API-Key": "nope"})
            assert (refused.status_code, refused.json()) == (403, {"detail": "Given API token is not valid"})
            listed = raw.get(f"{base}/states/", params={"per_page": 100}).json()
            assert [s["name"] for s in listed["results"]] == [
                "Backlog", "Todo", "In Progress", "Done", "Cancelled", "Triage"
            ]
            foreign = raw.patch(f"{base}/work-items/{work['id']}/", json={"state": plane.state_id(other, "Done")})
            assert foreign.status_code == 400
            assert foreign.json() == {"non_field_errors": ["State is not valid please pass a valid state_id"]}
            unpaged = raw.get(f"{base}/work-items/{work['id']}/comments/").json()
        assert unpaged["next_cursor"] == "1000:1:0"  # the code default, not the documented 20
        assert plane.unpaged_lists == ["comments of ENG-1"]


# -- decisions -----------------------------------------------------------------------------


def test_decisions_count_only_approvers_after_the_given_time(plane: PlaneServer, tracker: PlaneTracker,
                                                             item: dict[str, Any]) -> None:
    def say(html: str, actor: str, minutes: int) -> str:
        return str(plane.add_comment(item["id"], html, actor=actor, created_at=T0 + timedelta(minutes=minutes))["id"])

    say("<p>/approve</p>", APPROVER, -5)  # before the question was asked
    say("<p>/approve ship it</p>", STRANGER, 1)  # not an approver
    say("<p>/answer ask me</p>", STRANGER, 1)
    answer = say("<p>/answer use <b>Postgres</b></p>", APPROVER, 2)
    reject = say("<p>/reject needs tests</p><p>and docs</p>", APPROVER, 3)
    approve = say("<p>/approve</p>", APPROVER, 4)
    tracker.add_comment("ENG-1", "/approve")  # the bot's own comment never counts

    decided = tracker.decision_since("ENG-1", T0, wanted="approval")
    assert decided is not None
    assert (decided.kind, decided.actor, decided.comment_id) == ("reject", APPROVER, reject)
    assert decided.text == "needs tests\n\nand docs"
    answered = tracker.decision_since("ENG-1", T0, wanted="answers")
    assert answered is not None
    assert (answered.kind, answered.text, answered.comment_id) == ("answer", "use Postgres", answer)
    later = tracker.decision_since("ENG-1", T0 + timedelta(minutes=3), wanted="approval")
    assert later is not None and (later.kind, later.text, later.comment_id) == ("approve", "", approve)
    assert tracker.decision_since("ENG-1", T0 + timedelta(minutes=4), wanted="approval") is None
    oldest = tracker.decision_since("ENG-1", None, wanted="approval")
    assert oldest is not None and oldest.created_at == T0 - timedelta(minutes=5)
    with PlaneTracker(credentials(plane, item["project"], approvers=[]), retry=FAST_RETRY) as nobody:
        assert nobody.decision_since("ENG-1", None, wanted="approval") is None


# -- the pipeline's tracker update -----------------------------------------------------------


def test_sync_tracker_reads_the_work_item_only_until_the_ledger_links_it(
    plane: PlaneServer, ready_project: str, item: dict[str, Any], prefect_api: str, data_dir: Path
) -> None:
    block = f"plane-{uuid.uuid4().hex[:8]}"
    credentials(plane, ready_project).save(block, overwrite=True)
    request = WorkItemRequest(work_item="ENG-1", title="Login page", repo="https://git.example.com/team/app.git",
                              tracker=TrackerSpec(credentials_block=block))

    assert sync_tracker(request, "in_progress", "starts at analysis", external_id="run-1:start")
    assert calls(plane) == [("GET", "ENG-1"), ("GET", "states"), ("PATCH", "item"), ("POST", "comments")]
    link = Ledger.from_settings().tracker_link("ENG-1")
    assert link is not None and (link.tracker, link.tracker_item_id, link.credentials_block) == ("plane", item["id"], block)

    plane.reset_log()
    assert sync_tracker(request, "in_review", "analysis -> architecture", external_id="run-1:review")
    assert calls(plane) == [("PATCH", "item"), ("POST", "comments")]  # no GET of the work item, no states
    plane.reset_log()
    assert sync_tracker(request, None, "waiting for approval")
    assert calls(plane) == [("POST", "comments")]
    assert plane.work_item(item["id"])["state"] == plane.state_id(ready_project, "In Review")
    assert [c["external_id"] for c in plane.comments(item["id"])] == ["run-1:start", "run-1:review", None]

    # A link made through another block is not trusted: the item is looked up and linked again.
    other = f"plane-{uuid.uuid4().hex[:8]}"
    credentials(plane, ready_project).save(other, overwrite=True)
    plane.reset_log()
    moved = request.model_copy(update={"tracker": TrackerSpec(credentials_block=other)})
    assert sync_tracker(moved, None, "moved to another block")
    assert calls(plane) == [("GET", "ENG-1"), ("POST", "comments")]
    relinked = Ledger.from_settings().tracker_link("ENG-1")
    assert relinked is not None and relinked.credentials_block == other
