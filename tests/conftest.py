"""Shared fixtures: one real local Prefect server (SQLite) per session, a data dir per test.

Prefect reads its settings at import, so its home is isolated here before any test
module imports it; the server is started by sdlc's own embedded-server code.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from gitrepo import free_port

# Settled before anything imports prefect: a test that reaches the API without the
# `prefect_api` fixture fails to connect instead of starting an ephemeral server.
_PREFECT_HOME = tempfile.mkdtemp(prefix="sdlc-tests-prefect-")
_PORT = free_port()
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
os.environ.pop("SDLC_DATA_DIR", None)

import pytest  # noqa: E402

from sdlc.settings import SdlcSettings  # noqa: E402



@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 for the whole session."""
    from entrypoints.server import start_server, stop_server

    root = Path(tempfile.mkdtemp(prefix="sdlc-tests-server-"))
    settings = SdlcSettings(data_dir=root, prefect_port=_PORT)
    url = start_server(settings)
    assert url == os.environ["PREFECT_API_URL"]
    _server_roots.append(root)
    yield url
    _drain_prefect_workers()
    stop_server(settings)


_server_roots: list[Path] = []


@pytest.fixture
def prefect_server_log(prefect_api: str) -> Path:
    """The session server's log (entrypoints/server.py writes it under the server's data dir)."""
    return _server_roots[-1] / "prefect" / "server.log"


def _drain_prefect_workers() -> None:
    """Send what the log and event workers hold before the server goes (as prefect_test_harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.instance().drain()
    except RuntimeError:
        pass
    EventsWorker.drain_all()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own state: clones, worktrees, logs, ledger."""
    path = tmp_path / "data"
    monkeypatch.setenv("SDLC_DATA_DIR", str(path))
    monkeypatch.setenv("SDLC_BREAKER_SCOPE", uuid.uuid4().hex[:12])
    # Test agents record what they saw in the test's folder and hand over to the scripted agent:
    # both granted to the sandbox (the data dir and a local origin inside stay hidden all the same).
    # tests/test_agent_containment.py grants nothing.
    from tasks.sandbox import scripted_agent_paths

    monkeypatch.setenv("SDLC_SANDBOX_READ_PATHS", ":".join(scripted_agent_paths()))
    monkeypatch.setenv("SDLC_SANDBOX_WRITE_PATHS", str(tmp_path))
    return path


@pytest.fixture
def cli_env(prefect_api: str, data_dir: Path) -> dict[str, str]:
    """Environment for running `sdlc` as a separate process against the session's server."""
    env = dict(os.environ)
    env.update(PREFECT_API_URL=prefect_api, SDLC_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env

