"""The ledger: what sdlc-flows knows about work items, outside Prefect's own database.

Prefect keeps flow and task runs; the ledger keeps the product's view of them
(a work item's stage and state, every stage transition, every agent run with its
attempt number, and the pull requests of the local forge), so that ``sdlc
status``, retry budgets and the forge survive restarts and can be read by any
process. SQLite by default (WAL, long busy timeout, every transaction ``BEGIN
IMMEDIATE`` so concurrent writers queue instead of failing); any SQLAlchemy URL
works, PostgreSQL (``postgresql+psycopg://``) when several machines share it.
The schema is versioned with Alembic (``tasks/ledger_migrations``): every process
brings the ledger up to its newest revision on first use, under a lock (PostgreSQL's
advisory lock, a file lock beside an SQLite file) so processes starting at once
upgrade it once, and refuses a ledger a newer sdlc has upgraded.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, UniqueConstraint, event, func, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from sdlc.models import AgentResult, WorkItemRequest, WorkItemState
from sdlc.settings import get_settings
from tasks.ledger_migrations.upgrade import upgrade_ledger

SQLITE_BUSY_TIMEOUT_MS = 30000
# Key of the PostgreSQL advisory lock held while a process creates or upgrades the ledger's tables.
SCHEMA_LOCK_KEY = 0x5D1C_1ED6
SCHEMA_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always returns timezone-aware UTC (SQLite drops tzinfo on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class UnknownWorkItem(LookupError):
    """The ledger has no row for this work item ID."""


class UnknownPullRequest(LookupError):
    """The ledger has no pull request with this repo and number."""


class WorkItemRecord(SQLModel, table=True):
    __tablename__ = "work_item"

    id: str = Field(primary_key=True, description="Work item ID, e.g. ET-12.")
    title: str
    description: str = ""
    repo: str
    branch: str
    stage: str | None = None
    state: str = Field(default=WorkItemState.running.value, index=True)
    reason: str | None = None
    flow_run_id: str | None = None
    pr_number: int | None = None
    pr_url: str | None = None
    budget_usd: float | None = None
    base_sha: str | None = Field(
        default=None,
        description="Origin's default branch when the work item started: where its gates and prompts come from.",
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TrackerLinkRecord(SQLModel, table=True):
    """Which tracker item a work item is (B50): webhooks name the tracker's id, the pipeline ours."""

    __tablename__ = "tracker_link"

    work_item_id: str = Field(primary_key=True)
    tracker: str
    tracker_item_id: str = Field(index=True)
    credentials_block: str


class StageTransitionRecord(SQLModel, table=True):
    __tablename__ = "stage_transition"

    id: int | None = Field(default=None, primary_key=True)
    work_item_id: str = Field(index=True)
    from_stage: str | None = None
    to_stage: str
    reason: str = ""
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AgentRunRecord(SQLModel, table=True):
    __tablename__ = "agent_run"

    id: int | None = Field(default=None, primary_key=True)
    work_item_id: str = Field(index=True)
    stage: str
    role: str
    attempt: int
    exit_code: int | None = None
    duration_seconds: float | None = None
    log_path: str = ""
    timed_out: bool = False
    error: str | None = None
    flow_run_id: str | None = None
    visit: str | None = Field(default=None, index=True)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failure_kind: str | None = None
    failure_reason: str | None = None
    retry_after_seconds: float | None = None
    retry_not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    session_id: str | None = None
    sandbox: str | None = None
    process_group: int | None = Field(
        default=None, description="The running agent's process group (ended if its driver died)."
    )
    process_started: int | None = Field(
        default=None, description="Its start time in clock ticks since boot: a reused pid is not it."
    )


# Fields an AgentResult brings to its record when the run ends.
_RESULT_FIELDS = (
    "exit_code",
    "duration_seconds",
    "timed_out",
    "error",
    "ended_at",
    "failure_kind",
    "failure_reason",
    "retry_after_seconds",
    "retry_not_before",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "num_turns",
    "session_id",
    "sandbox",
)


class WebhookDeliveryRecord(SQLModel, table=True):
    """A webhook delivery already seen: the same delivery id never starts anything twice (B61)."""

    __tablename__ = "webhook_delivery"

    key: str = Field(primary_key=True, description="<source>:<delivery id>")
    event: str = ""
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PullRequestRecord(SQLModel, table=True):
    __tablename__ = "pull_request"
    __table_args__ = (UniqueConstraint("repo", "number", name="uq_pull_request_repo_number"),)

    id: int | None = Field(default=None, primary_key=True)
    repo: str = Field(index=True)
    number: int
    branch: str
    base: str
    title: str
    body: str = ""
    state: str = Field(default="open", description="open, merged or closed")
    url: str
    merge_commit: str | None = None
    work_item_id: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    merged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        _upgraded_or_disposed(engine, None)
        return engine

    sqlite_file = _sqlite_file(url)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    if sqlite_file is None:
        # An in-memory database exists once per connection: share one across threads.
        kwargs["poolclass"] = StaticPool
    else:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if sqlite_file is not None:
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL syncs at checkpoints, not at every commit: the file stays
                # consistent through a crash, and only a power loss can take back the last
                # commits (as for the Prefect server's own SQLite). A stage commits about ten times.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads and then
        # writes fails at once with "database is locked" under concurrent writers.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    _upgraded_or_disposed(engine, sqlite_file)
    return engine


def _upgraded_or_disposed(engine: Engine, sqlite_file: Path | None) -> None:
    """Bring the new engine's ledger to this code's schema; an engine refused is not left open."""
    try:
        _upgrade_schema(engine, sqlite_file)
    except BaseException:
        engine.dispose()
        raise


def _upgrade_schema(engine: Engine, sqlite_file: Path | None) -> None:
    """Create or upgrade the ledger's schema once, however many processes start at once.

    PostgreSQL's DDL is transactional: one transaction-scoped advisory lock makes the
    others wait, then find the ledger at the head revision. An SQLite file is guarded by
    a file lock beside it (its own write lock is not taken until the transaction's
    first statement, and a busy database is tried again); an in-memory one belongs to
    this process alone.
    """
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            upgrade_ledger(connection)
        return
    with _schema_file_lock(sqlite_file):
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                with engine.begin() as connection:
                    upgrade_ledger(connection)
                return
            except DBAPIError:
                if attempt == SCHEMA_ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)


@contextmanager
def _schema_file_lock(sqlite_file: Path | None) -> Iterator[None]:
    """Hold ``<ledger>.lock`` exclusively (``flock``): one process at a time upgrades an SQLite ledger."""
    if sqlite_file is None:
        yield
        return
    with open(sqlite_file.with_name(sqlite_file.name + ".lock"), "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def engine_for(url: str) -> Engine:
    """One engine (and one schema check or upgrade) per URL per process; cheap after the first call."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        sqlite_file = _sqlite_file(url)
        if engine is not None and sqlite_file is not None and not sqlite_file.exists():
            # The database file was removed (e.g. a reset data dir): start again.
            engine.dispose()
            engine = None
        if engine is None:
            engine = _build_engine(url)
            _ENGINES[url] = engine
        return engine


_Row = TypeVar("_Row", StageTransitionRecord, AgentRunRecord, PullRequestRecord)


class Ledger:
    """Read and write the ledger; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    @classmethod
    def from_settings(cls) -> Ledger:
        return cls(get_settings().resolved_ledger_url)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # Work items -----------------------------------------------------------------

    def upsert_work_item(self, request: WorkItemRequest, *, flow_run_id: str | None) -> None:
        """Register a work item, or refresh it when it is started again; state becomes running."""
        now = utcnow()
        with self._session() as session:
            row = session.get(WorkItemRecord, request.work_item)
            if row is None:
                row = WorkItemRecord(
                    id=request.work_item,
                    title=request.title,
                    description=request.description,
                    repo=request.repo,
                    branch=request.feature_branch,
                    state=WorkItemState.running.value,
                    flow_run_id=flow_run_id,
                    budget_usd=request.budget_usd,
                    created_at=now,
                    updated_at=now,
                )
            else:
                row.budget_usd = request.budget_usd
                row.title = request.title
                row.description = request.description
                row.repo = request.repo
                row.branch = request.feature_branch
                row.flow_run_id = flow_run_id
                row.state = WorkItemState.running.value
                row.reason = None
                row.updated_at = now
            session.add(row)
            session.commit()

    def _require(self, session: Session, work_item: str) -> WorkItemRecord:
        row = session.get(WorkItemRecord, work_item)
        if row is None:
            raise UnknownWorkItem(f"work item {work_item} is not in the ledger")
        return row

    def set_state(
        self, work_item: str, state: WorkItemState, *, stage: str | None = None, reason: str | None = None
    ) -> None:
        with self._session() as session:
            row = self._require(session, work_item)
            row.state = WorkItemState(state).value
            if stage is not None:
                row.stage = stage
            if reason is not None:
                row.reason = reason
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def record_transition(self, work_item: str, *, from_stage: str | None, to_stage: str, reason: str) -> None:
        """Append a transition and move the work item to ``to_stage`` in one transaction."""
        now = utcnow()
        with self._session() as session:
            row = self._require(session, work_item)
            session.add(
                StageTransitionRecord(
                    work_item_id=work_item, from_stage=from_stage, to_stage=to_stage, reason=reason, at=now
                )
            )
            row.stage = to_stage
            row.reason = reason
            row.updated_at = now
            session.add(row)
            session.commit()

    def set_budget(self, work_item: str, budget_usd: float) -> None:
        with self._session() as session:
            row = self._require(session, work_item)
            row.budget_usd = budget_usd
            session.add(row)
            session.commit()

    def set_base_sha(self, work_item: str, sha: str) -> str:
        """Record the commit the work item started from, once: a sha already recorded stays; returns the recorded one."""
        with self._session() as session:
            row = self._require(session, work_item)
            if row.base_sha is not None:
                return row.base_sha
            row.base_sha = sha
            session.add(row)
            session.commit()
            return sha

    def set_pull_request(self, work_item: str, number: int, url: str) -> None:
        with self._session() as session:
            row = self._require(session, work_item)
            row.pr_number = number
            row.pr_url = url
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def link_tracker_item(self, work_item: str, tracker: str, tracker_item_id: str, credentials_block: str) -> None:
        with self._session() as session:
            row = session.get(TrackerLinkRecord, work_item) or TrackerLinkRecord(
                work_item_id=work_item,
                tracker=tracker,
                tracker_item_id=tracker_item_id,
                credentials_block=credentials_block,
            )
            row.tracker, row.tracker_item_id, row.credentials_block = tracker, tracker_item_id, credentials_block
            session.add(row)
            session.commit()

    def tracker_link(self, work_item: str) -> TrackerLinkRecord | None:
        """The tracker item the work item is linked to: spares the tracker sync looking it up again."""
        with self._session() as session:
            return session.get(TrackerLinkRecord, work_item)

    def work_item_of_tracker_item(self, tracker: str, tracker_item_id: str) -> TrackerLinkRecord | None:
        with self._session() as session:
            statement = select(TrackerLinkRecord).where(
                TrackerLinkRecord.tracker == tracker, TrackerLinkRecord.tracker_item_id == tracker_item_id
            )
            return session.exec(statement).first()

    def get_work_item(self, work_item: str) -> WorkItemRecord | None:
        with self._session() as session:
            return session.get(WorkItemRecord, work_item)

    def list_work_items(self) -> list[WorkItemRecord]:
        """All work items, oldest first."""
        with self._session() as session:
            return list(
                session.exec(select(WorkItemRecord).order_by(col(WorkItemRecord.created_at), col(WorkItemRecord.id)))
            )

    def _rows_of(self, model: type[_Row], work_item: str) -> list[_Row]:
        """A work item's rows of one table, in the order they were written."""
        with self._session() as session:
            query = select(model).where(model.work_item_id == work_item).order_by(col(model.id))
            return list(session.exec(query))

    def transitions(self, work_item: str) -> list[StageTransitionRecord]:
        return self._rows_of(StageTransitionRecord, work_item)

    # Agent runs -----------------------------------------------------------------

    def count_agent_runs(self, work_item: str, role: str) -> int:
        with self._session() as session:
            return self._count_runs(session, work_item, role)

    @staticmethod
    def _count_runs(session: Session, work_item: str, role: str) -> int:
        query = (
            select(func.count())
            .select_from(AgentRunRecord)
            .where(AgentRunRecord.work_item_id == work_item, AgentRunRecord.role == role)
        )
        return int(session.exec(query).one())

    def start_agent_run(
        self, work_item: str, *, stage: str, role: str, log_path: str, flow_run_id: str | None, visit: str | None = None
    ) -> tuple[int, int]:
        """Record the start of a run; returns (run id, attempt), attempt counted per role and work item."""
        with self._session() as session:
            attempt = self._count_runs(session, work_item, role) + 1
            record = AgentRunRecord(
                work_item_id=work_item,
                stage=stage,
                role=role,
                attempt=attempt,
                log_path=log_path,
                flow_run_id=flow_run_id,
                visit=visit,
                started_at=utcnow(),
            )
            session.add(record)
            session.commit()
            assert record.id is not None
            return record.id, attempt

    def finish_agent_run(self, run_id: int, result: AgentResult) -> None:
        with self._session() as session:
            record = session.get(AgentRunRecord, run_id)
            if record is None:
                raise LookupError(f"agent run {run_id} is not in the ledger")
            for name in _RESULT_FIELDS:
                setattr(record, name, getattr(result, name))
            if result.log_path:
                record.log_path = result.log_path
            session.add(record)
            session.commit()

    def record_process_group(self, run_id: int, process_group: int, started: int | None) -> None:
        """Where a running agent is, so a later run can end it if its driver dies first."""
        with self._session() as session:
            record = session.get(AgentRunRecord, run_id)
            if record is None:
                raise LookupError(f"agent run {run_id} is not in the ledger")
            record.process_group = process_group
            record.process_started = started
            session.add(record)
            session.commit()

    def unfinished_agent_runs(self, work_item: str) -> list[AgentRunRecord]:
        """Runs that started a process and never recorded an end: their driver died."""
        return [run for run in self.agent_runs(work_item) if run.ended_at is None and run.process_group is not None]

    def end_abandoned_run(self, run_id: int, reason: str) -> None:
        with self._session() as session:
            record = session.get(AgentRunRecord, run_id)
            if record is None:
                return
            record.ended_at = utcnow()
            record.duration_seconds = round((record.ended_at - record.started_at).total_seconds(), 3)
            record.error = reason  # no failure kind: a dead driver spends none of the agent's budgets
            session.add(record)
            session.commit()

    def agent_runs(self, work_item: str) -> list[AgentRunRecord]:
        return self._rows_of(AgentRunRecord, work_item)

    def spend_by_stage(self, work_item: str) -> dict[str, float]:
        """Reported agent cost per stage, in the order the stages first spent (B34)."""
        spent: dict[str, float] = {}
        for run in self.agent_runs(work_item):
            if run.cost_usd:
                spent[run.stage] = spent.get(run.stage, 0.0) + run.cost_usd
        return spent

    def visit_runs(self, work_item: str, role: str, visit: str) -> list[AgentRunRecord]:
        """The runs of one role within one stage visit, oldest first: what the retry budgets count."""
        with self._session() as session:
            query = (
                select(AgentRunRecord)
                .where(
                    AgentRunRecord.work_item_id == work_item, AgentRunRecord.role == role, AgentRunRecord.visit == visit
                )
                .order_by(AgentRunRecord.id)  # type: ignore[arg-type]
            )
            return list(session.exec(query))

    def remember_delivery(self, source: str, delivery_id: str, event: str) -> bool:
        """Record a webhook delivery; False when it was seen before."""
        with self._session() as session:
            key = f"{source}:{delivery_id}"
            if session.get(WebhookDeliveryRecord, key) is not None:
                return False
            session.add(WebhookDeliveryRecord(key=key, event=event))
            try:
                session.commit()
            except IntegrityError:
                return False
            return True

    # Pull requests of the local forge ------------------------------------------------

    def find_open_pull_request(self, repo: str, branch: str) -> PullRequestRecord | None:
        with self._session() as session:
            return self._open_pull_request(session, repo, branch)

    @staticmethod
    def _open_pull_request(session: Session, repo: str, branch: str) -> PullRequestRecord | None:
        query = (
            select(PullRequestRecord)
            .where(
                PullRequestRecord.repo == repo, PullRequestRecord.branch == branch, PullRequestRecord.state == "open"
            )
            .order_by(col(PullRequestRecord.number))
        )
        return session.exec(query).first()

    def create_pull_request(
        self,
        *,
        repo: str,
        branch: str,
        base: str,
        title: str,
        body: str,
        work_item: str,
        url_prefix: str,
    ) -> PullRequestRecord:
        """Open a PR numbered after the repo's highest; an already open PR for the branch is returned instead.

        The check and the insert share one transaction; where the database lets two
        run at once, the (repo, number) unique constraint makes one of them fail
        with ``IntegrityError`` and the caller re-reads.
        """
        with self._session() as session:
            existing = self._open_pull_request(session, repo, branch)
            if existing is not None:
                return existing
            highest = session.exec(
                select(func.max(PullRequestRecord.number)).where(PullRequestRecord.repo == repo)
            ).one()
            number = int(highest or 0) + 1
            record = PullRequestRecord(
                repo=repo,
                number=number,
                branch=branch,
                base=base,
                title=title,
                body=body,
                state="open",
                url=f"{url_prefix}/pulls/{number}",
                work_item_id=work_item,
                created_at=utcnow(),
            )
            session.add(record)
            session.commit()
            return record

    def get_pull_request(self, repo: str, number: int) -> PullRequestRecord | None:
        with self._session() as session:
            query = select(PullRequestRecord).where(PullRequestRecord.repo == repo, PullRequestRecord.number == number)
            return session.exec(query).first()

    def mark_pull_request_merged(self, repo: str, number: int, merge_commit: str) -> PullRequestRecord:
        """Record the merge; a PR already marked merged is returned unchanged."""
        with self._session() as session:
            query = select(PullRequestRecord).where(PullRequestRecord.repo == repo, PullRequestRecord.number == number)
            record = session.exec(query).first()
            if record is None:
                raise UnknownPullRequest(f"pull request #{number} of {repo} is not in the ledger")
            if record.state == "merged":
                return record
            record.state = "merged"
            record.merge_commit = merge_commit
            record.merged_at = utcnow()
            session.add(record)
            session.commit()
            return record

    def update_pull_request_body(self, repo: str, number: int, body_of: Callable[[str], str]) -> bool:
        """Replace the PR's body with ``body_of(current body)`` in one transaction; False when unchanged."""
        with self._session() as session:
            query = select(PullRequestRecord).where(PullRequestRecord.repo == repo, PullRequestRecord.number == number)
            record = session.exec(query.with_for_update()).first()
            if record is None:
                raise UnknownPullRequest(f"pull request #{number} of {repo} is not in the ledger")
            body = body_of(record.body)
            if body == record.body:
                return False
            record.body = body
            session.add(record)
            session.commit()
            return True

    def pull_requests(self, work_item: str) -> list[PullRequestRecord]:
        return self._rows_of(PullRequestRecord, work_item)
