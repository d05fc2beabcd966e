"""Keep a work item's branch in step with origin's default branch (issue 16).

Several work items run on one repository at once; each branch starts from the
default branch as it was. Before a stage judges code (the graph marks it
``up_to_date``), sdlc merges origin's current default branch into the branch: a
merge commit by the bot, pushed, so pushed history is never rewritten and the PR
shows it. A merge that conflicts is either left in the worktree for the stage's
agent to resolve (the stage that resolves conflicts: its ``conflict`` route comes
back to itself) or abandoned, and the gate's outcome is ``conflict``.

At the end, :func:`default_branch_moved` says whether the branch still contains
the default branch: a PR is merged only then (``tasks.forge.merge_tested_pull_request``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import git
from git.exc import GitCommandError
from prefect import task

from sdlc.models import ConflictingPath, MainCommit, UpToDate, validate_branch, validate_repo
from sdlc.retry import STEP_RETRY_DELAYS_SECONDS
from tasks.failures import GitOperationError, PermanentError, retried_on_transient
from tasks.git import (
    bot_env,
    changed_paths,
    describe,
    forget_merge_in_progress,
    git_env,
    has_ref,
    is_task_file,
    may_change,
    merge_in_progress,
    push_from_worktree,
    record_merge_in_progress,
    repo_at,
    run_logger,
)
from tasks.worktree import default_branch, ensure_main_clone, ensure_worktree, is_ancestor, main_clone_path

logger = logging.getLogger("sdlc.up_to_date")

COMMITS_NAMED_PER_PATH = 10


def _sha(repo: git.Repo, ref: str) -> str | None:
    try:
        return str(repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}", env=git_env())).strip()
    except GitCommandError:
        return None


def abandon_merge_in_progress(worktree: Path) -> None:
    """Put the worktree back to the branch's head when an earlier run left a merge unresolved
    (its agent failed, or the run stopped): the merge is made afresh."""
    merging = merge_in_progress(worktree)
    if merging is None:
        return
    try:
        repo_at(worktree).git.reset("-q", "--hard", merging.head, env=git_env())
    except GitCommandError as exc:
        raise GitOperationError(f"cannot abandon the unresolved merge in {worktree}: {describe(exc)}") from exc
    forget_merge_in_progress(worktree)


def merge_default_branch(repo: str, branch: str, worktree: Path, *, resolvable: list[str] | None) -> UpToDate:
    """Merge origin's default branch, as last fetched, into the branch checked out at ``worktree``.

    A clean merge is committed by the bot and pushed. A conflict is left in the worktree,
    markers and all, when every conflicting path is under ``resolvable`` (the allowlist of
    the agent about to resolve it); otherwise the merge is abandoned. The caller fetched.
    """
    repo = validate_repo(repo)
    validate_branch(branch)
    clone = main_clone_path(repo)
    default = default_branch(clone)
    abandon_merge_in_progress(worktree)
    git_repo = repo_at(worktree)
    target = _sha(git_repo, f"refs/remotes/origin/{default}")
    head = _sha(git_repo, "HEAD")
    if target is None or head is None or is_ancestor(git_repo, target, head):
        return UpToDate(state="current", branch=branch, default_branch=default, target=target)
    _discard_uncommitted(git_repo, worktree)
    count = int(str(git_repo.git.rev_list("--count", f"{head}..{target}", "--", env=git_env())).strip() or 0)
    update = UpToDate(state="merged", branch=branch, default_branch=default, target=target, commits=count)
    message = f"Merge {default} ({target[:12]}) into {branch}"
    status, out, err = git_repo.git.merge(
        "--no-ff", "--no-edit", "-m", message, target, env=bot_env(), with_extended_output=True, with_exceptions=False
    )
    if status == 0:
        update.merge_commit = _sha(git_repo, "HEAD")
        push_from_worktree(worktree, branch)
        return update
    conflicted = [
        p for p in str(git_repo.git.diff("--name-only", "--diff-filter=U", "-z", env=git_env())).split("\0") if p
    ]
    if not conflicted:  # it did not even start (e.g. local changes in the way)
        _abort_merge(git_repo)
        raise GitOperationError(f"cannot merge {default} into {branch}: {str(err).strip() or str(out).strip()}")
    update.state = "conflict"
    update.conflicts = [
        ConflictingPath(path=path, commits=_commits_touching(git_repo, head, target, path)) for path in conflicted
    ]
    update.git_said = [line for line in str(out).splitlines() if line.startswith("CONFLICT")]
    if resolvable is not None and all(may_change(path, resolvable) for path in conflicted):
        update.left_for_agent = True
        record_merge_in_progress(worktree, head, update)
    else:
        _abort_merge(git_repo)
    return update


def _discard_uncommitted(git_repo: git.Repo, worktree: Path) -> None:
    """A merge needs a clean worktree: what earlier agents left uncommitted (paths their role may not
    change, or the work of a run that failed) is never committed by sdlc, and goes now, said in the log."""
    leftovers = [p for p in changed_paths(git_repo) if not is_task_file(p)]
    if not leftovers:
        return
    run_logger(logger).warning(
        "discarding %d uncommitted path(s) in %s before merging the default branch: %s",
        len(leftovers),
        worktree,
        ", ".join(leftovers[:50]),
    )
    try:
        git_repo.git.reset("-q", "--hard", "HEAD", env=git_env())
        git_repo.git.clean("-fdq", env=git_env())  # untracked files; task files are excluded, and stay
    except GitCommandError as exc:
        raise GitOperationError(f"cannot clean {worktree} before merging: {describe(exc)}") from exc


def _abort_merge(git_repo: git.Repo) -> None:
    try:
        git_repo.git.merge("--abort", env=git_env())
    except GitCommandError:
        pass


def _commits_touching(git_repo: git.Repo, head: str, target: str, path: str) -> list[MainCommit]:
    out = str(
        git_repo.git.log(
            f"-n{COMMITS_NAMED_PER_PATH}", "--format=%H%x00%s%x00%an", f"{head}..{target}", "--", path, env=git_env()
        )
    )
    commits = []
    for line in out.splitlines():
        sha, subject, author = [*line.split("\0"), "", ""][:3]
        commits.append(MainCommit(sha=sha, subject=subject, author=author))
    return commits


@task(name="bring-up-to-date", **retried_on_transient(STEP_RETRY_DELAYS_SECONDS))
def bring_up_to_date(repo: str, branch: str) -> UpToDate:
    """Fetch, then merge origin's default branch into the branch's worktree (a conflict is abandoned)."""
    worktree = ensure_worktree(repo, branch)  # fetches
    update = merge_default_branch(repo, branch, worktree, resolvable=None)
    if update.state != "current":
        run_logger(logger).info("%s", update.reason())
    return update


def default_branch_moved(repo: str, branch: str) -> str | None:
    """Fetch; None when ``origin/<branch>`` contains origin's default branch, else what moved (for people)."""
    repo = validate_repo(repo)
    validate_branch(branch)
    clone = ensure_main_clone(repo)
    git_repo = repo_at(clone)
    default = default_branch(clone)
    target = _sha(git_repo, f"refs/remotes/origin/{default}")
    if target is None:
        return None
    if not has_ref(git_repo, f"refs/remotes/origin/{branch}"):
        raise PermanentError(f"branch {branch!r} is not on origin")
    tip = f"refs/remotes/origin/{branch}"
    if is_ancestor(git_repo, target, tip) or is_ancestor(git_repo, tip, target):
        return None  # up to date, or already merged (a replayed merge after a crash)
    count = str(
        git_repo.git.rev_list("--count", f"refs/remotes/origin/{branch}..{target}", "--", env=git_env())
    ).strip()
    return (
        f"{default} moved since the code gates passed (now {target[:12]}, {count} commit(s) {branch} does not have): "
        "judging the merged code again before merging"
    )
