"""What the tests that run an agent CLI for real share: the CLI as `make install` pinned it under tools/
(blocks.agent_profile.INSTALLED_CLIS; a test without it fails, never skips, and says how to install
it), an environment without this machine's own setup of the CLI, and a small repository to work in."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from gitrepo import git

from blocks.agent_profile import INSTALLED_CLIS, TOOLS_DIR

# A role's prompt (sdlc/prompts/<role>.md in a real run), with a marker to find it in what the model is sent.
ROLE_PROMPT = "You are running inside the sdlc-flows test suite (role-prompt-marker); answer briefly.\n"
APP = {"src/app.py": "print('hello')\n"}  # the code a developer's task is about
HOW_TO_INSTALL = {
    "aider": "a virtual environment of its own, tools/aider-requirements.lock",
}


def pinned_path(kind: str) -> Path:
    """Where `make install` puts the kind's CLI."""
    return TOOLS_DIR / INSTALLED_CLIS[kind]


def pinned_cli(kind: str) -> str:
    """The pinned CLI of ``kind`` (claude, codex, gemini, opencode, aider); fails the test when missing."""
    path = pinned_path(kind)
    if not (path.exists() and os.access(path, os.X_OK)):
        how = HOW_TO_INSTALL.get(kind, "or `npm ci --prefix tools --no-audit --no-fund`")
        pytest.fail(f"the {kind} CLI is missing at {path}: run `make install` ({how}) to install the pinned version",
                    pytrace=False)
    return str(path)


def without_own_setup(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Unset this machine's variables starting with ``prefixes`` (``OPENAI_`` ...) and its proxies: the
    runner passes a CLI's variables through from the worker, and none of them may reach the fake."""
    for name in list(os.environ):
        if name.startswith(prefixes) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def seeded_repo(path: Path, tasks: dict[str, str], files: dict[str, str] | None = None) -> Path:
    """A git repository at ``path`` on ``main`` with one commit: the task files and ``files``."""
    for name, text in {**tasks, **(files or {})}.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "seed")
    return path


def planted_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """sdlc's data directory (``SDLC_DATA_DIR``) with a ledger holding a canary: what a confined CLI
    must not read. Returns the ledger's path and the canary."""
    canary = f"canary-{uuid.uuid4().hex}"
    data_dir = tmp_path / "data"
    (data_dir / "logs").mkdir(parents=True)
    ledger = data_dir / "ledger.db"
    ledger.write_text(f"ledger {canary}\n")
    monkeypatch.setenv("SDLC_DATA_DIR", str(data_dir))
    return ledger, canary
