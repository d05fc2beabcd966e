"""Git's network calls end after SDLC_GIT_TIMEOUT_SECONDS as transient failures (the agent is untrusted).

The remote here is a local TCP server that accepts connections and never answers:
what a stalled forge, a black-holed proxy or a hostile remote looks like to git.
Without a timeout a clone, fetch or push against it would hold the task, and the
clone's lock, for ever.
"""

from __future__ import annotations

import fcntl
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from gitrepo import commit_file, git, isolate, make_origin
from processes import processes_with, wait_for

from tasks.failures import TransientError
from tasks.git import commit_and_push, push_branch
from tasks.worktree import clone_lock, ensure_main_clone, ensure_worktree, main_clone_path

TIMEOUT = 2


class StalledServer:
    """Accepts every connection on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/repo.git"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalled-git-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(connection)

    def all_hung_up(self) -> bool:
        """Every client closed its end: the processes that held the connections are gone."""
        for connection in list(self.accepted):
            connection.setblocking(False)
            try:
                if connection.recv(65536) != b"":
                    continue  # the request it sent: read on until EOF
                connection.close()
                self.accepted.remove(connection)
            except BlockingIOError:
                return False
            except OSError:
                self.accepted.remove(connection)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self.accepted:
            connection.close()


def lock_is_free(clone: Path) -> bool:
    """Take the clone's lock without waiting: it fails while anyone, this process included, holds it."""
    with open(clone.with_name(clone.name + ".lock"), "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


@pytest.fixture
def stalled() -> Iterator[StalledServer]:
    server = StalledServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SDLC_GIT_TIMEOUT_SECONDS", str(TIMEOUT))
    return isolate(monkeypatch, tmp_path)


def assert_ends_cleanly(server: StalledServer, started: float) -> None:
    assert time.monotonic() - started < TIMEOUT + 6
    assert server.accepted, "git never reached the stalled server"
    assert wait_for(lambda: not processes_with(f"127.0.0.1:{server.port}")), processes_with(f"127.0.0.1:{server.port}")
    assert wait_for(server.all_hung_up)


def test_a_clone_from_a_remote_that_never_answers_times_out_as_transient(stalled: StalledServer) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match=rf"clone of {stalled.url} timed out after {TIMEOUT} s"):
        ensure_main_clone(stalled.url)
    assert_ends_cleanly(stalled, started)
    clone = main_clone_path(stalled.url)
    assert lock_is_free(clone)
    with clone_lock(clone):  # and the next clone or fetch can take it
        pass
    assert not clone.exists() and not list(clone.parent.glob(f"{clone.name}.tmp-*"))


def test_a_fetch_from_a_remote_that_never_answers_times_out_as_transient(
    stalled: StalledServer, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path)
    clone = ensure_main_clone(str(origin))
    git(clone, "remote", "set-url", "origin", stalled.url)  # origin now stalls
    started = time.monotonic()
    with pytest.raises(TransientError, match=rf"fetch of {origin} timed out after {TIMEOUT} s"):
        ensure_main_clone(str(origin))
    assert_ends_cleanly(stalled, started)
    assert lock_is_free(clone)
    # The task that prepares the worktree (prepare-agent-run) retries transient failures with backoff.
    from tasks.taskfile import prepare_agent_run

    assert prepare_agent_run.retries == 3 and prepare_agent_run.retry_delay_seconds == [5, 20, 60]
    git(clone, "remote", "set-url", "origin", str(origin))
    assert ensure_main_clone(str(origin)) == clone  # no lock file of the killed fetch is left in the way


def test_a_push_to_a_remote_that_never_answers_times_out_as_transient(stalled: StalledServer, tmp_path: Path) -> None:
    origin = make_origin(tmp_path)
    branch = "feature/ET-9-stalled"
    worktree = ensure_worktree(str(origin), branch)
    commit_file(worktree, "docs/plan.md", "plan\n", "plan")
    git(worktree, "config", "remote.origin.pushurl", stalled.url)
    started = time.monotonic()
    with pytest.raises(TransientError, match=rf"push of {branch} to origin timed out after {TIMEOUT} s"):
        push_branch(worktree, branch)
    assert_ends_cleanly(stalled, started)
    assert lock_is_free(main_clone_path(str(origin)))
    assert commit_and_push.retries == 3 and commit_and_push.retry_delay_seconds == [5, 20, 60]


@pytest.mark.usefixtures("prefect_api")
def test_a_push_that_keeps_timing_out_is_retried_then_blocks_the_work_item(
    stalled: StalledServer, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.stages
    from flows.pipeline import sdlc_pipeline
    from sdlc.models import AgentSpec, WorkItemRequest
    from demo.sample import create_sample_repo
    from tasks.ledger import Ledger

    # The task's retries and condition, without the 5/20/60 s waits.
    monkeypatch.setattr(flows.stages, "commit_and_push", flows.stages.commit_and_push.with_options(retry_delay_seconds=0))
    origin = create_sample_repo(tmp_path / "repos")
    clone = ensure_main_clone(str(origin))
    git(clone, "config", "remote.origin.pushurl", stalled.url)  # fetches work, every push stalls
    request = WorkItemRequest(
        work_item="ET-8", title="Stalled push", description="Origin takes pushes and never answers.",
        repo=str(origin), auto_approve=True, agent=AgentSpec(kind="scripted"),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    assert state.is_failed()
    row = Ledger.from_settings().get_work_item("ET-8")
    assert row is not None and (row.state, row.stage) == ("blocked", "analysis")
    assert f"timed out after {TIMEOUT} s" in (row.reason or "") and "push of feature/ET-8" in (row.reason or "")
    assert len(stalled.accepted) == 4  # the first push and three retries
    notes: list[dict[str, Any]] = [json.loads(line) for line in (data_dir / "notifications.jsonl").read_text().splitlines()]
    assert any(n["event"] == "blocked" and f"timed out after {TIMEOUT} s" in n["message"] for n in notes)
    assert wait_for(lambda: not processes_with(f"127.0.0.1:{stalled.port}"))
    assert lock_is_free(clone)
