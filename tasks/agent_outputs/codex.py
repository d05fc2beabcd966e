"""What the Codex CLI prints (issue 18): its tokens, and its failures in its own words.

``codex exec --json`` (0.169) prints one JSON event per line on stdout, its warnings and
tracing lines (plain text) on stderr::

    {"type":"thread.started","thread_id":"01a224d5-..."}
    {"type":"turn.started"}
    {"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"hi"}}
    {"type":"turn.completed","usage":{"input_tokens":12,"cached_input_tokens":0,
     "cache_write_input_tokens":0,"output_tokens":5,"reasoning_output_tokens":0}}

A failed turn ends with ``{"type":"error","message":...}`` and
``{"type":"turn.failed","error":{"message":...}}``, exit code 1. ``usage`` counts the whole
turn (every model request of it); ``input_tokens`` already includes the cached ones and
``output_tokens`` the reasoning ones, as in OpenAI's own usage. Codex reports no cost: the
cost is None ("not reported"), never zero; a failed turn reports no tokens either.

The messages a failed turn ends with (``tests/fixtures/codex/``, captured from the real
binary against the fake Responses API):

* ``exceeded retry limit, last status: 429 Too Many Requests, request id: ...``: rate
  limited, transient. Codex waits the ``retry-after`` it was sent before each of its own
  retries, but never prints it: sdlc's own backoff applies.
* ``We’re currently experiencing high demand, which may cause temporary errors.`` (a 500),
  ``Selected model is at capacity. Please try a different model.`` (503
  ``server_is_overloaded``), ``unexpected status 5xx ...``: transient.
* ``Connection failed: ...``, ``stream disconnected before completion: ...``: transient.
* ``unexpected status 401 Unauthorized: ...`` (403 alike): permanent.
* ``You’ve hit your usage limit. ... try again at 6:13 AM.`` (or ``at Dec 2nd, 2026 1:14 AM.``,
  in the local time zone; ``try again later.`` without a reset time): a ChatGPT plan's
  usage limit, waited for until the reset.
* ``Quota exceeded. Check your plan and billing details.`` (429 ``insufficient_quota``): the
  API account's quota is spent; a usage limit with no reset time, so no retry.

Anything else a failed turn says is classified as tasks.classify reads any log line.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta
from typing import Any

from tasks.classify import Failure, FailureKind, RunUsage, classify_output

_MINUTE = timedelta(minutes=1)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_STATUS = re.compile(r"(?:unexpected status|last status:)\s+(\d{3})\b", re.IGNORECASE)
_USAGE_LIMIT = re.compile(r"hit your usage limit", re.IGNORECASE)
_TRY_AGAIN_AT = re.compile(
    r"try again at\s+(?:(?P<month>[A-Z][a-z]{2})[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<year>\d{4})\s+)?"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})\s*(?P<ampm>[AaPp][Mm])",
)
_QUOTA = re.compile(r"quota exceeded|insufficient_quota|exceeded your current quota", re.IGNORECASE)
_OVERLOADED = re.compile(r"at capacity|overloaded", re.IGNORECASE)
_HIGH_DEMAND = re.compile(r"experiencing high demand|temporary errors", re.IGNORECASE)
_NETWORK = re.compile(r"connection failed|stream disconnected|error sending request|timed out", re.IGNORECASE)


def _events(text: str) -> list[dict[str, Any]]:
    """The JSON events of the last run in ``text`` (from its last ``thread.started`` on)."""
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and '"type"' in line):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            continue
        if event["type"] == "thread.started":
            events = []
        events.append(event)
    return events


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _failed_turn(events: list[dict[str, Any]]) -> str | None:
    """The message of the last turn if it failed, else None."""
    for event in reversed(events):
        kind = event["type"]
        if kind == "turn.completed":
            return None
        if kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            return message if isinstance(message, str) else ""
    return None


def usage(text: str) -> RunUsage | None:
    """Tokens of the run's turns (summed) and its thread id as the session; no cost. None: no JSON events."""
    events = _events(text)
    if not events:
        return None
    session = next((e.get("thread_id") for e in events if e["type"] == "thread.started"), None)
    inputs: list[int] = []
    outputs: list[int] = []
    for event in events:
        raw = event.get("usage") if event["type"] == "turn.completed" else None
        if isinstance(raw, dict):
            inputs.append(_int(raw.get("input_tokens")) or 0)
            outputs.append(_int(raw.get("output_tokens")) or 0)
    failed = _failed_turn(events)
    status = _STATUS.search(failed or "")
    return RunUsage(
        cost_usd=None,
        input_tokens=sum(inputs) if inputs else None,
        output_tokens=sum(outputs) if outputs else None,
        session_id=session if isinstance(session, str) else None,
        is_error=failed is not None if any(e["type"] in ("turn.completed", "turn.failed") for e in events) else None,
        api_error_status=int(status.group(1)) if status else None,
    )


def _reset_time(message: str, now: datetime) -> datetime | None:
    """When "try again at ..." says the limit resets: a clock time (its next occurrence) or a date and
    time, in the local time zone, which the CLI (same machine, same ``TZ``) printed it in. Codex cuts
    the reset to the minute (03:22:36 prints "3:22 AM"): the end of that minute is returned, so that
    the wait is never shorter than the real one."""
    match = _TRY_AGAIN_AT.search(message)
    if not match:
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute"))
    if not (1 <= hour <= 12 and minute <= 59):
        return None
    hour = hour % 12 + (12 if match.group("ampm").lower() == "pm" else 0)
    local_now = now.astimezone()
    zone = local_now.tzinfo
    clock = time(hour, minute)
    month = (match.group("month") or "").lower()
    if month:
        if month not in _MONTHS:
            return None
        try:
            day = date(int(match.group("year")), _MONTHS.index(month) + 1, int(match.group("day")))
        except ValueError:
            return None
        return datetime.combine(day, clock, zone) + _MINUTE
    candidate = datetime.combine(local_now.date(), clock, zone) + _MINUTE
    if candidate <= local_now - timedelta(hours=1):  # a clock time well past: tomorrow's
        candidate = datetime.combine(local_now.date() + timedelta(days=1), clock, zone) + _MINUTE
    return candidate  # (just past, when the log is read late: over already, so no wait)


def _short(message: str) -> str:
    return message if len(message) <= 300 else message[:299] + "…"


def failure(text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """How the last turn failed, from its ``turn.failed`` message; None when it did not fail (or the
    CLI printed no events: a start-up error, left to the generic classification)."""
    message = _failed_turn(_events(text))
    if message is None:
        return None
    said = _short(message.strip()) or "codex: the turn failed without a message"
    if _USAGE_LIMIT.search(message):
        return Failure(
            kind=FailureKind.usage_limit, reason="usage_limit", message=said, resets_at=_reset_time(message, now)
        )
    if _QUOTA.search(message):
        return Failure(kind=FailureKind.usage_limit, reason="quota_exhausted", message=said)
    status_match = _STATUS.search(message)
    status = int(status_match.group(1)) if status_match else None
    if status == 429:
        return Failure(kind=FailureKind.transient, reason="rate_limit", message=said)
    if status in (401, 403):
        return Failure(kind=FailureKind.permanent, reason="authentication", message=said)
    server = status is not None and 500 <= status <= 599
    if _OVERLOADED.search(message) and (server or status is None):
        return Failure(kind=FailureKind.transient, reason="overloaded", message=said)
    if server or (status is None and _HIGH_DEMAND.search(message)):
        return Failure(kind=FailureKind.transient, reason="server_error", message=said)
    if status is None and _NETWORK.search(message):
        return Failure(kind=FailureKind.transient, reason="network", message=said)
    # Not Codex's own wording: read the message alone as any log line is read (never the agent's text).
    return classify_output(message, exit_code=exit_code if exit_code else 1, now=now)
