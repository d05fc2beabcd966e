"""Many work items on one repository of a Gitea or GitHub (issue 16), seen through the forge's own API.

The local-forge tests (tests/test_up_to_date.py) show sdlc bringing a branch up to date and
a developer resolving a conflict with main. Here the same happens on a repository of the
Gitea and GitHub test servers (tests/forge_servers: real bare repositories, requests checked
against the published contracts), and the pull request is read back the way a person or a CI
would: ``GET .../pulls/{n}/commits`` lists sdlc's merge commit of main among the PR's commits,
so the history the forge shows is the one the gates judged.

The first test checks that endpoint of both servers on its own: before a merge a PR lists
its head's commits that are not in its base, after the merge the ones it brought.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blocks.forge import GiteaCredentials, GitHubCredentials
from demo.sample import create_sample_repo
from forge_servers.common import ThreadedForgeServer
from forge_servers.gitea import DEFAULT_TOKEN as GITEA_TOKEN
from forge_servers.gitea import GiteaTestServer
from forge_servers.github import DEFAULT_TOKEN as GITHUB_TOKEN
from forge_servers.github import GitHubTestServer
from gitrepo import clone_of, commit_file, git
from sdlc.models import ForgeSpec, WorkItemRequest
from sdlc.settings import SdlcSettings
from test_up_to_date import assert_done, ledger_of, pipeline_in_thread, request_for, run_pipeline, wait_for_stage

pytestmark = pytest.mark.usefixtures("prefect_api", "data_dir")

OWNER, REPO = "team", "app"
SHARED = "docs/CHANGES.md"
KINDS = ("gitea", "github")


@dataclass
class RemoteRepo:
    """One repository on a forge test server, and a plain HTTP client of its API."""

    kind: str
    server: ThreadedForgeServer
    origin: Path  # the server's bare repository: the clone URL sdlc pushes to
    block: str
    client: httpx.Client

    @property
    def spec(self) -> ForgeSpec:
        return ForgeSpec(kind=self.kind, credentials_block=self.block, owner=OWNER, name=REPO)  # type: ignore[arg-type]

    def pulls(self) -> list[dict[str, Any]]:
        return self.server.pull_requests(OWNER, REPO)  # type: ignore[attr-defined]

    def pull_of(self, branch: str) -> dict[str, Any]:
        (pull,) = [p for p in self.pulls() if p["head"]["ref"] == branch]
        return pull

    def create_pull(self, head: str, title: str) -> int:
        created = self.client.post(f"/repos/{OWNER}/{REPO}/pulls", json={"head": head, "base": "main", "title": title})
        assert created.status_code == 201, created.text
        return int(created.json()["number"])

    def merge_pull(self, number: int) -> None:
        if self.kind == "gitea":
            merged = self.client.post(f"/repos/{OWNER}/{REPO}/pulls/{number}/merge", json={"Do": "merge"})
        else:
            merged = self.client.put(f"/repos/{OWNER}/{REPO}/pulls/{number}/merge", json={"merge_method": "merge"})
        assert merged.status_code == 200, merged.text

    def pull_commits_page(self, number: int, page: int = 1, size: int = 50) -> httpx.Response:
        size_name = "limit" if self.kind == "gitea" else "per_page"
        answer = self.client.get(
            f"/repos/{OWNER}/{REPO}/pulls/{number}/commits", params={"page": page, size_name: size}
        )
        assert answer.status_code == 200, answer.text
        return answer

    def pull_commits(self, number: int) -> list[dict[str, Any]]:
        """Every commit the forge lists for the PR, oldest first (Gitea lists newest first)."""
        commits = self.pull_commits_page(number).json()
        return commits[::-1] if self.kind == "gitea" else commits


def api_client(kind: str, server: ThreadedForgeServer) -> httpx.Client:
    if kind == "gitea":
        headers = {"Authorization": f"token {GITEA_TOKEN}"}
    else:
        headers = {
            "Authorization": f"Bearer {GITHUB_TOKEN}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    return httpx.Client(base_url=server.api_url, headers=headers, timeout=10)  # type: ignore[attr-defined]


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest, tmp_path: Path, prefect_api: str) -> Iterator[RemoteRepo]:
    """A forge test server with repository team/app holding the sample project, and a credentials block."""
    kind: str = request.param
    server: ThreadedForgeServer
    if kind == "gitea":
        server, credentials_class, token = GiteaTestServer(tmp_path / "gitea"), GiteaCredentials, GITEA_TOKEN
    else:
        server, credentials_class, token = GitHubTestServer(tmp_path / "github"), GitHubCredentials, GITHUB_TOKEN
    with server, api_client(kind, server) as client:
        origin = server.create_repo(OWNER, REPO)  # type: ignore[attr-defined]
        # The sample project (its tests are the development gate's) becomes the repository's main.
        sample = create_sample_repo(tmp_path / "sample")
        git(tmp_path, "--git-dir", str(sample), "push", "--quiet", "--force", str(origin), "main:main")
        block = f"{kind}-up-to-date-{uuid.uuid4().hex[:8]}"
        credentials_class(api_url=server.api_url, token=token, timeout_seconds=10).save(block)  # type: ignore[attr-defined]
        yield RemoteRepo(kind, server, origin, block, client)
        assert server.violations == [], "requests outside the forge's contract:\n" + "\n".join(server.violations)
        if isinstance(server, GiteaTestServer):
            assert server.response_problems == [], "GiteaTestServer answered outside Gitea's swagger.v1.json"


def is_merge_of_main(commit: dict[str, Any], work_item: str) -> bool:
    """sdlc's merge of the default branch into a branch: the bot's own, or a developer's resolution."""
    message = commit["commit"]["message"]
    return len(commit["parents"]) == 2 and (
        message.startswith("Merge main (")
        or (message.startswith(f"developer({work_item}): ") and "merge main into" in message.split("\n", 1)[0])
    )


def test_the_commits_of_a_pull_request_before_and_after_it_is_merged(remote: RemoteRepo, tmp_path: Path) -> None:
    # A branch with its own commit, then main moves, then main is merged into the branch.
    work = clone_of(remote.origin, tmp_path / "work")
    git(work, "checkout", "--quiet", "-b", "feature/PC-1-commits")
    own = commit_file(work, "src/pc_1.py", "value = 1\n", "PC-1: add a module")
    other = clone_of(remote.origin, tmp_path / "other")
    on_main = commit_file(other, "NOTICE.md", "Someone else's change.\n", "Add a notice")
    git(other, "push", "--quiet", "origin", "HEAD:main")
    git(work, "fetch", "--quiet", "origin")
    git(work, "merge", "--quiet", "--no-ff", "-m", "Merge main into feature/PC-1-commits", "origin/main")
    merge = git(work, "rev-parse", "HEAD")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/feature/PC-1-commits")

    number = remote.create_pull("feature/PC-1-commits", "PC-1: commits")
    before = remote.pull_commits(number)
    # The commit main already has is not the PR's; the merge commit is, with both parents.
    assert [c["sha"] for c in before] == [own, merge]
    assert [[p["sha"] for p in c["parents"]] for c in before] == [[git(work, "rev-parse", f"{own}^")], [own, on_main]]
    assert before[0]["commit"]["message"].rstrip("\n") == "PC-1: add a module"
    assert before[0]["commit"]["author"]["name"] == "Test Person"
    assert before[1]["commit"]["message"].startswith("Merge main into feature/PC-1-commits")

    # One commit a page: the pages hold the same commits, one each.
    paged = [remote.pull_commits_page(number, page=n, size=1).json() for n in (1, 2, 3)]
    assert [len(p) for p in paged] == [1, 1, 0]
    assert {paged[0][0]["sha"], paged[1][0]["sha"]} == {own, merge}
    if remote.kind == "gitea":
        headers = remote.pull_commits_page(number, page=1, size=1).headers
        assert (headers["X-Total"], headers["X-PageCount"], headers["X-HasMore"]) == ("2", "2", "true")

    remote.merge_pull(number)
    main = git(remote.origin, "rev-parse", "main")
    assert git(remote.origin, "rev-parse", f"{main}^2") == merge
    # Merged: the PR still lists what it brought, not main's merge commit nor main's own commits.
    after = remote.pull_commits(number)
    assert [c["sha"] for c in after] == [own, merge]
    # And main moving on later changes nothing.
    git(other, "fetch", "--quiet", "origin")
    git(other, "reset", "--quiet", "--hard", "origin/main")
    commit_file(other, "LATER.md", "later\n", "A later change")
    git(other, "push", "--quiet", "origin", "HEAD:main")
    assert [c["sha"] for c in remote.pull_commits(number)] == [own, merge]


def on_forge(request: WorkItemRequest, remote: RemoteRepo) -> WorkItemRequest:
    return request.model_copy(update={"forge": remote.spec})


def test_two_work_items_changing_one_file_on_a_forge_repository_both_merge_through_their_prs(
    remote: RemoteRepo, tmp_path: Path
) -> None:
    first_done = tmp_path / "first-done"
    first = on_forge(request_for(remote.origin, tmp_path, "UF-1", {"developer": {"shared_file": SHARED}}), remote)
    # UF-2's developer starts from the same main and finishes only after UF-1 is merged on the forge.
    second = on_forge(
        request_for(
            remote.origin, tmp_path, "UF-2", {"developer": {"shared_file": SHARED, "wait_for_file": str(first_done)}}
        ),
        remote,
    )
    with pipeline_in_thread(second) as outcome:
        try:
            wait_for_stage("UF-2", "development")
            state = run_pipeline(first)
            assert state.is_completed(), state.message
        finally:
            first_done.touch()  # never leave UF-2's developer waiting on a failed test
    assert_done(outcome, "UF-2")

    first_pull, second_pull = remote.pull_of(first.feature_branch), remote.pull_of(second.feature_branch)
    assert first_pull["merged"] and second_pull["merged"]
    assert len(remote.pulls()) == 2

    # The second PR, as the forge lists it, holds sdlc's merge of main: two parents, the bot's, and main's
    # side is the first PR's merge commit. The first PR's commits are main's, not the second's.
    commits = remote.pull_commits(second_pull["number"])
    merges = [c for c in commits if is_merge_of_main(c, "UF-2")]
    assert merges, [c["commit"]["message"] for c in commits]
    bot = SdlcSettings().bot_name
    assert all(c["commit"]["author"]["name"] == bot for c in merges)
    resolution = [c for c in merges if c["commit"]["message"].startswith("developer(UF-2): ")]
    assert resolution, "the developer's resolution of the conflict is a merge commit of the PR"
    assert first_pull["merge_commit_sha"] in [p["sha"] for p in resolution[-1]["parents"]]
    assert not [c for c in commits if c["commit"]["message"].startswith("developer(UF-1)")]
    assert commits[-1]["sha"] == git(remote.origin, "rev-parse", f"{second_pull['merge_commit_sha']}^2")

    # The conflict went back to the developer once, and main holds both lines without markers.
    _, runs, transitions = ledger_of("UF-2")
    conflict = [t for t in transitions if "conflict merging main" in t.reason]
    assert [(t.from_stage, t.to_stage) for t in conflict] == [("development", "development")]
    assert [r.role for r in runs].count("developer") == 2
    shared = git(remote.origin, "show", f"main:{SHARED}")
    assert "UF-1 change 1" in shared and "UF-2 change" in shared
    assert "<<<<<<<" not in shared and ">>>>>>>" not in shared
    tree = git(remote.origin, "ls-tree", "-r", "--name-only", "main")
    assert "src/uf_1.py" in tree and "src/uf_2.py" in tree
