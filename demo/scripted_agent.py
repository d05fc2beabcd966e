"""The built-in scripted agent: a deterministic stand-in for an AI coding agent.

Run as ``python -m demo.scripted_agent`` under the custom agent protocol (B5): the
working directory is the worktree and everything else comes from ``SDLC_*``
environment variables. It reads the task file, then writes the files its role is
expected to write (B10), so the whole pipeline can be shown and tested without a
model. What it does on each attempt is steered by an optional scenario file
(``SDLC_SCENARIO_FILE``, JSON or YAML)::

    analyst: {questions: 1}          # attempts 1..1 write 01-questions.md
    architect: {conflicts: 1}        # attempts 1..1 write 10-conflict.md
    reviewer: {request_changes: 2}   # attempts 1..2 request changes, then approve
    tester: {fail: 1}                # attempts 1..1 report Result: FAIL
    deployer: {fail: 1}              # attempts 1..1 fail the smoke check (exit 1)
    developer: {break_tests: 1}      # attempts 1..1 write a failing test
    developer: {shared_file: docs/CHANGES.md}   # also append a line there: work items conflict
    "*": {sleep_seconds: 0.2}        # generic options for every role
    "*": {wait_for_file: /tmp/go, wait_times: 1, wait_timeout_seconds: 120}
                                     # attempts 1..1 wait until /tmp/go exists

Generic options (any role, and ``"*"``): ``exit_code`` + ``exit_times``,
``sleep_seconds``, ``rate_limit_times`` + ``retry_after_seconds``,
``spawn_background_sleep``, ``wait_for_file`` + ``wait_times`` +
``wait_timeout_seconds``. A role's own entry overrides ``"*"`` option by option.
"N times" always means attempts 1..N, counted by ``SDLC_ATTEMPT``.

``wait_for_file`` holds an agent until a test says go: on attempts 1..wait_times,
before anything else, the agent polls (every 0.05 s) until that absolute path
exists, and exits 1 after ``wait_timeout_seconds``. The file is never read or written.

``shared_file`` makes work items conflict on purpose: the developer normally writes
only ``src/<slug>.py`` and ``tests/test_<slug>.py``, which no other work item touches;
with it, every run also appends ``<work item> change <n> (attempt <a>)`` to that file
(relative to the worktree; keep it under a path the development stage commits, such
as ``docs/``), so two work items branched from the same base conflict when merged. Whatever the scenario, the developer first resolves git conflict
markers it finds in ``src/``, ``tests/`` and the shared file by keeping both sides
(ours, then theirs; a diff3 base section is dropped), as an agent handed a merge
conflict would, and names those files in ``dev-notes.md``.

The options are the stdlib dataclass ``RoleScenario`` below; a run without a
scenario file uses its defaults and imports only the standard library (the agent
is a new process for every run, and pydantic + yaml cost ~0.13 s of CPU to import).
Scenario files are read and validated by ``demo.scenario`` (pydantic), imported
only when ``SDLC_SCENARIO_FILE`` is set.

Values from the environment and the task file are data: they are written into
markdown files and printed, never run, and paths are checked to stay inside the
worktree. Exit codes: 0 done, 1 failed on purpose (scenario), 2 bad invocation
(missing environment, invalid scenario, unreadable task file).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from sdlc.ids import validate_work_item_id

REQUIRED_ENV = (
    "SDLC_ROLE",
    "SDLC_STAGE",
    "SDLC_WORK_ITEM",
    "SDLC_TASK_FILE",
    "SDLC_ATTEMPT",
    "SDLC_ARTIFACTS_DIR",
)
ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
WILDCARD = "*"

# What the real Claude Code CLI prints for a 429 (see the CLI contract).
RATE_LIMIT_LINE = (
    'API Error: Request rejected (429) · {"type":"error","error":{"type":"rate_limit_error",'
    '"message":"Number of request tokens has exceeded your per-minute rate limit"}}'
)
FAIL_ON_PURPOSE = "scripted agent: failing on purpose"
SMOKE_FAILED = "smoke check failed"
WAIT_POLL_SECONDS = 0.05

# Options that only make sense for one role: option -> role.
ROLE_OPTIONS: dict[str, str] = {
    "questions": "analyst",
    "conflicts": "architect",
    "break_tests": "developer",
    "request_changes": "reviewer",
    "fail": "tester|deployer",
    "shared_file": "developer",
}

ANALYSIS_FILES = ("02-brd.md", "03-requirements.md", "04-acceptance-criteria.md", "05-test-plan.md")


class UsageError(Exception):
    """A bad invocation: exit 2 with the message on stderr."""


# --------------------------------------------------------------------------- scenario


def _option(default: Any, description: str, **constraints: float) -> Any:
    """A dataclass field whose metadata holds pydantic ``Field`` keywords, used by demo.scenario."""
    return field(default=default, metadata={"description": description, **constraints})


@dataclass(frozen=True)
class RoleScenario:
    """What one role does; every "times"/count option means attempts 1..N.

    The one definition of the options: types, defaults (used as they are when no
    scenario file is given) and constraints. It is plain stdlib so that an agent run
    without a scenario never imports pydantic; ``demo.scenario`` builds the pydantic
    validator for scenario files from these fields.
    """

    # generic
    exit_code: int = _option(1, "Exit code used on attempts 1..exit_times.", ge=1, le=255)
    exit_times: int = _option(0, "Attempts 1..N exit with exit_code.", ge=0)
    sleep_seconds: float = _option(0, "Sleep before working.", ge=0, le=86400)
    rate_limit_times: int = _option(0, "Attempts 1..N print a 429 and exit 1.", ge=0)
    retry_after_seconds: int | None = _option(None, "Adds a `retry-after: N` line.", ge=0)
    spawn_background_sleep: bool = _option(False, "Start `sleep 600` and leave it running.")
    wait_for_file: str | None = _option(
        None, "Absolute path: attempts 1..wait_times wait until it exists, before anything else.", min_length=1
    )
    wait_times: int = _option(1, "Attempts 1..N wait for wait_for_file.", ge=0)
    wait_timeout_seconds: float = _option(120, "Give up waiting (exit 1) after this long.", ge=0, le=3600)
    # role-specific (see ROLE_OPTIONS)
    questions: int = _option(0, "analyst: attempts 1..N write 01-questions.md.", ge=0)
    conflicts: int = _option(0, "architect: attempts 1..N write 10-conflict.md.", ge=0)
    break_tests: int = _option(0, "developer: attempts 1..N write a failing test.", ge=0)
    shared_file: str | None = _option(
        None, "developer: also append a line to this file (relative to the worktree) on every run.", min_length=1
    )
    request_changes: int = _option(0, "reviewer: attempts 1..N request changes.", ge=0)
    fail: int = _option(0, "tester: Result: FAIL; deployer: smoke check fails (exit 1).", ge=0)


def load_role_scenario(path: Path, role: str) -> RoleScenario:
    """The role's options from a scenario file; UsageError (exit 2) if it is unreadable or invalid."""
    # Lazy: pydantic + yaml add ~0.13 s CPU to the start of every agent process (measured); only scenario runs pay it.
    from demo.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(path).for_role(role)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from exc


# --------------------------------------------------------------------------- invocation


@dataclass(frozen=True)
class Invocation:
    role: str
    stage: str
    work_item: str
    attempt: int
    worktree: Path
    task_file: Path
    artifacts_dir: Path
    system_prompt_file: str
    model: str
    scenario: RoleScenario

    def rel(self, path: Path) -> str:
        return path.relative_to(self.worktree).as_posix()


def _inside(worktree: Path, value: str, what: str) -> Path:
    """A path given relative to the worktree (or absolute) that must stay inside it."""
    if "\x00" in value:
        raise UsageError(f"{what} contains a NUL byte")
    path = (worktree / value).resolve()
    if path != worktree and worktree not in path.parents:
        raise UsageError(f"{what} {value[:200]!r} is outside the worktree")
    return path


def check_scenario_paths(scenario: RoleScenario, worktree: Path) -> None:
    """Reject unusable paths up front (exit 2), whatever the attempt, before anything is written."""
    if scenario.wait_for_file is not None:
        if "\x00" in scenario.wait_for_file or not Path(scenario.wait_for_file).is_absolute():
            raise UsageError(f"wait_for_file {scenario.wait_for_file[:200]!r} must be an absolute path")
    if scenario.shared_file is not None:
        shared_path(scenario.shared_file, worktree)


def shared_path(value: str, worktree: Path) -> Path:
    """The shared file: inside the worktree, not the worktree itself, not under .git."""
    path = _inside(worktree, value, "shared_file")
    if path == worktree or ".git" in path.relative_to(worktree).parts:
        raise UsageError(f"shared_file {value[:200]!r} must name a file of the worktree, outside .git")
    return path


def read_invocation(env: dict[str, str] | os._Environ[str], cwd: Path) -> Invocation:
    missing = [name for name in REQUIRED_ENV if not env.get(name, "").strip()]
    if missing:
        raise UsageError(f"missing required environment variables: {', '.join(missing)}")
    role = env["SDLC_ROLE"].strip()
    if not ROLE_PATTERN.match(role):
        raise UsageError(f"SDLC_ROLE {role[:60]!r} is not a role name")
    try:
        work_item = validate_work_item_id(env["SDLC_WORK_ITEM"].strip())
    except ValueError as exc:
        raise UsageError(f"SDLC_WORK_ITEM: {exc}") from exc
    try:
        attempt = int(env["SDLC_ATTEMPT"].strip())
    except ValueError:
        attempt = 0
    if attempt < 1:
        raise UsageError(f"SDLC_ATTEMPT must be a positive integer, not {env['SDLC_ATTEMPT'][:20]!r}")
    worktree = cwd.resolve()
    artifacts = _inside(worktree, env["SDLC_ARTIFACTS_DIR"].strip(), "SDLC_ARTIFACTS_DIR")
    task_value = env["SDLC_TASK_FILE"]
    task_file = Path(task_value) if Path(task_value).is_absolute() else worktree / task_value
    if not task_file.is_file():
        raise UsageError(f"task file {task_value[:200]} does not exist")
    scenario = RoleScenario()
    scenario_value = env.get("SDLC_SCENARIO_FILE", "").strip()
    if scenario_value:
        scenario_path = Path(scenario_value)
        if not scenario_path.is_absolute():
            scenario_path = worktree / scenario_path
        scenario = load_role_scenario(scenario_path, role)
    check_scenario_paths(scenario, worktree)
    return Invocation(
        role=role,
        stage=_one_line(env["SDLC_STAGE"]),
        work_item=work_item,
        attempt=attempt,
        worktree=worktree,
        task_file=task_file,
        artifacts_dir=artifacts,
        system_prompt_file=_one_line(env.get("SDLC_SYSTEM_PROMPT_FILE", "")),
        model=_one_line(env.get("SDLC_MODEL", "")),
        scenario=scenario,
    )


# --------------------------------------------------------------------------- task file


def _one_line(text: str, limit: int = 200) -> str:
    """Text made safe for one line of output: no control characters, bounded length."""
    cleaned = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).strip()
    return cleaned[:limit] + ("..." if len(cleaned) > limit else "")


@dataclass(frozen=True)
class TaskInfo:
    text: str
    title: str
    feedback: tuple[str, ...]  # sources of "### From <source>" sections
    merge_section: str = ""  # first "## " heading about a merge (sdlc tells the agent of one it made or left)

    @property
    def lines(self) -> int:
        return len(self.text.splitlines())


def read_task(path: Path) -> TaskInfo:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read task file {path}: {exc.strerror or exc}") from exc
    title = ""
    first_heading = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not title and stripped.lower().startswith("- title:"):
            title = stripped.split(":", 1)[1]
        if not first_heading and stripped.startswith("#"):
            first_heading = stripped.lstrip("#")
    feedback = tuple(_one_line(match, 40) for match in re.findall(r"(?m)^###\s+From\s+([A-Za-z_][\w-]*)", text))
    merge = re.search(r"(?mi)^##[ \t]+(.*(?:merg|conflict|up to date).*)$", text)
    return TaskInfo(
        text=text,
        title=_one_line(title or first_heading or "(untitled)"),
        feedback=feedback,
        merge_section=_one_line(merge.group(1), 100) if merge else "",
    )


def quoted(text: str) -> str:
    """Task text as a markdown block quote: shown as data, never as this file's own lines."""
    lines = text.rstrip().splitlines() or ["(empty)"]
    return "\n".join(f"> {line}".rstrip() for line in lines)


# --------------------------------------------------------------------------- writing


class Writer:
    """Writes files inside the worktree and reports each one on stdout."""

    def __init__(self, inv: Invocation) -> None:
        self.inv = inv
        self.written: list[str] = []

    def write(self, path: Path, content: str, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if append else "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
        rel = self.inv.rel(path)
        self.written.append(rel)
        print(f"scripted agent: {'appended to' if append else 'wrote'} {rel}", flush=True)

    def artifact(self, name: str, content: str) -> None:
        self.write(self.inv.artifacts_dir / name, content)


def _times(count: int, attempt: int) -> bool:
    return attempt <= count


def _header(inv: Invocation, task: TaskInfo, heading: str) -> str:
    return (
        f"# {heading}: {inv.work_item}\n\n"
        f"Work item: {inv.work_item} - {task.title}\n"
        f"Written by: scripted {inv.role}, attempt {inv.attempt}\n"
    )


def do_analyst(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    if _times(inv.scenario.questions, inv.attempt):
        out.artifact(
            "01-questions.md",
            _header(inv, task, "Questions") + "\nThe requirements cannot be written before these are answered:\n\n"
            "1. Who are the users of this change, and which of them must see it first?\n"
            "2. What should happen when the input is empty or invalid?\n"
            "3. Is there a deadline or a release this must ship with?\n",
        )
        return
    context = "\n## Context\n\nThe task as given (answers and feedback included):\n\n" + quoted(task.text) + "\n"
    answered = "answers" in task.feedback
    out.artifact(
        "02-brd.md",
        _header(inv, task, "Business requirements")
        + "\n## Goal\n\nDeliver the change the work item asks for, without breaking existing behaviour.\n"
        + ("\nThe analyst's questions were answered; the answers are part of the context below.\n" if answered else "")
        + context,
    )
    out.artifact(
        "03-requirements.md",
        _header(inv, task, "Requirements") + "\n- R1: The new behaviour is available from the code under `src/`.\n"
        "- R2: Existing behaviour and tests keep working.\n"
        "- R3: The change is covered by automated tests under `tests/`.\n",
    )
    out.artifact(
        "04-acceptance-criteria.md",
        _header(inv, task, "Acceptance criteria")
        + "\n- AC1: Given the change is deployed, when it is used, then it behaves as described (R1).\n"
        "- AC2: The repository's test command passes on the branch (R2, R3).\n",
    )
    out.artifact(
        "05-test-plan.md",
        _header(inv, task, "Test plan") + "\n- T1: Unit tests for the new code (AC1).\n"
        "- T2: The full test suite runs green (AC2).\n",
    )


def do_architect(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    if _times(inv.scenario.conflicts, inv.attempt):
        out.artifact(
            "10-conflict.md",
            _header(inv, task, "Conflict")
            + "\nRequirement R1 asks for new behaviour in place, while R2 requires every existing\n"
            "behaviour to stay unchanged; both cannot hold for the same entry point.\n\n"
            "## Alternatives\n\n"
            "- A: Add a new entry point next to the existing one (R2 holds, R1 is met by the new one).\n"
            "- B: Change the existing entry point and accept the behaviour change (R1 holds, R2 is relaxed).\n\n"
            "Please choose one in the requirements.\n",
        )
        return
    slug = module_slug(inv.work_item)
    out.artifact(
        "11-architecture.md",
        _header(inv, task, "Architecture")
        + f"\n## Design\n\n- New module `src/{slug}.py` holding the change, one function per increment.\n"
        f"- Tests in `tests/test_{slug}.py`, run by the repository's test command.\n"
        "- No new dependencies; no change to existing public functions.\n",
    )


def module_slug(work_item: str) -> str:
    """A Python module name for the work item: ET-12 -> et_12."""
    return re.sub(r"[^a-z0-9]+", "_", work_item.lower()).strip("_") or "work_item"


CONFLICT_START, CONFLICT_BASE, CONFLICT_SEP, CONFLICT_END = "<<<<<<<", "|||||||", "=======", ">>>>>>>"
CONFLICT_TREES = ("src", "tests")


def _is_marker(line: str, marker: str) -> bool:
    """Git's marker line: the marker alone, or followed by a space and a label (HEAD, a sha, a branch)."""
    bare = line.rstrip("\r\n")
    return bare == marker or (marker != CONFLICT_SEP and bare.startswith(marker + " "))


def resolve_conflicts(text: str) -> str | None:
    """Text with every conflict resolved by keeping both sides (ours, then theirs; a diff3 base is dropped).

    None when there is no conflict, or when the markers are not well formed (then the
    file is left as it is rather than guessed at).
    """
    if CONFLICT_START not in text:
        return None
    out: list[str] = []
    ours: list[str] = []
    theirs: list[str] = []
    state = "outside"  # outside -> ours [-> base] -> theirs -> outside
    found = False
    for line in text.splitlines(keepends=True):
        if state == "outside":
            if _is_marker(line, CONFLICT_START):
                state, ours, theirs, found = "ours", [], [], True
            else:
                out.append(line)
        elif _is_marker(line, CONFLICT_START):
            return None  # nested or unterminated: not git's shape
        elif state in ("ours", "base"):
            if _is_marker(line, CONFLICT_SEP):
                state = "theirs"
            elif _is_marker(line, CONFLICT_END) or (state == "base" and _is_marker(line, CONFLICT_BASE)):
                return None
            elif _is_marker(line, CONFLICT_BASE):
                state = "base"
            elif state == "ours":
                ours.append(line)
        elif _is_marker(line, CONFLICT_END):
            out.extend(ours + theirs)
            state = "outside"
        elif _is_marker(line, CONFLICT_SEP) or _is_marker(line, CONFLICT_BASE):
            return None
        else:
            theirs.append(line)
    if state != "outside" or not found:
        return None
    # A side whose last line had no newline (end of file) must not glue onto the next kept line.
    for index, kept in enumerate(out[:-1]):
        if not kept.endswith("\n"):
            out[index] = kept + "\n"
    return "".join(out)


def _conflicted_candidates(inv: Invocation, extra: Path | None) -> list[Path]:
    """Regular files under src/ and tests/ (symlinks and caches skipped), plus the shared file."""
    found: list[Path] = []
    for tree in CONFLICT_TREES:
        root = inv.worktree / tree
        if root.is_symlink() or not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if not path.is_symlink() and path.is_file():
                    found.append(path)
    if extra is not None and extra not in found and not extra.is_symlink() and extra.is_file():
        found.append(extra)
    return found


def resolve_conflicted_files(inv: Invocation, out: Writer, extra: Path | None) -> list[str]:
    """Resolve the conflicts git left (a merge of main that went back to the developer); the files resolved."""
    resolved: list[str] = []
    for path in _conflicted_candidates(inv, extra):
        data = path.read_bytes()
        if CONFLICT_START.encode() not in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        fixed = resolve_conflicts(text)
        if fixed is None:
            continue
        out.write(path, fixed)
        resolved.append(inv.rel(path))
        print(f"scripted agent: resolved merge conflicts in {inv.rel(path)} (kept both sides)", flush=True)
    return resolved


def append_shared_line(inv: Invocation, out: Writer, path: Path, number: int) -> str:
    """Append this run's line at the end of the shared file (created if missing); the line."""
    line = f"{inv.work_item} change {number} (attempt {inv.attempt})"
    existing = path.read_bytes() if path.is_file() else b""
    prefix = "\n" if existing and not existing.endswith(b"\n") else ""
    out.write(path, prefix + line + "\n", append=path.exists())
    return line


def do_developer(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    shared = shared_path(inv.scenario.shared_file, inv.worktree) if inv.scenario.shared_file else None
    resolved = resolve_conflicted_files(inv, out, shared)
    slug = module_slug(inv.work_item)
    module = inv.worktree / "src" / f"{slug}.py"
    tests_dir = inv.worktree / "tests"
    test_file = tests_dir / f"test_{slug}.py"
    existing = module.read_text(encoding="utf-8") if module.is_file() else ""
    numbers = [int(n) for n in re.findall(r"(?m)^def change_(\d+)\(", existing)]
    number = max(numbers, default=0) + 1
    header = "" if existing else f'"""Changes for {inv.work_item}, written by the scripted developer."""\n'
    out.write(
        module,
        header + f"\n\ndef change_{number}() -> str:\n"
        f'    """Increment {number} (developer attempt {inv.attempt})."""\n'
        f"    return {f'{inv.work_item} change {number}'!r}\n",
        append=bool(existing),
    )
    numbers.append(number)
    shared_line = append_shared_line(inv, out, shared, number) if shared is not None else ""
    if not tests_dir.exists():
        out.write(tests_dir / "__init__.py", "")
    broken = _times(inv.scenario.break_tests, inv.attempt)
    checks = "\n".join(
        f"        self.assertEqual(module.change_{n}(), {f'{inv.work_item} change {n}'!r})" for n in sorted(numbers)
    )
    if broken:
        checks += (
            f"\n        # broken on purpose (scenario break_tests, attempt {inv.attempt})"
            f"\n        self.assertEqual(module.change_{number}(), 'not what it returns')"
        )
    out.write(
        test_file,
        f'"""Tests for src/{slug}.py, written by the scripted developer."""\n\n'
        "import importlib.util\n"
        "import unittest\n"
        "from pathlib import Path\n\n"
        f'MODULE_PATH = Path(__file__).resolve().parent.parent / "src" / "{slug}.py"\n\n\n'
        "def load():\n"
        f'    spec = importlib.util.spec_from_file_location("scripted_{slug}", MODULE_PATH)\n'
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    return module\n\n\n"
        f"class {''.join(p.capitalize() for p in slug.split('_'))}Test(unittest.TestCase):\n"
        "    def test_changes(self):\n"
        "        module = load()\n"
        f"{checks}\n\n\n"
        'if __name__ == "__main__":\n'
        "    unittest.main()\n",
    )
    addressed = ", ".join(task.feedback) if task.feedback else "nothing (first run)"
    notes = inv.artifacts_dir / "dev-notes.md"
    notes_exist = notes.is_file()
    out.write(
        notes,
        ("" if notes_exist else _header(inv, task, "Developer notes")) + f"\n## Attempt {inv.attempt}\n\n"
        f"- Added `change_{number}` to `src/{slug}.py`.\n"
        f"- Tests: `tests/test_{slug}.py` ({'broken on purpose' if broken else 'passing'}).\n"
        f"- Feedback addressed: {addressed}.\n"
        + (f"- The task's section on the merge: {task.merge_section!r}.\n" if task.merge_section else "")
        + (f"- Resolved merge conflicts in: {', '.join(resolved)}.\n" if resolved else "")
        + (f"- Appended `{shared_line}` to `{inv.rel(shared)}`.\n" if shared is not None else ""),
        append=notes_exist,
    )


def do_reviewer(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    slug = module_slug(inv.work_item)
    if _times(inv.scenario.request_changes, inv.attempt):
        body = (
            "\nVerdict: REQUEST_CHANGES\n\n## Findings\n\n"
            f"1. `src/{slug}.py`: the newest function has no input validation.\n"
            f"2. `tests/test_{slug}.py`: add a test for the edge case named in the acceptance criteria.\n"
        )
    else:
        body = "\nVerdict: APPROVE\n\nThe change matches the architecture and is covered by tests.\n"
    out.artifact("12-review.md", _header(inv, task, "Review") + body)


def do_tester(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    if _times(inv.scenario.fail, inv.attempt):
        body = (
            "\nResult: FAIL\n\n## Report\n\n"
            "- T1 unit tests: passed.\n"
            "- AC1: failed - the behaviour differs from the acceptance criteria on empty input.\n"
            "  Steps: call the new function with an empty value; expected a clear error, got a result.\n"
        )
    else:
        body = "\nResult: PASS\n\n- T1 unit tests: passed.\n- T2 full suite: passed.\n"
    out.artifact("13-test-report.md", _header(inv, task, "Test report") + body)


def do_deployer(inv: Invocation, task: TaskInfo, out: Writer) -> int:
    failed = _times(inv.scenario.fail, inv.attempt)
    status = f"{SMOKE_FAILED}: health endpoint answered 503" if failed else "smoke check passed"
    out.artifact(
        "14-deploy.md",
        _header(inv, task, "Deploy") + f"\n- Deployed to: staging (simulated)\n- Smoke check: {status}\n",
    )
    if failed:
        print(SMOKE_FAILED, flush=True)
        return 1
    return 0


def do_other(inv: Invocation, task: TaskInfo, out: Writer) -> None:
    out.artifact(f"{inv.role}-notes.md", _header(inv, task, f"Notes of the {inv.role}"))


# --------------------------------------------------------------------------- main


def _usage_exit(message: str) -> NoReturn:
    print(f"scripted agent: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def wait_for_go(path: Path, timeout: float) -> bool:
    """Poll until `path` exists (a test's "go"); False once `timeout` seconds have passed without it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(WAIT_POLL_SECONDS, remaining))
    return True


def run(inv: Invocation) -> int:
    options = inv.scenario
    if options.wait_for_file is not None and _times(options.wait_times, inv.attempt):
        go = Path(options.wait_for_file)
        print(f"scripted agent: waiting for {go} (up to {options.wait_timeout_seconds:g} s)", flush=True)
        if not wait_for_go(go, options.wait_timeout_seconds):
            print(
                f"scripted agent: gave up waiting for {go}: it did not appear within "
                f"{options.wait_timeout_seconds:g} s (scenario wait_for_file)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(f"scripted agent: {go} exists, going on", flush=True)
    task = read_task(inv.task_file)
    try:
        task_name = inv.rel(inv.task_file.resolve())
    except ValueError:
        task_name = str(inv.task_file)
    print(
        f"scripted agent: {inv.role} attempt {inv.attempt} on {inv.work_item} (stage {inv.stage}); "
        f"task {task_name}: {task.title!r}, {task.lines} lines"
        + (f", feedback from {', '.join(task.feedback)}" if task.feedback else ""),
        flush=True,
    )
    if options.spawn_background_sleep:
        child = subprocess.Popen(
            ["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        print(f"scripted agent: started background sleep pid {child.pid}", flush=True)
    if options.sleep_seconds:
        print(f"scripted agent: sleeping {options.sleep_seconds:g} s", flush=True)
        time.sleep(options.sleep_seconds)
    if _times(options.rate_limit_times, inv.attempt):
        print(RATE_LIMIT_LINE, flush=True)
        if options.retry_after_seconds is not None:
            print(f"retry-after: {options.retry_after_seconds}", flush=True)
        return 1
    if _times(options.exit_times, inv.attempt):
        print(FAIL_ON_PURPOSE, flush=True)
        return options.exit_code
    out = Writer(inv)
    handlers = {
        "analyst": do_analyst,
        "architect": do_architect,
        "developer": do_developer,
        "reviewer": do_reviewer,
        "tester": do_tester,
    }
    if inv.role == "deployer":
        code = do_deployer(inv, task, out)
    else:
        handlers.get(inv.role, do_other)(inv, task, out)
        code = 0
    print(
        f"scripted agent: {inv.role} {'done' if code == 0 else 'failed'}, {len(out.written)} file(s) written",
        flush=True,
    )
    return code


def main() -> int:
    try:
        inv = read_invocation(os.environ, Path.cwd())
        return run(inv)
    except UsageError as exc:
        _usage_exit(str(exc))
    except OSError as exc:
        print(f"scripted agent: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
