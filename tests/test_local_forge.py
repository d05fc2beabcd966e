"""The local forge: PR records in the ledger, merges done with git on a bare origin (B42, B43)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from gitrepo import clone_of, commit_file, git, isolate, make_origin

from sdlc.models import PullRequestRef
from tasks.failures import PermanentError
from sdlc.models import ForgeSpec
from tasks.forge import LocalForge, ensure_pull_request, forge_for, merge_pull_request

LOCAL = ForgeSpec()
from tasks.git import commit_and_push
from tasks.ledger import Ledger
from tasks.worktree import ensure_main_clone, ensure_worktree

BRANCH = "feature/ET-1-forge"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture()
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path)


def _develop(origin: Path, branch: str, relative: str, text: str) -> Path:
    path = ensure_worktree(str(origin), branch)
    target = path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    result = commit_and_push.fn(
        str(path), role="developer", work_item="ET-1", summary="feature",
        allowed=["docs/", "src/", "tests/"], branch=branch,
    )
    assert result.pushed
    return path


def test_forge_for_is_local(origin: Path) -> None:
    clone = ensure_main_clone(str(origin))
    assert isinstance(forge_for(str(origin), LOCAL), LocalForge)


def test_ensure_pull_request_twice_gives_one(origin: Path) -> None:
    _develop(origin, BRANCH, "src/feature.py", "feature = True\n")
    first = ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: Forge", "body", "ET-1")
    second = ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: Forge", "body", "ET-1")
    assert isinstance(first, PullRequestRef)
    assert first == second
    assert (first.number, first.base, first.branch, first.state) == (1, "main", BRANCH, "open")
    assert first.url == f"local://{origin}/pulls/1"
    assert len(Ledger.from_settings().pull_requests("ET-1")) == 1

    other = ensure_pull_request.fn(str(origin), LOCAL, "feature/ET-2-other", "ET-2: Other", "", "ET-2")
    assert other.number == 2


def test_concurrent_callers_get_one_pull_request(origin: Path) -> None:
    clone = ensure_main_clone(str(origin))
    refs: list[PullRequestRef] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            forge = LocalForge(repo=str(origin), clone=clone, ledger=Ledger.from_settings())
            refs.append(forge.ensure_pull_request(branch=BRANCH, base="main", title="t", body="", work_item="ET-1"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {ref.number for ref in refs} == {1}
    assert len(Ledger.from_settings().pull_requests("ET-1")) == 1


def test_merge_lands_a_merge_commit_on_origin(origin: Path) -> None:
    _develop(origin, BRANCH, "src/feature.py", "feature = True\n")
    pr = ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: Forge", "", "ET-1")
    main_before = git(origin, "rev-parse", "refs/heads/main")

    merged = merge_pull_request.fn(str(origin), LOCAL, pr.number)
    assert merged.state == "merged" and merged.merge_commit
    assert git(origin, "rev-parse", "refs/heads/main") == merged.merge_commit
    parents = git(origin, "rev-list", "--parents", "-n", "1", merged.merge_commit).split()[1:]
    assert parents == [main_before, git(origin, "rev-parse", f"refs/heads/{BRANCH}")]
    assert git(origin, "log", "-1", "--format=%s|%an|%cn", merged.merge_commit) == (
        f"Merge pull request #1 from {BRANCH}|sdlc-flows bot|sdlc-flows bot"
    )
    assert git(origin, "show", f"main:src/feature.py") == "feature = True"

    # Merging again changes nothing; the temporary worktree is gone.
    assert merge_pull_request.fn(str(origin), LOCAL, pr.number) == merged
    assert git(origin, "rev-parse", "refs/heads/main") == merged.merge_commit
    clone = ensure_main_clone(str(origin))
    listed = git(clone, "worktree", "list", "--porcelain")
    assert ".merge-" not in listed
    assert not list(clone.parent.glob(".merge-*"))
    record = Ledger.from_settings().get_pull_request(str(origin), pr.number)
    assert record is not None and record.merged_at is not None
    # A new PR for the same branch can be opened after the merge.
    assert ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: again", "", "ET-1").number == 2


def test_merge_conflict_is_a_permanent_error(origin: Path, tmp_path: Path) -> None:
    _develop(origin, BRANCH, "src/app.py", "def answer() -> int:\n    return 41\n")
    pr = ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: Forge", "", "ET-1")
    person = clone_of(origin, tmp_path / "person")
    theirs = commit_file(person, "src/app.py", "def answer() -> int:\n    return 43\n", "conflicting change")
    git(person, "push", "-q", "origin", "main")

    with pytest.raises(PermanentError) as caught:
        merge_pull_request.fn(str(origin), LOCAL, pr.number)
    assert "does not merge cleanly" in str(caught.value) and "src/app.py" in str(caught.value)
    assert git(origin, "rev-parse", "refs/heads/main") == theirs
    record = Ledger.from_settings().get_pull_request(str(origin), pr.number)
    assert record is not None and record.state == "open"
    clone = ensure_main_clone(str(origin))
    assert ".merge-" not in git(clone, "worktree", "list", "--porcelain")
    assert not list(clone.parent.glob(".merge-*"))


def test_merge_of_unknown_pull_request_fails(origin: Path) -> None:
    with pytest.raises(PermanentError):
        merge_pull_request.fn(str(origin), LOCAL, 42)


def test_a_push_after_the_gates_judged_the_branch_is_not_merged(origin: Path, tmp_path: Path) -> None:
    """Issue 19: the merge goes ahead only while the branch is the commit the gates judged (the work
    item's worktree HEAD); a person's push since is refused with a reason, main untouched, and the
    same call merges once the judged commit is the head again."""
    worktree = _develop(origin, BRANCH, "src/feature.py", "feature = True\n")
    pr = ensure_pull_request.fn(str(origin), LOCAL, BRANCH, "ET-1: Forge", "", "ET-1")
    judged = git(worktree, "rev-parse", "HEAD")
    main_before = git(origin, "rev-parse", "refs/heads/main")
    person = clone_of(origin, tmp_path / "person")
    git(person, "checkout", "--quiet", BRANCH)
    pushed = commit_file(person, "src/unjudged.py", "x = 1\n", "not judged by any gate")
    git(person, "push", "--quiet", "origin", BRANCH)

    with pytest.raises(PermanentError, match=f"moved since its gates judged {judged[:12]}"):
        merge_pull_request.fn(str(origin), LOCAL, pr.number, BRANCH)
    assert git(origin, "rev-parse", "refs/heads/main") == main_before
    assert Ledger.from_settings().get_pull_request(str(origin), pr.number).state == "open"

    # The next stage brings the person's commit into the worktree and its gates judge it: then it merges.
    git(worktree, "pull", "--quiet", "--ff-only", "origin", BRANCH)
    assert git(worktree, "rev-parse", "HEAD") == pushed
    merged = merge_pull_request.fn(str(origin), LOCAL, pr.number, BRANCH)
    assert merged.state == "merged"
