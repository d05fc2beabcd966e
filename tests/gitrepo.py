"""Real git repositories for tests: a bare origin and helper clones, no mocks.

Tests import this module directly (``from gitrepo import ...``); it is not a conftest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

TEST_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Person",
    "GIT_AUTHOR_EMAIL": "person@example.test",
    "GIT_COMMITTER_NAME": "Test Person",
    "GIT_COMMITTER_EMAIL": "person@example.test",
}


def git(cwd: Path, *args: str) -> str:
    """Run git with an argument list (no shell) as a human other than the bot; return stdout."""
    env = {**os.environ, **TEST_IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(
        ["git", *args], cwd=str(cwd), env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr}")
    return done.stdout.strip()


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Data dir, Prefect home and git config of the test in tmp; returns the data dir."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("SDLC_DATA_DIR", str(data_dir))
    monkeypatch.delenv("SDLC_LEDGER_URL", raising=False)
    monkeypatch.delenv("SDLC_BOT_NAME", raising=False)
    monkeypatch.delenv("SDLC_BOT_EMAIL", raising=False)
    # No global or system config: the bot identity must come from sdlc-flows alone,
    # and the test can check the global config file is never written.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in TEST_IDENTITY:
        monkeypatch.delenv(name, raising=False)
    return data_dir


def make_origin(tmp_path: Path) -> Path:
    """A bare origin whose ``main`` has one commit: README.md, src/app.py, tests/test_app.py."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(origin))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "--quiet", "--initial-branch=main", str(seed))
    (seed / "src").mkdir()
    (seed / "tests").mkdir()
    (seed / "README.md").write_text("# demo\n", encoding="utf-8")
    (seed / "src" / "app.py").write_text("def answer() -> int:\n    return 42\n", encoding="utf-8")
    (seed / "tests" / "test_app.py").write_text(
        "from app import answer\n\n\ndef test_answer() -> None:\n    assert answer() == 42\n", encoding="utf-8"
    )
    git(seed, "add", "-A")
    git(seed, "commit", "--quiet", "-m", "initial commit")
    git(seed, "remote", "add", "origin", str(origin))
    git(seed, "push", "--quiet", "origin", "main")
    return origin


def clone_of(origin: Path, dest: Path) -> Path:
    """Another person's clone of origin, to move branches behind the pipeline's back."""
    git(dest.parent, "clone", "--quiet", str(origin), str(dest))
    return dest


def commit_file(clone: Path, relative: str, text: str, message: str) -> str:
    """Write, commit (as the test person) and return the new commit's sha."""
    path = clone / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    git(clone, "add", "--", relative)
    git(clone, "commit", "--quiet", "-m", message)
    return git(clone, "rev-parse", "HEAD")


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
