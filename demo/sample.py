"""A tiny sample project to run the pipeline against: a bare origin with one commit.

``create_sample_repo(dest)`` makes ``dest/sample-origin.git`` (default branch
``main``) holding a "greeter" project whose local test command
(``.sdlc/config.yaml``) is ``python3 -m unittest discover -s tests -t .``. The
initial commit is made in a temporary clone with a local author identity; the
user's git configuration is never changed. Safe to call again: an existing origin
is returned as it is.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from sdlc.settings import process_environment

ORIGIN_NAME = "sample-origin.git"
DEFAULT_BRANCH = "main"
AUTHOR_NAME = "sdlc-flows sample"
AUTHOR_EMAIL = "sample@sdlc-flows.invalid"
TEST_COMMAND = ["python3", "-m", "unittest", "discover", "-s", "tests", "-t", "."]

SAMPLE_FILES: dict[str, str] = {
    "README.md": (
        "# greeter\n\n"
        "A tiny sample project for sdlc-flows: `src/greeter.py` says hello.\n\n"
        "Run the tests with:\n\n"
        "    python3 -m unittest discover -s tests -t .\n"
    ),
    ".gitignore": "__pycache__/\n*.pyc\n.task-*.md\n",
    "src/__init__.py": "",
    "src/greeter.py": (
        '"""Greets people."""\n\n\n'
        'def greet(name: str = "world") -> str:\n'
        '    """Return a greeting for `name`."""\n'
        '    name = name.strip() or "world"\n'
        '    return f"Hello, {name}!"\n'
    ),
    "tests/__init__.py": "",
    "tests/test_greeter.py": (
        "import unittest\n\n"
        "from src.greeter import greet\n\n\n"
        "class GreetTest(unittest.TestCase):\n"
        "    def test_greets_by_name(self):\n"
        '        self.assertEqual(greet("Ada"), "Hello, Ada!")\n\n'
        "    def test_default_is_world(self):\n"
        '        self.assertEqual(greet(), "Hello, world!")\n'
        '        self.assertEqual(greet("  "), "Hello, world!")\n\n\n'
        'if __name__ == "__main__":\n'
        "    unittest.main()\n"
    ),
    ".sdlc/config.yaml": (
        "# Settings of sdlc-flows for this repository.\n"
        "# The development gate runs this command in the branch's worktree.\n"
        'test_command: ["python3", "-m", "unittest", "discover", "-s", "tests", "-t", "."]\n'
        "test_timeout_seconds: 300\n"
    ),
}


def _git_env() -> dict[str, str]:
    """The caller's environment without variables that would point git elsewhere."""
    env = {name: value for name, value in process_environment().items() if not name.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git(*args: str, cwd: Path | None = None) -> str:
    completed = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        env=_git_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


def _has_main(origin: Path) -> bool:
    try:
        _git("--git-dir", str(origin), "rev-parse", "--verify", "--quiet", f"refs/heads/{DEFAULT_BRANCH}")
    except RuntimeError:
        return False
    return True


def create_sample_repo(dest: Path) -> Path:
    """Create (or find) `dest/sample-origin.git` and return its path."""
    dest = Path(dest).expanduser().resolve()
    origin = dest / ORIGIN_NAME
    if origin.exists():
        if (origin / "HEAD").is_file() and _has_main(origin):
            return origin
        raise RuntimeError(f"{origin} exists but is not a sample origin with a {DEFAULT_BRANCH} branch")
    dest.mkdir(parents=True, exist_ok=True)
    # Build next to the target, then rename: the origin either exists whole or not at all.
    staging = Path(tempfile.mkdtemp(prefix=".sample-origin-", dir=dest))
    try:
        bare = staging / ORIGIN_NAME
        _git("init", "--quiet", "--bare", f"--initial-branch={DEFAULT_BRANCH}", str(bare))
        clone = staging / "clone"
        _git("clone", "--quiet", str(bare), str(clone))
        _git("symbolic-ref", "HEAD", f"refs/heads/{DEFAULT_BRANCH}", cwd=clone)
        for name, content in SAMPLE_FILES.items():
            path = clone / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        _git("add", "--all", cwd=clone)
        _git(
            "-c",
            f"user.name={AUTHOR_NAME}",
            "-c",
            f"user.email={AUTHOR_EMAIL}",
            "commit",
            "--quiet",
            "-m",
            "Initial commit: greeter sample project",
            cwd=clone,
        )
        _git("push", "--quiet", "origin", f"HEAD:refs/heads/{DEFAULT_BRANCH}", cwd=clone)
        try:
            bare.rename(origin)
        except OSError:
            if origin.exists() and _has_main(origin):  # another caller made it meanwhile
                return origin
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return origin
