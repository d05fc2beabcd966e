"""GitLabTestServer on its own: each trap of tests/contracts/gitlab-endpoints.md, over plain HTTP.

No Prefect and no sdlc client: httpx against the server on 127.0.0.1, real bare git
repositories behind it. The ``gitlab`` fixture fails a test on any request outside the
contract, so a test that sends one on purpose checks and clears ``violations`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge_servers.gitlab import DEFAULT_TOKEN, GitLabTestServer, composite_status, encoded
from forge_servers.gitlab_contract import check_request
from gitrepo import clone_of, commit_file, git, isolate

NAMESPACE, NAME = "acme/platform", "shop"
PROJECT = f"/projects/{encoded(f'{NAMESPACE}/{NAME}')}"  # /projects/acme%2Fplatform%2Fshop
BRANCH = "feature/ET-7-checkout"
MR_DUPLICATE = "Another open merge request already exists for this source branch: !{}"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture()
def gitlab(tmp_path: Path) -> Iterator[GitLabTestServer]:
    with GitLabTestServer(tmp_path / "gitlab") as server:
        yield server
        assert server.violations == [], "requests outside gitlab-endpoints.md:\n" + "\n".join(server.violations)


@pytest.fixture()
def origin(gitlab: GitLabTestServer) -> Path:
    return gitlab.create_repo(NAMESPACE, NAME)


@pytest.fixture()
def api(gitlab: GitLabTestServer) -> Iterator[httpx.Client]:
    """A plain client sending the token as GitLab wants it (the PRIVATE-TOKEN header)."""
    with httpx.Client(base_url=gitlab.api_url, headers={"PRIVATE-TOKEN": DEFAULT_TOKEN}, timeout=10) as client:
        yield client


def push(origin: Path, tmp_path: Path, branch: str = BRANCH, relative: str = "src/checkout.py",
         text: str = "checkout = True\n", *, start: str = "main") -> str:
    """Another clone commits ``relative`` on ``branch`` (from ``start`` when new) and pushes; returns the commit."""
    work = tmp_path / f"dev-{time.monotonic_ns()}"
    clone_of(origin, work)
    exists = git(work, "ls-remote", "--heads", "origin", branch)
    git(work, "checkout", "--quiet", "-B", branch, f"origin/{branch}" if exists else f"origin/{start}")
    sha = commit_file(work, relative, text, f"work on {branch}")
    git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
    return sha


def create(api: httpx.Client, source: str = BRANCH, target: str = "main", title: str = "ET-7: Checkout",
           **fields: Any) -> httpx.Response:
    return api.post(f"{PROJECT}/merge_requests",
                    json={"source_branch": source, "target_branch": target, "title": title, **fields})


def settle(api: httpx.Client, iid: int, tries: int = 10) -> dict[str, Any]:
    """GET the MR until its mergeability is no longer being checked (Trap 5)."""
    for _ in range(tries):
        data = api.get(f"{PROJECT}/merge_requests/{iid}").json()
        if data["detailed_merge_status"] not in ("unchecked", "checking", "preparing"):
            return data
    raise AssertionError(f"!{iid} still {data['detailed_merge_status']} after {tries} reads")


def taking_violations(server: GitLabTestServer) -> list[str]:
    """The violations so far, cleared: the test sent them on purpose."""
    taken = list(server.violations)
    server.violations.clear()
    return taken


# -- project reference (§0, Trap 2) -------------------------------------------------------------


def test_project_resolves_by_encoded_nested_path_and_by_numeric_id(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    by_path = api.get(PROJECT)
    assert by_path.status_code == 200
    project = by_path.json()
    assert gitlab.requests[-1].path == "/projects/acme%2Fplatform%2Fshop"  # the client kept %2F
    assert (project["path"], project["path_with_namespace"], project["default_branch"]) == (
        NAME, f"{NAMESPACE}/{NAME}", "main")
    assert project["web_url"] == f"{gitlab.web_url}/{NAMESPACE}/{NAME}"
    assert project["id"] == gitlab.project_id(NAMESPACE, NAME)
    by_id = api.get(f"/projects/{project['id']}")
    assert by_id.status_code == 200 and by_id.json()["path_with_namespace"] == f"{NAMESPACE}/{NAME}"
    assert api.get("/projects/ACME%2Fplatform%2FShop").json()["id"] == project["id"]  # paths ignore case

    unencoded = api.get(f"/projects/{NAMESPACE}/{NAME}")  # a client or proxy decoded %2F: no route
    assert (unencoded.status_code, unencoded.json()) == (404, {"error": "404 Not Found"})
    twice = api.get("/projects/acme%252Fplatform%252Fshop")
    assert (twice.status_code, twice.json()) == (404, {"message": "404 Project Not Found"})
    assert api.get("/projects/999999").json() == {"message": "404 Project Not Found"}
    assert api.get(f"/projects/{NAME}").status_code == 404  # the name alone is no reference
    assert [v for v in taking_violations(gitlab) if "not an operation" in v] == [
        f"GET /projects/{NAMESPACE}/{NAME}: not an operation of gitlab-endpoints.md"]


def test_moved_project_redirects_a_get_to_its_numeric_id(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    project_id = gitlab.project_id(NAMESPACE, NAME)
    gitlab.move_project(NAMESPACE, NAME, "acme/retail")
    moved = api.get(f"{PROJECT}/merge_requests", params={"state": "opened"})
    assert moved.status_code == 301
    assert moved.headers["location"] == f"{gitlab.api_url}/projects/{project_id}/merge_requests?state=opened"
    assert api.get(moved.headers["location"]).status_code == 200
    assert api.get("/projects/acme%2Fretail%2Fshop").json()["id"] == project_id
    assert create(api).status_code == 404  # only a GET is redirected


# -- merge request list (§1, §3.1, Traps 7 and 8) ------------------------------------------------


def test_merge_request_list_pages_at_20_and_follows_next(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    sha = push(origin, tmp_path, "topic-0")
    for number in range(1, 25):
        git(origin, "update-ref", f"refs/heads/topic-{number}", sha)
    for number in range(25):
        assert create(api, f"topic-{number}", title=f"Topic {number}").status_code == 201

    first = api.get(f"{PROJECT}/merge_requests")
    assert len(first.json()) == 20  # no per_page: 20
    headers = first.headers
    assert (headers["x-page"], headers["x-per-page"], headers["x-next-page"], headers["x-prev-page"]) == (
        "1", "20", "2", "")
    assert (headers["x-total"], headers["x-total-pages"]) == ("25", "2")
    assert [mr["iid"] for mr in first.json()][:3] == [25, 24, 23]  # created_at, newest first
    assert "head_pipeline" not in first.json()[0] and "diff_refs" not in first.json()[0]

    following = first.links["next"]["url"]
    assert "rel=\"last\"" in headers["link"] and "rel=\"first\"" in headers["link"]
    second = api.get(following)
    assert [mr["iid"] for mr in second.json()] == [5, 4, 3, 2, 1]
    assert second.headers["x-next-page"] == "" and "next" not in second.links
    assert second.links["prev"]["url"].endswith("page=1&per_page=20")

    everything = api.get(f"{PROJECT}/merge_requests", params={"per_page": 100})
    assert len(everything.json()) == 25 and everything.headers["x-next-page"] == ""
    too_many = api.get(f"{PROJECT}/merge_requests", params={"per_page": 500})  # GitLab cuts it to 100
    assert too_many.status_code == 200 and too_many.headers["x-per-page"] == "100"
    assert taking_violations(gitlab) == [
        f"GET {PROJECT}/merge_requests: per_page='500' is not '[1-9][0-9]?|100'"]


def test_pagination_totals_left_out_past_the_count_limit(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    gitlab.count_limit = 2  # stands for GitLab's 10,000 rows
    sha = push(origin, tmp_path, "topic-0")
    for number in range(3):
        git(origin, "update-ref", f"refs/heads/topic-{number}", sha)
        create(api, f"topic-{number}")
    page = api.get(f"{PROJECT}/merge_requests", params={"per_page": 2})
    assert "x-total" not in page.headers and "x-total-pages" not in page.headers
    assert page.headers["x-next-page"] == "2" and "last" not in page.links and "next" in page.links


def test_list_state_defaults_to_all(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    assert create(api).json()["iid"] == 1
    gitlab.close_merge_request(NAMESPACE, NAME, 1)
    assert create(api, title="Again").json()["iid"] == 2
    unfiltered = api.get(f"{PROJECT}/merge_requests").json()
    assert [(mr["iid"], mr["state"]) for mr in unfiltered] == [(2, "opened"), (1, "closed")]
    opened = api.get(f"{PROJECT}/merge_requests",
                     params={"state": "opened", "source_branch": BRANCH, "target_branch": "main"}).json()
    assert [mr["iid"] for mr in opened] == [2]
    assert [mr["iid"] for mr in api.get(f"{PROJECT}/merge_requests", params={"state": "closed"}).json()] == [1]
    assert [mr["iid"] for mr in api.get(f"{PROJECT}/merge_requests", params={"iids[]": ["1", "2"], "sort": "asc"})
            .json()] == [1, 2]


# -- create (§3.2, Trap 3) -----------------------------------------------------------------------


def test_duplicate_open_merge_request_is_409_and_another_target_is_not(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    git(origin, "branch", "release", "main")
    made = create(api, remove_source_branch=True)
    assert made.status_code == 201
    mr = made.json()
    assert (mr["iid"], mr["state"], mr["source_branch"], mr["target_branch"]) == (1, "opened", BRANCH, "main")
    assert mr["web_url"] == f"{gitlab.web_url}/{NAMESPACE}/{NAME}/-/merge_requests/1"
    assert mr["force_remove_source_branch"] is True and "merged" not in mr  # Traps 6 and 9
    assert mr["diff_refs"] is None and mr["changes_count"] is None  # filled later (§3.2)

    again = create(api, title="Same branches")
    assert (again.status_code, again.json()) == (409, {"message": [MR_DUPLICATE.format(1)]})
    other_target = create(api, target="release")
    assert other_target.status_code == 201 and other_target.json()["iid"] == 2

    gitlab.close_merge_request(NAMESPACE, NAME, 1)
    assert create(api).json()["iid"] == 3  # only an *open* MR conflicts
    reopen = api.put(f"{PROJECT}/merge_requests/1", json={"state_event": "reopen"})
    assert (reopen.status_code, reopen.json()) == (409, {"message": [MR_DUPLICATE.format(3)]})


def test_create_refusals_use_gitlabs_envelopes(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    same = create(api, source="main")
    assert (same.status_code, same.json()) == (
        422, {"message": ["You can't use same project/branch for source and target"]})
    missing = create(api, source="no-such-branch")
    assert missing.status_code == 400 and list(missing.json()["message"]) == ["source_branch"]
    untitled = api.post(f"{PROJECT}/merge_requests", json={"source_branch": BRANCH, "target_branch": "main"})
    assert (untitled.status_code, untitled.json()) == (400, {"error": "title is missing"})
    assert taking_violations(gitlab) == [f"POST {PROJECT}/merge_requests: required parameter 'title' is missing"]
    assert gitlab.merge_requests(NAMESPACE, NAME) == []


def test_lost_answer_on_create_leaves_the_merge_request_and_the_retry_gets_409(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    gitlab.inject("POST", r"/merge_requests$", status=500, after=True)
    lost = create(api)
    assert (lost.status_code, lost.json()) == (500, {"message": "500 Internal Server Error"})
    assert create(api).status_code == 409
    assert [mr["iid"] for mr in gitlab.merge_requests(NAMESPACE, NAME)] == [1]
    assert [r.injected for r in gitlab.requests] == [True, False]


# -- mergeability and merge (§3.3, §3.4, Traps 4 and 5) ------------------------------------------


def test_new_merge_request_is_checking_first_then_mergeable_and_again_after_a_push(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    assert create(api).json()["detailed_merge_status"] == "preparing"
    listed = api.get(f"{PROJECT}/merge_requests").json()[0]
    assert listed["detailed_merge_status"] == "unchecked"  # a list never starts or finishes a check

    first = api.get(f"{PROJECT}/merge_requests/1").json()
    assert (first["detailed_merge_status"], first["merge_status"]) == ("checking", "checking")
    second = api.get(f"{PROJECT}/merge_requests/1").json()
    assert (second["detailed_merge_status"], second["merge_status"], second["has_conflicts"]) == (
        "mergeable", "can_be_merged", False)
    assert second["sha"] == head and second["diff_refs"]["head_sha"] == head
    assert second["diff_refs"]["start_sha"] == git(origin, "rev-parse", "main")
    assert second["changes_count"] == "1" and second["head_pipeline"] is None

    newer = push(origin, tmp_path, text="checkout = 2\n")
    after_push = api.get(f"{PROJECT}/merge_requests/1").json()
    assert (after_push["sha"], after_push["detailed_merge_status"]) == (newer, "checking")
    assert settle(api, 1)["detailed_merge_status"] == "mergeable"
    assert git(origin, "rev-parse", "refs/merge-requests/1/head") == newer


def test_checking_reads_is_configurable(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    gitlab.checking_reads = 3
    push(origin, tmp_path)
    create(api)
    seen = [api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] for _ in range(4)]
    assert seen == ["checking", "checking", "checking", "mergeable"]
    gitlab.checking_reads = 0
    push(origin, tmp_path, text="two\n")
    assert api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] == "mergeable"


def test_merge_with_a_stale_sha_is_409_and_without_sha_merges_for_real(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    old = push(origin, tmp_path)
    create(api)
    assert settle(api, 1)["sha"] == old
    new = push(origin, tmp_path, text="checkout = 2\n")  # someone pushed after the check
    stale = api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": old})
    assert (stale.status_code, stale.json()) == (409, {"message": f"SHA does not match HEAD of source branch: {new}"})
    assert gitlab.merges == []

    settle(api, 1)
    main_before = git(origin, "rev-parse", "main")
    merged = api.put(f"{PROJECT}/merge_requests/1/merge", json={"should_remove_source_branch": False})
    assert merged.status_code == 200
    mr = merged.json()
    assert (mr["state"], mr["detailed_merge_status"], mr["sha"]) == ("merged", "not_open", new)
    assert mr["merged_at"] and mr["merge_user"]["username"] == "sdlc-bot"
    commit = mr["merge_commit_sha"]
    assert git(origin, "rev-parse", "main") == commit
    assert git(origin, "rev-list", "--parents", "-n", "1", commit).split() == [commit, main_before, new]
    message = git(origin, "log", "-1", "--format=%B", commit)
    assert message.splitlines()[:3] == [f"Merge branch '{BRANCH}' into 'main'", "", "ET-7: Checkout"]
    assert git(origin, "show", "main:src/checkout.py") == "checkout = 2"
    assert git(origin, "rev-parse", f"refs/heads/{BRANCH}") == new  # kept: should_remove_source_branch false
    assert [(m.iid, m.merge_commit_sha) for m in gitlab.merges] == [(1, commit)]
    assert [(p["number"], p["state"], p["merged"]) for p in gitlab.pull_requests(NAMESPACE, NAME)] == [
        (1, "closed", True)]

    again = api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": new})
    assert (again.status_code, again.json()) == (405, {"message": "405 Method Not Allowed"})
    assert len(gitlab.merges) == 1  # merged once
    assert api.get(f"{PROJECT}/merge_requests/1").json()["state"] == "merged"


def test_merge_before_the_check_settles_is_405(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    create(api)
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 405  # unchecked
    assert api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] == "checking"
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 405  # checking
    settle(api, 1)
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 200


def test_conflict_is_reported_and_merging_it_is_405(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path, relative="README.md", text="# ours\n")
    push(origin, tmp_path, "main", relative="README.md", text="# theirs\n")
    create(api)
    mr = settle(api, 1)
    assert (mr["detailed_merge_status"], mr["merge_status"], mr["has_conflicts"]) == (
        "conflict", "cannot_be_merged", True)
    refused = api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head})
    assert (refused.status_code, refused.json()) == (405, {"message": "405 Method Not Allowed"})
    assert gitlab.merges == []


def test_draft_title_blocks_the_merge(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    assert create(api, title="Draft: ET-7").json()["draft"] is True
    assert settle(api, 1)["detailed_merge_status"] == "draft_status"
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 405
    assert api.get(f"{PROJECT}/merge_requests", params={"draft": "true"}).json()[0]["iid"] == 1


def test_no_merge_permission_is_401_before_the_sha_check(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    create(api)
    settle(api, 1)
    gitlab.merge_allowed = False
    refused = api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": "0" * 40})
    assert (refused.status_code, refused.json()) == (401, {"message": "401 Unauthorized"})
    assert api.get(f"{PROJECT}/merge_requests/1").json()["user"] == {"can_merge": False}
    assert api.put(f"{PROJECT}/merge_requests/9/merge", json={}).json() == {"message": "404 Merge Request Not Found"}


def test_required_pipeline_gates_the_merge(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    gitlab.require_pipeline = True
    head = push(origin, tmp_path)
    create(api)
    assert settle(api, 1)["detailed_merge_status"] == "ci_must_pass"  # no pipeline at all
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 405

    pipeline_id = gitlab.add_pipeline(NAMESPACE, NAME, head, BRANCH, jobs=[("build", "success"), ("test", "running")])
    mr = api.get(f"{PROJECT}/merge_requests/1").json()
    assert mr["detailed_merge_status"] == "ci_still_running"
    assert (mr["head_pipeline"]["id"], mr["head_pipeline"]["status"], mr["head_pipeline"]["sha"]) == (
        pipeline_id, "running", head)
    gitlab.set_pipeline_status(NAMESPACE, NAME, pipeline_id, jobs=[("test", "failed")])
    assert api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] == "ci_must_pass"
    gitlab.set_pipeline_status(NAMESPACE, NAME, pipeline_id, "success")
    assert api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] == "mergeable"
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).json()["state"] == "merged"


def test_an_external_status_on_the_source_head_is_its_head_pipeline(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    gitlab.require_pipeline = True
    head = push(origin, tmp_path)
    create(api)
    assert settle(api, 1)["detailed_merge_status"] == "ci_must_pass"
    api.post(f"{PROJECT}/statuses/{head}", json={"state": "running", "name": "ci/review"})
    mr = api.get(f"{PROJECT}/merge_requests/1").json()
    assert (mr["detailed_merge_status"], mr["head_pipeline"]["source"], mr["head_pipeline"]["ref"]) == (
        "ci_still_running", "external", BRANCH)
    api.post(f"{PROJECT}/statuses/{head}", json={"state": "success", "name": "ci/review"})
    assert api.get(f"{PROJECT}/merge_requests/1").json()["detailed_merge_status"] == "mergeable"


def test_a_lost_merge_answer_still_merged_once(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    create(api)
    settle(api, 1)
    gitlab.inject("PUT", r"/merge_requests/\d+/merge$", status=502, after=True)
    lost = api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head})
    assert (lost.status_code, lost.text) == (502, "502 Bad Gateway\n")
    assert api.put(f"{PROJECT}/merge_requests/1/merge", json={"sha": head}).status_code == 405  # not open
    assert api.get(f"{PROJECT}/merge_requests/1").json()["state"] == "merged"
    assert len(gitlab.merges) == 1


def test_merged_results_pipeline_is_the_head_pipeline_with_another_sha(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    create(api)
    pipeline_id = gitlab.add_merge_request_pipeline(NAMESPACE, NAME, 1, "success", merged_results=True)
    mr = settle(api, 1)
    assert mr["head_pipeline"]["id"] == pipeline_id
    assert mr["head_pipeline"]["ref"] == "refs/merge-requests/1/merge"
    assert mr["head_pipeline"]["sha"] != head == mr["sha"]  # Trap 12
    assert api.get(f"{PROJECT}/pipelines", params={"sha": head}).json() == []
    listed = api.get(f"{PROJECT}/merge_requests/1/pipelines").json()
    assert [p["id"] for p in listed] == [pipeline_id]


def test_auto_merge_is_scheduled_while_the_pipeline_runs_and_merges_when_it_succeeds(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    create(api)
    pipeline_id = gitlab.add_pipeline(NAMESPACE, NAME, head, BRANCH, "running")
    settle(api, 1)
    scheduled = api.put(f"{PROJECT}/merge_requests/1/merge",
                        json={"sha": head, "auto_merge": True, "merge_when_pipeline_succeeds": True})
    assert scheduled.status_code == 200
    assert (scheduled.json()["state"], scheduled.json()["merge_when_pipeline_succeeds"]) == ("opened", True)
    assert gitlab.merges == []  # a 200 is not a merge (Trap 4)
    gitlab.set_pipeline_status(NAMESPACE, NAME, pipeline_id, "success")
    assert api.get(f"{PROJECT}/merge_requests/1").json()["state"] == "merged"
    assert [(m.iid, m.auto) for m in gitlab.merges] == [(1, True)]


def test_squash_and_remove_source_branch_on_merge(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    head = push(origin, tmp_path, relative="src/more.py", text="more = 1\n")
    create(api)
    settle(api, 1)
    merged = api.put(f"{PROJECT}/merge_requests/1/merge",
                     json={"sha": head, "squash": True, "should_remove_source_branch": True,
                           "squash_commit_message": "ET-7 squashed"}).json()
    squash = merged["squash_commit_sha"]
    assert merged["state"] == "merged" and squash not in (None, head)
    assert git(origin, "log", "-1", "--format=%s", squash) == "ET-7 squashed"
    assert git(origin, "rev-parse", f"{merged['merge_commit_sha']}^2") == squash
    assert git(origin, "ls-tree", "--name-only", "-r", "main").split() == ["README.md", "src/checkout.py",
                                                                           "src/more.py"]
    assert git(origin, "branch", "--list", BRANCH) == ""  # removed


# -- commit statuses and pipelines (§3.5, §3.6, Traps 6, 11, 12) --------------------------------


def test_commit_statuses_list_every_job_and_external_status_latest_per_name(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    pipeline_id = gitlab.add_pipeline(NAMESPACE, NAME, head, BRANCH,
                                      jobs=[("build", "success"), ("lint", "failed", True)])
    posted = api.post(f"{PROJECT}/statuses/{head}", json={"state": "running", "name": "review",
                                                          "target_url": "https://ci.example/1"})
    assert posted.status_code == 201
    status = posted.json()
    assert (status["status"], status["name"], status["sha"], status["ref"]) == ("running", "review", head, BRANCH)
    assert status["pipeline_id"] == pipeline_id  # an external status joins the commit's pipeline
    assert set(status) >= {"id", "target_url", "description", "created_at", "started_at", "finished_at",
                           "allow_failure", "coverage", "author"}

    repost = api.post(f"{PROJECT}/statuses/{head}", json={"state": "running", "name": "review"})
    assert repost.status_code == 400
    assert repost.json()["message"].startswith("Cannot transition status via :run from :running")
    assert api.post(f"{PROJECT}/statuses/{head}", json={"state": "success", "name": "review"}).status_code == 201
    assert api.post(f"{PROJECT}/statuses/{head}", json={"state": "success", "context": "review"}).status_code == 400
    assert api.post(f"{PROJECT}/statuses/{head}", json={"state": "pending", "name": "review"}).status_code == 201

    latest = api.get(f"{PROJECT}/repository/commits/{head}/statuses").json()
    assert [(s["name"], s["status"], s["allow_failure"]) for s in latest] == [
        ("build", "success", False), ("lint", "failed", True), ("review", "pending", False)]
    history = api.get(f"{PROJECT}/repository/commits/{head}/statuses", params={"all": "true"}).json()
    assert [(s["name"], s["status"]) for s in history if s["name"] == "review"] == [
        ("review", "success"), ("review", "pending")]
    assert api.get(f"{PROJECT}/repository/commits/{head}/statuses", params={"name": "build"}).json()[0][
        "name"] == "build"
    assert api.get(f"{PROJECT}/repository/commits/{head}/statuses", params={"ref": "main"}).json() == []
    assert api.get(f"{PROJECT}/pipelines/{pipeline_id}").json()["status"] == "running"  # success + pending
    unknown = api.get(f"{PROJECT}/repository/commits/{'f' * 40}/statuses")
    assert (unknown.status_code, unknown.json()) == (404, {"message": "404 Commit Not Found"})


def test_a_status_without_pipeline_makes_an_external_one(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    main = git(origin, "rev-parse", "main")
    api.post(f"{PROJECT}/statuses/{main}", json={"state": "failed", "context": "ci/external"})
    [pipeline] = api.get(f"{PROJECT}/pipelines", params={"sha": main}).json()
    assert (pipeline["source"], pipeline["ref"], pipeline["status"]) == ("external", "main", "failed")
    assert api.post(f"{PROJECT}/statuses/{'0' * 40}", json={"state": "success"}).status_code == 404


def test_latest_pipeline_for_a_sha_and_a_scripted_transition(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    older = gitlab.add_pipeline(NAMESPACE, NAME, head, BRANCH, "failed")
    newer = gitlab.add_pipeline(NAMESPACE, NAME, head, BRANCH, "running")
    gitlab.set_pipeline_status(NAMESPACE, NAME, newer, "success", after_reads=2)
    query: dict[str, Any] = {"sha": head, "order_by": "id", "sort": "desc", "per_page": 1}
    seen = []
    for _ in range(3):
        [latest] = api.get(f"{PROJECT}/pipelines", params=query).json()
        seen.append((latest["id"], latest["status"]))
    assert seen == [(newer, "running"), (newer, "running"), (newer, "success")]
    single = api.get(f"{PROJECT}/pipelines/{older}").json()
    assert (single["status"], single["sha"], single["detailed_status"]["group"]) == ("failed", head, "failed")
    assert single["web_url"] == f"{gitlab.web_url}/{NAMESPACE}/{NAME}/-/pipelines/{older}"
    assert [p["id"] for p in api.get(f"{PROJECT}/pipelines", params={"status": "failed"}).json()] == [older]
    assert api.get(f"{PROJECT}/pipelines/424242").json() == {"message": "404 Pipeline Not Found"}


def test_latest_pipeline_endpoint_is_403_when_the_commit_has_none(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    none = api.get(f"{PROJECT}/pipelines/latest")
    assert (none.status_code, none.json()) == (403, {"message": "403 Forbidden"})
    pipeline_id = gitlab.add_pipeline(NAMESPACE, NAME, ref="main")
    assert api.get(f"{PROJECT}/pipelines/latest", params={"ref": "main"}).json()["id"] == pipeline_id


def test_composite_status_ignores_allowed_failures() -> None:
    assert composite_status([("success", False), ("failed", True)]) == "success"
    assert composite_status([("success", False), ("running", False)]) == "running"
    assert composite_status([("failed", False), ("success", False)]) == "failed"
    assert composite_status([("skipped", False)]) == "skipped"


# -- issues and notes (§3.7, §3.8, Traps 8, 10, 18) -----------------------------------------------


def test_notes_are_201_and_a_body_of_quick_actions_only_is_202_without_a_note(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    iid = gitlab.create_issue(NAMESPACE, NAME, "Checkout", "Build it.", labels=["sdlc"])
    gitlab.add_label(NAMESPACE, NAME, "approved")
    note = api.post(f"{PROJECT}/issues/{iid}/notes", json={"body": "Plan posted."})
    assert note.status_code == 201
    created = note.json()
    assert (created["body"], created["system"], created["noteable_type"], created["noteable_iid"]) == (
        "Plan posted.", False, "Issue", iid)
    assert created["author"]["username"] == "sdlc-bot" and created["noteable_id"] != iid  # a global id

    commands = api.post(f"{PROJECT}/issues/{iid}/notes", json={"body": "/label ~approved\n"})
    assert commands.status_code == 202
    assert commands.json() == {"commands_changes": {}, "summary": ["Added ~approved label."]}
    assert api.get(f"{PROJECT}/issues/{iid}").json()["labels"] == ["sdlc", "approved"]
    stored = [n["body"] for n in gitlab.notes(NAMESPACE, NAME, iid) if not n["system"]]
    assert stored == ["Plan posted."]  # the quick action left no note

    mixed = api.post(f"{PROJECT}/issues/{iid}/notes", json={"body": "Thanks!\n/unlabel ~approved"})
    assert (mixed.status_code, mixed.json()["body"]) == (201, "Thanks!")
    not_a_command = api.post(f"{PROJECT}/issues/{iid}/notes", json={"body": "/etc/hosts is a path"})
    assert (not_a_command.status_code, not_a_command.json()["body"]) == (201, "/etc/hosts is a path")

    listed = api.get(f"{PROJECT}/issues/{iid}/notes").json()  # newest first, system notes included
    assert [n["body"] for n in listed] == [
        "/etc/hosts is a path", "Thanks!", 'removed ~"approved" label', 'added ~"approved" label', "Plan posted."]
    comments = api.get(f"{PROJECT}/issues/{iid}/notes",
                       params={"sort": "asc", "activity_filter": "only_comments"}).json()
    assert [n["body"] for n in comments] == ["Plan posted.", "Thanks!", "/etc/hosts is a path"]
    assert api.get(f"{PROJECT}/issues/99/notes").json() == {"message": "404 Issue Not Found"}


def test_issue_labels_change_with_add_remove_and_replace(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    iid = gitlab.create_issue(NAMESPACE, NAME, "Checkout", None, labels=["sdlc", "backlog"])
    issue = api.get(f"{PROJECT}/issues/{iid}").json()
    assert (issue["description"], issue["labels"], issue["state"]) == (None, ["sdlc", "backlog"], "opened")
    assert issue["web_url"] == f"{gitlab.web_url}/{NAMESPACE}/{NAME}/-/issues/{iid}"
    changed = api.put(f"{PROJECT}/issues/{iid}", json={"add_labels": "in-progress", "remove_labels": "backlog"})
    assert changed.json()["labels"] == ["sdlc", "in-progress"]
    assert api.put(f"{PROJECT}/issues/{iid}", json={"labels": ""}).json()["labels"] == []
    nothing = api.put(f"{PROJECT}/issues/{iid}", json={})
    assert nothing.status_code == 400 and nothing.json()["error"].endswith("at least one parameter must be provided")
    assert taking_violations(gitlab) == [f"PUT {PROJECT}/issues/{iid}: update_issue without any field"]


def test_merge_request_notes_and_the_merge_quick_action(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    head = push(origin, tmp_path)
    create(api, description="Adds checkout.\n/label ~nonexistent")
    assert api.get(f"{PROJECT}/merge_requests/1").json()["description"] == "Adds checkout."
    settle(api, 1)
    note = api.post(f"{PROJECT}/merge_requests/1/notes", json={"body": "Looks good."}).json()
    assert (note["noteable_type"], note["noteable_iid"]) == ("MergeRequest", 1)
    # Trap 10: a bot echoing "/merge" with the head sha merges the MR.
    echoed = api.post(f"{PROJECT}/merge_requests/1/notes", json={"body": "/merge", "merge_request_diff_head_sha": head})
    assert (echoed.status_code, echoed.json()["summary"]) == (202, ["Merged this merge request."])
    assert api.get(f"{PROJECT}/merge_requests/1").json()["state"] == "merged"
    assert [n["body"] for n in api.get(f"{PROJECT}/merge_requests/1/notes").json()] == ["merged", "Looks good."]


# -- the contract check ---------------------------------------------------------------------------


def test_unknown_query_parameter_and_body_field_are_violations(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    listed = api.get(f"{PROJECT}/merge_requests", params={"head": f"acme:{BRANCH}", "state": "opened"})
    assert listed.status_code == 200  # GitLab drops what it does not know: the filter silently did nothing
    made = api.post(f"{PROJECT}/merge_requests",
                    json={"source_branch": BRANCH, "target_branch": "main", "title": "T", "body": "GitHub's name"})
    assert made.status_code == 201 and made.json()["description"] is None
    assert taking_violations(gitlab) == [
        f"GET {PROJECT}/merge_requests: parameter 'head' is not listed for list_merge_requests",
        f"POST {PROJECT}/merge_requests: parameter 'body' is not listed for create_merge_request",
    ]


def test_values_outside_the_contract_get_grapes_400(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    bad_state = api.get(f"{PROJECT}/merge_requests", params={"state": "open"})
    assert (bad_state.status_code, bad_state.json()) == (400, {"error": "state does not have a valid value"})
    both = api.get(f"{PROJECT}/merge_requests", params={"draft": "true", "wip": "yes"})
    assert (both.status_code, both.json()) == (400, {"error": "draft, wip are mutually exclusive"})
    bad_page = api.get(f"{PROJECT}/merge_requests", params={"page": "first"})
    assert bad_page.json() == {"error": "page is invalid"}
    bad_status = api.post(f"{PROJECT}/statuses/{git(origin, 'rev-parse', 'main')}", json={"state": "error"})
    assert bad_status.json() == {"error": "state does not have a valid value"}
    assert len(taking_violations(gitlab)) == 4  # one per request


def test_check_request_as_a_function() -> None:
    headers = {"private-token": "x"}
    good = check_request("GET", "/projects/a%2Fb/merge_requests", {"state": ["opened"], "per_page": ["100"]}, None,
                         headers)
    assert good.operation is not None and good.operation.name == "list_merge_requests"
    assert good.params == {"id": "a/b"} and good.violations == [] and good.errors == []
    form = check_request("PUT", "/projects/7/merge_requests/3/merge", {"sha": ["abc"]}, None,
                         {"authorization": "Bearer x"})
    assert form.params == {"id": "7", "merge_request_iid": "3"} and form.violations == []
    assert check_request("GET", "/projects/7/pipelines", {}, None, {}).violations == [
        "GET /projects/7/pipelines: neither PRIVATE-TOKEN nor Authorization: Bearer is sent"]
    assert check_request("GET", "/projects/7/pipelines", {}, None, {"authorization": "token x"}).violations == [
        "GET /projects/7/pipelines: header authorization='token ***' is not 'Bearer \\\\S+'"]


def test_form_bodies_and_query_fields_are_accepted_for_writes(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client, tmp_path: Path
) -> None:
    push(origin, tmp_path)
    made = api.post(f"{PROJECT}/merge_requests",
                    data={"source_branch": BRANCH, "target_branch": "main", "title": "Form", "labels": "a,b"})
    assert made.status_code == 201 and made.json()["labels"] == ["a", "b"]
    renamed = api.put(f"{PROJECT}/merge_requests/1", params={"title": "Renamed"})
    assert renamed.json()["title"] == "Renamed"


# -- authentication, rate limits, faults (§0, §2, Trap 17) --------------------------------------


def test_a_missing_or_wrong_token_is_401_and_tokens_never_reach_the_log(
    gitlab: GitLabTestServer, origin: Path
) -> None:
    url = f"{gitlab.api_url}{PROJECT}"
    assert httpx.get(url).json() == {"message": "401 Unauthorized"}
    assert httpx.get(url, headers={"PRIVATE-TOKEN": "wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"token {DEFAULT_TOKEN}"}).status_code == 401  # Gitea's form
    assert httpx.get(url, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}).status_code == 200
    assert httpx.get(url, headers={"PRIVATE-TOKEN": DEFAULT_TOKEN}).status_code == 200
    in_url = httpx.get(url, params={"private_token": DEFAULT_TOKEN})
    assert in_url.status_code == 200  # works, but tokens in URLs end up in logs
    violations = taking_violations(gitlab)
    assert f"GET {PROJECT}: token in the URL (private_token=); send the PRIVATE-TOKEN header" in violations
    assert len([v for v in violations if "neither PRIVATE-TOKEN" in v]) == 2
    logged = repr([(r.headers, r.query) for r in gitlab.requests])
    assert DEFAULT_TOKEN not in logged and "wrong" not in logged


def test_a_read_api_token_cannot_write(gitlab: GitLabTestServer, origin: Path, api: httpx.Client,
                                       tmp_path: Path) -> None:
    gitlab.token_scopes = ("read_api",)
    push(origin, tmp_path)
    refused = create(api)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert api.get(f"{PROJECT}/merge_requests").status_code == 200


def test_an_injected_429_carries_retry_after_and_ratelimit_reset(
    gitlab: GitLabTestServer, origin: Path, api: httpx.Client
) -> None:
    gitlab.inject("GET", r"/merge_requests$", status=429, headers={"Retry-After": "7"})
    before = time.time()
    throttled = api.get(f"{PROJECT}/merge_requests")
    assert (throttled.status_code, throttled.text) == (429, "Retry later\n")
    assert throttled.headers["content-type"] == "text/plain"
    assert throttled.headers["retry-after"] == "7"
    reset = int(throttled.headers["ratelimit-reset"])
    assert before + 6 <= reset <= time.time() + 8
    assert parsedate_to_datetime(throttled.headers["ratelimit-resettime"]).timestamp() == reset
    assert throttled.headers["ratelimit-remaining"] == "0"
    assert throttled.headers["ratelimit-name"] == "throttle_authenticated_api"
    assert api.get(f"{PROJECT}/merge_requests").status_code == 200  # once

    gitlab.inject_rate_limit("POST", r"/notes$", application_limit=True)  # notes: no headers at all
    iid = gitlab.create_issue(NAMESPACE, NAME, "Checkout")
    limited = api.post(f"{PROJECT}/issues/{iid}/notes", json={"body": "hi"})
    assert limited.status_code == 429
    assert not any(key.startswith("ratelimit") or key == "retry-after" for key in limited.headers)
    assert gitlab.notes(NAMESPACE, NAME, iid) == []

    gitlab.chaos(1.0, kinds=(429,), retry_after=2)
    try:
        chaotic = api.get("/version")
        assert chaotic.status_code == 429 and chaotic.headers["retry-after"] == "2"
        assert "ratelimit-resettime" in chaotic.headers
    finally:
        gitlab.chaos_off()
    assert gitlab.chaos_injected["429"] == 1
    assert [r.injected for r in gitlab.requests if r.status == 429] == [True, True, True]


def test_rate_limit_headers_on_every_answer_when_a_throttle_is_on(
    gitlab: GitLabTestServer, api: httpx.Client
) -> None:
    assert "ratelimit-limit" not in api.get("/version").headers  # self-managed default: off
    gitlab.rate_limit_headers = True
    answered = api.get("/version")
    assert answered.headers["ratelimit-limit"] == "2000" and int(answered.headers["ratelimit-reset"]) > time.time()


def test_version(gitlab: GitLabTestServer, api: httpx.Client) -> None:
    version = api.get("/version").json()
    assert version["version"] == "19.0.0-pre" and version["revision"]
