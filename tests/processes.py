"""Waiting for conditions and finding processes, for tests that check nothing outlives its run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """True as soon as ``condition()`` holds, False if it still does not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def end(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """End a process a test started, whatever the test's outcome: SIGTERM, SIGKILL after ``grace``
    seconds, reaped and its pipes drained and closed. Nothing to do for one that already ended."""
    if process.poll() is None:
        process.terminate()
        try:
            process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    try:
        process.communicate(timeout=grace)
    except (ValueError, OSError, subprocess.TimeoutExpired):  # pipes already read and closed, or a stuck reader
        process.wait(timeout=grace)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (ended, not yet reaped by whoever adopted it) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line carries ``marker`` (a sandboxed agent's own pids are another namespace's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
