"""What the opencode CLI prints (issue 18): its cost and tokens, and its own failure wording. Not filled in yet."""

from __future__ import annotations

from datetime import datetime

from tasks.classify import Failure, RunUsage


def usage(text: str) -> RunUsage | None:
    """Cost and tokens from the opencode CLI's output; None when it reported none."""
    return None


def failure(text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """A failure in the opencode CLI's own words; None leaves it to the generic classification."""
    return None
