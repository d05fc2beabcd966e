"""GiteaForge against a real HTTP server over real bare git repositories, checked by Gitea's Swagger document.

Every request the forge sends is matched to an operation of Gitea 1.25.4's own
``swagger.v1.json`` (tests/contracts) by the ``gitea`` fixture: an undeclared
endpoint, query parameter or body property fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from blocks.forge import GiteaCredentials
from forge_servers.gitea import DEFAULT_TOKEN, GiteaTestServer, git
from forge_servers.swagger_contract import DEFAULT_DOCUMENT, SwaggerContract
from tasks.ci_status import CiStatus
from tasks.failures import PermanentError, TransientError
from tasks.forge_gitea import GiteaForge, pull_request_ref
from tasks.forge_http import ForgeHTTPError, HttpRetry

OWNER, REPO = "acme", "widgets"
FAST_RETRY = HttpRetry(max_attempts=4, backoff_base_seconds=0.01, backoff_cap_seconds=0.05)


@pytest.fixture
def gitea(tmp_path: Path) -> Iterator[GiteaTestServer]:
    """The server; the test fails if any request departs from the Swagger document."""
    with GiteaTestServer(tmp_path / "gitea") as server:
        yield server
        assert server.violations == [], "requests not defined by Gitea's swagger.v1.json"
        assert server.response_problems == [], "GiteaTestServer answered outside the document"


@pytest.fixture
def origin(gitea: GiteaTestServer) -> Path:
    return gitea.create_repo(OWNER, REPO)


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def forge(gitea: GiteaTestServer, origin: Path, waits: list[float]) -> Iterator[GiteaForge]:
    credentials = GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN, timeout_seconds=5)
    with GiteaForge(credentials=credentials, owner=OWNER, repo=REPO, retry=FAST_RETRY, sleep=waits.append) as made:
        yield made


@pytest.fixture
def api(gitea: GiteaTestServer) -> Iterator[httpx.Client]:
    """A plain client, as a test (or CI) would use the API directly."""
    with httpx.Client(base_url=gitea.api_url, headers={"Authorization": f"token {DEFAULT_TOKEN}"}) as client:
        yield client


def push_branch(origin: Path, tmp_path: Path, branch: str, files: dict[str, str], base: str = "main") -> str:
    """Clone ``origin``, commit ``files`` on a new ``branch`` from ``base`` and push it; returns the commit SHA."""
    work = tmp_path / f"clone-{branch.replace('/', '-')}"
    if not work.exists():
        git(tmp_path, "clone", "--quiet", str(origin), str(work))
    git(work, "fetch", "--quiet", "origin")
    git(work, "checkout", "--quiet", "-B", branch, f"origin/{base}")
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", f"Work on {branch}")
    git(work, "push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}")
    return git(work, "rev-parse", "HEAD").stdout.strip()


def calls(gitea: GiteaTestServer, method: str, operation: str) -> list[int | None]:
    return [r.status for r in gitea.requests if r.method == method and r.operation == operation]


# -- repository and PR mapping ---------------------------------------------------------------


def test_default_branch_and_token(gitea: GiteaTestServer, forge: GiteaForge) -> None:
    assert forge.default_branch() == "main"
    gitea.create_repo(OWNER, "trunked", default_branch="trunk")
    wrong = GiteaCredentials(api_url=gitea.api_url, token="not-the-token")
    with GiteaForge(credentials=wrong, owner=OWNER, repo="trunked", retry=FAST_RETRY, sleep=lambda _: None) as bad:
        with pytest.raises(ForgeHTTPError) as caught:
            bad.default_branch()
    assert caught.value.status == 401
    with GiteaForge(credentials=GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN), owner=OWNER,
                    repo="trunked") as good:
        assert good.default_branch() == "trunk"


def test_pull_request_ref_mapping() -> None:
    base = {"number": 7, "html_url": "http://g/acme/w/pulls/7", "title": "T",
            "head": {"ref": "feature/x"}, "base": {"ref": "main"}, "merge_commit_sha": "abc"}
    assert pull_request_ref({**base, "state": "open", "merged": False}).state == "open"
    closed = pull_request_ref({**base, "state": "closed", "merged": False})
    assert (closed.state, closed.merge_commit) == ("closed", None)
    merged = pull_request_ref({**base, "state": "closed", "merged": True})
    assert (merged.state, merged.merge_commit, merged.branch, merged.base) == ("merged", "abc", "feature/x", "main")


# -- ensure_pull_request -----------------------------------------------------------------------


def test_ensure_twice_gives_one_pull_request(gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path) -> None:
    push_branch(origin, tmp_path, "feature/ET-1-demo", {"demo.txt": "demo\n"})
    first = forge.ensure_pull_request(branch="feature/ET-1-demo", base="main", title="ET-1 Demo", body="Body",
                                      work_item="ET-1")
    second = forge.ensure_pull_request(branch="feature/ET-1-demo", base="main", title="ET-1 Demo", body="Body",
                                       work_item="ET-1")
    assert first == second
    assert (first.state, first.branch, first.base, first.title) == ("open", "feature/ET-1-demo", "main", "ET-1 Demo")
    assert first.url.endswith(f"/{OWNER}/{REPO}/pulls/{first.number}")
    assert len(gitea.pull_requests(OWNER, REPO)) == 1
    assert calls(gitea, "POST", "repoCreatePullRequest") == [201]
    # The list is never asked to filter by head: Gitea would ignore it.
    assert all("head" not in r.query for r in gitea.requests)


def test_other_branches_and_bases_are_not_taken(gitea: GiteaTestServer, forge: GiteaForge, origin: Path,
                                                tmp_path: Path) -> None:
    push_branch(origin, tmp_path, "feature/ET-2-a", {"a.txt": "a\n"})
    push_branch(origin, tmp_path, "feature/ET-2-b", {"b.txt": "b\n"})
    push_branch(origin, tmp_path, "release", {"r.txt": "r\n"})
    a = forge.ensure_pull_request(branch="feature/ET-2-a", base="main", title="A", body="", work_item="ET-2")
    a_release = forge.ensure_pull_request(branch="feature/ET-2-a", base="release", title="A", body="", work_item="ET-2")
    b = forge.ensure_pull_request(branch="feature/ET-2-b", base="main", title="B", body="", work_item="ET-2")
    assert len({a.number, a_release.number, b.number}) == 3
    assert forge.find_open_pull_request(branch="feature/ET-2-b", base="main") == b
    assert forge.find_open_pull_request(branch="feature/ET-2-b", base="release") is None


def test_paging_finds_a_pull_request_past_the_first_page(gitea: GiteaTestServer, forge: GiteaForge, origin: Path,
                                                         api: httpx.Client) -> None:
    main = git(origin, "rev-parse", "main").stdout.strip()
    tree = git(origin, "rev-parse", "main^{tree}").stdout.strip()
    commit = git(origin, "commit-tree", tree, "-p", main, "-m", "change").stdout.strip()
    # 55 branches made directly in the bare repository, in one git call.
    git(origin, "update-ref", "--stdin", stdin="".join(f"create refs/heads/bulk-{n} {commit}\n" for n in range(55)))
    for n in range(55):
        created = api.post(f"/repos/{OWNER}/{REPO}/pulls", json={"head": f"bulk-{n}", "base": "main", "title": f"n{n}"})
        assert created.status_code == 201, created.text
    last = forge.ensure_pull_request(branch="bulk-54", base="main", title="again", body="", work_item="ET-3")
    assert last.title == "n54"
    lists = [r for r in gitea.requests if r.operation == "repoListPullRequests"]
    assert [r.query["page"] for r in lists] == [["1"], ["2"]]
    assert len(gitea.pull_requests(OWNER, REPO)) == 55


def test_lost_answers_of_list_and_create_still_give_one_pull_request(
    gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path, waits: list[float]
) -> None:
    push_branch(origin, tmp_path, "feature/ET-4-flaky", {"f.txt": "f\n"})
    gitea.inject("GET", r"/pulls$", status=500)
    gitea.inject("POST", r"/pulls$", status=500, after=True)  # the PR is made, then 500 is answered
    ref = forge.ensure_pull_request(branch="feature/ET-4-flaky", base="main", title="Flaky", body="", work_item="ET-4")
    assert ref.state == "open"
    assert [pr["number"] for pr in gitea.pull_requests(OWNER, REPO)] == [ref.number]
    assert calls(gitea, "POST", "repoCreatePullRequest") == [500, 409]
    assert calls(gitea, "GET", "repoListPullRequests") == [500, 200, 200]
    assert len(waits) == 2
    # And once more, from scratch: found, not created.
    again = forge.ensure_pull_request(branch="feature/ET-4-flaky", base="main", title="Flaky", body="", work_item="ET-4")
    assert again == ref
    assert len(gitea.pull_requests(OWNER, REPO)) == 1


def test_timeout_is_retried(gitea: GiteaTestServer, origin: Path, waits: list[float]) -> None:
    credentials = GiteaCredentials(api_url=gitea.api_url, token=DEFAULT_TOKEN, timeout_seconds=0.3)
    gitea.inject("GET", rf"^/repos/{OWNER}/{REPO}$", timeout=1.0)
    with GiteaForge(credentials=credentials, owner=OWNER, repo=REPO, retry=FAST_RETRY, sleep=waits.append) as forge:
        assert forge.default_branch() == "main"
    assert len(waits) == 1


def test_rate_limit_waits_for_retry_after(gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path,
                                          waits: list[float]) -> None:
    push_branch(origin, tmp_path, "feature/ET-5-busy", {"b.txt": "b\n"})
    gitea.inject("GET", r"/pulls$", status=429, headers={"Retry-After": "7"}, times=2)
    ref = forge.ensure_pull_request(branch="feature/ET-5-busy", base="main", title="Busy", body="", work_item="ET-5")
    assert ref.number == 1
    assert waits == [7.0, 7.0]


def test_rate_limit_that_never_ends_is_transient(gitea: GiteaTestServer, forge: GiteaForge, waits: list[float]) -> None:
    gitea.inject("GET", r"^/repos/acme/widgets$", status=429, headers={"Retry-After": "2"}, times=10)
    with pytest.raises(TransientError, match="kept failing after 4 attempts"):
        forge.default_branch()
    assert waits == [2.0, 2.0, 2.0]


def test_a_refused_create_fails_at_once_with_giteas_message(gitea: GiteaTestServer, forge: GiteaForge,
                                                            waits: list[float]) -> None:
    with pytest.raises(ForgeHTTPError) as missing:
        forge.ensure_pull_request(branch="feature/ET-6-never-pushed", base="main", title="T", body="", work_item="ET-6")
    assert missing.value.status == 404
    assert "does not exist" in missing.value.forge_message
    with pytest.raises(ForgeHTTPError) as same:
        forge.ensure_pull_request(branch="main", base="main", title="T", body="", work_item="ET-6")
    assert same.value.status == 422
    assert "no changes between the head and the base" in str(same.value)
    assert calls(gitea, "POST", "repoCreatePullRequest") == [404, 422]
    assert waits == []


def test_a_closed_older_pull_request_is_not_reused(gitea: GiteaTestServer, forge: GiteaForge, origin: Path,
                                                   tmp_path: Path, api: httpx.Client) -> None:
    push_branch(origin, tmp_path, "feature/ET-7-again", {"x.txt": "1\n"})
    old = forge.ensure_pull_request(branch="feature/ET-7-again", base="main", title="Old", body="", work_item="ET-7")
    gitea.close_pull_request(OWNER, REPO, old.number)
    # Gitea's by-base/head lookup has no state filter: it still answers the closed one.
    by_head = api.get(f"/repos/{OWNER}/{REPO}/pulls/main/feature/ET-7-again")
    assert (by_head.status_code, by_head.json()["number"], by_head.json()["state"]) == (200, old.number, "closed")
    new = forge.ensure_pull_request(branch="feature/ET-7-again", base="main", title="New", body="", work_item="ET-7")
    assert new.number != old.number
    assert (new.state, new.title) == ("open", "New")
    assert forge.get_pull_request(number=old.number).state == "closed"
    with pytest.raises(PermanentError, match="is closed"):
        forge.merge_pull_request(number=old.number)


# -- merge_pull_request ------------------------------------------------------------------------


def test_merge_lands_on_the_bare_repositorys_main(gitea: GiteaTestServer, forge: GiteaForge, origin: Path,
                                                  tmp_path: Path) -> None:
    head = push_branch(origin, tmp_path, "feature/ET-8-land", {"src/feature.py": "VALUE = 8\n"})
    before = git(origin, "rev-parse", "main").stdout.strip()
    pr = forge.ensure_pull_request(branch="feature/ET-8-land", base="main", title="ET-8 Land", body="",
                                   work_item="ET-8")
    merged = forge.merge_pull_request(number=pr.number)
    assert merged.state == "merged"
    main = git(origin, "rev-parse", "main").stdout.strip()
    assert merged.merge_commit == main
    parents = git(origin, "rev-list", "--parents", "-n", "1", "main").stdout.split()
    assert parents == [main, before, head]  # a real --no-ff merge commit
    assert git(origin, "show", "main:src/feature.py").stdout == "VALUE = 8\n"
    subject = git(origin, "log", "-1", "--format=%s%n%b", "main").stdout
    assert subject.startswith(f"Merge pull request #{pr.number} from feature/ET-8-land")
    assert "ET-8 Land" in subject
    body = [r.body for r in gitea.requests if r.operation == "repoMergePullRequest"]
    assert body == [{"Do": "merge", "MergeTitleField": f"Merge pull request #{pr.number} from feature/ET-8-land",
                     "MergeMessageField": "ET-8 Land"}]
    # Merging again returns the merged PR without a second merge.
    assert forge.merge_pull_request(number=pr.number) == merged
    assert len(body) == len([r for r in gitea.requests if r.operation == "repoMergePullRequest"])
    assert git(origin, "rev-parse", "main").stdout.strip() == main


def test_merge_whose_answer_was_lost(gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path) -> None:
    push_branch(origin, tmp_path, "feature/ET-9-lost", {"lost.txt": "x\n"})
    pr = forge.ensure_pull_request(branch="feature/ET-9-lost", base="main", title="Lost", body="", work_item="ET-9")
    gitea.inject("POST", r"/pulls/\d+/merge$", status=502, after=True)
    merged = forge.merge_pull_request(number=pr.number)
    assert merged.state == "merged"
    assert merged.merge_commit == git(origin, "rev-parse", "main").stdout.strip()
    assert calls(gitea, "POST", "repoMergePullRequest") == [502, 405]
    assert len(git(origin, "rev-list", "--merges", "main").stdout.split()) == 1


def test_a_conflicting_pull_request_is_not_merged(gitea: GiteaTestServer, forge: GiteaForge, origin: Path,
                                                  tmp_path: Path) -> None:
    push_branch(origin, tmp_path, "feature/ET-10-one", {"README.md": "one\n"})
    push_branch(origin, tmp_path, "feature/ET-10-two", {"README.md": "two\n"})
    first = forge.ensure_pull_request(branch="feature/ET-10-one", base="main", title="1", body="", work_item="ET-10")
    second = forge.ensure_pull_request(branch="feature/ET-10-two", base="main", title="2", body="", work_item="ET-10")
    forge.merge_pull_request(number=first.number)
    main = git(origin, "rev-parse", "main").stdout.strip()
    with pytest.raises(TransientError, match="Please try again later"):
        forge.merge_pull_request(number=second.number)
    assert git(origin, "rev-parse", "main").stdout.strip() == main
    assert forge.get_pull_request(number=second.number).state == "open"


# -- ci_status -----------------------------------------------------------------------------------


def test_ci_status_from_commit_statuses(gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path,
                                        api: httpx.Client) -> None:
    sha = push_branch(origin, tmp_path, "feature/ET-11-ci", {"ci.txt": "ci\n"})

    def post(state: str, context: str) -> None:
        answer = api.post(f"/repos/{OWNER}/{REPO}/statuses/{sha}",
                          json={"state": state, "context": context, "description": f"{context} {state}"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == state

    assert forge.ci_status(sha) == CiStatus(state="none", details=[])
    raw = api.get(f"/repos/{OWNER}/{REPO}/commits/{sha}/status").json()
    assert (raw["state"], raw["statuses"]) == ("", None)

    post("pending", "build / test (push)")
    assert forge.ci_status(sha).state == "pending"
    post("success", "build / test (push)")
    post("warning", "lint")
    post("skipped", "deploy (push)")
    status = forge.ci_status(sha)
    assert status.state == "success"
    assert "status build / test (push): success" in status.details
    assert forge.ci_status("feature/ET-11-ci").state == "success"  # by branch, '/' percent-encoded
    post("pending", "e2e")
    assert forge.ci_status(sha).state == "pending"
    post("error", "e2e")
    assert forge.ci_status(sha).state == "failure"
    post("success", "e2e")  # only the latest status of a context counts
    assert forge.ci_status(sha).state == "success"
    post("failure", "lint")
    failed = forge.ci_status(sha)
    assert failed.state == "failure"
    assert "status lint: failure" in failed.details


def test_ci_status_of_an_unknown_ref_fails_at_once(forge: GiteaForge) -> None:
    with pytest.raises(ForgeHTTPError) as caught:
        forge.ci_status("0" * 40)
    assert caught.value.status == 404


# -- the contract checker itself ---------------------------------------------------------------


def test_contract_checker_catches_undeclared_requests(gitea: GiteaTestServer, origin: Path, api: httpx.Client) -> None:
    # `head` is not a parameter of the PR list: Gitea ignores it and answers every PR with 200.
    listed = api.get(f"/repos/{OWNER}/{REPO}/pulls", params={"head": f"{OWNER}:nothing-like-this"})
    assert listed.status_code == 200
    assert any("query parameter 'head' is not declared" in v for v in gitea.violations)
    gitea.violations.clear()

    api.post(f"/repos/{OWNER}/{REPO}/pulls", json={"head": 12, "base": "main", "title": "T"})
    assert any("body head: 12 is not of type 'string'" in v for v in gitea.violations)
    gitea.violations.clear()

    api.post(f"/repos/{OWNER}/{REPO}/pulls/1/merge", json={"do": "merge"})  # Go-form keys: "Do"
    assert any("'Do' is a required property" in v for v in gitea.violations)
    assert any("'do' was unexpected" in v for v in gitea.violations)
    gitea.violations.clear()

    assert api.get(f"/repos/{OWNER}/{REPO}/pulls/abc").status_code == 404
    assert api.get(f"/repos/{OWNER}/{REPO}/check-runs").status_code == 404
    assert len(gitea.violations) == 2
    gitea.violations.clear()
    gitea.response_problems.clear()


def test_contract_checker_without_a_server() -> None:
    contract = SwaggerContract(DEFAULT_DOCUMENT)
    ok = contract.check_request("GET", "/api/v1/repos/o/r/pulls", {"state": ["open"], "page": ["2"], "limit": ["50"],
                                                                      "base_branch": ["main"], "token": ["t"]}, b"")
    assert (ok.operation_id, ok.violations) == ("repoListPullRequests", [])
    assert contract.check_request("GET", "/api/v1/repos/o/r/pulls", {"state": ["merged"]}, b"").violations
    assert contract.check_request("GET", "/api/v1/repos/o/r/pulls", {"page": ["0"]}, b"").violations
    merge = contract.match("POST", "/api/v1/repos/o/r/pulls/3/merge")
    assert merge.operation_id == "repoMergePullRequest"
    by_head = contract.match("GET", "/api/v1/repos/o/r/pulls/main/feature/x")
    assert (by_head.operation_id, by_head.path_params["head"]) == ("repoGetPullRequestByBaseHead", "feature/x")
    status = contract.match("GET", "/api/v1/repos/o/r/commits/feature%2Fx/status")
    assert (status.operation_id, status.path_params["ref"]) == ("repoGetCombinedStatusByRef", "feature/x")
    assert contract.match("PUT", "/api/v1/repos/o/r/pulls/3/merge").violations  # GitHub's verb, not Gitea's
    assert contract.match("GET", "/repos/o/r").violations  # outside basePath
    body = contract.check_request("POST", "/api/v1/repos/o/r/statuses/abc", {}, b'{"state": "green"}',
                                  "application/json")
    assert any("'green' is not one of" in v for v in body.violations)
    assert contract.check_request("GET", "/api/v1/repos/o/r", {}, b'{"x": 1}', "application/json").violations


def test_a_head_other_than_the_one_the_gates_judged_is_not_merged(
    gitea: GiteaTestServer, forge: GiteaForge, origin: Path, tmp_path: Path
) -> None:
    """Issue 19: the merge names the judged commit (head_commit_id); Gitea refuses it once the branch moved."""
    judged = push_branch(origin, tmp_path, "feature/ET-9-judged", {"src/a.py": "A = 1\n"})
    pr = forge.ensure_pull_request(branch="feature/ET-9-judged", base="main", title="ET-9", body="", work_item="ET-9")
    main = git(origin, "rev-parse", "main").stdout.strip()
    push_branch(origin, tmp_path, "feature/ET-9-judged", {"src/b.py": "B = 1\n"})
    with pytest.raises(PermanentError, match=f"its head moved since its gates judged {judged[:12]}"):
        forge.merge_pull_request(number=pr.number, head_sha=judged)
    assert git(origin, "rev-parse", "main").stdout.strip() == main
    sent = [r.body for r in gitea.requests if r.operation == "repoMergePullRequest"]
    assert sent and sent[0]["head_commit_id"] == judged
