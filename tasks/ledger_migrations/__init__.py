"""The ledger's schema versions: Alembic revisions shipped inside the package.

``versions/`` holds one file per revision; ``0001`` is the baseline, the schema the
ledger had when it was first versioned (``baseline.py``, frozen). ``upgrade.py``
brings a ledger up to the newest revision on a process's first use of it. This
module stays light (no Alembic import) so the CLI can name the refusal below.
"""

from __future__ import annotations

from pathlib import Path

# Where env.py and versions/ are, found from the installed package (editable or not).
MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE_REVISION = "0001"
# Alembic's bookkeeping table; its own name, so a database shared with another
# Alembic-managed schema (Prefect's server) never mixes up the two.
VERSION_TABLE = "sdlc_ledger_version"


class LedgerNewerThanCode(Exception):
    """The ledger was upgraded by a newer sdlc: this one must not read or write it."""
