"""What each agent CLI prints, read per kind (issue 18): its cost and tokens, and the failures only it words.

``tasks.classify`` reads what every CLI shares (generic API and network errors, HTTP
statuses, Retry-After) and Claude Code's JSON result. A CLI with its own output format
has a module here with two functions, both pure and given the log's tail:

* ``usage(text) -> RunUsage | None``: cost, tokens, turns and session, where it reports
  them (None: it reported nothing, and the ledger says "not reported", never zero);
* ``failure(text, exit_code, now) -> Failure | None``: a failure recognised from the CLI's
  own wording (captured from the real binary against the fake APIs, ``tests/fixtures/<cli>/``),
  or None to leave the decision to the generic classification.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.classify import Failure, RunUsage

# Agent kind -> its module here; kinds not named (claude, scripted, custom) are read generically.
READERS = {"codex": "codex", "gemini": "gemini", "aider": "aider", "opencode": "opencode"}


def _reader(kind: str | None) -> ModuleType | None:
    name = READERS.get(kind or "")
    return importlib.import_module(f"{__name__}.{name}") if name else None


def usage_of(kind: str | None, text: str, log_path: str | Path | None = None) -> RunUsage | None:
    """The CLI's own report of cost and tokens, or None when the kind has no reader or it reported none.

    A reader with ``usage_of_log(path)`` reads the whole log (OpenCode prints each request's figures,
    never a total, so a long run's first ones lie before the tail); the others read ``text``, the tail.
    """
    reader = _reader(kind)
    if reader is None:
        return None
    if log_path is not None and hasattr(reader, "usage_of_log"):
        whole: RunUsage | None = reader.usage_of_log(log_path)
        return whole
    figures: RunUsage | None = reader.usage(text)
    return figures


def failure_of(kind: str | None, text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """A failure in the CLI's own wording, or None (not recognised: the generic classification decides)."""
    reader = _reader(kind)
    return reader.failure(text, exit_code, now) if reader is not None else None
