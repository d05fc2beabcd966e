"""One worktree per (repository, branch), from one main clone per repository (B2).

Layout under the data dir::

    repos/<slug>-<sha1(repo)[:8]>/            main clone (origin = the work item's repo)
    repos/<slug>-<sha1(repo)[:8]>.lock         serialises clone, fetch and worktree add/prune
    worktrees/<clone dir>/<branch, '/' -> '__'>/         one checkout per branch
    worktrees/<clone dir>/<branch, '/' -> '__'>.lock     serialises runs on that branch

Every path is derived from validated values only (``validate_repo``,
``validate_branch``) and checked to lie under its root, so no work item can
point git at a directory of its choosing. Two branches never share a checkout:
git itself refuses a branch checked out twice, and a reused worktree must be on
the requested branch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import git
from git.exc import GitCommandError

from sdlc.models import slugify, validate_branch, validate_repo
from sdlc.repo_config import CONFIG_PATH, RepoConfig, parse_repo_config
from sdlc.settings import get_settings
from tasks.failures import GitOperationError, PermanentError, TransientError
from tasks.git import TRANSIENT_REMOTE_PATTERNS, describe, git_env, has_ref, remote_git, repo_at

logger = logging.getLogger("sdlc.worktree")

TASK_FILE_EXCLUDE = ".task-*.md"
# What agents leave in a worktree that never belongs in a commit: sdlc's task files (B3) and CLI caches
# (Aider's repository map, rebuilt on every run).
WORKTREE_EXCLUDES = (TASK_FILE_EXCLUDE, ".aider.tags.cache.v*/")


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on ``lock_path``; held across processes and threads until the block ends."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_path_for(path: Path) -> Path:
    """``<path>.lock`` beside ``path``, never inside it (a lock inside a checkout would show as a change)."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def clone_lock(clone: Path) -> Iterator[None]:
    """Serialise everything that changes a main clone: clone, fetch, worktree add/remove, local merges."""
    with file_lock(_lock_path_for(clone)):
        yield


def _inside(path: Path, root: Path) -> Path:
    resolved = path.resolve()
    root = root.resolve()
    if resolved == root or root not in resolved.parents:
        raise PermanentError(f"refusing path {resolved}: it is not inside {root}")
    return resolved


def repo_slug(repo: str) -> str:
    """A repository's short name: its URL's or path's last part without ``.git``, as a slug (``shop``)."""
    last = re.split(r"[/:\\]", repo.rstrip("/"))[-1]
    last = last.removesuffix(".git") or "repo"
    return slugify(last, max_length=40)


def main_clone_path(repo: str) -> Path:
    """``<repos_dir>/<slug>-<sha1(repo)[:8]>``: one clone per repository, named so people can find it."""
    repo = validate_repo(repo)
    digest = hashlib.sha1(repo.encode("utf-8")).hexdigest()[:8]
    root = get_settings().repos_dir
    return _inside(root / f"{repo_slug(repo)}-{digest}", root)


def _remote_failure(what: str, exc: GitCommandError) -> Exception:
    message = f"{what}: {describe(exc)}"
    if TRANSIENT_REMOTE_PATTERNS.search(message):
        return TransientError(message)
    return GitOperationError(message)


def _exclude_agent_files(clone: Path) -> None:
    """Task files and agent caches live in worktrees and are never committed (B3): the clone's
    ``info/exclude``, which its worktrees share, names them."""
    exclude = clone / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    current = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    missing = [pattern for pattern in WORKTREE_EXCLUDES if pattern not in current.splitlines()]
    if missing:
        with open(exclude, "a", encoding="utf-8") as handle:
            if current and not current.endswith("\n"):
                handle.write("\n")
            handle.write("".join(pattern + "\n" for pattern in missing))


def _is_clone(clone: Path) -> bool:
    return (clone / ".git").is_dir()


def ensure_main_clone(repo: str) -> Path:
    """Clone origin on first use, otherwise ``git fetch --prune origin``; returns the clone's path.

    Both are bounded by the git timeout (:func:`tasks.git.remote_git`): a stalled origin
    is a :class:`TransientError`, and the clone's lock is released either way.
    """
    repo = validate_repo(repo)
    clone = main_clone_path(repo)
    with clone_lock(clone):
        if not _is_clone(clone):
            if clone.exists():
                shutil.rmtree(clone)  # left over from an interrupted clone
            staging = clone.with_name(f"{clone.name}.tmp-{os.getpid()}")
            if staging.exists():
                shutil.rmtree(staging)
            try:
                remote_git(clone.parent, "clone", "--", repo, str(staging), what=f"clone of {repo}")
            except GitCommandError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise _remote_failure(f"cannot clone {repo}", exc) from exc
            except TransientError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            os.replace(staging, clone)
        else:
            try:
                remote_git(clone, "fetch", "--prune", "--", "origin", what=f"fetch of {repo}")
            except GitCommandError as exc:
                raise _remote_failure(f"cannot fetch {repo}", exc) from exc
        _exclude_agent_files(clone)
    return clone


def default_branch(clone: Path) -> str:
    """Origin's HEAD branch as the clone knows it; else ``main``, then ``master``."""
    repo = repo_at(clone)
    try:
        ref: str = repo.git.symbolic_ref("--quiet", "--short", "refs/remotes/origin/HEAD", env=git_env())
        ref = ref.strip()
        if ref.startswith("origin/") and has_ref(repo, f"refs/remotes/{ref}"):
            return ref.removeprefix("origin/")
    except GitCommandError:
        pass
    for candidate in ("main", "master"):
        if has_ref(repo, f"refs/remotes/origin/{candidate}"):
            return candidate
    return "main"


def base_commit(repo: str) -> str | None:
    """The commit origin's default branch is on, as the main clone last fetched it; None without a clone."""
    clone = main_clone_path(validate_repo(repo))
    if not _is_clone(clone):
        return None
    try:
        out: str = repo_at(clone).git.rev_parse(
            "--verify", "--quiet", f"refs/remotes/origin/{default_branch(clone)}^{{commit}}", env=git_env()
        )
    except GitCommandError:
        return None  # an empty origin
    return out.strip() or None


def _base_revision(clone: Path, base_sha: str | None) -> str:
    """``base_sha`` when the clone has that commit, else origin's default branch (no sha recorded yet)."""
    if not base_sha:
        return f"origin/{default_branch(clone)}"
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", base_sha):
        raise PermanentError(f"refusing base commit {base_sha!r}: not a full commit sha")
    if has_ref(repo_at(clone), base_sha):
        return base_sha
    fallback = f"origin/{default_branch(clone)}"
    logger.warning("base commit %s is not in %s; reading %s instead", base_sha, clone, fallback)
    return fallback


# (clone, commit sha, path) -> the file's text, or None when the commit has no such file.
# A file at a commit never changes, so it is read once per process (a stage reads the
# repository's config and its role's prompt, at about 12 ms of git each).
_files_at_commits: dict[tuple[Path, str, str], str | None] = {}
_FILES_AT_COMMITS_KEPT = 512


def base_file(repo: str, relative: str, base_sha: str | None = None) -> str | None:
    """A file as the default branch had it at ``base_sha`` (else as it is now); None when it is not there.

    Read from the main clone's objects, never from a worktree: an agent can rewrite
    its worktree, not the default branch's history.
    """
    clone = main_clone_path(validate_repo(repo))
    if not _is_clone(clone):
        return None
    if base_sha is not None and (clone, base_sha, relative) in _files_at_commits:
        return _files_at_commits[(clone, base_sha, relative)]
    revision = _base_revision(clone, base_sha)
    try:
        text: str | None = repo_at(clone).git.cat_file(
            "blob", f"{revision}:{relative}", env=git_env(), strip_newline_in_stdout=False
        )
    except GitCommandError:
        text = None  # not a file on the default branch at that commit
    if revision == base_sha:
        if len(_files_at_commits) >= _FILES_AT_COMMITS_KEPT:
            _files_at_commits.pop(next(iter(_files_at_commits)))
        _files_at_commits[(clone, base_sha, relative)] = text
    return text


def _local_origin_file(origin: Path, relative: str) -> str | None:
    """``relative`` at a local origin's HEAD, read where it is (nothing written); None when it is not there."""
    try:
        text: str = repo_at(origin).git.cat_file(
            "blob", f"HEAD:{relative}", env=git_env(), strip_newline_in_stdout=False
        )
    except GitCommandError:
        return None
    return text


def _uncloned_local_origin(repo: str) -> Path | None:
    """A local origin that has no main clone yet: read in place rather than cloned to answer a question."""
    if _is_clone(main_clone_path(repo)) or "://" in repo or not Path(repo).exists():
        return None
    return Path(repo)


def default_branch_has(repo: str, relative: str) -> bool | None:
    """Whether origin's default branch has ``relative``: from the main clone, else from a local
    origin itself (read only); None when neither can tell (a remote origin not cloned yet)."""
    repo = validate_repo(repo)
    if _is_clone(main_clone_path(repo)):
        return base_file(repo, relative) is not None
    origin = _uncloned_local_origin(repo)
    return None if origin is None else _local_origin_file(origin, relative) is not None


def origin_repo_config(repo: str) -> RepoConfig:
    """`.sdlc/config.yaml` on origin's default branch now, before any work item has cloned it:
    read from a local origin itself (nothing is created), else from the main clone, fetched."""
    repo = validate_repo(repo)
    origin = _uncloned_local_origin(repo)
    if origin is not None:
        text = _local_origin_file(origin, CONFIG_PATH.as_posix())
        return RepoConfig() if text is None else parse_repo_config(text)
    ensure_main_clone(repo)
    return base_repo_config(repo)


def base_repo_config(repo: str, base_sha: str | None = None) -> RepoConfig:
    """`.sdlc/config.yaml` as origin's default branch had it at ``base_sha`` (the work item's start),
    else as it is now: what agents on a feature branch cannot change."""
    text = base_file(repo, CONFIG_PATH.as_posix(), base_sha)
    return RepoConfig() if text is None else parse_repo_config(text)


def worktree_path(repo: str, branch: str) -> Path:
    """``<worktrees_dir>/<clone dir name>/<branch with '/' replaced by '__'>``."""
    branch = validate_branch(branch)
    root = get_settings().worktrees_dir
    return _inside(root / main_clone_path(repo).name / branch.replace("/", "__"), root)


def _registered_worktrees(clone_repo: git.Repo) -> set[Path]:
    out: str = clone_repo.git.worktree("list", "--porcelain", env=git_env())
    return {Path(line.removeprefix("worktree ")).resolve() for line in out.splitlines() if line.startswith("worktree ")}


def _current_branch(worktree: Path) -> str | None:
    try:
        out: str = repo_at(worktree).git.symbolic_ref("--quiet", "--short", "HEAD", env=git_env())
        return out.strip()
    except (GitCommandError, GitOperationError):
        return None


def is_ancestor(repo: git.Repo, older: str, newer: str) -> bool:
    """Whether ``newer`` contains ``older`` (``git merge-base --is-ancestor``)."""
    try:
        repo.git.merge_base("--is-ancestor", "--", older, newer, env=git_env())
        return True
    except GitCommandError:
        return False


def _fast_forward(worktree: Path, branch: str) -> None:
    """Bring a clean, reused worktree up to ``origin/<branch>`` when only the remote moved on."""
    repo = repo_at(worktree)
    remote = f"refs/remotes/origin/{branch}"
    if not has_ref(repo, remote):
        return
    local_sha = repo.git.rev_parse("HEAD", env=git_env()).strip()
    remote_sha = repo.git.rev_parse(remote, env=git_env()).strip()
    if local_sha == remote_sha or not is_ancestor(repo, local_sha, remote_sha):
        return
    if repo.git.status("--porcelain", "--untracked-files=no", env=git_env()).strip():
        logger.warning("worktree %s has local changes; not fast-forwarding to origin/%s", worktree, branch)
        return
    try:
        repo.git.merge("--ff-only", "-q", "--", remote, env=git_env())
    except GitCommandError as exc:
        logger.warning("could not fast-forward %s to origin/%s: %s", worktree, branch, describe(exc))


def _add_worktree(clone_repo: git.Repo, path: Path, branch: str, base: str) -> None:
    local = f"refs/heads/{branch}"
    remote = f"refs/remotes/origin/{branch}"
    has_local = has_ref(clone_repo, local)
    has_remote = has_ref(clone_repo, remote)
    env = git_env()
    if has_local and (not has_remote or is_ancestor(clone_repo, remote, local)):
        # Keep local commits the remote does not have yet (an earlier push failed).
        clone_repo.git.worktree("add", "--", str(path), branch, env=env)
    elif has_remote:
        clone_repo.git.worktree("add", "-B", branch, "--", str(path), f"origin/{branch}", env=env)
    else:
        clone_repo.git.worktree("add", "-B", branch, "--", str(path), f"origin/{base}", env=env)


def ensure_worktree(repo: str, branch: str) -> Path:
    """The worktree of ``branch``: reused when valid, otherwise added from origin (resume) or the default branch."""
    repo = validate_repo(repo)
    branch = validate_branch(branch)
    clone = ensure_main_clone(repo)
    path = worktree_path(repo, branch)
    with clone_lock(clone):
        clone_repo = repo_at(clone)
        try:
            clone_repo.git.worktree("prune", env=git_env())
            registered = path in _registered_worktrees(clone_repo)
            if registered and (path / ".git").is_file():
                current = _current_branch(path)
                if current != branch:
                    raise PermanentError(
                        f"worktree {path} is on branch {current!r}, not {branch!r}; "
                        "refusing to share a checkout between branches"
                    )
                _fast_forward(path, branch)
                return path
            if registered:
                clone_repo.git.worktree("remove", "--force", "--", str(path), env=git_env())
            if path.exists():
                shutil.rmtree(path)  # not a worktree git knows: debris of an interrupted run
            path.parent.mkdir(parents=True, exist_ok=True)
            _add_worktree(clone_repo, path, branch, default_branch(clone))
        except GitCommandError as exc:
            raise GitOperationError(f"cannot prepare worktree for {branch}: {describe(exc)}") from exc
    logger.info("worktree for %s at %s", branch, path)
    return path


@contextlib.contextmanager
def branch_lock(worktree: Path) -> Iterator[None]:
    """Serialise runs on one branch: an exclusive lock on ``<worktree>.lock`` beside the worktree."""
    root = get_settings().worktrees_dir
    resolved = _inside(Path(worktree), root)
    with file_lock(_lock_path_for(resolved)):
        yield
