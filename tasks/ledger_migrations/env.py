"""Alembic's environment for the ledger, run by ``upgrade.py`` (never by an alembic.ini).

The caller hands over its connection, already inside a transaction and holding the
schema's lock, in ``config.attributes["connection"]``; the revisions run in that
transaction, so a failed upgrade leaves the ledger as it was (SQLite and PostgreSQL
both roll DDL back).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tasks.ledger_migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
if not isinstance(connection, Connection):
    raise TypeError("the ledger's migrations run on a connection handed over by tasks.ledger_migrations.upgrade")
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
