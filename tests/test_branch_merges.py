"""Merging origin's default branch into a work item's branch (issue 16), against real git.

Plain functions, no Prefect flow: ``tasks.up_to_date.merge_default_branch`` on a worktree
from ``tasks.worktree.ensure_worktree``, ``tasks.git.commit_merge_resolution`` after an
agent (played here by the test, sometimes a hostile one) resolved the conflict, and
``tasks.up_to_date.default_branch_moved`` as the merge of the pull request asks it. Origin's
``main`` moves the way it does for real: someone else clones the bare origin, commits and
pushes.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from demo.sample import SAMPLE_FILES, create_sample_repo
from gitrepo import isolate
from sdlc.models import MainCommit
from tasks.failures import PermanentError
from tasks.git import (
    commit_and_push,
    commit_merge_resolution,
    fold_agent_commits,
    merge_in_progress,
    push_branch,
)
from tasks.up_to_date import abandon_merge_in_progress, default_branch_moved, merge_default_branch
from tasks.worktree import ensure_worktree

BRANCH = "feature/MRG-1-greet-politely"
DEV_PATHS = ["docs/", "src/", "tests/"]
BOT = "sdlc-flows bot"
GREETER = "src/greeter.py"
OLD_LINE = '    return f"Hello, {name}!"\n'
BRANCH_LINE = '    return f"Good day, {name}!"\n'
MAIN_LINE = '    return f"Hi, {name}!"\n'
RESOLVED_LINE = '    return f"Good day and hi, {name}!"\n'


@pytest.fixture(autouse=True)
def _isolated(data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The data dir of the test, no global git config, the bot identity from sdlc's defaults."""
    assert isolate(monkeypatch, tmp_path) == data_dir


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return create_sample_repo(tmp_path / "repos")


def git(cwd: Path, *args: str, author: str = "Test Person") -> str:
    email = author.lower().replace(" ", ".") + "@example.test"
    identity = {
        "GIT_AUTHOR_NAME": author,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": author,
        "GIT_COMMITTER_EMAIL": email,
    }
    done = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=str(cwd),
        env={**os.environ, **identity, "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr}")
    return done.stdout.strip()


def sha_of(cwd: Path, ref: str) -> str:
    return git(cwd, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def has_ref(cwd: Path, ref: str) -> bool:
    try:
        sha_of(cwd, ref)
    except RuntimeError:
        return False
    return True


def greeter_with(line: str) -> str:
    return SAMPLE_FILES[GREETER].replace(OLD_LINE, line)


def push_to_main(
    origin: Path, tmp_path: Path, files: dict[str, str], subject: str, *, author: str = "Someone Else"
) -> str:
    """Someone else's commit on origin's main, from their own clone; returns its sha."""
    clone = tmp_path / f"someone-{uuid.uuid4().hex[:8]}"
    git(tmp_path, "clone", "--quiet", str(origin), str(clone))
    for relative, text in files.items():
        path = clone / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(clone, "add", "-A")
    git(clone, "commit", "--quiet", "-m", subject, author=author)
    git(clone, "push", "--quiet", "origin", "HEAD:main")
    return sha_of(clone, "HEAD")


def branch_commit(worktree: Path, files: dict[str, str], subject: str) -> str:
    """A commit on the work item's branch (as a stage's commit would be); returns its sha."""
    for relative, text in files.items():
        path = worktree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(worktree, "add", "-A", "--", *files)
    git(worktree, "commit", "--quiet", "-m", subject, author="Developer Agent")
    return sha_of(worktree, "HEAD")


def fetched_worktree(origin: Path) -> Path:
    """The branch's worktree, the main clone fetched (what the caller of merge_default_branch does)."""
    return ensure_worktree(str(origin), BRANCH)


def parents(cwd: Path, commit: str) -> list[str]:
    return git(cwd, "rev-list", "--parents", "-n1", commit).split()[1:]


def show(cwd: Path, commit: str, relative: str) -> str:
    return subprocess.run(
        ["git", "show", f"{commit}:{relative}"], cwd=str(cwd), capture_output=True, text=True, check=True
    ).stdout


def author_of(cwd: Path, commit: str) -> tuple[str, str]:
    return git(cwd, "log", "-1", "--format=%an", commit), git(cwd, "log", "-1", "--format=%cn", commit)


def merge_head_exists(worktree: Path) -> bool:
    return has_ref(worktree, "MERGE_HEAD")


def tracked_changes(worktree: Path) -> str:
    return git(worktree, "status", "--porcelain", "--untracked-files=no")


def record_file(worktree: Path) -> Path:
    return worktree.with_name(worktree.name + ".merging.json")


def origin_branch(origin: Path) -> str:
    return sha_of(origin, f"refs/heads/{BRANCH}")


def conflicting_setup(origin: Path, tmp_path: Path, main_also: dict[str, str] | None = None) -> tuple[Path, str, str]:
    """The branch changes the greeting and is pushed; main changes the same line (and ``main_also``).

    Returns (worktree, the branch's head, main's commit), the main clone fetched.
    """
    worktree = fetched_worktree(origin)
    head = branch_commit(
        worktree, {GREETER: greeter_with(BRANCH_LINE), "src/polite.py": "POLITE = True\n"}, "Greet politely"
    )
    push_branch(worktree, BRANCH)
    target = push_to_main(origin, tmp_path, {GREETER: greeter_with(MAIN_LINE), **(main_also or {})}, "Say hi")
    assert fetched_worktree(origin) == worktree
    return worktree, head, target


def left_for_agent(origin: Path, tmp_path: Path, main_also: dict[str, str] | None = None) -> tuple[Path, str, str]:
    worktree, head, target = conflicting_setup(origin, tmp_path, main_also)
    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)
    assert update.state == "conflict" and update.left_for_agent, update
    return worktree, head, target


# --- merging ------------------------------------------------------------------------------------


def test_a_branch_that_already_contains_main_is_current_and_nothing_is_committed(origin: Path) -> None:
    worktree = fetched_worktree(origin)
    head = branch_commit(worktree, {"src/polite.py": "POLITE = True\n"}, "Greet politely")
    main = sha_of(origin, "refs/heads/main")

    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)

    assert (update.state, update.branch, update.default_branch) == ("current", BRANCH, "main")
    assert update.target == main
    assert update.merge_commit is None and update.commits == 0 and update.conflicts == []
    assert sha_of(worktree, "HEAD") == head
    assert not has_ref(origin, f"refs/heads/{BRANCH}")  # nothing to push: nothing was made
    assert update.reason() == f"{BRANCH} already contains main ({main[:12]})"


def test_main_moved_without_conflict_is_merged_by_the_bot_and_pushed(origin: Path, tmp_path: Path) -> None:
    worktree = fetched_worktree(origin)
    head = branch_commit(worktree, {"src/polite.py": "POLITE = True\n"}, "Greet politely")
    push_to_main(origin, tmp_path, {"NOTICE.md": "A notice.\n"}, "Add a notice")
    target = push_to_main(origin, tmp_path, {"docs/notes.md": "Notes.\n"}, "Add notes")
    fetched_worktree(origin)

    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=None)

    assert update.state == "merged" and update.target == target
    assert update.commits == 2
    assert update.merge_commit == sha_of(worktree, "HEAD") == sha_of(worktree, f"refs/heads/{BRANCH}")
    merge = update.merge_commit
    assert parents(worktree, merge) == [head, target]
    assert author_of(worktree, merge) == (BOT, BOT)
    assert git(worktree, "log", "-1", "--format=%s", merge) == f"Merge main ({target[:12]}) into {BRANCH}"
    assert origin_branch(origin) == merge  # pushed
    assert tracked_changes(worktree) == "" and not merge_head_exists(worktree)
    assert show(worktree, merge, "NOTICE.md") == "A notice.\n"
    assert show(worktree, merge, "src/polite.py") == "POLITE = True\n"
    assert update.reason().startswith("brought up to date: merged main (") and "2 new commit(s)" in update.reason()

    # Merging again finds the branch current: no second merge commit.
    again = merge_default_branch(str(origin), BRANCH, worktree, resolvable=None)
    assert again.state == "current" and sha_of(worktree, "HEAD") == merge


def test_a_conflict_under_the_resolvable_paths_is_left_for_the_agent_with_who_changed_what(
    origin: Path, tmp_path: Path
) -> None:
    worktree, head, target = conflicting_setup(origin, tmp_path)
    pushed = origin_branch(origin)

    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)

    assert update.state == "conflict" and update.left_for_agent and update.target == target
    assert update.conflicting_paths == [GREETER]
    assert update.conflicts[0].commits == [MainCommit(sha=target, subject="Say hi", author="Someone Else")]
    assert any(GREETER in line for line in update.git_said) and all(
        line.startswith("CONFLICT") for line in update.git_said
    )
    text = (worktree / GREETER).read_text()
    assert "<<<<<<< " in text and "\n=======\n" in text and ">>>>>>> " in text
    assert BRANCH_LINE in text and MAIN_LINE in text
    assert merge_head_exists(worktree) and sha_of(worktree, "MERGE_HEAD") == target
    # Nothing committed or pushed yet; sdlc's own note of the merge sits beside the worktree, not in it.
    assert sha_of(worktree, f"refs/heads/{BRANCH}") == head and origin_branch(origin) == pushed
    assert record_file(worktree).is_file() and record_file(worktree).parent == worktree.parent
    merging = merge_in_progress(worktree)
    assert merging is not None and (merging.head, merging.target) == (head, target)
    assert merging.conflicting_paths == [GREETER]
    described = update.describe_conflicts()
    assert f"`{GREETER}`" in described and "Say hi (Someone Else)" in described and target[:12] in described
    assert update.reason() == f"conflict merging main ({target[:12]}) into {BRANCH}: {GREETER}"


@pytest.mark.parametrize(
    ("resolvable", "conflict_in_config"),
    [
        pytest.param(None, False, id="no-agent-resolves"),
        pytest.param(["docs/"], False, id="outside-the-allowlist"),
        pytest.param(["docs/", "src/", "tests/", "."], True, id="sdlc-config-never-resolvable"),
        pytest.param(["src/"], True, id="one-of-two-paths-outside"),
    ],
)
def test_a_conflict_nobody_here_may_resolve_is_abandoned(
    origin: Path, tmp_path: Path, resolvable: list[str] | None, conflict_in_config: bool
) -> None:
    worktree = fetched_worktree(origin)
    config = ".sdlc/config.yaml"
    branch_files = {GREETER: greeter_with(BRANCH_LINE)}
    main_files = {GREETER: greeter_with(MAIN_LINE)}
    if conflict_in_config:
        branch_files[config] = SAMPLE_FILES[config] + "test_timeout_seconds: 10\n"
        main_files[config] = SAMPLE_FILES[config] + "test_timeout_seconds: 20\n"
    head = branch_commit(worktree, branch_files, "Greet politely")
    target = push_to_main(origin, tmp_path, main_files, "Say hi")
    fetched_worktree(origin)

    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=resolvable)

    assert update.state == "conflict" and not update.left_for_agent and update.target == target
    expected = sorted([GREETER, *([config] if conflict_in_config else [])])
    assert sorted(update.conflicting_paths) == expected
    assert not merge_head_exists(worktree)
    assert tracked_changes(worktree) == ""
    assert sha_of(worktree, "HEAD") == sha_of(worktree, f"refs/heads/{BRANCH}") == head
    assert (worktree / GREETER).read_text() == greeter_with(BRANCH_LINE)
    assert not record_file(worktree).exists() and merge_in_progress(worktree) is None


# --- the agent's resolution ---------------------------------------------------------------------


def test_a_resolution_is_committed_as_a_two_parent_merge_with_everything_main_changed(
    origin: Path, tmp_path: Path
) -> None:
    main_readme = SAMPLE_FILES["README.md"] + "\nNow says hi.\n"
    worktree, head, target = left_for_agent(origin, tmp_path, {"README.md": main_readme, "docs/hi.md": "Hi.\n"})
    (worktree / GREETER).write_text(greeter_with(RESOLVED_LINE))  # the agent resolves the conflict
    merging = merge_in_progress(worktree)
    assert merging is not None

    result = commit_merge_resolution(
        worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="developer(MRG-1): merge main"
    )

    assert result.sha is not None and result.unresolved == [] and result.merged == target
    assert GREETER in result.committed and result.left_out == []
    assert parents(worktree, result.sha) == [head, target]
    assert author_of(worktree, result.sha) == (BOT, BOT)
    assert git(worktree, "log", "-1", "--format=%s", result.sha) == "developer(MRG-1): merge main"
    assert show(worktree, result.sha, GREETER) == greeter_with(RESOLVED_LINE)
    assert show(worktree, result.sha, "README.md") == main_readme  # outside the allowlist, as the merge made it
    assert show(worktree, result.sha, "docs/hi.md") == "Hi.\n"
    assert show(worktree, result.sha, "src/polite.py") == "POLITE = True\n"  # the branch's own work
    assert sha_of(worktree, "HEAD") == sha_of(worktree, f"refs/heads/{BRANCH}") == result.sha
    assert git(worktree, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
    assert not record_file(worktree).exists() and merge_in_progress(worktree) is None
    # No merge left half made: a later commit of sdlc's would otherwise become a merge of MERGE_HEAD.
    assert not merge_head_exists(worktree)
    assert tracked_changes(worktree) == ""
    # The branch now contains main: nothing more to merge.
    assert merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS).state == "current"


def test_commit_and_push_makes_the_merge_and_pushes_it(origin: Path, tmp_path: Path) -> None:
    """The path the pipeline takes after the developer: commit_and_push sees the merge in progress."""
    worktree, head, target = left_for_agent(origin, tmp_path)
    (worktree / GREETER).write_text(greeter_with(RESOLVED_LINE))
    (worktree / "tests" / "test_polite.py").write_text("POLITE_TESTED = True\n")

    result = commit_and_push.fn(
        str(worktree), role="developer", work_item="MRG-1", summary="resolve", allowed=DEV_PATHS, branch=BRANCH
    )

    assert result.sha is not None and result.pushed and result.merged == target
    assert parents(worktree, result.sha) == [head, target]
    assert origin_branch(origin) == result.sha
    assert show(worktree, result.sha, "tests/test_polite.py") == "POLITE_TESTED = True\n"
    assert (
        git(worktree, "log", "-1", "--format=%s", result.sha) == f"developer(MRG-1): merge main into {BRANCH}: resolve"
    )
    assert default_branch_moved(str(origin), BRANCH) is None


def test_an_agent_that_leaves_conflict_markers_gets_no_commit(origin: Path, tmp_path: Path) -> None:
    worktree, head, _ = left_for_agent(origin, tmp_path)
    pushed = origin_branch(origin)
    # It wrote a new allowed file and changed its side of the conflict, but left the markers in.
    (worktree / "src" / "extra.py").write_text("EXTRA = 1\n")
    text = (worktree / GREETER).read_text()
    (worktree / GREETER).write_text(text.replace(BRANCH_LINE, RESOLVED_LINE))  # markers still there
    merging = merge_in_progress(worktree)
    assert merging is not None

    result = commit_merge_resolution(worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="m")

    assert result.sha is None and result.unresolved == [GREETER] and result.merged is None
    assert sha_of(worktree, "HEAD") == sha_of(worktree, f"refs/heads/{BRANCH}") == head
    assert origin_branch(origin) == pushed
    assert tracked_changes(worktree) == "" and not merge_head_exists(worktree)
    assert (worktree / GREETER).read_text() == greeter_with(BRANCH_LINE)
    assert not record_file(worktree).exists()
    # The next merge starts afresh.
    again = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)
    assert again.state == "conflict" and again.left_for_agent


def test_an_agent_resolving_and_also_editing_what_it_may_not_gets_only_the_resolution_committed(
    origin: Path, tmp_path: Path
) -> None:
    main_readme = SAMPLE_FILES["README.md"] + "\nNow says hi.\n"
    worktree, head, target = left_for_agent(origin, tmp_path, {"README.md": main_readme})
    config = ".sdlc/config.yaml"
    (worktree / GREETER).write_text(greeter_with(RESOLVED_LINE))
    (worktree / "src" / "new.py").write_text("NEW = 1\n")
    (worktree / config).write_text('test_command: ["true"]\n')  # judge itself: never
    (worktree / "README.md").write_text("# owned by the agent\n")
    (worktree / "Makefile").write_text("all:\n\ttrue\n")
    git(worktree, "add", "--", config, "README.md", "Makefile")  # staged by the agent itself, too
    merging = merge_in_progress(worktree)
    assert merging is not None

    result = commit_merge_resolution(worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="m")

    assert result.sha is not None and parents(worktree, result.sha) == [head, target]
    assert sorted(result.left_out) == sorted([config, "README.md", "Makefile"])
    assert show(worktree, result.sha, config) == SAMPLE_FILES[config]
    assert show(worktree, result.sha, "README.md") == main_readme
    assert "Makefile" not in git(worktree, "ls-tree", "-r", "--name-only", result.sha).splitlines()
    assert show(worktree, result.sha, GREETER) == greeter_with(RESOLVED_LINE)
    assert show(worktree, result.sha, "src/new.py") == "NEW = 1\n"
    assert set(result.committed) >= {GREETER, "src/new.py"}


@pytest.mark.parametrize("how", ["merge-abort", "delete-merge-head"])
def test_an_agent_that_ends_the_merge_and_commits_itself_still_gets_sdlcs_merge(
    origin: Path, tmp_path: Path, how: str
) -> None:
    """It ran ``git merge --abort`` (or removed MERGE_HEAD) and committed: sdlc folds its commit
    back (as the pipeline does after every agent run) and makes the merge itself."""
    main_readme = SAMPLE_FILES["README.md"] + "\nNow says hi.\n"
    worktree, head, target = left_for_agent(origin, tmp_path, {"README.md": main_readme})
    recorded_head = sha_of(worktree, "HEAD")  # before the agent runs
    assert recorded_head == head
    if how == "merge-abort":
        git(worktree, "merge", "--abort")
    else:
        Path(git(worktree, "rev-parse", "--path-format=absolute", "--git-path", "MERGE_HEAD")).unlink()
    (worktree / GREETER).write_text(greeter_with(RESOLVED_LINE))
    git(worktree, "add", "-A")
    git(worktree, "commit", "--quiet", "-m", "my own resolution", author="Developer Agent")
    assert len(parents(worktree, "HEAD")) == 1

    assert fold_agent_commits(worktree, BRANCH, recorded_head) == 1
    merging = merge_in_progress(worktree)
    assert merging is not None
    result = commit_merge_resolution(worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="m")

    assert result.sha is not None and result.unresolved == []
    assert parents(worktree, result.sha) == [head, target]
    assert author_of(worktree, result.sha) == (BOT, BOT)
    assert show(worktree, result.sha, GREETER) == greeter_with(RESOLVED_LINE)
    assert show(worktree, result.sha, "README.md") == main_readme
    assert sha_of(worktree, f"refs/heads/{BRANCH}") == result.sha
    assert not merge_head_exists(worktree)


def test_an_aborted_merge_does_not_revert_mains_other_changes_under_the_allowlist(origin: Path, tmp_path: Path) -> None:
    """main also changed tests/test_greeter.py (no conflict, under the developer's allowlist).
    The agent's ``git merge --abort`` put that file back to the branch's version in the worktree;
    the merge commit must still hold main's version, else merging the PR reverts main's change."""
    main_tests = SAMPLE_FILES["tests/test_greeter.py"] + "\n# main's new test comment\n"
    worktree, _, target = left_for_agent(origin, tmp_path, {"tests/test_greeter.py": main_tests})
    git(worktree, "merge", "--abort")
    (worktree / GREETER).write_text(greeter_with(RESOLVED_LINE))  # resolved by hand, nothing else touched
    merging = merge_in_progress(worktree)
    assert merging is not None

    result = commit_merge_resolution(worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="m")

    assert result.sha is not None and result.merged == target
    assert show(worktree, result.sha, "tests/test_greeter.py") == main_tests


def test_a_resolved_file_with_a_heading_underline_of_seven_equals_signs_is_not_taken_for_markers(
    origin: Path, tmp_path: Path
) -> None:
    """``docs/CHANGES.md`` starts with the Markdown heading ``Changes`` / ``=======`` on every side;
    a resolution keeping that heading is resolved, not "still conflicted"."""
    changes = "docs/CHANGES.md"
    heading = "Changes\n=======\n\n"
    worktree = fetched_worktree(origin)
    branch_commit(worktree, {changes: heading}, "Start a changelog")
    git(worktree, "push", "--quiet", "origin", "HEAD:refs/heads/main")  # the heading is on main too
    head = branch_commit(worktree, {changes: heading + "- greet politely\n"}, "Greet politely")
    target = push_to_main(origin, tmp_path, {changes: heading + "- say hi\n"}, "Say hi")
    fetched_worktree(origin)
    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)
    assert update.state == "conflict" and update.left_for_agent and update.conflicting_paths == [changes]
    resolved = heading + "- greet politely\n- say hi\n"
    (worktree / changes).write_text(resolved)
    merging = merge_in_progress(worktree)
    assert merging is not None

    result = commit_merge_resolution(worktree, merging, allowed=DEV_PATHS, branch=BRANCH, message="m")

    assert result.unresolved == [] and result.sha is not None
    assert parents(worktree, result.sha) == [head, target]
    assert show(worktree, result.sha, changes) == resolved


def test_abandoning_a_half_resolved_merge_puts_the_worktree_back_and_the_next_merge_conflicts_afresh(
    origin: Path, tmp_path: Path
) -> None:
    worktree, head, target = left_for_agent(origin, tmp_path)
    (worktree / GREETER).write_text("half a resolution\n")  # then the agent failed
    git(worktree, "add", "--", GREETER)

    abandon_merge_in_progress(worktree)

    assert sha_of(worktree, "HEAD") == sha_of(worktree, f"refs/heads/{BRANCH}") == head
    assert not merge_head_exists(worktree) and tracked_changes(worktree) == ""
    assert (worktree / GREETER).read_text() == greeter_with(BRANCH_LINE)
    assert merge_in_progress(worktree) is None
    abandon_merge_in_progress(worktree)  # nothing left to abandon: a no-op

    again = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)
    assert again.state == "conflict" and again.left_for_agent and again.target == target
    assert "<<<<<<< " in (worktree / GREETER).read_text()
    merging = merge_in_progress(worktree)
    assert merging is not None and merging.head == head


def test_merging_again_over_an_unresolved_merge_starts_it_afresh(origin: Path, tmp_path: Path) -> None:
    """A run that stopped with the merge left for its agent: the next run's merge abandons it first."""
    worktree, head, target = left_for_agent(origin, tmp_path)
    (worktree / GREETER).write_text("garbage\n")

    again = merge_default_branch(str(origin), BRANCH, worktree, resolvable=None)

    assert again.state == "conflict" and not again.left_for_agent and again.target == target
    assert sha_of(worktree, "HEAD") == head and tracked_changes(worktree) == ""
    assert not merge_head_exists(worktree) and merge_in_progress(worktree) is None


def test_what_earlier_agents_left_uncommitted_is_discarded_before_main_is_merged(origin: Path, tmp_path: Path) -> None:
    """An agent's edit outside its allowlist stays uncommitted in the worktree; main changed that file,
    so git could not start the merge over it: sdlc discards the leftovers (task files stay) and merges."""
    worktree = fetched_worktree(origin)
    head = branch_commit(worktree, {"src/polite.py": "POLITE = True\n"}, "Greet politely")
    (worktree / "README.md").write_text("# the agent's own readme\n")
    (worktree / "stray.txt").write_text("left behind\n")
    (worktree / ".task-developer.md").write_text("# the task\n")
    target = push_to_main(origin, tmp_path, {"README.md": "# main's readme\n"}, "Rewrite the readme")
    fetched_worktree(origin)

    update = merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS)

    assert update.state == "merged" and update.merge_commit is not None
    assert parents(worktree, update.merge_commit) == [head, target]
    assert (worktree / "README.md").read_text() == "# main's readme\n"
    assert not (worktree / "stray.txt").exists()
    assert (worktree / ".task-developer.md").read_text() == "# the task\n"
    assert git(worktree, "status", "--porcelain") == ""
    assert origin_branch(origin) == update.merge_commit


def test_leftovers_stay_when_main_did_not_move(origin: Path) -> None:
    """Nothing to merge, nothing discarded: the branch is current."""
    worktree = fetched_worktree(origin)
    (worktree / "README.md").write_text("# the agent's own readme\n")

    assert merge_default_branch(str(origin), BRANCH, worktree, resolvable=DEV_PATHS).state == "current"
    assert (worktree / "README.md").read_text() == "# the agent's own readme\n"


# --- has main moved since the gates passed? ---------------------------------------------------------


def test_default_branch_moved_says_what_moved_and_nothing_once_merged(origin: Path, tmp_path: Path) -> None:
    worktree = fetched_worktree(origin)
    with pytest.raises(PermanentError, match="not on origin"):
        default_branch_moved(str(origin), BRANCH)
    branch_commit(worktree, {"src/polite.py": "POLITE = True\n"}, "Greet politely")
    push_branch(worktree, BRANCH)
    assert default_branch_moved(str(origin), BRANCH) is None  # up to date

    push_to_main(origin, tmp_path, {"NOTICE.md": "A notice.\n"}, "Add a notice")
    target = push_to_main(origin, tmp_path, {"docs/notes.md": "Notes.\n"}, "Add notes")
    moved = default_branch_moved(str(origin), BRANCH)
    assert moved is not None
    assert moved.startswith(f"main moved since the code gates passed (now {target[:12]}, 2 commit(s) {BRANCH}")
    assert "judging the merged code again" in moved

    fetched_worktree(origin)
    assert merge_default_branch(str(origin), BRANCH, worktree, resolvable=None).state == "merged"
    assert default_branch_moved(str(origin), BRANCH) is None  # the merge was pushed

    # The pull request is merged into main (as a forge does); asking again (a replayed merge) is no reason to wait.
    clone = tmp_path / "forge"
    git(tmp_path, "clone", "--quiet", str(origin), str(clone))
    git(clone, "merge", "--quiet", "--no-ff", "-m", "Merge the pull request", f"origin/{BRANCH}")
    git(clone, "push", "--quiet", "origin", "HEAD:main")
    assert default_branch_moved(str(origin), BRANCH) is None
    push_to_main(origin, tmp_path, {"LATER.md": "Later.\n"}, "A later change")
    assert default_branch_moved(str(origin), BRANCH) is None
