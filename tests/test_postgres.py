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
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from gitrepo import free_port
from operating import check_done_apart, deploy_all, most_at_once, start_worker, stop_worker
from postgres import PostgresCluster, postgres_cluster  # noqa: F401 - the fixture
from demo.sample import create_sample_repo
from sdlc.settings import SdlcSettings

REPOSITORIES = 4
ITEMS_PER_REPOSITORY = 5
PROVIDER_LIMIT = 4
REPO_LIMIT = 2
WORKERS = ("sdlc-pg-a", "sdlc-pg-b")
RUNS_TIMEOUT_SECONDS = 480  # five per repository merging together: merged code is judged again (issue 16)
SUBMITTED = re.compile(r"Worker '([^']+)' submitting flow run '([0-9a-f-]{36})'")
ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


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


def test_a_ledger_made_before_new_columns_gets_them_on_postgresql(
    postgres_cluster: PostgresCluster,  # noqa: F811
) -> None:
    from test_ledger import check_old_ledger_is_brought_up_to_date

    postgres_cluster.create_database("ledger_old")
    check_old_ledger_is_brought_up_to_date(postgres_cluster.url("ledger_old"))


class Sampler(threading.Thread):
    """Once a second: peak memory (sums of RSS and of PSS) and CPU time of the workers with their flow
    runs and agents, of the server, and of PostgreSQL; and which worker each process ran under."""

    def __init__(self, workers: list[int], *, server: int, postmaster: int) -> None:
        super().__init__(daemon=True)
        self.groups = {"workers": workers, "server": [server], "postgres": [postmaster]}
        self.peak = dict.fromkeys(self.groups, 0)
        self.peak_pss = dict.fromkeys(self.groups, 0)
        self.cpu = dict.fromkeys(self.groups, 0.0)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.peak_processes = 0
        self.seen_under: dict[int, int] = {}  # every process seen below a worker -> that worker's pid
        self.halt = threading.Event()

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
                pids = [pid for root in roots for pid in self._tree([root], children)]
                memory = [self._memory(pid) for pid in pids]
                self.peak[group] = max(self.peak[group], sum(rss for rss, _ in memory))
                self.peak_pss[group] = max(self.peak_pss[group], sum(pss for _, pss in memory))
                # CPU so far: the roots with their reaped children, plus the live descendants.
                ticks = sum(self._ticks(pid, with_children=pid in roots) for pid in pids)
                self.cpu[group] = max(self.cpu[group], ticks / self.hz)
                if group == "workers":
                    self.peak_processes = max(self.peak_processes, len(pids))
                    for root in roots:
                        self.seen_under.update(dict.fromkeys(self._tree([root], children), root))

    @staticmethod
    def _tree(roots: Iterable[int], children: dict[int, list[int]]) -> Iterator[int]:
        stack = list(roots)
        while stack:
            pid = stack.pop()
            yield pid
            stack.extend(children.get(pid, ()))

    @staticmethod
    def _ticks(pid: int, *, with_children: bool) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return sum(int(v) for v in fields[11 : 15 if with_children else 13])

    @staticmethod
    def _memory(pid: int) -> tuple[int, int]:
        """(RSS, PSS) in bytes; PSS shares each shared page among the processes mapping it, so sums add up."""
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            return 0, 0
        fields = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.MULTILINE))
        return int(fields.get("Rss", 0)) * 1024, int(fields.get("Pss", 0)) * 1024

    def mib(self) -> dict[str, dict[str, int]]:
        return {
            group: {"rss": round(self.peak[group] / 2**20), "pss": round(self.peak_pss[group] / 2**20)}
            for group in self.groups
        }


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return f"--- {path.name} (last {chars} chars) ---\n" + path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"--- {path.name}: {exc} ---"


def start_server_on_postgres(root: Path, cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> SdlcSettings:
    """A second Prefect server (not the session's), its database on the cluster, its own home and port."""
    from entrypoints.server import start_server

    settings = SdlcSettings(data_dir=root, prefect_port=free_port())
    with monkeypatch.context() as server_env:
        server_env.setenv("PREFECT_API_DATABASE_CONNECTION_URL", cluster.url("prefect", "postgresql+asyncpg"))
        start_server(settings)
    return settings


def wait_for_runs(
    client: Any, runs: dict[str, str], ledger_url: str, workers: list[subprocess.Popen[bytes]], logs: list[Path]
) -> list[Any]:
    """Every flow run final within the bound, or a failure naming the stuck ones, where they are, and the workers' logs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tasks.ledger import Ledger

    started = time.monotonic()
    ids = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(i) for i in runs]))
    while True:
        flow_runs = client.read_flow_runs(flow_run_filter=ids, limit=len(runs))
        if len(flow_runs) == len(runs) and all(fr.state and fr.state.is_final() for fr in flow_runs):
            return flow_runs
        exited = [
            f"worker {w.args[w.args.index('--name') + 1]} exited {w.returncode}"
            for w in workers
            if w.poll() is not None
        ]
        if time.monotonic() - started > RUNS_TIMEOUT_SECONDS or exited:
            ledger = Ledger(ledger_url)
            stuck = []
            for fr in sorted(flow_runs, key=lambda fr: runs[str(fr.id)]):
                if fr.state and fr.state.is_final():
                    continue
                row = ledger.get_work_item(runs[str(fr.id)])
                where = f"ledger: {row.state} at {row.stage} ({row.reason})" if row else "not in the ledger"
                stuck.append(
                    f"  {runs[str(fr.id)]} {fr.id}: {fr.state_name} {fr.state.message if fr.state else ''}; {where}"
                )
            pytest.fail(
                f"{len(stuck)} of {len(runs)} flow runs not final after {time.monotonic() - started:.0f} s"
                f"{'; ' + ', '.join(exited) if exited else ''}:\n"
                + "\n".join(stuck)
                + "\n"
                + "\n".join(tail(log) for log in logs)
            )
        time.sleep(1)


@pytest.mark.timeout(RUNS_TIMEOUT_SECONDS + 180)
@pytest.mark.xdist_group("twenty-work-items")  # one after another (Makefile)
def test_twenty_work_items_on_two_workers_with_prefect_and_the_ledger_on_postgresql(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_cluster: PostgresCluster,  # noqa: F811
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from entrypoints.server import api_url_for, stop_server
    from tasks.ledger import Ledger
    from tasks.limits import agent_limits
    from tasks.worktree import main_clone_path

    began = time.monotonic()
    figures: dict[str, Any] = {}
    ledger_url = postgres_cluster.url("ledger")
    sdlc_env = {
        "SDLC_DATA_DIR": str(tmp_path / "data"),
        "SDLC_LEDGER_URL": ledger_url,
        "SDLC_PROVIDER_CONCURRENCY": json.dumps({"scripted": PROVIDER_LIMIT}),
        "SDLC_REPO_CONCURRENCY": str(REPO_LIMIT),
        "SDLC_BREAKER_SCOPE": uuid.uuid4().hex[:12],
        # Five work items per repository reach their merge together: when main moved, only the tests judge
        # the merged code again (and the deployer), not the tester (tests/test_up_to_date.py covers that).
        "SDLC_WHEN_MAIN_MOVES": "tests",
    }
    for name, value in sdlc_env.items():  # this process reads the same ledger and limits
        monkeypatch.setenv(name, value)
    origins = [create_sample_repo(tmp_path / f"repo{n}") for n in range(1, REPOSITORIES + 1)]
    items = {f"PG-{r}{i}": origin for r, origin in enumerate(origins, 1) for i in range(1, ITEMS_PER_REPOSITORY + 1)}

    # 1. The server on PostgreSQL.
    server = start_server_on_postgres(tmp_path / "server", postgres_cluster, monkeypatch)
    api_url = api_url_for(server.prefect_port)
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
    logs = [tmp_path / f"{name}.log" for name in WORKERS]
    workers: list[subprocess.Popen[bytes]] = []
    sampler: Sampler | None = None
    try:
        # 2. The deployments of prefect.yaml, and two workers taking at most half the runs each.
        deploy_all(env)
        figures["deploy_s"] = round(time.monotonic() - began - figures["server_start_s"], 1)
        limit = str(len(items) // len(WORKERS))
        workers = [
            start_worker(env, tmp_path, name=name, log=log, extra=("--limit", limit))
            for name, log in zip(WORKERS, logs)
        ]
        sampler = Sampler(
            [w.pid for w in workers],
            server=int((server.root / "prefect" / "server.pid").read_text()),
            postmaster=int((postgres_cluster.data_dir / "postmaster.pid").read_text().split()[0]),
        )
        sampler.start()

        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            # 3. Twenty work items at once, five per repository, with the scripted agent.
            deployment = client.read_deployment_by_name("sdlc-pipeline/sdlc-pipeline")
            fired = time.monotonic()
            runs: dict[str, str] = {}
            for work_item, origin in items.items():
                request = {
                    "work_item": work_item,
                    "title": f"Greeting {work_item}",
                    "repo": str(origin),
                    "agent": {"kind": "scripted"},
                    "auto_approve": True,
                }
                run = client.create_flow_run_from_deployment(deployment.id, parameters={"request": request})
                runs[str(run.id)] = work_item

            # 4. All of them final, and completed.
            flow_runs = wait_for_runs(client, runs, ledger_url, workers, logs)
            figures["runs_s"] = round(time.monotonic() - fired, 1)
            failed = [
                f"{runs[str(fr.id)]}: {fr.state_name} {fr.state.message}"
                for fr in flow_runs
                if fr.state_name != "Completed"
            ]
            assert not failed, "\n".join(failed) + "\n" + "\n".join(tail(log) for log in logs)
            infrastructure_pid = {str(fr.id): fr.infrastructure_pid for fr in flow_runs}

            # 5a. The limits are on the server, sized from configuration, and every slot is back.
            limits: dict[str, int] = {}
            for origin in origins:
                limits.update(agent_limits(main_clone_path(str(origin)).name, "scripted", SdlcSettings()))
            assert len(limits) == REPOSITORIES + 1
            on_server = {name: client.read_global_concurrency_limit_by_name(name) for name in limits}
            assert {name: (gcl.limit, gcl.active_slots) for name, gcl in on_server.items()} == {
                name: (size, 0) for name, size in limits.items()
            }
    finally:
        if sampler is not None:
            sampler.halt.set()
            figures.update(
                peak_memory_mib=sampler.mib(),
                peak_worker_tree_processes=sampler.peak_processes,
                cpu_s={group: round(seconds) for group, seconds in sampler.cpu.items()},
            )
        for worker in workers:
            stop_worker(worker)
        stop_server(server)
        figures["total_s"] = round(time.monotonic() - began, 1)
        print("postgres e2e figures:", json.dumps(figures))

    # 5b. Every work item done, on its own branch and worktree, each role run once, each PR merged once.
    intervals, by_repo = check_done_apart(items, Ledger(ledger_url), again=("deployer",))

    # 5c. Both workers ran flow runs, each run exactly one: both may try a run, the server gives it to one.
    assert sampler is not None
    ran_by: dict[str, set[str]] = defaultdict(set)
    for name, log in zip(WORKERS, logs):
        text = log.read_text(errors="replace")
        aborted = set(ABORTED.findall(text))
        for worker_name, run_id in SUBMITTED.findall(text):
            assert worker_name == name
            if run_id not in aborted:
                ran_by[run_id].add(name)
    assert sorted(ran_by) == sorted(runs), "\n".join(tail(log) for log in logs)
    assert {runs[run_id]: names for run_id, names in ran_by.items() if len(names) != 1} == {}
    # The API agrees: each run's process (its infrastructure_pid) was seen below the worker whose log says so.
    worker_pid = {name: w.pid for name, w in zip(WORKERS, workers)}
    for run_id, (name,) in ran_by.items():
        pid = int(str(infrastructure_pid[run_id]).rsplit(":", 1)[-1])
        assert sampler.seen_under.get(pid) == worker_pid[name], (runs[run_id], name, pid)
    per_worker = Counter(name for (name,) in ran_by.values())
    assert set(per_worker) == set(WORKERS), per_worker

    # 5d. The limits held: never more than 4 scripted agents at once, nor 2 in one repository.
    overall = most_at_once(intervals)
    per_repo = max(most_at_once(spans) for spans in by_repo.values())
    print(
        "postgres e2e agents:",
        json.dumps(
            {
                "most_at_once": overall,
                "most_per_repository": per_repo,
                "runs_per_worker": per_worker,
                "agent_seconds": round(sum((e - b).total_seconds() for b, e in intervals), 1),
                "agents_span_s": round(
                    (max(e for _, e in intervals) - min(b for b, _ in intervals)).total_seconds(), 1
                ),
            }
        ),
    )
    assert overall <= PROVIDER_LIMIT
    assert per_repo <= REPO_LIMIT
    assert overall > 1  # and agents of different work items did run side by side
