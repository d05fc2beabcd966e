"""Operating sdlc-flows as documented, from tests: the `prefect` CLI, process workers, waiting on the ledger.

Tests import this module directly (``from operating import ...``); it is not a conftest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SDLC = [sys.executable, "-m", "sdlc.cli"]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "sdlc-process"


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`prefect --no-prompt ARGS` from the repository root (where prefect.yaml is); fails the test on error."""
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def deploy_all(env: dict[str, str]) -> None:
    """The process pool and every deployment of prefect.yaml, as the README says."""
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    prefect_cli(env, "deploy", "--all")


def start_worker(
    env: dict[str, str], cwd: Path, *, name: str | None = None, log: Path | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`prefect worker start --pool sdlc-process` in its own process group, polling every second unless
    ``env`` says otherwise; output to ``log`` or nowhere."""
    command = [PREFECT, "worker", "start", "--pool", POOL, *(["--name", name] if name else []), *extra]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            command, env={"PREFECT_WORKER_QUERY_SECONDS": "1", **env},
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the worker's process group (its flow runs included), SIGKILL it if it lingers."""
    try:
        os.killpg(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


def wait_for_state(work_item: str, states: str | tuple[str, ...], data_dir: Path, timeout: float = 180) -> Any:
    from tasks.ledger import Ledger

    wanted = (states,) if isinstance(states, str) else states
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (data_dir / "ledger.db").exists():
            row = Ledger.from_settings().get_work_item(work_item)
            if row is not None and row.state in wanted:
                return row
        time.sleep(0.5)
    raise AssertionError(f"{work_item} did not reach {wanted} within {timeout:.0f} s")


def wait_for_end(work_item: str, data_dir: Path) -> Any:
    return wait_for_state(work_item, ("done", "blocked", "failed"), data_dir)
