"""Work item IDs: the one pattern and check, standard library only.

It lives apart from ``sdlc.models`` (pydantic) so that the scripted agent, started
as a new process for every agent run, can check ``SDLC_WORK_ITEM`` without paying
for a pydantic import; ``sdlc.models`` re-exports both names.
"""

from __future__ import annotations

import re

WORK_ITEM_ID_PATTERN = re.compile(r"^[A-Z][A-Z0-9]{0,15}-[0-9]{1,9}$")


def validate_work_item_id(value: str) -> str:
    """The value if it is a work item ID (PROJECT-NUMBER, e.g. ET-12); ValueError otherwise."""
    # fullmatch: with match(), "$" also matches before a trailing newline ("ET-1\n" passed).
    if not WORK_ITEM_ID_PATTERN.fullmatch(value):
        raise ValueError(f"work item ID {value[:40]!r} is not of the form PROJECT-NUMBER, e.g. ET-12")
    return value
