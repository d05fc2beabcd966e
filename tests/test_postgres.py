"""PostgreSQL under the Prefect server and the ledger, two process workers, twenty work items at once (issue 6).

A private PostgreSQL cluster holds both databases. A second Prefect server (not the
session's SQLite one) runs on it; `prefect deploy --all` registers the deployments
and two `prefect worker start` processes share the pool, the data directory and the
ledger. Twenty pipeline runs over four repositories must all end merged, each in
its own worktree, with every role run once, spread over both workers, and never
more agents at once than the configured limits allow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from gitrepo import free_port
from operating import deploy_all, start_worker, stop_worker
from postgres import PostgresCluster, postgres_cluster  # noqa: F401 - the fixture
from sdlc.sample import create_sample_repo
from sdlc.settings import SdlcSettings

REPOSITORIES = 4
ITEMS_PER_REPOSITORY = 5
PROVIDER_LIMIT = 4
REPO_LIMIT = 2
WORKERS = ("sdlc-pg-a", "sdlc-pg-b")
ROLES = ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
RUNS_TIMEOUT_SECONDS = 300
SUBMITTED = re.compile(r"Worker '([^']+)' submitting flow run '([0-9a-f-]{36})'")


def test_the_ledger_creates_its_tables_from_many_processes_at_once_on_postgresql(
    postgres_cluster: PostgresCluster,  # noqa: F811
) -> None:
    """Processes starting together on an empty database all get the schema; none fails in the catalog."""
    from sqlmodel import Session, select

    from tasks.ledger import WebhookDeliveryRecord, _build_engine

    postgres_cluster.create_database("ledger_race")
    url = postgres_cluster.url("ledger_race")
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use(n: int) -> None:
        start.wait()
        try:
            engine = _build_engine(url)  # what each process does on its first Ledger(...)
            with Session(engine) as session:
                session.add(WebhookDeliveryRecord(key=f"race:{n}"))
                session.commit()
            engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    engine = _build_engine(url)
    with Session(engine) as session:
        assert len(session.exec(select(WebhookDeliveryRecord)).all()) == 8
    engine.dispose()


class Sampler(threading.Thread):
    """Peak resident memory, once a second: the workers with their flow runs and agents, the server, PostgreSQL."""

    def __init__(self, workers: list[int], server: int, postmaster: int) -> None:
        super().__init__(daemon=True)
        self.groups = {"workers": workers, "server": [server], "postgres": [postmaster]}
        self.peak = dict.fromkeys(self.groups, 0)
        self.peak_processes = 0
        self.halt = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.halt.wait(1.0):
            children: dict[int, list[int]] = defaultdict(list)
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        stat = Path(entry.path, "stat").read_text()
                    except OSError:
                        continue
                    children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            for group, roots in self.groups.items():
                pids = list(self._tree(roots, children))
                self.peak[group] = max(self.peak[group], sum(self._rss(pid) for pid in pids))
                if group == "workers":
                    self.peak_processes = max(self.peak_processes, len(pids))

    @staticmethod
    def _tree(roots: Iterable[int], children: dict[int, list[int]]) -> Iterator[int]:
        stack = list(roots)
        while stack:
            pid = stack.pop()
            yield pid
            stack.extend(children.get(pid, ()))

    def _rss(self, pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self.page
        except (OSError, IndexError, ValueError):
            return 0

    def mib(self) -> dict[str, int]:
        return {group: round(size / 2**20) for group, size in self.peak.items()}


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return f"--- {path.name} (last {chars} chars) ---\n" + path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"--- {path.name}: {exc} ---"


@pytest.mark.timeout(RUNS_TIMEOUT_SECONDS + 180)
def test_twenty_work_items_on_two_workers_with_prefect_and_the_ledger_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_cluster: PostgresCluster  # noqa: F811
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sdlc.server import start_server, stop_server
    from tasks.ledger import Ledger
    from tasks.limits import agent_limits
    from tasks.worktree import main_clone_path

    began = time.monotonic()
    figures: dict[str, Any] = {}
    data_dir = tmp_path / "data"
    ledger_url = postgres_cluster.url("ledger")
    sdlc_env = {
        "SDLC_DATA_DIR": str(data_dir),
        "SDLC_LEDGER_URL": ledger_url,
        "SDLC_PROVIDER_CONCURRENCY": json.dumps({"scripted": PROVIDER_LIMIT}),
        "SDLC_REPO_CONCURRENCY": str(REPO_LIMIT),
        "SDLC_BREAKER_SCOPE": uuid.uuid4().hex[:12],
    }
    for name, value in sdlc_env.items():  # this process reads the same ledger and limits
        monkeypatch.setenv(name, value)
    origins = [create_sample_repo(tmp_path / f"repo{n}") for n in range(1, REPOSITORIES + 1)]

    # 1. A second Prefect server, on PostgreSQL, with its own home and port.
    server_settings = SdlcSettings(data_dir=tmp_path / "server", prefect_port=free_port())
    with monkeypatch.context() as server_env:
        server_env.setenv("PREFECT_API_DATABASE_CONNECTION_URL", postgres_cluster.url("prefect", "postgresql+asyncpg"))
        if os.environ.get("XWAIT"):
            server_env.setenv("PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS", os.environ["XWAIT"])
        api_url = start_server(server_settings)
    server_log = server_settings.root / "prefect" / "server.log"
    figures["server_start_s"] = round(time.monotonic() - began, 1)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SDLC_"))}
    env.update(
        sdlc_env,
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(tmp_path / "prefect-client"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    worker_logs = [tmp_path / f"{name}.log" for name in WORKERS]
    workers: list[subprocess.Popen[bytes]] = []
    sampler: Sampler | None = None
    try:
        # 2. The deployments of prefect.yaml, and two workers taking half the runs each.
        deploy_all(env)
        figures["deploy_s"] = round(time.monotonic() - began - figures["server_start_s"], 1)
        half = str(REPOSITORIES * ITEMS_PER_REPOSITORY // len(WORKERS))
        workers = [
            start_worker(env, tmp_path, name=name, log=log, extra=("--limit", half))
            for name, log in zip(WORKERS, worker_logs)
        ]
        server_pid = int((server_settings.root / "prefect" / "server.pid").read_text())
        postmaster = int((postgres_cluster.data_dir / "postmaster.pid").read_text().split()[0])
        sampler = Sampler([w.pid for w in workers], server_pid, postmaster)
        sampler.start()

        # 3. Twenty work items at once, five per repository.
        items: dict[str, Path] = {}
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("sdlc-pipeline/sdlc-pipeline")
            runs: dict[str, str] = {}
            fired = time.monotonic()
            for r, origin in enumerate(origins, start=1):
                for i in range(1, ITEMS_PER_REPOSITORY + 1):
                    work_item = f"PG-{r}{i}"
                    items[work_item] = origin
                    request = {"work_item": work_item, "title": f"Greeting {r}.{i}", "repo": str(origin),
                               "agent": {"kind": "scripted"}, "auto_approve": True}
                    run = client.create_flow_run_from_deployment(deployment.id, parameters={"request": request})
                    runs[str(run.id)] = work_item

            # 4. Until every run is final, or say which are stuck and where.
            deadline = time.monotonic() + RUNS_TIMEOUT_SECONDS
            ids = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(i) for i in runs]))
            while True:
                flow_runs = client.read_flow_runs(flow_run_filter=ids, limit=len(runs))
                if len(flow_runs) == len(runs) and all(fr.state and fr.state.is_final() for fr in flow_runs):
                    break
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    ledger = Ledger(ledger_url)
                    stuck = []
                    for fr in sorted(flow_runs, key=lambda fr: runs[str(fr.id)]):
                        if fr.state and fr.state.is_final():
                            continue
                        row = ledger.get_work_item(runs[str(fr.id)])
                        where = f"ledger {row.state} at {row.stage}: {row.reason}" if row else "not in the ledger"
                        stuck.append(f"{runs[str(fr.id)]} ({fr.id}): {fr.state_name} {fr.state.message if fr.state else ''}; {where}")
                    exited = [f"{name} exited {w.returncode}" for name, w in zip(WORKERS, workers) if w.poll() is not None]
                    pytest.fail(
                        f"{len(stuck)} of {len(runs)} runs not final after {time.monotonic() - fired:.0f} s"
                        f"{'; ' + ', '.join(exited) if exited else ''}:\n" + "\n".join(stuck) + "\n"
                        + "\n".join(tail(log) for log in worker_logs) + "\n" + tail(server_log, 2000)
                    )
                time.sleep(1)
            figures["runs_s"] = round(time.monotonic() - fired, 1)
            not_completed = [
                f"{runs[str(fr.id)]}: {fr.state_name} {fr.state.message if fr.state else ''}"
                for fr in flow_runs if fr.state_name != "Completed"
            ]
            assert not not_completed, "\n".join(not_completed) + "\n" + "\n".join(tail(log) for log in worker_logs)

            # 5b. The limits are on the server, sized from configuration, and every slot is back.
            limits = {}
            for origin in origins:
                limits.update(agent_limits(main_clone_path(str(origin)).name, "scripted", SdlcSettings()))
            assert len(limits) == REPOSITORIES + 1
            for name, size in limits.items():
                limit = client.read_global_concurrency_limit_by_name(name)
                assert (limit.limit, limit.active_slots) == (size, 0), name
        sampler.halt.set()
    finally:
        if sampler is not None:
            sampler.halt.set()
        for worker in workers:
            stop_worker(worker)
        stop_server(server_settings)

    # 5. Every work item done, on its own branch and worktree, merged once, each role run once.
    ledger = Ledger(ledger_url)
    rows = {row.id: row for row in ledger.list_work_items()}
    assert sorted(rows) == sorted(items)
    assert {row.id: row.state for row in rows.values() if row.state != "done"} == {}
    assert len({row.branch for row in rows.values()}) == len(items)

    intervals: list[tuple[datetime, datetime]] = []
    by_repo: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    worktree_of: dict[str, str] = {}
    for work_item, origin in items.items():
        agent_runs = ledger.agent_runs(work_item)
        assert Counter(run.role for run in agent_runs) == Counter(ROLES), work_item
        assert all(run.exit_code == 0 and run.ended_at is not None for run in agent_runs), work_item
        # The agent log's first line names the worktree the agent ran in.
        paths = {re.search(r" in (\S+): ", Path(run.log_path).read_text().splitlines()[0]).group(1) for run in agent_runs}  # type: ignore[union-attr]
        assert len(paths) == 1, (work_item, paths)
        worktree_of[work_item] = paths.pop()
        for run in agent_runs:
            assert run.ended_at is not None
            intervals.append((run.started_at, run.ended_at))
            by_repo[str(origin)].append((run.started_at, run.ended_at))
        (pr,) = ledger.pull_requests(work_item)
        assert (pr.state, pr.branch, pr.number) == ("merged", rows[work_item].branch, rows[work_item].pr_number)
    assert len(set(worktree_of.values())) == len(items), worktree_of

    for origin in origins:
        mine = [w for w, o in items.items() if o == origin]
        numbers = sorted(rows[w].pr_number for w in mine)
        assert numbers == list(range(1, ITEMS_PER_REPOSITORY + 1)), (origin, numbers)
        merges = subprocess.run(
            ["git", "-C", str(origin), "log", "--merges", "--first-parent", "--format=%s", "main"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
        expected = sorted(f"Merge pull request #{rows[w].pr_number} from {rows[w].branch}" for w in mine)
        assert sorted(merges) == expected, (origin, merges)

    # 5c. Both workers ran flow runs, and each run was submitted by exactly one worker.
    submitted: dict[str, set[str]] = defaultdict(set)
    for name, log in zip(WORKERS, worker_logs):
        for worker_name, run_id in SUBMITTED.findall(log.read_text(errors="replace")):
            assert worker_name == name
            submitted[run_id].add(name)
    assert sorted(submitted) == sorted(runs), "\n".join(tail(log) for log in worker_logs)
    assert all(len(names) == 1 for names in submitted.values())
    per_worker = Counter(name for names in submitted.values() for name in names)
    assert set(per_worker) == set(WORKERS), per_worker

    # 5d. The limits held: never more than 4 scripted agents at once, nor 2 in one repository.
    overall = most_at_once(intervals)
    per_repo = {origin: most_at_once(spans) for origin, spans in by_repo.items()}
    assert overall <= PROVIDER_LIMIT, overall
    assert max(per_repo.values()) <= REPO_LIMIT, per_repo
    assert overall > 1  # and agents of different work items did run side by side

    figures.update(
        total_s=round(time.monotonic() - began, 1),
        most_agents_at_once=overall,
        agent_seconds=round(sum((e - b).total_seconds() for b, e in intervals), 1),
        agents_span_s=round((max(e for _, e in intervals) - min(b for b, _ in intervals)).total_seconds(), 1),
        most_per_repository=max(per_repo.values()),
        runs_per_worker=dict(per_worker),
        peak_rss_mib=sampler.mib() if sampler else None,
        peak_worker_tree_processes=sampler.peak_processes if sampler else None,
    )
    print("postgres e2e figures:", json.dumps(figures))
