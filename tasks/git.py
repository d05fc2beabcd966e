"""Commit what a role may change and push the branch (B40, B41).

Git runs through GitPython with argument lists (never a shell), ``--`` before
paths, and the bot identity passed in the environment of each command, so the
machine's global git config is neither read for identity nor changed. A push is
never forced: a rejected push is a :class:`PushRejected`, not something to retry
around.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import git
from git.exc import GitCommandError
from prefect import task

from sdlc.models import CommitResult, UpToDate, validate_branch, validate_work_item_id
from sdlc.retry import STEP_RETRY_DELAYS_SECONDS
from sdlc.settings import get_settings, process_environment
from tasks.failures import GitOperationError, PushRejected, TransientError, retried_on_transient
from tasks.processes import end_process_group

logger = logging.getLogger("sdlc.git")

TASK_FILE_PATTERN = ".task-*.md"
SUMMARY_MAX = 72
ADD_BATCH = 200
# Only these failures of a fetch or push are worth retrying later; every other one is permanent.
TRANSIENT_REMOTE_PATTERNS = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|operation timed out|"
    r"the remote end hung up unexpectedly|early eof|http 5\d\d|error: 5\d\d|temporary failure",
    re.IGNORECASE,
)


def bot_identity() -> tuple[str, str]:
    """(name, email) of the bot, from ``SDLC_BOT_NAME`` / ``SDLC_BOT_EMAIL``."""
    settings = get_settings()
    return settings.bot_name, settings.bot_email


def bot_env() -> dict[str, str]:
    """Environment for commands that create commits: bot as author and committer, no signing prompt."""
    name, email = bot_identity()
    return {
        **git_env(),
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
        # One-off config through the environment (git >= 2.31): a global
        # commit.gpgsign would otherwise make the bot wait for a passphrase.
        **_config_env({**SAFE_GIT_CONFIG, "commit.gpgsign": "false"}),
    }


# An unconfined agent can write the clone's hooks and config: sdlc's own git commands run none of them.
SAFE_GIT_CONFIG = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false"}


def _config_env(config: dict[str, str]) -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for index, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def git_env() -> dict[str, str]:
    """Environment for every git command: never prompt, treat pathspecs literally, run no hook."""
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_LITERAL_PATHSPECS": "1", **_config_env(SAFE_GIT_CONFIG)}


def repo_at(path: Path | str) -> git.Repo:
    try:
        return git.Repo(str(path))
    except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError) as exc:
        raise GitOperationError(f"{path} is not a git checkout") from exc


def run_logger(fallback: logging.Logger) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow or task run's logger (its lines reach the Prefect UI); ``fallback`` outside a run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return fallback


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return run_logger(logger)


def has_ref(repo: git.Repo, ref: str) -> bool:
    try:
        repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}", env=git_env())
        return True
    except GitCommandError:
        return False


def may_change(path: str, allowed: list[str]) -> bool:
    """Whether a role whose allowlist is ``allowed`` may change ``path`` (never `.sdlc/`)."""
    if path == ".sdlc" or path.startswith(".sdlc/"):
        return (
            False  # sdlc's own config and prompts judge the agents: never theirs to change, whatever the graph allows
        )
    for prefix in allowed:
        prefix = prefix.strip()
        if prefix in ("", ".", "./", "*"):
            return True
        prefix = prefix.removeprefix("./")
        if prefix.endswith("/"):
            if path.startswith(prefix):
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def is_task_file(path: str) -> bool:
    """An agent's task file (`.task-<role>.md`): sdlc writes it for the agent and never commits it."""
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], TASK_FILE_PATTERN)


def changed_paths(repo: git.Repo) -> list[str]:
    """Every path with a change in the worktree or index, both sides of a rename, untracked files included."""
    out: str = repo.git.status("--porcelain", "-z", "--untracked-files=all", env=git_env())
    entries = out.split("\0")
    paths: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        paths.append(path)
        if "R" in status or "C" in status:
            # -z puts the original path of a rename or copy in the next field.
            if index < len(entries) and entries[index]:
                paths.append(entries[index])
            index += 1
    return list(dict.fromkeys(paths))


def commit_role_changes(worktree: Path, *, allowed: list[str], message: str) -> CommitResult:
    """Commit the changes under ``allowed`` as the bot; report the other changed paths in ``left_out``.

    The index is first reset to HEAD so nothing an agent staged itself slips into
    the commit; what is left out stays in the worktree, uncommitted.
    """
    repo = repo_at(worktree)
    env = git_env()
    try:
        if has_ref(repo, "HEAD"):
            repo.git.reset("-q", env=env)
        changed = [p for p in changed_paths(repo) if not is_task_file(p)]
        to_stage = [p for p in changed if may_change(p, allowed)]
        left_out = [p for p in changed if not may_change(p, allowed)]
        for start in range(0, len(to_stage), ADD_BATCH):
            repo.git.add("-A", "--", *to_stage[start : start + ADD_BATCH], env=env)
        staged_out: str = repo.git.diff("--cached", "--name-only", "--no-renames", "-z", env=env)
        committed = [p for p in staged_out.split("\0") if p]
        if not committed:
            return CommitResult(sha=None, committed=[], left_out=left_out)
        repo.git.commit("-q", "-m", message, env=bot_env())
        sha: str = repo.git.rev_parse("HEAD", env=env)
    except GitCommandError as exc:
        raise GitOperationError(f"commit in {worktree} failed: {exc.stderr.strip() or exc}") from exc
    return CommitResult(sha=sha.strip(), committed=committed, left_out=left_out)


def remote_git(cwd: Path | str, *args: str, what: str) -> str:
    """Run a git command that talks to a remote (clone, fetch, push), bounded by ``SDLC_GIT_TIMEOUT_SECONDS``.

    A remote that accepts the connection and never answers would otherwise hold the
    task, and the clone's lock, for ever. On timeout the command's whole process
    group ends (git's ``git-remote-http`` or ``ssh`` child too) and a
    :class:`TransientError` names ``what`` (the operation and the remote); a failure
    is a ``GitCommandError`` with git's stderr, as GitPython raises it.
    """
    timeout = get_settings().git_timeout_seconds
    argv = [str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"), *args]
    # As GitPython runs git: the caller's environment, English messages (TRANSIENT_REMOTE_PATTERNS).
    env = {**process_environment(), "LANGUAGE": "C", "LC_ALL": "C", **git_env()}
    process = subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_process_group(process)
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # something outside the group still holds the pipes
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        raise TransientError(f"{what} timed out after {timeout:g} s") from None
    except BaseException:
        end_process_group(process)
        raise
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if process.returncode != 0:
        raise GitCommandError(argv, process.returncode, stderr.strip(), stdout.strip())
    return stdout


def push_branch(worktree: Path, branch: str) -> None:
    """Push HEAD to ``origin/<branch>``; never forced. Rejection raises :class:`PushRejected`.

    A push that stalls past the git timeout is a :class:`TransientError`, as other
    network failures of a push are.
    """
    validate_branch(branch)
    repo_at(worktree)  # a clear GitOperationError when it is not a checkout
    try:
        remote_git(worktree, "push", "--", "origin", f"HEAD:refs/heads/{branch}", what=f"push of {branch} to origin")
    except GitCommandError as exc:
        stderr = str(exc.stderr or "").strip()
        if TRANSIENT_REMOTE_PATTERNS.search(stderr):
            raise TransientError(f"push of {branch} to origin failed, retry later: {stderr}") from exc
        raise PushRejected(f"push of {branch} to origin was rejected: {stderr or exc}") from exc


def head_commit(worktree: Path) -> str:
    """The sha the branch's worktree stands on: what CI statuses are reported against."""
    return str(repo_at(worktree).git.rev_parse("HEAD", env=git_env())).strip()


def unpushed_commits(worktree: Path) -> int:
    """How many commits of HEAD no origin ref has (as last fetched or pushed)."""
    repo = repo_at(worktree)
    if not has_ref(repo, "HEAD"):
        return 0
    out: str = repo.git.rev_list("--count", "HEAD", "--not", "--remotes=origin", "--", env=git_env())
    return int(out.strip() or 0)


def commit_message(role: str, work_item: str, summary: str) -> str:
    """``<role>(<ID>): <summary>`` with the summary on one line, at most 72 characters."""
    line = " ".join(summary.split()) or "changes"
    if len(line) > SUMMARY_MAX:
        line = line[:SUMMARY_MAX].rstrip()
    return f"{role}({work_item}): {line}"


# A push that failed transiently (origin down, stalled past the git timeout) is tried again
# with backoff; the retry finds the commit made and pushes it. Still failing, the stage
# raises and the work item ends Blocked with the reason.
@task(name="commit-and-push", **retried_on_transient(STEP_RETRY_DELAYS_SECONDS))
def commit_and_push(
    worktree: str, *, role: str, work_item: str, summary: str, allowed: list[str], branch: str
) -> CommitResult:
    """Commit the role's changes and push the branch (also pushing earlier unpushed commits)."""
    validate_work_item_id(work_item)
    validate_branch(branch)
    log = _run_logger()
    path = Path(worktree)
    merging = merge_in_progress(path)
    if merging is not None:
        message = commit_message(role, work_item, f"merge {merging.default_branch} into {branch}: {summary}")
        result = commit_merge_resolution(path, merging, allowed=allowed, branch=branch, message=message)
        if result.unresolved:
            log.warning(
                "%s left conflict markers in %s: the merge of %s was not made",
                role,
                ", ".join(result.unresolved),
                merging.default_branch,
            )
    else:
        result = commit_role_changes(path, allowed=allowed, message=commit_message(role, work_item, summary))
    if result.left_out:
        log.warning(
            "%s left %d changed path(s) uncommitted (outside %s): %s",
            role,
            len(result.left_out),
            ", ".join(allowed),
            ", ".join(result.left_out[:50]),
        )
    if result.sha:
        log.info("committed %s: %d path(s)", result.sha[:12], len(result.committed))
    else:
        log.info("%s changed nothing under %s; no commit", role, ", ".join(allowed))
    if result.sha or unpushed_commits(path) > 0:
        push_from_worktree(path, branch)
        result.pushed = True
        log.info("pushed %s to origin", branch)
    return result


def push_from_worktree(worktree: Path, branch: str) -> None:
    """Push the worktree's HEAD to ``origin/<branch>`` holding its main clone's lock.

    The push also moves refs/remotes/origin/<branch> in the main clone, which every fetch
    there rewrites: without the clone's lock a concurrent fetch fails with "cannot lock ref".
    """
    from tasks.worktree import clone_lock  # tasks.worktree imports this module

    common_dir = repo_at(worktree).git.rev_parse("--path-format=absolute", "--git-common-dir", env=git_env())
    with clone_lock(Path(common_dir.strip()).parent):
        push_branch(worktree, branch)


def describe(exc: Any) -> str:
    """Git's own words for a failed command, for error messages."""
    if isinstance(exc, GitCommandError):
        return str(exc.stderr or exc.stdout or exc).strip()
    return str(exc)


def fold_agent_commits(worktree: Path, branch: str, recorded_head: str | None) -> int:
    """Undo what the agent did to the branch itself, keeping its files; returns how many commits it made.

    Only sdlc writes the branch: HEAD goes back to ``refs/heads/<branch>``, the
    branch back to the head recorded before the run, the index to that commit. The
    agent's changes stay in the worktree, for sdlc's one commit of the allowed paths.
    """
    if recorded_head is None:
        return 0
    validate_branch(branch)
    repo = repo_at(worktree)
    env = git_env()
    expected = f"refs/heads/{branch}"
    try:
        current = str(repo.git.symbolic_ref("--quiet", "HEAD", env=env)).strip()
    except GitCommandError:
        current = None  # the agent detached HEAD
    try:
        head_now = str(repo.git.rev_parse("--verify", "--quiet", "HEAD^{commit}", env=env)).strip()
        folded = int(str(repo.git.rev_list("--count", f"{recorded_head}..{head_now}", "--", env=env)).strip() or 0)
    except GitCommandError:
        folded = 0
    try:
        if current != expected:
            repo.git.symbolic_ref("HEAD", expected, env=env)
        repo.git.update_ref("-m", "sdlc: fold the agent's own commits", expected, recorded_head, env=env)
        repo.git.reset("-q", env=env)
    except GitCommandError as exc:
        raise GitOperationError(
            f"cannot put {branch} back to {recorded_head[:12]} in {worktree}: {describe(exc)}"
        ) from exc
    return folded


def paths_outside(worktree: Path, allowed: list[str]) -> list[str]:
    """Changed paths the role may not change: named in the run log and the artifact, never committed."""
    repo = repo_at(worktree)
    return [p for p in changed_paths(repo) if not is_task_file(p) and not may_change(p, allowed)]


# --- a merge of the default branch left for the agent to resolve (issue 16) ---------------------

# git's conflict markers: an opening and a closing line (a lone "=======" is a Markdown heading's underline).
CONFLICT_OPENED = re.compile(r"(?m)^<{7}( |$)")
CONFLICT_CLOSED = re.compile(r"(?m)^>{7}( |$)")


def _merge_record_path(worktree: Path) -> Path:
    """``<worktree>.merging.json`` beside the worktree: sdlc's own note, out of the agent's reach."""
    return worktree.with_name(worktree.name + ".merging.json")


def record_merge_in_progress(worktree: Path, head: str, update: UpToDate) -> None:
    """Remember which merge sdlc left in the worktree: the branch's head before it and what it merges."""
    note = {"head": head, "update": update.model_dump(mode="json")}
    _merge_record_path(worktree).write_text(json.dumps(note), encoding="utf-8")


class MergeInProgress(UpToDate):
    head: str


def merge_in_progress(worktree: Path) -> MergeInProgress | None:
    """The merge sdlc left in this worktree for its agent, if any (never git's MERGE_HEAD, which the agent can write)."""
    path = _merge_record_path(worktree)
    if not path.is_file():
        return None
    note = json.loads(path.read_text(encoding="utf-8"))
    return MergeInProgress.model_validate({**note["update"], "head": note["head"]})


def forget_merge_in_progress(worktree: Path) -> None:
    _merge_record_path(worktree).unlink(missing_ok=True)


def _temporary_index_env(index: Path) -> dict[str, str]:
    return {**git_env(), "GIT_INDEX_FILE": str(index)}


def commit_merge_resolution(
    worktree: Path, merging: MergeInProgress, *, allowed: list[str], branch: str, message: str
) -> CommitResult:
    """Commit the agent's resolution of the merge sdlc left in the worktree: a merge commit of the
    branch's head and the default branch's commit, as the bot.

    Built from git's own merge of the two commits (``git merge-tree``), not from the
    worktree's index or MERGE_HEAD, which the agent may have changed: the agent's files
    are taken only under ``allowed`` (the conflicted files among them) and only where the
    agent changed them (a file left as the branch had it keeps main's change), everything
    else as the merge made it. A conflicted file that still holds conflict markers means the
    agent did not resolve it: no merge is made, the worktree goes back to the branch's
    head, and ``unresolved`` names the files.
    """
    validate_branch(branch)
    repo = repo_at(worktree)
    env = git_env()
    head, target = merging.head, merging.target
    assert target is not None
    try:
        merged_tree = _merged_tree(repo, head, target)
        with tempfile.TemporaryDirectory(prefix="sdlc-merge-index-") as scratch:
            index_env = _temporary_index_env(Path(scratch) / "index")
            head_env = _temporary_index_env(Path(scratch) / "head-index")
            repo.git.read_tree(head, env=head_env)
            edited_since_head = set(_paths_differing_from_index(repo, head_env))
            repo.git.read_tree(merged_tree, env=index_env)
            edited = _paths_differing_from_index(repo, index_env)
            changed = [p for p in edited if not is_task_file(p)]
            # A file the agent left as the branch had it, where the merge brought main's change, is
            # main's change undone (an aborted merge, a checkout), not an edit: the merge keeps main's.
            conflicted = set(merging.conflicting_paths)
            kept = [p for p in changed if p in conflicted or p in edited_since_head]
            to_stage = [p for p in kept if may_change(p, allowed)]
            left_out = [p for p in kept if not may_change(p, allowed)]
            for start in range(0, len(to_stage), ADD_BATCH):
                repo.git.add("-A", "--", *to_stage[start : start + ADD_BATCH], env=index_env)
            unresolved = [p for p in merging.conflicting_paths if _still_conflicted(repo, p, index_env)]
            if unresolved:
                repo.git.reset("-q", "--hard", head, env=env)
                forget_merge_in_progress(worktree)
                return CommitResult(left_out=left_out, unresolved=unresolved)
            tree = str(repo.git.write_tree(env=index_env)).strip()
        sha = str(repo.git.commit_tree(tree, "-p", head, "-p", target, "-m", message, env=bot_env())).strip()
        repo.git.update_ref("-m", "sdlc: commit the resolved merge", f"refs/heads/{branch}", sha, head, env=env)
        repo.git.symbolic_ref("HEAD", f"refs/heads/{branch}", env=env)
        repo.git.reset("-q", env=env)  # the index to the merge commit; the worktree stays as the agent left it
    except GitCommandError as exc:
        raise GitOperationError(f"committing the merge in {worktree} failed: {describe(exc)}") from exc
    forget_merge_in_progress(worktree)
    committed = sorted({*to_stage, *merging.conflicting_paths})
    return CommitResult(sha=sha, committed=committed, left_out=left_out, merged=target)


def _merged_tree(repo: git.Repo, head: str, target: str) -> str:
    """The tree git's merge of the two commits makes, conflict markers and all (git >= 2.38)."""
    status, out, err = repo.git.merge_tree(
        "--write-tree", "--no-messages", head, target, env=git_env(), with_extended_output=True, with_exceptions=False
    )
    if status not in (0, 1) or not str(out).strip():  # 1: it has conflicts, and still wrote the tree
        raise GitOperationError(f"git merge-tree {head[:12]} {target[:12]} failed: {str(err).strip()}")
    return str(out).split()[0]


def _paths_differing_from_index(repo: git.Repo, index_env: dict[str, str]) -> list[str]:
    tracked: str = repo.git.diff("--name-only", "--no-renames", "-z", env=index_env)
    untracked: str = repo.git.ls_files("--others", "--exclude-standard", "-z", env=index_env)
    return list(dict.fromkeys(p for p in [*tracked.split("\0"), *untracked.split("\0")] if p))


def _still_conflicted(repo: git.Repo, path: str, index_env: dict[str, str]) -> bool:
    try:
        text = str(repo.git.show(f":{path}", env=index_env, strip_newline_in_stdout=False))
    except GitCommandError:
        return False  # resolved by deleting it
    return bool(CONFLICT_OPENED.search(text) and CONFLICT_CLOSED.search(text))
