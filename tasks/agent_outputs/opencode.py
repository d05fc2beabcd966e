"""What the OpenCode CLI prints (issue 18): its cost and tokens, and its failures in its own words.

``opencode run --format json`` (1.18) prints one JSON event per line on stdout, each with the
session's id (``ses_...``, recorded as the session)::

    {"type":"step_start","timestamp":...,"sessionID":"ses_...","part":{"type":"step-start",...}}
    {"type":"tool_use",...,"part":{"type":"tool","tool":"write","state":{"status":"completed",...}}}
    {"type":"text",...,"part":{"type":"text","text":"hi",...}}
    {"type":"step_finish",...,"part":{"type":"step-finish","reason":"stop","cost":0.000111,
     "tokens":{"total":17,"input":12,"output":5,"reasoning":0,"cache":{"write":0,"read":0}}}}

One ``step_finish`` per model request of the run, each with its own cost (dollars, from the
price list OpenCode ships: reported, also for a model it prices at 0) and tokens; the run's
figures are their sums. ``input`` leaves out the cached tokens and ``output`` the reasoning
ones, so ``input_tokens`` is input + cache read + cache write and ``output_tokens`` output +
reasoning. A failed run ends with ``{"type":"error","error":{"name":...,"data":{...}}}`` and exit
code 1; an ``APIError`` carries the API's ``statusCode``, ``isRetryable``, ``responseHeaders``
(``retry-after`` among them) and ``responseBody``. A run that failed before any model request
finished printed no cost and no tokens: they are None ("not reported"), never zero.

OpenCode retries by itself, 5 times, whatever the API calls retryable (429, 5xx, a refused
connection): after the ``retry-after``/``retry-after-ms`` the API sent (not capped), else
after 2, 4, 8, 16 and 32 s; nothing can turn that off in 1.18 and nothing of it is printed.
So what the log shows is the last answer (``tests/fixtures/opencode/``, captured from the real
binary against ``tests/fake_anthropic.py``):

* ``statusCode`` 429: transient ``rate_limit``, with the ``retry-after`` of that answer as
  ``retry_after_seconds`` (sdlc waits at least that long again);
* 529 (``Overloaded``), other 5xx: transient ``overloaded`` / ``server_error``;
* ``Cannot connect to API: ...`` (nothing listening, no statusCode): transient ``network``;
  ``UnknownError`` ``The operation timed out.`` (the provider's ``timeout``): transient ``timeout_api``;
* 401 / 403, ``ProviderAuthError``: permanent ``authentication``;
* 400 ``Your credit balance is too low ...`` (the Anthropic account's prepaid credits are
  spent), OpenCode Zen's ``FreeUsageLimitError``: usage_limit ``quota_exhausted`` without a
  reset time (no retry); Zen's ``GoUsageLimitError`` with its ``retry-after``: a usage limit
  until then;
* anything else an error event says is read as any log line is (``tasks.classify``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from tasks.classify import Failure, FailureKind, RunUsage, classify_output

MESSAGE_MAX_CHARS = 300

_QUOTA = re.compile(r"credit balance is too low|FreeUsageLimitError|insufficient_quota", re.IGNORECASE)
_GO_LIMIT = re.compile(r"GoUsageLimitError")
_OVERLOADED = re.compile(r"overloaded", re.IGNORECASE)
_CONNECT = re.compile(r"cannot connect to api|unable to connect|connection refused|econnrefused|fetch failed", re.I)
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_KEPT = re.compile(rb'\s*\{"type":\s*"(?:step_finish|error)"')


def _events(text: str) -> list[dict[str, Any]]:
    """The JSON events of the last session in ``text`` (a log may hold more than one run)."""
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith('{"type":') and '"sessionID"' in line):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str) and isinstance(event.get("sessionID"), str):
            events.append(event)
    if not events:
        return []
    session = events[-1]["sessionID"]
    return [event for event in events if event["sessionID"] == session]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _last_error(events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the error, its data) of the run's error event, if it printed one."""
    for event in reversed(events):
        if event["type"] == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            data = error.get("data")
            return error, data if isinstance(data, dict) else {}
    return None


def _status(data: dict[str, Any]) -> int | None:
    status = data.get("statusCode")
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def usage(text: str) -> RunUsage | None:
    """Cost and tokens of the run's model requests (summed), its session and error status.

    None when the text holds no OpenCode event; cost and tokens are None when no request finished.
    """
    events = _events(text)
    if not events:
        return None
    steps = [
        event["part"] for event in events if event["type"] == "step_finish" and isinstance(event.get("part"), dict)
    ]
    costs = [cost for cost in (_number(step.get("cost")) for step in steps) if cost is not None]
    inputs = outputs = 0
    counted = False
    for step in steps:
        tokens = step.get("tokens")
        if not isinstance(tokens, dict):
            continue
        counted = True
        raw_cache = tokens.get("cache")
        cache: dict[str, Any] = raw_cache if isinstance(raw_cache, dict) else {}
        inputs += _int(tokens.get("input")) + _int(cache.get("read")) + _int(cache.get("write"))
        outputs += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
    error = _last_error(events)
    return RunUsage(
        cost_usd=sum(costs) if costs else None,
        input_tokens=inputs if counted else None,
        output_tokens=outputs if counted else None,
        num_turns=len(steps) if steps else None,
        session_id=events[-1]["sessionID"],
        is_error=error is not None,
        api_error_status=_status(error[1]) if error else None,
    )


def usage_of_log(path: str | Path) -> RunUsage | None:
    """:func:`usage` over the whole log, not only its tail.

    OpenCode prints each model request's cost and tokens, never the run's total, and the events
    between them carry whole tool outputs (a file read is printed entire), so a long run's first
    ``step_finish`` events lie before the last 64 KiB the classifier reads. This reads the log once,
    line by line, and keeps only OpenCode's ``step_finish`` and ``error`` events (a few hundred
    bytes each). None when the log is missing or holds no event.
    """
    kept: list[str] = []
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if _KEPT.match(raw):
                    kept.append(raw.decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    return usage("".join(kept))


def _headers(data: dict[str, Any]) -> dict[str, str]:
    raw = data.get("responseHeaders")
    return {str(k).lower(): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _retry_after(headers: dict[str, str], sent: datetime) -> float | None:
    """The wait the API asked for: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after", "").strip()
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = parsedate_to_datetime(value)
            return max(0.0, (when - sent).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _when(events: list[dict[str, Any]], now: datetime) -> datetime:
    """When the error was printed (its event's timestamp, milliseconds), else ``now``."""
    for event in reversed(events):
        stamp = event.get("timestamp") if event["type"] == "error" else None
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            try:
                return datetime.fromtimestamp(stamp / 1000, UTC)
            except (OverflowError, OSError, ValueError):
                break
    return now


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_MAX_CHARS else message[: MESSAGE_MAX_CHARS - 1] + "…"


def failure(text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """How the run failed, from its error event; None when it printed none (a start-up error,
    or success), left to the generic classification."""
    events = _events(text)
    found = _last_error(events)
    if found is None:
        return None
    error, data = found
    name = str(error.get("name") or "")
    message = str(data.get("message") or error.get("message") or name or "opencode: the run failed")
    body = str(data.get("responseBody") or "")
    said = _short(message)
    status = _status(data)
    sent = _when(events, now)
    wait = _retry_after(_headers(data), sent)

    def transient(reason: str) -> Failure:
        return Failure(kind=FailureKind.transient, reason=reason, message=said, retry_after_seconds=wait)

    if _GO_LIMIT.search(body):
        resets = sent + timedelta(seconds=wait) if wait is not None else None
        return Failure(kind=FailureKind.usage_limit, reason="usage_limit", message=said, resets_at=resets)
    if _QUOTA.search(message) or _QUOTA.search(body):
        return Failure(kind=FailureKind.usage_limit, reason="quota_exhausted", message=said)
    if status in (401, 403) or name == "ProviderAuthError":
        return Failure(kind=FailureKind.permanent, reason="authentication", message=said)
    if status == 429:
        return transient("rate_limit")
    if status == 529 or (status is not None and status >= 500 and _OVERLOADED.search(message)):
        return transient("overloaded")
    if status is not None and 500 <= status <= 599:
        return transient("server_error")
    if status is None and _CONNECT.search(message):
        return transient("network")
    if status is None and name == "UnknownError" and _TIMED_OUT.search(message):
        return transient("timeout_api")
    if name == "ContextOverflowError":
        return Failure(kind=FailureKind.permanent, reason="context_overflow", message=said)
    # Not OpenCode's own wording: read the message alone, as any log line is read (never the agent's text).
    return classify_output(message, exit_code=exit_code if exit_code else 1, now=now)
