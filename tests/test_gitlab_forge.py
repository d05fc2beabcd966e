"""GitLabForge against a real HTTP GitLab double over real bare repositories (issue 19).

Every request is checked against tests/contracts/gitlab-endpoints.md: the ``gitlab`` fixture
fails a test on any request outside it. The project sits in a nested group, so every call
addresses it by its URL-encoded full path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from forge_servers.gitlab import DEFAULT_TOKEN, GitLabTestServer
from gitrepo import clone_of, commit_file, git, isolate

from blocks.forge import GitLabCredentials
from tasks.failures import PermanentError, TransientError
from tasks.forge_gitlab import GitLabForge, inert
from tasks.forge_http import ForgeHTTPError, HttpRetry

GROUP, NAME = "acme/platform", "shop"
BRANCH = "feature/ET-7-checkout"


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
    return gitlab.create_repo(GROUP, NAME)


@pytest.fixture()
def sleeps() -> list[float]:
    return []


def make_forge(server: GitLabTestServer, sleeps: list[float], *, token: str = DEFAULT_TOKEN) -> GitLabForge:
    return GitLabForge(
        credentials=GitLabCredentials(api_url=server.api_url, token=token, timeout_seconds=10),
        owner=GROUP,
        repo=NAME,
        retry=HttpRetry(max_attempts=4, backoff_base_seconds=0.01, backoff_cap_seconds=0.05),
        sleep=sleeps.append,
        ci_timeout_seconds=5,
        poll_seconds=0.01,
    )


@pytest.fixture()
def forge(gitlab: GitLabTestServer, sleeps: list[float]) -> Iterator[GitLabForge]:
    with make_forge(gitlab, sleeps) as client:
        yield client


def push_branch(origin: Path, tmp_path: Path, branch: str = BRANCH, relative: str = "src/checkout.py",
                text: str = "checkout = True\n") -> str:
    """Another clone commits on ``branch`` and pushes it to the bare repository; returns the commit."""
    work = tmp_path / f"dev-{time.monotonic_ns()}"
    clone_of(origin, work)
    exists = git(work, "ls-remote", "--heads", "origin", branch)
    git(work, "checkout", "--quiet", "-B", branch, f"origin/{branch}" if exists else "origin/main")
    sha = commit_file(work, relative, text, f"work on {branch}")
    git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
    return sha


def ensure(forge: GitLabForge, branch: str = BRANCH) -> int:
    return forge.ensure_pull_request(branch=branch, base="main", title="ET-7 checkout", body="story", work_item="ET-7").number


def test_the_project_is_addressed_by_its_encoded_full_path(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path) -> None:
    assert forge.default_branch() == "main"
    url = forge.file_url(branch=BRANCH, path="docs/work-items/ET-7/02-brd.md")
    assert url == f"{gitlab.web_url}/{GROUP}/{NAME}/-/blob/{BRANCH}/docs/work-items/ET-7/02-brd.md"
    assert {r.path.split("?")[0] for r in gitlab.requests} == {"/projects/acme%2Fplatform%2Fshop"}


def test_ensure_twice_gives_one_merge_request(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                              tmp_path: Path) -> None:
    push_branch(origin, tmp_path)
    first, second = ensure(forge), ensure(forge)
    assert first == second
    (mr,) = gitlab.merge_requests(GROUP, NAME)
    assert (mr["source_branch"], mr["target_branch"], mr["state"]) == (BRANCH, "main", "opened")
    listed = [r for r in gitlab.requests if r.method == "GET" and r.path.endswith("/merge_requests")]
    assert all(r.query.get("state") == ["opened"] and r.query.get("per_page") == ["100"] for r in listed)


def test_a_merge_request_beyond_the_first_page_is_found(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                                        tmp_path: Path) -> None:
    """Older open MRs of other branches fill more than a page: the client follows x-next-page."""
    work = tmp_path / "many"
    clone_of(origin, work)
    commit_file(work, "src/other.py", "other = True\n", "other work")
    branches = [f"feature/ET-{100 + n}-x" for n in range(105)]
    git(work, "push", "--quiet", "origin", *(f"HEAD:refs/heads/{branch}" for branch in branches))
    with make_forge(gitlab, []) as other:
        for n in range(105):
            ensure(other, f"feature/ET-{100 + n}-x")
    push_branch(origin, tmp_path)
    number = ensure(forge)
    assert number == ensure(forge)
    assert len(gitlab.merge_requests(GROUP, NAME)) == 106


def test_a_create_answered_409_or_whose_answer_is_lost_ends_with_one(
    forge: GitLabForge, gitlab: GitLabTestServer, origin: Path, tmp_path: Path
) -> None:
    push_branch(origin, tmp_path)
    gitlab.inject("POST", r"/merge_requests$", status=502, after=True)  # created, the answer lost
    number = ensure(forge)
    assert [mr["iid"] for mr in gitlab.merge_requests(GROUP, NAME)] == [number]
    statuses = [r.status for r in gitlab.requests if r.method == "POST"]
    assert statuses == [502, 409]  # the retried create is refused as a duplicate, and the one MR adopted


def test_concurrent_callers_get_one(gitlab: GitLabTestServer, origin: Path, tmp_path: Path) -> None:
    push_branch(origin, tmp_path)
    numbers: list[int] = []

    def one() -> None:
        with make_forge(gitlab, []) as client:
            numbers.append(ensure(client))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(numbers)) == 1 and len(numbers) == 4
    assert len(gitlab.merge_requests(GROUP, NAME)) == 1


def test_merge_waits_for_the_mergeability_check_and_passes_the_sha(
    forge: GitLabForge, gitlab: GitLabTestServer, origin: Path, tmp_path: Path, sleeps: list[float]
) -> None:
    gitlab.checking_reads = 3
    head = push_branch(origin, tmp_path)
    number = ensure(forge)
    merged = forge.merge_pull_request(number=number)
    assert merged.state == "merged" and merged.merge_commit
    assert sleeps.count(0.01) >= 2  # polled while GitLab said "checking"
    (merge,) = [r for r in gitlab.requests if r.method == "PUT" and r.path.endswith("/merge")]
    assert merge.body["sha"] == head
    assert git(origin, "rev-parse", "main") == merged.merge_commit
    assert forge.merge_pull_request(number=number).state == "merged"  # merging again changes nothing
    assert len(gitlab.merges) == 1


def test_a_merge_whose_answer_is_lost_merges_once(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                                  tmp_path: Path) -> None:
    push_branch(origin, tmp_path)
    number = ensure(forge)
    gitlab.inject("PUT", r"/merge_requests/\d+/merge$", status=502, after=True)
    assert forge.merge_pull_request(number=number).state == "merged"
    assert len(gitlab.merges) == 1


def test_a_push_after_the_check_is_refused_not_merged(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                                      tmp_path: Path) -> None:
    """The sha sent is the head GitLab judged; someone pushes between the read and the merge: 409."""
    push_branch(origin, tmp_path)
    number = ensure(forge)
    original = forge._settled

    def then_push(n: int) -> dict[str, object]:
        data = original(n)
        push_branch(origin, tmp_path, relative="src/late.py", text="late = True\n")
        return data

    forge._settled = then_push  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="its head moved since it was judged"):
        forge.merge_pull_request(number=number)
    assert gitlab.merges == []


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("conflict", "it conflicts with main"),
        ("pipeline required", "a successful pipeline is required"),
        ("no permission", "the token may not merge into main"),
    ],
)
def test_each_refusal_is_a_clear_reason(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path, tmp_path: Path,
                                        setup: str, reason: str) -> None:
    push_branch(origin, tmp_path, relative="README.md", text="ours\n")
    number = ensure(forge)
    if setup == "conflict":
        push_branch(origin, tmp_path, branch="main", relative="README.md", text="theirs\n")
    elif setup == "pipeline required":
        gitlab.require_pipeline = True
    else:
        gitlab.merge_allowed = False
    with pytest.raises(PermanentError, match=reason) as refused:
        forge.merge_pull_request(number=number)
    assert f"!{number}" in str(refused.value)
    assert gitlab.merges == []


def test_mergeability_that_never_settles_is_transient(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                                      tmp_path: Path) -> None:
    gitlab.checking_reads = 10_000
    push_branch(origin, tmp_path)
    number = ensure(forge)
    forge._mergeability_timeout = 0.2
    with pytest.raises(TransientError, match="still says 'checking'"):
        forge.merge_pull_request(number=number)


def test_rate_limits_wait_as_gitlab_says(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                         sleeps: list[float]) -> None:
    gitlab.inject_rate_limit("GET", r"/projects/[^/]+$", retry_after=7)
    assert forge.default_branch() == "main"
    assert sleeps and sleeps[0] >= 7


def test_client_errors_fail_at_once_with_gitlabs_message(gitlab: GitLabTestServer, origin: Path,
                                                         sleeps: list[float]) -> None:
    with make_forge(gitlab, sleeps, token="wrong") as bad:
        with pytest.raises(ForgeHTTPError) as refused:
            bad.default_branch()
    assert refused.value.status == 401 and "401 Unauthorized" in str(refused.value)
    assert sleeps == []


def test_ci_is_the_pipeline_and_its_jobs(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                         tmp_path: Path) -> None:
    head = push_branch(origin, tmp_path)
    assert forge.ci_status(head).state == "none"
    pipeline = gitlab.add_pipeline(GROUP, NAME, sha=head, ref=BRANCH, status="running",
                                   jobs=[("lint", "success"), ("unit", "running"), ("flaky", "failed", True)])
    assert forge.ci_status(head).state == "pending"
    gitlab.set_pipeline_status(GROUP, NAME, pipeline, "failed", jobs=[("lint", "success"), ("unit", "failed"),
                                                                      ("flaky", "failed", True)])
    failed = forge.ci_status(head)
    assert failed.state == "failure" and "job unit: failed" in failed.details
    assert not any("flaky" in line for line in failed.details)  # allow_failure does not count
    gitlab.set_pipeline_status(GROUP, NAME, pipeline, "success", jobs=[("lint", "success"), ("unit", "success")])
    assert forge.ci_status(head).state == "success"


def test_text_sdlc_writes_never_runs_as_a_quick_action(forge: GitLabForge, gitlab: GitLabTestServer, origin: Path,
                                                       tmp_path: Path) -> None:
    """A work item's description saying /merge or /label, in the MR description and in a note, stays text."""
    push_branch(origin, tmp_path)
    hostile = "Please ship it.\n/merge\n  /label ~urgent\n/close"
    number = forge.ensure_pull_request(branch=BRANCH, base="main", title="ET-7", body=hostile, work_item="ET-7").number
    (mr,) = gitlab.merge_requests(GROUP, NAME)
    assert mr["state"] == "opened" and mr["labels"] == [] and gitlab.merges == []
    assert mr["description"] == inert(hostile) and "\\/merge" in mr["description"]
    issue = gitlab.create_issue(GROUP, NAME, "Export", "d")
    note = forge.comment_on_issue(issue=issue, body="The developer says:\n/close\n/label ~bug")
    assert note is not None
    assert gitlab.issue(GROUP, NAME, issue)["state"] == "opened"
    assert [n["body"] for n in gitlab.notes(GROUP, NAME, issue) if not n.get("system")] == [
        "The developer says:\n\\/close\n\\/label ~bug"
    ]
    assert forge.update_pull_request_body(number=number, body_of=lambda _: "/merge now") is True
    assert forge.update_pull_request_body(number=number, body_of=lambda _: "/merge now") is False  # unchanged
    assert gitlab.merges == []


def test_a_head_other_than_the_one_the_gates_judged_is_not_merged(
    forge: GitLabForge, gitlab: GitLabTestServer, origin: Path, tmp_path: Path
) -> None:
    judged = push_branch(origin, tmp_path)
    number = ensure(forge)
    pushed = push_branch(origin, tmp_path, relative="src/unjudged.py", text="x = 1\n")
    with pytest.raises(PermanentError, match=f"moved since its gates judged {judged[:12]} \\(now {pushed[:12]}\\)"):
        forge.merge_pull_request(number=number, head_sha=judged)
    assert gitlab.merges == []
    assert forge.merge_pull_request(number=number, head_sha=pushed).state == "merged"
