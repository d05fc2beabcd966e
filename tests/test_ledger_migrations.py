"""The ledger's schema is versioned with Alembic: upgrades keep data (issue 15 item 5).

The ledgers of tests/fixtures/ledger/ were made by the code of revision 0001 (see
make_fixture.py there), on SQLite and on PostgreSQL. A test-only revision (a NOT NULL
column with a default, in a copy of the migrations directory) stands for the next
release: opening the old ledger upgrades it, and every row reads back. A ledger of a
newer sdlc is refused, two processes upgrading at once upgrade once, and a ledger made
before versioning is stamped and upgraded.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import tasks.ledger
import tasks.ledger_migrations.upgrade
from gitrepo import isolate
from postgres import SUPERUSER, PostgresCluster, postgres_cluster  # noqa: F401 - the fixture
from tasks.ledger import Ledger
from tasks.ledger_migrations import BASELINE_REVISION, MIGRATIONS_DIR, VERSION_TABLE, LedgerNewerThanCode

FIXTURES = Path(__file__).parent / "fixtures" / "ledger"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
TEST_REVISION = "test_note_column"
PROCESS_TIMEOUT_SECONDS = 120

# The next release's revision, as a test writes it into a copy of the migrations directory.
# {wait} is Python run first (to hold the lock until another process waits for it).
TEST_REVISION_SOURCE = '''"""Test only: a NOT NULL column with a default, which the ledger of revision 0001 lacks."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    {wait}
    op.add_column("work_item", sa.Column("note", sa.String(), nullable=False, server_default="none yet"))
    with open({log!r}, "a", encoding="utf-8") as log:
        log.write(f"{{os.getpid()}}\\n")


def downgrade() -> None:
    op.drop_column("work_item", "note")


def wait_for_a_waiter(lock_file: str) -> None:
    """Hold the schema lock until another process is seen waiting for it: the two really overlap."""
    bind = op.get_bind()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if bind.dialect.name == "postgresql":
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            waiting = bind.execute(sa.text(query)).scalar_one()
        else:
            inode = f":{{os.stat(lock_file).st_ino}}"
            with open("/proc/locks", encoding="ascii") as locks:
                waiting = sum(1 for line in locks if "->" in line.split() and line.split()[6].endswith(inode))
        if waiting:
            return
        time.sleep(0.02)
    raise RuntimeError("no other process came to wait for the schema lock")
'''

# What each of the racing processes runs: import, say ready, wait for "go", open the ledger.
OPEN_LEDGER = """
import json, sys
from pathlib import Path
import tasks.ledger_migrations.upgrade as upgrade
upgrade.script_location = Path(sys.argv[2])
from tasks.ledger import Ledger
print("ready", flush=True)
sys.stdin.readline()
ledger = Ledger(sys.argv[1])
print(json.dumps([item.id for item in ledger.list_work_items()]), flush=True)
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Own data dir; this process's engines of the test's ledgers closed at the end."""
    before = set(tasks.ledger._ENGINES)
    yield isolate(monkeypatch, tmp_path)
    for url in set(tasks.ledger._ENGINES) - before:
        tasks.ledger._ENGINES.pop(url).dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def old_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ledger of revision 0001 from the fixtures, as a URL: a copy of the SQLite file, or loaded into PostgreSQL."""
    if request.param == "sqlite":
        shutil.copyfile(FIXTURES / "ledger.db", tmp_path / "ledger.db")
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = f"old_{uuid.uuid4().hex[:12]}"
    cluster.create_database(name)
    with psycopg.connect(host=cluster.host, port=cluster.port, user=SUPERUSER, dbname=name, autocommit=True) as conn:
        conn.execute((FIXTURES / "ledger.postgresql.sql").read_text(encoding="utf-8").encode())
    return cluster.url(name)


def with_test_revision(tmp_path: Path, *, wait_for: str | None = None) -> tuple[Path, Path]:
    """A copy of the migrations with the test revision on top; returns (its directory, the revision's log)."""
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    log = tmp_path / "upgrades.log"
    wait = f"wait_for_a_waiter({wait_for!r})" if wait_for is not None else "pass"
    source = TEST_REVISION_SOURCE.format(revision=TEST_REVISION, down_revision=HEAD, wait=wait, log=str(log))
    (migrations / "versions" / f"{TEST_REVISION}.py").write_text(source, encoding="utf-8")
    return migrations, log


def version_of(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    finally:
        engine.dispose()


def tables_of(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def read_back(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    """Every row through the ledger's own reads, as make_fixture.py wrote them down."""
    from sqlmodel import Session, select

    from tasks.ledger import WebhookDeliveryRecord

    items = ledger.list_work_items()
    with Session(ledger.engine) as session:
        deliveries = list(session.exec(select(WebhookDeliveryRecord)))
    return {
        "work_items": [item.model_dump(mode="json") for item in items],
        "transitions": [row.model_dump(mode="json") for item in items for row in ledger.transitions(item.id)],
        "agent_runs": [row.model_dump(mode="json") for item in items for row in ledger.agent_runs(item.id)],
        "pull_requests": [row.model_dump(mode="json") for item in items for row in ledger.pull_requests(item.id)],
        "tracker_links": [link.model_dump(mode="json") for item in items if (link := ledger.tracker_link(item.id))],
        "webhook_deliveries": [row.model_dump(mode="json") for row in deliveries],
    }


def assert_fixture_rows(ledger: Ledger) -> None:
    """Each row of the fixture, field by field (fields added since are not in expected.json)."""
    found = read_back(ledger)
    assert {kind: len(rows) for kind, rows in found.items()} == {kind: len(rows) for kind, rows in EXPECTED.items()}
    for kind, rows in EXPECTED.items():
        for expected, row in zip(rows, found[kind], strict=True):
            assert {name: row.get(name) for name in expected} == expected, kind


def test_an_old_ledger_is_upgraded_on_first_use_and_keeps_every_row(
    old_ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations, log = with_test_revision(tmp_path)
    monkeypatch.setattr(tasks.ledger_migrations.upgrade, "script_location", migrations)
    assert version_of(old_ledger) == [BASELINE_REVISION]

    ledger = Ledger(old_ledger)
    assert version_of(old_ledger) == [TEST_REVISION]
    assert len(log.read_text().splitlines()) == 1
    columns = {column["name"] for column in sa.inspect(ledger.engine).get_columns("work_item")}
    assert "note" in columns
    with ledger.engine.connect() as connection:
        notes = dict(connection.execute(sa.text("SELECT id, note FROM work_item ORDER BY id")).all())
    assert notes == {"ET-1": "none yet", "ET-2": "none yet", "ET-3": "none yet"}
    assert_fixture_rows(ledger)

    # Writes go on where the old ledger stopped: the next attempt and the next PR number.
    run_id, attempt = ledger.start_agent_run(
        "ET-1", stage="review", role="developer", log_path="/tmp/d3.log", flow_run_id=None
    )
    assert attempt == 3 and run_id == len(EXPECTED["agent_runs"]) + 1
    pull = ledger.create_pull_request(
        repo="https://git.example.com/acme/shop.git",
        branch="feature/ET-4-x",
        base="main",
        title="x",
        body="",
        work_item="ET-4",
        url_prefix="local:///p",
    )
    assert pull.number == 3
    # Another process opening it finds nothing left to do.
    tasks.ledger._build_engine(old_ledger).dispose()
    assert len(log.read_text().splitlines()) == 1


def test_migrations_at_head_make_exactly_the_models_tables(tmp_path: Path) -> None:
    """A field added to a model without a revision (or a revision without the field) fails here."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    Ledger(url)
    assert version_of(url) == [HEAD]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        engine.dispose()


def _stamp_newer(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00dcafe9999'"))
    finally:
        engine.dispose()


def _sdlc_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
    )


def test_a_ledger_of_a_newer_sdlc_is_refused_and_sdlc_status_says_so_in_one_line(_isolated: Path) -> None:
    url = f"sqlite:///{_isolated / 'ledger.db'}"  # the data dir's own ledger, which `sdlc status` opens
    Ledger(url)
    tasks.ledger._ENGINES.pop(url).dispose()
    _stamp_newer(url)
    tables_before = tables_of(url)

    message = (
        f"the ledger at {url} was written by a newer sdlc (schema revision f00dcafe9999); "
        f"this sdlc knows up to {HEAD}: upgrade sdlc"
    )
    with pytest.raises(LedgerNewerThanCode) as refused:
        Ledger(url)
    assert str(refused.value) == message
    assert url not in tasks.ledger._ENGINES

    done = _sdlc_status(dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == f"sdlc: error: {message}\n"
    assert version_of(url) == ["f00dcafe9999"]  # left as it was
    assert tables_of(url) == tables_before


def test_a_newer_ledger_on_postgresql_is_refused_without_showing_the_password(
    postgres_cluster: PostgresCluster,  # noqa: F811
) -> None:
    postgres_cluster.create_database("ledger_newer")
    url = postgres_cluster.url("ledger_newer")
    Ledger(url)
    tasks.ledger._ENGINES.pop(url).dispose()
    _stamp_newer(url)
    # The cluster trusts 127.0.0.1, so the password is accepted and ignored: only the message is at stake.
    with_password = url.replace(f"{SUPERUSER}@", f"{SUPERUSER}:s3cret-pw@")

    with pytest.raises(LedgerNewerThanCode) as refused:
        Ledger(with_password)
    assert "s3cret-pw" not in str(refused.value)
    assert f"the ledger at {url.replace('@', ':***@')} was written by a newer sdlc" in str(refused.value)

    done = _sdlc_status({**os.environ, "SDLC_LEDGER_URL": with_password})
    assert done.returncode == 2, done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sdlc: error: the ledger at postgresql+psycopg://")


def _read_line(process: subprocess.Popen[str], deadline_seconds: float) -> str:
    """One line of the child's stdout, or fail once the deadline passes (or it ends without one)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], deadline_seconds)
    if not ready:
        raise AssertionError(f"process {process.pid} said nothing in {deadline_seconds} s")
    line = process.stdout.readline()
    if not line:
        raise AssertionError(f"process {process.pid} ended: {process.communicate()[1]}")
    return line.strip()


def test_two_processes_opening_an_old_ledger_at_once_upgrade_it_once(old_ledger: str, tmp_path: Path) -> None:
    sqlite_file = tasks.ledger._sqlite_file(old_ledger)
    lock_file = "" if sqlite_file is None else str(sqlite_file.with_name(sqlite_file.name + ".lock"))
    migrations, log = with_test_revision(tmp_path, wait_for=lock_file)
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", OPEN_LEDGER, old_ledger, str(migrations)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            assert _read_line(process, PROCESS_TIMEOUT_SECONDS) == "ready"
        for process in processes:  # both go together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=PROCESS_TIMEOUT_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert json.loads(out) == ["ET-1", "ET-2", "ET-3"]
    upgraders = log.read_text().split()
    assert len(upgraders) == 1 and int(upgraders[0]) in {process.pid for process in processes}
    assert version_of(old_ledger) == [TEST_REVISION]


def _unversioned(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
    finally:
        engine.dispose()


def test_a_ledger_from_before_versioning_is_stamped_then_upgraded(
    old_ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unversioned(old_ledger)  # what every ledger made before this release looks like
    migrations, log = with_test_revision(tmp_path)
    monkeypatch.setattr(tasks.ledger_migrations.upgrade, "script_location", migrations)

    ledger = Ledger(old_ledger)
    assert version_of(old_ledger) == [TEST_REVISION]
    assert len(log.read_text().splitlines()) == 1
    assert_fixture_rows(ledger)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unversioned_ledger_lacking_columns_and_tables_gets_the_baseline(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A ledger older still (no base_sha, visit, ..., no tracker_link table) is brought to 0001 and stamped."""
    from test_ledger import check_old_ledger_is_brought_up_to_date

    url: str
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'older.db'}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        cluster.create_database("ledger_older")
        url = cluster.url("ledger_older")
    check_old_ledger_is_brought_up_to_date(url)
    assert version_of(url) == [HEAD]
    tables = set(sa.inspect(Ledger(url).engine).get_table_names())
    assert tables == set(SQLModel.metadata.tables) | {VERSION_TABLE}


def test_the_migrations_are_in_the_package_and_need_no_alembic_ini() -> None:
    import tasks

    assert MIGRATIONS_DIR == Path(tasks.__file__).parent / "ledger_migrations"
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert [script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()][-1] == "0001"
