"""What the pipeline benchmarks share: an isolated Prefect server and data dir, and a timing agent.

Import this module before anything imports prefect: it points PREFECT_HOME and
PREFECT_API_URL at a private server in a temporary directory.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(tempfile.mkdtemp(prefix="sdlc-bench-"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = _free_port()
os.environ.update(
    PREFECT_HOME=str(ROOT / "prefect-home"),
    PREFECT_API_URL=f"http://127.0.0.1:{PORT}/api",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    SDLC_DATA_DIR=str(ROOT / "data"),
    PREFECT_LOGGING_LEVEL="WARNING",
    # The timing agent runs in the agents' sandbox: it writes its records under ROOT (the data
    # dir inside stays hidden all the same) and reads the scripted agent's packages (below).
    SDLC_SANDBOX_WRITE_PATHS=str(ROOT),
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.sandbox import scripted_agent_paths  # noqa: E402

os.environ["SDLC_SANDBOX_READ_PATHS"] = ":".join(scripted_agent_paths())

from sdlc.settings import SdlcSettings  # noqa: E402

SERVER_SETTINGS = SdlcSettings(data_dir=ROOT / "server", prefect_port=PORT)

from entrypoints.server import ensure_prefect_api  # noqa: E402

# The Prefect client settings every `sdlc` command gives itself (and the worker it starts inherits).
ensure_prefect_api(SdlcSettings(data_dir=ROOT / "data"))


_clusters: list[Any] = []


def start_server(database: str = "sqlite") -> None:
    """sdlc's Prefect server on SQLite (the default) or on a private PostgreSQL cluster (as tests/postgres.py starts it)."""
    from entrypoints.server import start_server as start

    if database == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from postgres import find_bindir, start_cluster

        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed (make install installs it)")
        cluster = start_cluster(bindir)
        _clusters.append(cluster)
        cluster.create_database("prefect")
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = cluster.url("prefect", "postgresql+asyncpg")
    start(SERVER_SETTINGS)


def stop_server() -> None:
    from entrypoints.server import stop_server as stop

    stop(SERVER_SETTINGS)
    if _clusters:
        from postgres import remove_cluster

        remove_cluster(_clusters.pop())


def timing_agent(record: Path, seconds: float = 0.0) -> Path:
    """An agent that notes when it started and ended (after ``seconds`` of work), then acts as the scripted agent."""
    agent = ROOT / f"timing-agent-{seconds:g}.py"
    agent.write_text(
        "import json, os, runpy, sys, time\n"
        "start = time.time()\n"
        f"time.sleep({seconds})\n"
        "sys.argv = ['scripted']\n"
        "try:\n"
        "    runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
        "finally:\n"
        f"    with open({str(record)!r}, 'a') as f:\n"
        "        f.write(json.dumps({'item': os.environ.get('SDLC_WORK_ITEM'), 'role': os.environ.get('SDLC_ROLE'),"
        " 'start': start, 'end': time.time()}) + '\\n')\n"
    )
    return agent


def read_intervals(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def gaps_of(intervals: list[dict[str, Any]]) -> list[float]:
    """Per work item, from one agent's end to the next agent's start."""
    gaps: list[float] = []
    by_item: dict[str, list[dict[str, Any]]] = {}
    for interval in intervals:
        by_item.setdefault(str(interval["item"]), []).append(interval)
    for runs in by_item.values():
        runs.sort(key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(runs, runs[1:])]
    return gaps


def summary(values: list[float]) -> str:
    if not values:
        return "no values"
    return (
        f"median {statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s "
        f"(n={len(values)})"
    )
