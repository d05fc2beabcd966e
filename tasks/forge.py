"""Pull requests (B42) behind a small forge interface (B43).

The pipeline needs few things from a forge: make sure one open PR exists for a
branch, keep its body telling the story (issue 17: :mod:`sdlc.pr_body`, a person's
notes below the marker kept), and merge it. :class:`Forge` says exactly that, so
Gitea and GitHub (REST) sit beside :class:`LocalForge` without touching flows.

:class:`LocalForge` is the embedded default for a bare-repository origin: PRs are
ledger records, and a merge is a real ``git merge --no-ff`` pushed to origin,
done in a throw-away worktree of the main clone so no work item's checkout is
disturbed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from git.exc import GitCommandError
from prefect import task
from sqlalchemy.exc import IntegrityError

from sdlc.models import ForgeSpec, MergeOutcome, PullRequestRef, validate_branch, validate_repo, validate_work_item_id
from sdlc.pr_body import merge_body
from sdlc.retry import HTTP_STEP_RETRY_DELAYS_SECONDS
from tasks.ci_status import CiStatus
from tasks.failures import GitOperationError, PermanentError, TransientError, retried_on_transient
from tasks.forge_http import HttpRetry, file_path_segments
from tasks.git import bot_env, describe, git_env, has_ref, push_branch, remote_git, repo_at
from tasks.ledger import Ledger, PullRequestRecord, UnknownPullRequest
from tasks.limits import merge_slot
from tasks.up_to_date import default_branch_moved
from tasks.worktree import clone_lock, default_branch, ensure_main_clone, main_clone_path

if TYPE_CHECKING:
    from blocks.forge import _ForgeCredentials

CREATE_ATTEMPTS = 5


class Forge(Protocol):
    """What the pipeline asks of a forge; implementations must be idempotent."""

    def default_branch(self) -> str:
        """The branch pull requests go into."""
        ...

    def ci_status(self, ref: str) -> CiStatus:
        """CI's verdict on a commit: success, pending, failure, or none when there is no CI."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def ensure_pull_request(self, *, branch: str, base: str, title: str, body: str, work_item: str) -> PullRequestRef:
        """The open PR of ``branch`` into ``base``, created only if there is none."""
        ...

    def merge_pull_request(self, *, number: int, head_sha: str | None = None) -> PullRequestRef:
        """Merge PR ``number``; a PR already merged is returned unchanged. With ``head_sha`` (the commit
        the gates judged) only while the branch's head is still that commit: a push since is refused."""
        ...

    def update_pull_request_body(self, *, number: int, body_of: Callable[[str | None], str]) -> bool:
        """Set PR ``number``'s body to ``body_of(its current body)``; nothing is written (False) when unchanged."""
        ...

    def file_url(self, *, branch: str, path: str) -> str | None:
        """Where a person reads ``path`` on ``branch``: the forge's web view, or the path itself (local forge)."""
        ...


def _ref(record: PullRequestRecord) -> PullRequestRef:
    return PullRequestRef(
        number=record.number,
        url=record.url,
        branch=record.branch,
        base=record.base,
        title=record.title,
        state=record.state,  # type: ignore[arg-type]  # the ledger only stores open|merged|closed
        merge_commit=record.merge_commit,
    )


class LocalForge:
    """PRs kept in the ledger, merged with git into a bare-repository (or any pushable) origin."""

    def __init__(self, *, repo: str, clone: Path, ledger: Ledger) -> None:
        self.repo = repo
        self.clone = Path(clone)
        self.ledger = ledger
        self.url_prefix = f"local://{repo}"

    def ensure_pull_request(self, *, branch: str, base: str, title: str, body: str, work_item: str) -> PullRequestRef:
        validate_branch(branch)
        validate_branch(base)
        for _ in range(CREATE_ATTEMPTS):
            existing = self.ledger.find_open_pull_request(self.repo, branch)
            if existing is not None:
                return _ref(existing)
            try:
                record = self.ledger.create_pull_request(
                    repo=self.repo,
                    branch=branch,
                    base=base,
                    title=title,
                    body=body,
                    work_item=work_item,
                    url_prefix=self.url_prefix,
                )
            except IntegrityError:
                continue  # a concurrent caller took the number: read again
            return _ref(record)
        raise TransientError(f"could not open a pull request for {branch}: the PR number kept colliding")

    def default_branch(self) -> str:
        return default_branch(self.clone)

    def update_pull_request_body(self, *, number: int, body_of: Callable[[str | None], str]) -> bool:
        try:
            return self.ledger.update_pull_request_body(self.repo, int(number), body_of)
        except UnknownPullRequest as exc:
            raise PermanentError(f"pull request #{number} of {self.repo} does not exist") from exc

    def file_url(self, *, branch: str, path: str) -> str | None:
        """No web view: the path on the branch, as it reads in a clone."""
        validate_branch(branch)
        file_path_segments(path)  # checked as the REST forges check it
        return path

    def ci_status(self, ref: str) -> CiStatus:
        return CiStatus(state="none", details=["the local forge runs no CI"])

    def close(self) -> None:
        pass

    def merge_pull_request(self, *, number: int, head_sha: str | None = None) -> PullRequestRef:
        record = self.ledger.get_pull_request(self.repo, number)
        if record is None:
            raise PermanentError(f"pull request #{number} of {self.repo} does not exist")
        if record.state == "merged":
            return _ref(record)
        if record.state != "open":
            raise PermanentError(f"pull request #{number} is {record.state}; only an open PR can be merged")
        # The clone lock covers fetch, the temporary worktree and the push, so two
        # merges into one base never race each other or a worktree being added.
        with clone_lock(self.clone):
            merge_commit = self._merge(record, head_sha)
        return _ref(self.ledger.mark_pull_request_merged(self.repo, number, merge_commit))

    def _merge(self, record: PullRequestRecord, head_sha: str | None) -> str:
        branch, base = validate_branch(record.branch), validate_branch(record.base)
        clone_repo = repo_at(self.clone)
        try:
            # Bounded by the git timeout: a stalled origin is a TransientError, retried by the merge task.
            what = f"fetch of {self.repo} before merging #{record.number}"
            remote_git(self.clone, "fetch", "--prune", "--", "origin", what=what)
        except GitCommandError as exc:
            raise TransientError(f"cannot fetch origin before merging #{record.number}: {describe(exc)}") from exc
        for name in (base, branch):
            if not has_ref(clone_repo, f"refs/remotes/origin/{name}"):
                raise PermanentError(f"cannot merge #{record.number}: branch {name!r} is not on origin")
        tip = clone_repo.git.rev_parse(f"refs/remotes/origin/{branch}", env=git_env()).strip()
        if head_sha is not None and tip != head_sha:
            raise PermanentError(head_moved(record.number, branch, head_sha, tip))

        holder = Path(tempfile.mkdtemp(prefix=f".merge-{record.number}-", dir=self.clone.parent))
        scratch = holder / "worktree"
        try:
            try:
                clone_repo.git.worktree("add", "--detach", "--", str(scratch), f"origin/{base}", env=git_env())
            except GitCommandError as exc:
                raise GitOperationError(f"cannot prepare the merge of #{record.number}: {describe(exc)}") from exc
            scratch_repo = repo_at(scratch)
            before = scratch_repo.git.rev_parse("HEAD", env=git_env()).strip()
            message = f"Merge pull request #{record.number} from {branch}"
            try:
                scratch_repo.git.merge("--no-ff", "-m", message, "--", f"origin/{branch}", env=bot_env())
            except GitCommandError as exc:
                conflicts = scratch_repo.git.diff("--name-only", "--diff-filter=U", env=git_env()).split()
                detail = f"conflicts in {', '.join(conflicts)}" if conflicts else describe(exc)
                raise PermanentError(
                    f"pull request #{record.number} ({branch} into {base}) does not merge cleanly: {detail}"
                ) from exc
            merge_commit = scratch_repo.git.rev_parse("HEAD", env=git_env()).strip()
            if merge_commit != before:
                push_branch(scratch, base)  # PushRejected (a PermanentError) if base moved meanwhile
            return merge_commit
        finally:
            try:
                clone_repo.git.worktree("remove", "--force", "--", str(scratch), env=git_env())
            except GitCommandError:
                pass
            shutil.rmtree(holder, ignore_errors=True)
            try:
                clone_repo.git.worktree("prune", env=git_env())
            except GitCommandError:
                pass


def forge_for(repo: str, spec: ForgeSpec, retry: HttpRetry | None = None) -> Forge:
    """The forge of a work item (B43): the local forge by default, else Gitea, Forgejo, GitHub or GitLab over REST
    (``retry``: its HTTP retries, the client's default when None)."""
    if spec.kind == "local":
        return LocalForge(repo=repo, clone=ensure_main_clone(repo), ledger=Ledger.from_settings())
    from blocks import load_block

    credentials_type, forge_type = rest_forge_types(spec.kind)
    assert spec.credentials_block and spec.owner and spec.name
    # GitLab polls its mergeability before a merge, as the CI gate polls CI.
    polling = (
        {"ci_timeout_seconds": spec.ci_timeout_seconds, "poll_seconds": spec.ci_poll_seconds}
        if spec.kind == "gitlab"
        else {}
    )
    return forge_type(
        credentials=load_block(credentials_type, spec.credentials_block),
        owner=spec.owner,
        repo=spec.name,
        retry=retry,
        **polling,
    )


def rest_forge_types(kind: str) -> tuple[type[_ForgeCredentials], Callable[..., Forge]]:
    """The credentials block and the client of a REST forge kind (imported only when used)."""
    from blocks.forge import GiteaCredentials, GitHubCredentials, GitLabCredentials
    from tasks.forge_gitea import ForgejoForge, GiteaForge
    from tasks.forge_github import GitHubForge
    from tasks.forge_gitlab import GitLabForge

    # Forgejo serves Gitea's API (tests/test_forgejo_contract.py): the same client, named for the reasons.
    types: dict[str, tuple[type[_ForgeCredentials], Callable[..., Forge]]] = {
        "gitea": (GiteaCredentials, GiteaForge),
        "forgejo": (GiteaCredentials, ForgejoForge),
        "github": (GitHubCredentials, GitHubForge),
        "gitlab": (GitLabCredentials, GitLabForge),
    }
    return types[kind]


@task(name="ensure-pull-request", **retried_on_transient(HTTP_STEP_RETRY_DELAYS_SECONDS))
def ensure_pull_request(
    repo: str, forge: ForgeSpec, branch: str, title: str, body: str, work_item: str
) -> PullRequestRef:
    """One open PR for the branch into the repository's default branch (B42)."""
    repo = validate_repo(repo)
    validate_work_item_id(work_item)
    target = forge_for(repo, forge)
    try:
        return target.ensure_pull_request(
            branch=branch, base=target.default_branch(), title=title, body=body, work_item=work_item
        )
    finally:
        target.close()


@task(name="update-pull-request-story", **retried_on_transient(HTTP_STEP_RETRY_DELAYS_SECONDS))
def update_pull_request_story(
    repo: str, forge: ForgeSpec, number: int, story_text: str, old_body: str | None = None
) -> bool:
    """Put ``story_text`` (:func:`sdlc.pr_body.render_story`) above the marker of PR ``number``'s body,
    keeping what a person wrote below it; nothing is written when the body would not change.

    ``old_body`` is what sdlc-flows wrote when it opened the PR before bodies told the story (the
    work item's description): a current body that is exactly that is replaced, not kept as notes.
    True when the body was written.
    """
    target = forge_for(validate_repo(repo), forge)
    sdlc_texts = (old_body,) if old_body else ()
    try:
        return target.update_pull_request_body(
            number=number, body_of=lambda current: merge_body(current, story_text, sdlc_texts=sdlc_texts)
        )
    finally:
        target.close()


def head_moved(number: int, branch: str, judged: str, now: str) -> str:
    """Why a PR whose branch moved after its gates is not merged (the Blocked reason)."""
    return (
        f"pull request #{number} was not merged: {branch} moved since its gates judged {judged[:12]} "
        f"(now {now[:12]}); retry the work item to judge the new commits"
    )


def judged_head(repo: str, branch: str) -> str | None:
    """The commit the work item's gates judged: its worktree's HEAD, which only sdlc's stages move (a
    person's push reaches it at the next stage, not before); None without a worktree."""
    from tasks.worktree import worktree_path

    worktree = worktree_path(repo, branch)
    if not (worktree / ".git").exists():
        return None
    return str(repo_at(worktree).git.rev_parse("HEAD", env=git_env())).strip()


@task(name="merge-pull-request", **retried_on_transient(HTTP_STEP_RETRY_DELAYS_SECONDS))
def merge_pull_request(repo: str, forge: ForgeSpec, number: int, branch: str | None = None) -> PullRequestRef:
    """Merge the PR into its base (B42), only while its branch is the commit the gates judged (when
    ``branch`` is given); merging a merged PR changes nothing."""
    repo = validate_repo(repo)
    head = judged_head(repo, branch) if branch is not None else None
    target = forge_for(repo, forge)
    try:
        return target.merge_pull_request(number=number, head_sha=head)
    finally:
        target.close()


@task(name="merge-tested-pull-request", **retried_on_transient(HTTP_STEP_RETRY_DELAYS_SECONDS))
def merge_tested_pull_request(repo: str, forge: ForgeSpec, number: int, branch: str) -> MergeOutcome:
    """Merge the PR only when its branch contains origin's default branch as it is now, and its head is
    the commit the gates judged: what is merged is what the gates judged (issues 16, 19). Merges into
    one repository take turns."""
    repo = validate_repo(repo)
    with merge_slot(main_clone_path(repo).name):
        moved = default_branch_moved(repo, branch)
        if moved is not None:
            return MergeOutcome(main_moved=moved)
        target = forge_for(repo, forge)
        try:
            return MergeOutcome(
                pull_request=target.merge_pull_request(number=number, head_sha=judged_head(repo, branch))
            )
        finally:
            target.close()


def ci_status_of(repo: str, forge: ForgeSpec, ref: str) -> CiStatus:
    """The forge's CI verdict on a commit ("none" where the forge runs no CI)."""
    target = forge_for(validate_repo(repo), forge)
    try:
        return target.ci_status(ref)
    finally:
        target.close()


def file_urls(
    repo: str, forge: ForgeSpec, branch: str, paths: Iterable[str], retry: HttpRetry | None = None
) -> dict[str, str | None]:
    """Each path's web view on ``branch`` (Gitea ``<repo>/src/branch/…``, GitHub ``<repo>/blob/…``), or the
    path itself on the local forge; one forge connection, and one API call, for all of them."""
    target = forge_for(validate_repo(repo), forge, retry)
    try:
        return {path: target.file_url(branch=branch, path=path) for path in paths}
    finally:
        target.close()


def file_url(repo: str, forge: ForgeSpec, branch: str, path: str) -> str | None:
    """The web view of one file on ``branch`` (see :func:`file_urls`); None when the forge names no web page."""
    return file_urls(repo, forge, branch, [path])[path]
