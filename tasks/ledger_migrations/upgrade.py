"""Bring a ledger up to this code's newest schema revision, or refuse one newer than this code.

Run on a process's first use of a ledger (``tasks.ledger.engine_for``), by a caller
that holds the schema's lock (PostgreSQL's advisory lock, or the file lock beside an
SQLite ledger) and an open transaction, so two processes never upgrade one ledger
at once and a failed upgrade changes nothing. Alembic runs from a ``Config`` built
here: no alembic.ini is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

from tasks.ledger_migrations import BASELINE_REVISION, MIGRATIONS_DIR, VERSION_TABLE, LedgerNewerThanCode, baseline

logger = logging.getLogger(__name__)

# Where env.py and versions/ are read from; tests point it at a copy holding extra revisions.
script_location: Path = MIGRATIONS_DIR


def upgrade_ledger(connection: Connection) -> None:
    """Upgrade the ledger behind ``connection`` to the head revision; raises LedgerNewerThanCode."""
    config = Config()
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        shown = connection.engine.url.render_as_string(hide_password=True)
        raise LedgerNewerThanCode(
            f"the ledger at {shown} was written by a newer sdlc (schema revision {', '.join(unknown)}); "
            f"this sdlc knows up to {head}: upgrade sdlc"
        )
    if current == (head,):
        return
    if not current and set(inspect(connection).get_table_names()) & set(baseline.metadata.tables):
        # Made before the schema was versioned: bring it to the baseline, then say so.
        logger.info("stamping the unversioned ledger at revision %s", BASELINE_REVISION)
        baseline.metadata.create_all(connection)
        add_missing_columns(connection, baseline.metadata)
        command.stamp(config, BASELINE_REVISION)
    logger.info("upgrading the ledger from revision %s to %s", ", ".join(current) or "none", head)
    command.upgrade(config, "head")


def add_missing_columns(connection: Connection, metadata: MetaData) -> None:
    """Add the nullable columns (and their indexes) of ``metadata`` that an unversioned ledger lacks.

    Ledgers made before versioning grew by ``create_all`` plus this: nullable columns
    added with ``ALTER TABLE ... ADD COLUMN`` (SQLite and PostgreSQL alike), old rows
    reading them as NULL. Versioned ledgers grow by revisions instead.
    """
    inspector = inspect(connection)
    preparer = connection.dialect.identifier_preparer
    existing_tables = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        added: set[str] = set()
        for column in table.columns:
            if column.name in present or not column.nullable or column.primary_key:
                continue
            column_type = column.type.compile(dialect=connection.dialect)
            connection.execute(
                text(
                    f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.format_column(column)} {column_type}"
                )
            )
            added.add(column.name)
        for index in table.indexes:
            if added & {column.name for column in index.columns}:
                index.create(connection, checkfirst=True)
