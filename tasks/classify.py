"""Classify a finished agent run from the tail of its log (B30, B31). Pure functions, no Prefect.

The log is read from its end only (:func:`read_tail`), so the cost does not grow with the
log's size. Where the CLI printed its JSON result (``claude -p --output-format json``),
``is_error`` and ``api_error_status`` decide, not the exit code alone: a run can exit 0
and still be an error. Otherwise the last lines of the log are searched from the end
for the messages the real Claude Code CLI prints (see
``tests/fixtures/claude/``) and for generic API and network errors.

* transient: rate limit (429), overload (529), other 5xx, API timeouts, network errors;
  retried after :func:`sdlc.retry.backoff_seconds`, never sooner than a Retry-After the log shows.
* usage_limit: a subscription limit that names its reset time; wait until ``resets_at``.
* permanent: everything else (authentication, the agent's own timeout, unknown errors).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel

from sdlc.retry import FailureKind as FailureKind

LOG_TAIL_BYTES = 64 * 1024
"""How much of the end of a log is read and classified."""
MESSAGE_MAX_CHARS = 300
SCAN_LINES = 50
"""Only the last this-many non-empty lines are searched for error patterns: older noise
(an agent talking about HTTP 429 an hour before it failed) must not decide."""


class Failure(BaseModel):
    """Why a run failed and what the log said about retrying it."""

    kind: FailureKind
    reason: str
    message: str
    retry_after_seconds: float | None = None
    resets_at: datetime | None = None


class RunUsage(BaseModel):
    """Figures from the CLI's JSON result. ``input_tokens`` includes cache reads and writes."""

    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    session_id: str | None = None
    is_error: bool | None = None
    api_error_status: int | None = None


# -- reading ---------------------------------------------------------------------------


def read_tail(path: str | Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a file, read with one seek from the end ("" if missing).

    When the read starts inside the file, the partial first line is dropped.
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return ""
    if start > 0:
        newline = data.find(b"\n")
        if newline != -1:
            data = data[newline + 1 :]
    return data.decode("utf-8", errors="replace")


# -- the JSON result ---------------------------------------------------------------------

_DECODER = json.JSONDecoder()


def _find_result(text: str) -> dict[str, Any] | None:
    """The last JSON object with ``"type": "result"`` on a line of its own (prefix/suffix tolerated)."""
    decoder = _DECODER
    for line in reversed(text.splitlines()):
        if '"result"' not in line or '"type"' not in line:
            continue
        start = line.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(line, start)
            except ValueError:
                start = line.find("{", start + 1)
                continue
            if isinstance(value, dict) and value.get("type") == "result":
                return value
            break
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage_from(result: dict[str, Any]) -> RunUsage:
    raw_usage = result.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    inputs = [
        _int(usage.get(key)) for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    cost = result.get("total_cost_usd")
    is_error = result.get("is_error")
    session = result.get("session_id")
    return RunUsage(
        cost_usd=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        input_tokens=sum(n for n in inputs if n is not None) if inputs[0] is not None else None,
        output_tokens=_int(usage.get("output_tokens")),
        num_turns=_int(result.get("num_turns")),
        session_id=session if isinstance(session, str) else None,
        is_error=is_error if isinstance(is_error, bool) else None,
        api_error_status=_int(result.get("api_error_status")),
    )


def parse_result_json(text: str) -> RunUsage | None:
    """Cost, tokens, turns, session and error status from the CLI's last JSON result, if any.

    ``input_tokens`` counts every prompt token: ``input_tokens`` plus
    ``cache_creation_input_tokens`` plus ``cache_read_input_tokens``.
    """
    result = _find_result(text)
    return _usage_from(result) if result is not None else None


# -- patterns ------------------------------------------------------------------------------

_FRAMING = re.compile(r"^--- \S+ attempt \d+ (started|ended)")
_USAGE_LIMIT = re.compile(
    r"(hit your .{0,40}limit|limit reached|limit will reset|usage limit).{0,80}\breset", re.IGNORECASE
)
_USAGE_LIMIT_EPOCH = re.compile(r"limit reached\|(\d{10})\b", re.IGNORECASE)
# A bare status number, not part of a bigger number, a decimal or a measure ("529 ms").
_N = r"(?<![\d.])({})(?![\d.])(?!\s*(?:(?:ms|s|secs?|seconds|[kmg]i?b|bytes|lines|files)\b|%))"
# (reason, kind, pattern), in priority order within one line.
_PATTERNS: list[tuple[str, FailureKind, re.Pattern[str]]] = [
    (
        "authentication",
        FailureKind.permanent,
        re.compile(
            r"invalid api key|authentication_error|invalid x-api-key|oauth token (has )?expired|please run /login"
            r"|permission_error|" + _N.format("401|403"),
            re.IGNORECASE,
        ),
    ),
    (
        "rate_limit",
        FailureKind.transient,
        re.compile(
            r"rate_limit_error|temporarily limiting requests|too many requests|rate[ -]?limit(ed)?\b|"
            + _N.format("429"),
            re.IGNORECASE,
        ),
    ),
    (
        "overloaded",
        FailureKind.transient,
        re.compile(r"overloaded_error|overloaded|" + _N.format("529"), re.IGNORECASE),
    ),
    (
        "server_error",
        FailureKind.transient,
        re.compile(
            r"\bapi_error\b(?!_)|internal server error|bad gateway|service unavailable|gateway time-?out"
            r"|(api error|status|http|error)\W{0,3}" + _N.format(r"5\d\d"),
            re.IGNORECASE,
        ),
    ),
    (
        "timeout_api",
        FailureKind.transient,
        re.compile(r"request timed out|etimedout|connection timed out|apiconnectiontimeouterror", re.IGNORECASE),
    ),
    (
        "network",
        FailureKind.transient,
        re.compile(
            r"econnrefused|econnreset|enotfound|eai_again|enetunreach|ehostunreach|unable to connect"
            r"|connection refused|connection reset|socket hang up|fetch failed|apiconnectionerror",
            re.IGNORECASE,
        ),
    ),
]
_RETRY_AFTER = [
    re.compile(r"retry-after\W{0,3}(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"\"?retry_after\"?\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"retry (?:in|after) (\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE),
]


def _retry_after(text: str) -> float | None:
    """The last Retry-After value (seconds) the text shows, if any."""
    found: tuple[int, float] | None = None
    for pattern in _RETRY_AFTER:
        for match in pattern.finditer(text):
            if found is None or match.start() >= found[0]:
                found = (match.start(), float(match.group(1)))
    return found[1] if found else None


def _short(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MESSAGE_MAX_CHARS else line[: MESSAGE_MAX_CHARS - 1] + "…"


# -- usage-limit reset times -------------------------------------------------------------

_RESET = re.compile(
    r"reset(?:s)?(?:\s+at)?\s+"
    r"(?:(?P<month>[A-Z][a-z]{2})[a-z]*\.?\s+(?P<day>\d{1,2}),?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[^)]+)\))?",
    re.IGNORECASE,
)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def _zone(name: str | None) -> tzinfo:
    """UTC, GMT, ``UTC+02:00``/``+0200`` offsets and IANA names; anything else is UTC."""
    if not name:
        return UTC
    name = name.strip()
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    offset = _OFFSET.match(name)
    if offset:
        sign = -1 if offset.group(1) == "-" else 1
        delta = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3) or 0))
        return timezone(sign * delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _resets_at(line: str, now: datetime) -> datetime | None:
    """The next occurrence after ``now`` of the clock time (and date, if named) in ``line``."""
    epoch = _USAGE_LIMIT_EPOCH.search(line)
    if epoch:
        return datetime.fromtimestamp(int(epoch.group(1)), UTC)
    match = _RESET.search(line)
    if not match:
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
    ampm = (match.group("ampm") or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    zone = _zone(match.group("zone"))
    local_now = now.astimezone(zone)
    clock = time(hour, minute)
    month = (match.group("month") or "").lower()
    if month in _MONTHS:
        day = int(match.group("day"))
        for year in (local_now.year, local_now.year + 1):
            try:
                candidate = datetime.combine(date(year, _MONTHS.index(month) + 1, day), clock, zone)
            except ValueError:
                return None
            if candidate > local_now:
                return candidate
        return None
    candidate = datetime.combine(local_now.date(), clock, zone)
    if candidate <= local_now:
        candidate = datetime.combine(local_now.date() + timedelta(days=1), clock, zone)
    return candidate


def _usage_limit(line: str, now: datetime) -> Failure | None:
    if not (_USAGE_LIMIT.search(line) or _USAGE_LIMIT_EPOCH.search(line)):
        return None
    return Failure(
        kind=FailureKind.usage_limit, reason="usage_limit", message=_short(line), resets_at=_resets_at(line, now)
    )


# -- classification ------------------------------------------------------------------------


def _classify_line(line: str, now: datetime) -> Failure | None:
    """The failure one log line shows, or None."""
    limit = _usage_limit(line, now)
    if limit is not None:
        return limit
    for reason, kind, pattern in _PATTERNS:
        if pattern.search(line):
            return Failure(kind=kind, reason=reason, message=_short(line))
    return None


def _last_lines(text: str) -> list[str]:
    """The last :data:`SCAN_LINES` lines that are not blank, framing or a JSON result, in order."""
    picked: list[str] = []
    for line in reversed(text.splitlines()):
        if line.strip() and not _FRAMING.match(line) and _find_result(line) is None:
            picked.append(line)
            if len(picked) == SCAN_LINES:
                break
    picked.reverse()
    return picked


def _scan(text: str, now: datetime) -> Failure | None:
    """The first failure found searching the last lines from the end, with its Retry-After.

    The runner's own framing lines and JSON result lines (an answer's text must not
    decide) are left out.
    """
    lines = _last_lines(text)
    for line in reversed(lines):
        failure = _classify_line(line, now)
        if failure is not None:
            if failure.kind is FailureKind.transient:
                failure.retry_after_seconds = _retry_after("\n".join(lines))
            return failure
    return None


def _from_result(result: dict[str, Any], usage: RunUsage, text: str, now: datetime) -> Failure:
    """A failure from a JSON result with ``is_error`` true: its status decides, then its text."""
    said = str(result.get("result") or result.get("error") or "")
    message = _short(said) or f"is_error with api_error_status {usage.api_error_status}"
    limit = _usage_limit(said, now)
    if limit is not None:
        return limit
    status = usage.api_error_status
    by_status: tuple[FailureKind, str] | None = None
    if status == 429:
        by_status = (FailureKind.transient, "rate_limit")
    elif status == 529:
        by_status = (FailureKind.transient, "overloaded")
    elif status is not None and 500 <= status <= 599:
        by_status = (FailureKind.transient, "server_error")
    elif status in (401, 403):
        by_status = (FailureKind.permanent, "authentication")
    failure = (
        Failure(kind=by_status[0], reason=by_status[1], message=message) if by_status else _classify_line(said, now)
    )
    if failure is None:
        return Failure(kind=FailureKind.permanent, reason="is_error", message=message)
    if failure.kind is FailureKind.transient:
        failure.retry_after_seconds = _retry_after(said) or _retry_after("\n".join(_last_lines(text)))
    return failure


def classify_output(
    text: str,
    *,
    exit_code: int | None,
    timed_out: bool = False,
    now: datetime | None = None,
    kind: str | None = None,
) -> Failure | None:
    """None when the run succeeded, else why it failed (see the module docstring). ``kind`` (the
    agent profile's) first lets that CLI's own reader (``tasks/agent_outputs/``) recognise its wording."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if timed_out:
        return Failure(
            kind=FailureKind.permanent, reason="agent_timeout", message="the agent ran past its timeout and was stopped"
        )
    from tasks.agent_outputs import failure_of

    own = failure_of(kind, text, exit_code, now)
    if own is not None:
        return own
    result = _find_result(text)
    usage = _usage_from(result) if result is not None else None
    if result is not None and usage is not None and usage.is_error:
        return _from_result(result, usage, text, now)
    if exit_code == 0:
        return None
    failure = _scan(text, now)
    if failure is not None:
        return failure
    what = "no exit code" if exit_code is None else f"exit code {exit_code}"
    last = next((line for line in reversed(text.splitlines()) if line.strip() and not _FRAMING.match(line)), "")
    return Failure(
        kind=FailureKind.permanent, reason="exit_code", message=_short(f"{what}: {last.strip()}" if last else what)
    )


def classify_log_tail(
    path: str | Path,
    *,
    exit_code: int | None,
    timed_out: bool = False,
    now: datetime | None = None,
    kind: str | None = None,
) -> Failure | None:
    """:func:`classify_output` on the last :data:`LOG_TAIL_BYTES` of a log file."""
    return classify_output(read_tail(path), exit_code=exit_code, timed_out=timed_out, now=now, kind=kind)


def run_usage(text: str, kind: str | None = None, log_path: str | Path | None = None) -> RunUsage | None:
    """Cost, tokens, turns and session as the CLI of ``kind`` reported them: its own reader's
    (``tasks/agent_outputs/``; from the whole log at ``log_path`` where it needs it), else Claude
    Code's JSON result in ``text`` (:func:`parse_result_json`)."""
    from tasks.agent_outputs import usage_of

    return usage_of(kind, text, log_path) or parse_result_json(text)
