"""Commands bounded in time, ended with their whole process group.

``subprocess.run(timeout=...)`` kills only its direct child: a ``git fetch`` leaves
its ``git-remote-http`` or ``ssh`` child, a test command its background jobs, and
a child that keeps the output pipe open makes the caller wait on it for ever.
Every command here starts in a session of its own (``start_new_session=True``), so
its process group is everything it started, and a timeout ends that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

TERMINATE_GRACE_SECONDS = 3.0
_POLL_SECONDS = 0.05


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_running_member(pgid)


def _has_running_member(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not: a killed git's children
    linger as zombies until whoever adopted them reaps them, which can take a second."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # no way to tell zombies apart here: the group is alive while it exists
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After "pid (comm)": state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def end_process_group(process: subprocess.Popen[bytes], grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM the group led by ``process``, SIGKILL whatever is left after ``grace``; reap the leader.

    SIGTERM first: git removes its lock files on SIGTERM (a SIGKILLed fetch leaves
    ``*.lock`` files that fail the next one), test runners flush their output.
    """
    end_group(process.pid, grace, reap=process.poll)  # start_new_session=True: the child leads its own group
    process.wait()


def end_group(pgid: int, grace: float = TERMINATE_GRACE_SECONDS, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM process group ``pgid``, SIGKILL whatever is left after ``grace``.

    ``reap`` waits for the leader when it is our child: its zombie would keep the group "alive".
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        if reap is not None:
            reap()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            return
        time.sleep(_POLL_SECONDS)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def process_start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot, /proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
