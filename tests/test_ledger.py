"""The ledger on a real SQLite file: work items, transitions, attempts, PR numbers, concurrency."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from gitrepo import isolate, make_origin

from sdlc.models import AgentResult, WorkItemRequest, WorkItemState
from sdlc.settings import get_settings
from tasks.ledger import Ledger, UnknownWorkItem


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


@pytest.fixture()
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ledger.db'}")


def _request(tmp_path: Path, work_item: str = "ET-1", title: str = "Add a thing") -> WorkItemRequest:
    origin = tmp_path / "origin.git"
    if not origin.exists():
        make_origin(tmp_path)
    return WorkItemRequest(work_item=work_item, title=title, repo=str(origin))


def _result(role: str, attempt: int, exit_code: int = 0) -> AgentResult:
    start = datetime.now(timezone.utc)
    return AgentResult(
        role=role,
        attempt=attempt,
        exit_code=exit_code,
        duration_seconds=1.5,
        log_path="/tmp/log",
        started_at=start,
        ended_at=start + timedelta(seconds=1.5),
    )


def test_sqlite_file_is_created_with_wal(ledger: Ledger, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "nested" / "dir" / "ledger.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_work_item_lifecycle(ledger: Ledger, tmp_path: Path) -> None:
    request = _request(tmp_path)
    ledger.upsert_work_item(request, flow_run_id="run-1")
    row = ledger.get_work_item("ET-1")
    assert row is not None
    assert row.state == WorkItemState.running.value
    assert row.branch == "feature/ET-1-add-a-thing"
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset() == timedelta(0)

    ledger.record_transition("ET-1", from_stage=None, to_stage="analysis", reason="started")
    ledger.record_transition("ET-1", from_stage="analysis", to_stage="development", reason="approved")
    ledger.set_state("ET-1", WorkItemState.waiting_approval, reason="waiting for a person")
    row = ledger.get_work_item("ET-1")
    assert row is not None
    assert row.stage == "development"
    assert row.state == "waiting_approval"
    assert row.reason == "waiting for a person"
    assert [(t.from_stage, t.to_stage) for t in ledger.transitions("ET-1")] == [
        (None, "analysis"),
        ("analysis", "development"),
    ]
    assert all(t.at.tzinfo is not None for t in ledger.transitions("ET-1"))

    # Starting again refreshes the row and makes it running.
    ledger.upsert_work_item(_request(tmp_path, title="Add a better thing"), flow_run_id="run-2")
    row = ledger.get_work_item("ET-1")
    assert row is not None
    assert (row.title, row.flow_run_id, row.state) == ("Add a better thing", "run-2", "running")
    assert row.stage == "development"

    ledger.set_pull_request("ET-1", 3, "local:///x/pulls/3")
    row = ledger.get_work_item("ET-1")
    assert row is not None and (row.pr_number, row.pr_url) == (3, "local:///x/pulls/3")
    assert [r.id for r in ledger.list_work_items()] == ["ET-1"]
    assert ledger.get_work_item("ET-99") is None
    with pytest.raises(UnknownWorkItem):
        ledger.set_state("ET-99", WorkItemState.done)


def test_attempts_are_numbered_per_role(ledger: Ledger) -> None:
    assert ledger.count_agent_runs("ET-2", "developer") == 0
    assert ledger.start_agent_run("ET-2", stage="development", role="developer", log_path="a", flow_run_id=None)[1] == 1
    assert ledger.start_agent_run("ET-2", stage="review", role="reviewer", log_path="b", flow_run_id=None)[1] == 1
    run_id, attempt = ledger.start_agent_run(
        "ET-2", stage="development", role="developer", log_path="c", flow_run_id="fr"
    )
    assert attempt == 2
    assert ledger.start_agent_run("ET-3", stage="development", role="developer", log_path="d", flow_run_id=None)[1] == 1
    assert ledger.count_agent_runs("ET-2", "developer") == 2
    assert ledger.count_agent_runs("ET-2", "reviewer") == 1

    ledger.finish_agent_run(run_id, _result("developer", 2, exit_code=3))
    runs = ledger.agent_runs("ET-2")
    assert [(r.role, r.attempt) for r in runs] == [("developer", 1), ("reviewer", 1), ("developer", 2)]
    finished = runs[-1]
    assert finished.exit_code == 3
    assert finished.duration_seconds == 1.5
    assert finished.ended_at is not None and finished.ended_at.tzinfo is not None
    assert finished.flow_run_id == "fr"


def test_pull_request_numbers_and_merge(ledger: Ledger) -> None:
    first = ledger.create_pull_request(
        repo="/r", branch="feature/a", base="main", title="A", body="", work_item="ET-1", url_prefix="local:///r"
    )
    again = ledger.create_pull_request(
        repo="/r", branch="feature/a", base="main", title="A", body="", work_item="ET-1", url_prefix="local:///r"
    )
    second = ledger.create_pull_request(
        repo="/r", branch="feature/b", base="main", title="B", body="", work_item="ET-2", url_prefix="local:///r"
    )
    other_repo = ledger.create_pull_request(
        repo="/s", branch="feature/a", base="main", title="A", body="", work_item="ET-3", url_prefix="local:///s"
    )
    assert (first.number, again.number, second.number, other_repo.number) == (1, 1, 2, 1)
    assert first.url == "local:///r/pulls/1"
    found = ledger.find_open_pull_request("/r", "feature/b")
    assert found is not None and found.number == 2

    merged = ledger.mark_pull_request_merged("/r", 1, "abc123")
    assert (merged.state, merged.merge_commit) == ("merged", "abc123")
    assert merged.merged_at is not None and merged.merged_at.tzinfo is not None
    assert ledger.find_open_pull_request("/r", "feature/a") is None
    assert ledger.mark_pull_request_merged("/r", 1, "other").merge_commit == "abc123"
    assert [p.number for p in ledger.pull_requests("ET-1")] == [1]


def test_two_threads_write_concurrently(ledger: Ledger) -> None:
    errors: list[BaseException] = []
    attempts: list[int] = []
    lock = threading.Lock()

    def work(stage: str) -> None:
        try:
            for _ in range(40):
                run_id, attempt = ledger.start_agent_run(
                    "ET-7", stage=stage, role="developer", log_path="x", flow_run_id=None
                )
                ledger.finish_agent_run(run_id, _result("developer", attempt))
                ledger.create_pull_request(
                    repo="/r", branch=f"feature/{stage}", base="main", title=stage, body="",
                    work_item="ET-7", url_prefix="local:///r",
                )
                with lock:
                    attempts.append(attempt)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(attempts) == list(range(1, 81))  # each attempt number handed out once
    assert ledger.count_agent_runs("ET-7", "developer") == 80
    assert sorted(p.number for p in ledger.pull_requests("ET-7")) == [1, 2]


def test_from_settings_follows_data_dir(_isolated: Path) -> None:
    ledger = Ledger.from_settings()
    assert ledger.url == get_settings().resolved_ledger_url
    assert (_isolated / "ledger.db").exists()
    assert Ledger.from_settings().engine is ledger.engine  # cached per URL


def make_old_ledger(url: str) -> None:
    """The ledger's tables as an older version made them: no base_sha, budget_usd, visit, session_id, ..."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    text_column = sa.String
    work_item = sa.Table(
        "work_item", meta,
        sa.Column("id", text_column, primary_key=True),
        sa.Column("title", text_column, nullable=False),
        sa.Column("description", text_column, nullable=False),
        sa.Column("repo", text_column, nullable=False),
        sa.Column("branch", text_column, nullable=False),
        sa.Column("stage", text_column),
        sa.Column("state", text_column, nullable=False),
        sa.Column("reason", text_column),
        sa.Column("flow_run_id", text_column),
        sa.Column("pr_number", sa.Integer),
        sa.Column("pr_url", text_column),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    agent_run = sa.Table(
        "agent_run", meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("work_item_id", text_column, nullable=False),
        sa.Column("stage", text_column, nullable=False),
        sa.Column("role", text_column, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("log_path", text_column, nullable=False),
        sa.Column("timed_out", sa.Boolean, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    meta.create_all(engine)
    with engine.begin() as connection:
        connection.execute(work_item.insert().values(
            id="ET-3", title="Old item", description="", repo="/srv/origin.git", branch="feature/ET-3-old",
            stage="review", state="running", reason="made before base_sha", created_at=at, updated_at=at,
        ))
        connection.execute(agent_run.insert().values(
            work_item_id="ET-3", stage="development", role="developer", attempt=1, exit_code=0, log_path="/tmp/d.log",
            timed_out=False, started_at=at,
        ))
    engine.dispose()


def check_old_ledger_is_brought_up_to_date(url: str) -> None:
    """Opening an old ledger adds the columns it lacks; its rows read back, new writes work."""
    import sqlalchemy as sa

    from tasks.ledger import AgentRunRecord, WorkItemRecord

    make_old_ledger(url)
    ledger = Ledger(url)
    inspector = sa.inspect(ledger.engine)
    for model in (WorkItemRecord, AgentRunRecord):
        table = model.__table__  # type: ignore[attr-defined]
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())
    assert "ix_agent_run_visit" in {index["name"] for index in inspector.get_indexes("agent_run")}

    row = ledger.get_work_item("ET-3")
    assert row is not None and (row.title, row.stage, row.reason) == ("Old item", "review", "made before base_sha")
    assert row.base_sha is None and row.budget_usd is None
    assert row.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    (old_run,) = ledger.agent_runs("ET-3")
    assert (old_run.role, old_run.attempt, old_run.visit, old_run.session_id) == ("developer", 1, None, None)

    sha = "a" * 40
    assert ledger.set_base_sha("ET-3", sha) == sha
    assert ledger.set_base_sha("ET-3", "b" * 40) == sha  # recorded once, never moved
    assert ledger.get_work_item("ET-3").base_sha == sha  # type: ignore[union-attr]
    run_id, attempt = ledger.start_agent_run(
        "ET-3", stage="development", role="developer", log_path="/tmp/d2.log", flow_run_id=None, visit="development-2"
    )
    assert attempt == 2 and [r.visit for r in ledger.visit_runs("ET-3", "developer", "development-2")] == ["development-2"]
    # A second process opening the same ledger finds nothing left to add.
    from tasks.ledger import _build_engine

    _build_engine(url).dispose()


def test_a_ledger_made_before_new_columns_gets_them_and_keeps_its_rows(tmp_path: Path) -> None:
    check_old_ledger_is_brought_up_to_date(f"sqlite:///{tmp_path / 'old-ledger.db'}")
