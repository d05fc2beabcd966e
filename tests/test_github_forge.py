"""GitHubForge against a real HTTP GitHub double over real bare repositories (B43).

Every test's requests are checked against tests/contracts/github-endpoints.md:
the ``github`` fixture fails the test on any request outside that contract.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from forge_servers.github import GitHubTestServer
from forge_servers.github_contract import check_request
from gitrepo import clone_of, commit_file, git, isolate

from blocks.forge import GitHubCredentials
from sdlc.models import PullRequestRef
from tasks.ci_status import CiStatus
from tasks.failures import PermanentError
from tasks.forge_github import GitHubForge
from tasks.forge_http import ForgeHTTPError, HttpRetry

OWNER, REPO = "acme", "shop"
BRANCH = "feature/ET-7-checkout"
TOKEN = "test-token"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture()
def github(tmp_path: Path) -> Iterator[GitHubTestServer]:
    with GitHubTestServer(tmp_path / "github", token=TOKEN) as server:
        yield server
        assert server.violations == [], "requests outside github-endpoints.md:\n" + "\n".join(server.violations)


@pytest.fixture()
def origin(github: GitHubTestServer) -> Path:
    return github.create_repo(OWNER, REPO)


@pytest.fixture()
def sleeps() -> list[float]:
    return []


def make_forge(
    server: GitHubTestServer, sleeps: list[float], *, repo: str = REPO, token: str = TOKEN, timeout: float = 10.0
) -> GitHubForge:
    credentials = GitHubCredentials(api_url=server.api_url, token=token, timeout_seconds=timeout)
    return GitHubForge(
        credentials=credentials, owner=OWNER, repo=repo,
        retry=HttpRetry(max_attempts=4, backoff_base_seconds=0.01, backoff_cap_seconds=0.05),
        sleep=sleeps.append,
    )


@pytest.fixture()
def forge(github: GitHubTestServer, sleeps: list[float]) -> Iterator[GitHubForge]:
    with make_forge(github, sleeps) as client:
        yield client


def push_branch(origin: Path, tmp_path: Path, branch: str = BRANCH, relative: str = "src/checkout.py",
                text: str = "checkout = True\n") -> str:
    """Another clone commits on ``branch`` and pushes it to the bare repository; returns the commit."""
    work = tmp_path / f"dev-{branch.replace('/', '-')}-{time.monotonic_ns()}"
    clone_of(origin, work)
    git(work, "checkout", "--quiet", "-B", branch)
    sha = commit_file(work, relative, text, f"work on {branch}")
    git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
    return sha


def ensure(forge: GitHubForge, branch: str = BRANCH) -> PullRequestRef:
    return forge.ensure_pull_request(branch=branch, base="main", title="ET-7: Checkout", body="Adds checkout.",
                                     work_item="ET-7")


def posts(server: GitHubTestServer, path_end: str) -> list[int | None]:
    return [r.status for r in server.requests if r.method in ("POST", "PUT") and r.path.endswith(path_end)]


# -- pull requests -------------------------------------------------------------------


def test_ensure_pull_request_twice_gives_one(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    push_branch(origin, tmp_path)
    assert forge.default_branch() == "main"
    first = ensure(forge)
    second = ensure(forge)
    assert first == second
    assert (first.number, first.branch, first.base, first.state) == (1, BRANCH, "main", "open")
    assert first.merge_commit is None
    assert first.url == f"{github.web_url}/{OWNER}/{REPO}/pull/1"
    assert len(github.pull_requests(OWNER, REPO)) == 1
    assert posts(github, "/pulls") == [201]  # the second call only looked
    listed = [r for r in github.requests if r.operation == "list_pulls"]
    assert listed[0].query == {"head": [f"{OWNER}:{BRANCH}"], "base": ["main"], "state": ["open"], "per_page": ["100"]}


def test_lost_responses_on_list_and_create_still_give_one_pr(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path, sleeps: list[float]
) -> None:
    push_branch(origin, tmp_path)
    github.inject("GET", r"/pulls$", status=500, times=2)
    github.inject("POST", r"/pulls$", status=500, after=True)  # created, but the answer is lost
    ref = ensure(forge)
    assert ref.number == 1 and ref.state == "open"
    assert len(github.pull_requests(OWNER, REPO)) == 1
    assert posts(github, "/pulls") == [500, 422]  # the retried create met the PR it had made
    assert [r.status for r in github.requests if r.operation == "list_pulls"] == [500, 500, 200, 200]
    assert len(sleeps) == 3


def test_concurrent_callers_get_one_pr(
    github: GitHubTestServer, origin: Path, tmp_path: Path
) -> None:
    push_branch(origin, tmp_path)
    refs: list[PullRequestRef] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with make_forge(github, []) as client:
                refs.append(ensure(client))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(github.pull_requests(OWNER, REPO)) == 1
    assert {ref.number for ref in refs} == {1} and len(refs) == 4


def test_rate_limits_wait_as_github_says(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path, sleeps: list[float]
) -> None:
    push_branch(origin, tmp_path)
    github.inject("GET", r"/pulls$", status=429, headers={"retry-after": "7"})
    reset = int(time.time()) + 120
    github.inject("POST", r"/pulls$", status=403,
                  headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})
    assert ensure(forge).number == 1
    assert sleeps[0] == 7.0
    assert 100 < sleeps[1] <= 120
    assert len(github.pull_requests(OWNER, REPO)) == 1


def test_a_slow_answer_is_retried(github: GitHubTestServer, origin: Path, sleeps: list[float]) -> None:
    github.inject("GET", rf"^/repos/{OWNER}/{REPO}$", timeout=1.0)
    with make_forge(github, sleeps, timeout=0.3) as client:
        assert client.default_branch() == "main"
    assert len(sleeps) == 1


def test_github_enterprise_base_path(tmp_path: Path, sleeps: list[float]) -> None:
    with GitHubTestServer(tmp_path / "ghes", token=TOKEN, path_prefix="/api/v3") as server:
        server.create_repo(OWNER, REPO, default_branch="trunk")
        assert server.api_url.endswith("/api/v3")
        with make_forge(server, sleeps) as client:
            assert client.default_branch() == "trunk"
        assert server.violations == []


def test_client_errors_fail_at_once_with_githubs_message(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, sleeps: list[float]
) -> None:
    with pytest.raises(ForgeHTTPError) as unpushed:
        ensure(forge, branch="feature/ET-8-never-pushed")
    assert unpushed.value.status == 422
    assert "Validation Failed" in str(unpushed.value) and "'field': 'head'" in str(unpushed.value)
    assert posts(github, "/pulls") == [422]

    with pytest.raises(ForgeHTTPError) as missing:
        forge.merge_pull_request(number=99)
    assert missing.value.status == 404 and "Not Found" in str(missing.value)

    with make_forge(github, sleeps, repo="no-such-repo") as other, pytest.raises(ForgeHTTPError) as no_repo:
        other.default_branch()
    assert no_repo.value.status == 404

    with make_forge(github, sleeps, token="wrong") as other, pytest.raises(ForgeHTTPError) as bad_token:
        other.default_branch()
    assert bad_token.value.status == 401 and "Bad credentials" in str(bad_token.value)
    assert sleeps == []


def test_merge_lands_on_the_bare_repositorys_main(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    head = push_branch(origin, tmp_path)
    before = git(origin, "rev-parse", "refs/heads/main")
    ref = ensure(forge)
    merged = forge.merge_pull_request(number=ref.number)
    main = git(origin, "rev-parse", "refs/heads/main")
    assert merged.state == "merged" and merged.merge_commit == main
    assert git(origin, "rev-parse", f"{main}^1", f"{main}^2").split() == [before, head]  # --no-ff
    assert git(origin, "show", f"{main}:src/checkout.py") == "checkout = True"
    assert forge.is_merged(number=ref.number)

    again = forge.merge_pull_request(number=ref.number)
    assert again == merged
    assert posts(github, "/merge") == [200]  # merging a merged PR sends no PUT
    put = next(r for r in github.requests if r.operation == "merge_pull")
    assert put.body == {"merge_method": "merge"}


def test_merge_whose_answer_is_lost_merges_once(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    push_branch(origin, tmp_path)
    ref = ensure(forge)
    github.inject("PUT", r"/merge$", status=502, after=True)
    merged = forge.merge_pull_request(number=ref.number)
    assert merged.state == "merged"
    assert merged.merge_commit == git(origin, "rev-parse", "refs/heads/main")
    assert git(origin, "rev-list", "--merges", "--count", "main") == "1"
    assert posts(github, "/merge") == [502, 405]


def test_a_conflicting_pr_is_not_mergeable(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    push_branch(origin, tmp_path, relative="README.md", text="# from the branch\n")
    ref = ensure(forge)
    push_branch(origin, tmp_path, branch="main", relative="README.md", text="# from main\n")
    main = git(origin, "rev-parse", "refs/heads/main")
    with pytest.raises(PermanentError, match="Pull Request is not mergeable") as failed:
        forge.merge_pull_request(number=ref.number)
    assert not isinstance(failed.value, ForgeHTTPError)
    assert git(origin, "rev-parse", "refs/heads/main") == main
    assert forge.get_pull_request(number=ref.number).state == "open"


# -- CI status -----------------------------------------------------------------------


def test_ci_status_none_pending_success_failure(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    sha = push_branch(origin, tmp_path)
    assert forge.ci_status(sha) == CiStatus(state="none")
    raw = next(r for r in github.requests if r.operation == "combined_status")
    assert raw.status == 200  # GitHub's own combined state here is "pending", with total_count 0

    github.add_status(OWNER, REPO, sha, "pending", context="ci/build")
    assert forge.ci_status(sha).state == "pending"
    github.add_status(OWNER, REPO, sha, "success", context="ci/build")
    assert forge.ci_status(BRANCH) == CiStatus(state="success", details=["status ci/build: success"])

    github.add_check_run(OWNER, REPO, sha, "lint", status="in_progress")
    assert forge.ci_status(sha).state == "pending"
    github.add_check_run(OWNER, REPO, sha, "lint", conclusion="success")
    github.add_check_run(OWNER, REPO, sha, "docs", conclusion="skipped")
    assert forge.ci_status(sha).state == "success"

    github.add_status(OWNER, REPO, sha, "error", context="ci/deploy")
    assert forge.ci_status(sha).state == "failure"


@pytest.mark.parametrize("conclusion", ["failure", "timed_out", "cancelled", "action_required"])
def test_a_failing_check_run_beats_an_all_green_combined_status(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path, conclusion: str
) -> None:
    """GitHub Actions only show up as check runs: the combined status alone would say success."""
    sha = push_branch(origin, tmp_path)
    github.add_status(OWNER, REPO, sha, "success", context="ci/external")
    github.add_check_run(OWNER, REPO, sha, "tests", conclusion=conclusion)
    result = forge.ci_status(sha)
    assert result.state == "failure"
    assert f"check tests: {conclusion}" in result.details
    with httpx.Client(base_url=github.api_url, headers=_headers()) as raw:
        assert raw.get(f"/repos/{OWNER}/{REPO}/commits/{sha}/status").json()["state"] == "success"


def test_check_runs_only_and_paging(
    github: GitHubTestServer, origin: Path, forge: GitHubForge, tmp_path: Path
) -> None:
    sha = push_branch(origin, tmp_path)
    github.add_check_run(OWNER, REPO, sha, "check-0", conclusion="failure")  # listed last, on page 2
    for index in range(1, 101):
        github.add_check_run(OWNER, REPO, sha, f"check-{index}", conclusion="success")
    result = forge.ci_status(sha)
    assert result.state == "failure" and len(result.details) == 101
    pages = [r.query["page"] for r in github.requests if r.operation == "check_runs"]
    assert pages == [["1"], ["2"]]


# -- the contract check itself ---------------------------------------------------------


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28"}


def test_the_contract_check_catches_requests_outside_github_endpoints(
    github: GitHubTestServer, origin: Path
) -> None:
    with httpx.Client(base_url=github.api_url, headers=_headers()) as raw:
        raw.get(f"/repos/{OWNER}/{REPO}/pulls", params={"state": "open", "base_branch": "main"})  # Gitea's name
        raw.post(f"/repos/{OWNER}/{REPO}/pulls/1/merge", json={"Do": "merge"})  # Gitea's verb and field
        raw.get(f"/repos/{OWNER}/{REPO}/pulls", params={"per_page": "500"})
        raw.get(f"/repos/{OWNER}/{REPO}", headers={"X-GitHub-Api-Version": ""})
    found = list(github.violations)
    github.violations.clear()  # seen: do not fail this test in the fixture
    assert any("'base_branch' is not listed for list_pulls" in v for v in found)
    assert any("POST /repos/acme/shop/pulls/1/merge: not an operation" in v for v in found)
    assert any("per_page='500'" in v for v in found)
    assert any("x-github-api-version" in v for v in found)

    bad = check_request("PUT", "/repos/a/b/pulls/3/merge", {}, {"Do": "merge", "merge_method": "fast"}, {})
    assert bad.operation is not None and bad.operation.name == "merge_pull"
    assert len(bad.violations) == 5  # three headers, one unknown field, one bad value
    good = check_request("PUT", "/repos/a/b/pulls/3/merge", {}, {"merge_method": "merge"},
                         {k.lower(): v for k, v in _headers().items()})
    assert good.violations == []


def test_a_head_other_than_the_one_the_gates_judged_is_not_merged(
    github: GitHubTestServer, forge: GitHubForge, origin: Path, tmp_path: Path
) -> None:
    """Issue 19: the merge names the judged commit (``sha``); GitHub answers 409 once the branch moved."""
    judged = push_branch(origin, tmp_path)
    ref = forge.ensure_pull_request(branch=BRANCH, base="main", title="ET-7", body="", work_item="ET-7")
    main = git(origin, "rev-parse", "refs/heads/main")
    person = clone_of(origin, tmp_path / "person")  # a person's commit on top of the judged one
    git(person, "checkout", "--quiet", BRANCH)
    commit_file(person, "src/unjudged.py", "x = 1\n", "not judged by any gate")
    git(person, "push", "--quiet", "origin", BRANCH)
    with pytest.raises(PermanentError, match=f"its head moved since its gates judged {judged[:12]}"):
        forge.merge_pull_request(number=ref.number, head_sha=judged)
    assert git(origin, "rev-parse", "refs/heads/main") == main
    sent = [r.body for r in github.requests if r.method == "PUT" and r.path.endswith("/merge")]
    assert sent and sent[0]["sha"] == judged
