"""What the Gemini CLI prints (issue 18): its tokens, and its failures in its own words.

Captured from the real CLI (``@google/gemini-cli`` 0.61.0) against the fake Gemini API,
``tests/fixtures/gemini/`` (README there). Run headless with ``--output-format json``, it
ends its stdout with one pretty-printed JSON object:

* success: ``{"session_id", "response", "stats": {"models": {<model>: {"api": {...},
  "tokens": {"prompt", "candidates", "total", "cached", "thoughts", "tool", ...},
  "roles": {"main": {"totalRequests", ...}}}}, "tools": {...}, "files": {...}}}``;
  tokens per model, no cost at all (cost is "not reported", None);
* failure: ``{"session_id", "error": {"type", "message", "code"}}``, no stats. ``code`` is the
  API's HTTP status (429, 500, 503, 400, 401, 403) or the CLI's own exit code (41: no usable
  auth; 1: anything else, a refused connection included); the process exits with ``code``
  modulo 256 (429 -> 173, 503 -> 247, 400 -> 144).

Before it, on stderr, the CLI says what went wrong: ``Attempt N failed: <message>. Max
attempts reached`` when its own retries (``general.maxAttempts``, 10 by default, 5 s to
30 s apart, never sooner than the API's RetryInfo) are used up, and ``Error when talking to
Gemini API Full report available at: <file> <ErrorName>: <message>`` followed by a Node
inspection of the error (``status: 429``). In text mode that is all there is, and it ends
``An unexpected critical error occurred:[object Object]`` (exit 1).

How its failures are read:

* 429 with RetryInfo or "Please retry in N s" (per-minute limits): transient, the CLI prints
  ``Suggested retry after 7s.``, which becomes ``retry_after_seconds``;
* 429 "You have exhausted your daily quota on this model." (a per-day QuotaFailure): a
  usage limit, until the next midnight in California (when the Gemini API's per-day quotas
  reset); a quota of ``limit: 0`` (the model is not in the project's tier): permanent;
* 500 and other 5xx, 503 "overloaded", a refused connection or an API that sends no headers
  for 60 s (both "fetch failed sending request"): transient;
* 400 "API key not valid" (what Google answers a wrong key), 401, 403, exit 41 (no key,
  no usable auth method), an untrusted folder (exit 55): permanent.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tasks.classify import Failure, FailureKind, RunUsage

# Where the Gemini API's per-day quotas reset ("midnight Pacific time").
QUOTA_RESET_ZONE = ZoneInfo("America/Los_Angeles")
MESSAGE_MAX_CHARS = 300
SCAN_LINES = 50

_DECODER = json.JSONDecoder()
_TALKING = re.compile(r"Error when talking to Gemini API(?: Full report available at: \S+)? (?:(\w+): )?(.*)$")
_STATUS_LINE = re.compile(r"^\s*status: (\d{3}),?\s*$")
_ATTEMPT = re.compile(r"^Attempt \d+ failed(?: with status (\d{3}))?")
_SUGGESTED = re.compile(r"Suggested retry after (\d+(?:\.\d+)?)(ms|s)\b")
_PLEASE_RETRY = re.compile(r"Please retry in (\d+(?:\.\d+)?)(ms|s)\b")
_DAILY = re.compile(r"exhausted your daily quota", re.IGNORECASE)
_NO_QUOTA = re.compile(r"limit:\s*0(?![\d.])")
_CAPACITY = re.compile(r"exhausted your capacity|capacity exceeded|MODEL_CAPACITY_EXHAUSTED", re.IGNORECASE)
_BAD_KEY = re.compile(r"API key not valid|API_KEY_INVALID|API key expired|API_KEY_EXPIRED", re.IGNORECASE)
_AUTH_SETUP = re.compile(
    r"you must specify the GEMINI_API_KEY|Invalid auth method selected|Please set an Auth method"
    r"|When using Vertex AI, you must specify|enforced authentication type|Error authenticating",
    re.IGNORECASE,
)
_UNTRUSTED = re.compile(r"not running in a trusted directory", re.IGNORECASE)
_FETCH_FAILED = re.compile(r"fetch failed|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the JSON object ---------------------------------------------------------------------


def result_object(text: str) -> dict[str, Any] | None:
    """The last JSON object the CLI printed (``--output-format json``): one with a ``session_id``
    and a ``response``, ``stats`` or ``error``. It is pretty-printed, so it starts at a line ``{``."""
    end = len(text)
    while True:
        start = text.rfind("{", 0, end)
        if start == -1:
            return None
        end = start
        if start > 0 and text[start - 1] != "\n":
            continue
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict) and "session_id" in value and ({"response", "stats", "error"} & value.keys()):
            return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sum(values: list[int | None]) -> int | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def usage(text: str) -> RunUsage | None:
    """Tokens, model calls and session from the CLI's JSON object; None when it printed none.

    ``input_tokens`` is every prompt token of every model (``prompt``, cached ones included,
    plus ``tool``), ``output_tokens`` every generated one (``candidates`` plus ``thoughts``),
    ``num_turns`` the main agent's model calls. The CLI reports no cost: ``cost_usd`` is None.
    """
    result = result_object(text)
    if result is None:
        return None
    session = result.get("session_id")
    error = result.get("error")
    stats = result.get("stats")
    models = stats.get("models") if isinstance(stats, dict) else None
    inputs: list[int | None] = []
    outputs: list[int | None] = []
    turns: list[int | None] = []
    for figures in (models or {}).values():
        if not isinstance(figures, dict):
            continue
        raw_tokens = figures.get("tokens")
        tokens: dict[str, Any] = raw_tokens if isinstance(raw_tokens, dict) else {}
        prompt, tool = _int(tokens.get("prompt")), _int(tokens.get("tool"))
        candidates, thoughts = _int(tokens.get("candidates")), _int(tokens.get("thoughts"))
        inputs.append(prompt + (tool or 0) if prompt is not None else None)
        outputs.append(candidates + (thoughts or 0) if candidates is not None else None)
        roles = figures.get("roles")
        main = roles.get("main") if isinstance(roles, dict) else None
        api = main if isinstance(main, dict) else figures.get("api")
        turns.append(_int(api.get("totalRequests")) if isinstance(api, dict) else None)
    status = _int(error.get("code")) if isinstance(error, dict) else None
    return RunUsage(
        cost_usd=None,
        input_tokens=_sum(inputs),
        output_tokens=_sum(outputs),
        num_turns=_sum(turns),
        session_id=session if isinstance(session, str) else None,
        is_error=isinstance(error, dict),
        api_error_status=status if status is not None and 400 <= status <= 599 else None,
    )


# -- failures ------------------------------------------------------------------------------


def _short(text: str) -> str:
    line = " ".join(_ANSI.sub("", text).split())
    return line if len(line) <= MESSAGE_MAX_CHARS else line[: MESSAGE_MAX_CHARS - 1] + "…"


def _seconds(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def retry_after(text: str) -> float | None:
    """The wait the CLI passed on from the API: the last ``Suggested retry after Ns`` (RetryInfo),
    else the last ``Please retry in Ns`` of the API's message."""
    for pattern in (_SUGGESTED, _PLEASE_RETRY):
        found = list(pattern.finditer(text))
        if found:
            return _seconds(found[-1])
    return None


def next_quota_reset(now: datetime) -> datetime:
    """The next midnight in California after ``now``: when the Gemini API's per-day quotas reset."""
    local = now.astimezone(QUOTA_RESET_ZONE)
    return datetime.combine(local.date() + timedelta(days=1), time(0, 0), QUOTA_RESET_ZONE)


def _what_it_said(text: str) -> tuple[int | None, str, str]:
    """(status or the CLI's error code, the error's name, its message) from the JSON object, else
    from the stderr lines of a text-mode run. (None, "", "") when it said nothing of the kind."""
    result = result_object(text)
    error = result.get("error") if result is not None else None
    lines = text.splitlines()
    name = ""
    talking = next((m for m in (_TALKING.search(line) for line in reversed(lines)) if m), None)
    if talking is not None:
        name = talking.group(1) or ""
    if isinstance(error, dict):
        return _int(error.get("code")), name, str(error.get("message") or "")
    status = None
    for line in reversed(lines):
        match = _STATUS_LINE.match(line) or _ATTEMPT.match(line)
        if match and match.group(1):
            status = int(match.group(1))
            break
    if talking is not None:
        return status, name, talking.group(2)
    return status, "", ""


def _api_message(message: str) -> str:
    """``STATUS: message`` of an API error body the CLI passed on as its message, else the message."""
    if message.startswith("{"):
        try:
            body = json.loads(message)
        except ValueError:
            return message
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return f"{error.get('status') or 'error'}: {error['message']}"
    return message


def failure(text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """A failure in the Gemini CLI's own words; None leaves it to the generic classification."""
    result = result_object(text)
    if exit_code == 0 and (result is None or "error" not in result):
        return None  # earlier "Attempt 1 failed" lines of a retry the CLI recovered from do not count
    code, name, message = _what_it_said(text)
    # What the CLI said last; older lines (the agent's own talk, a retry it recovered from) do not decide.
    last = [line for line in text.splitlines() if line.strip()][-SCAN_LINES:]
    tail = "\n".join(last)
    said = message or tail
    if _UNTRUSTED.search(tail):
        line = next(line for line in last if _UNTRUSTED.search(line))
        return Failure(kind=FailureKind.permanent, reason="untrusted_folder", message=_short(line))
    if code == 41 or (not message and _AUTH_SETUP.search(tail)):
        line = message or next((line for line in last if _AUTH_SETUP.search(line)), "")
        return Failure(kind=FailureKind.permanent, reason="authentication", message=_short(line))
    if code is None and not message:
        return None
    shown = _short(f"{code} {_api_message(message)}" if code is not None and code >= 400 else message)
    if code in (401, 403) or (code == 400 and _BAD_KEY.search(said)) or _BAD_KEY.search(message):
        return Failure(kind=FailureKind.permanent, reason="authentication", message=shown)
    if code == 429 or name in ("TerminalQuotaError", "RetryableQuotaError"):
        if _DAILY.search(said):
            return Failure(
                kind=FailureKind.usage_limit, reason="usage_limit", message=shown, resets_at=next_quota_reset(now)
            )
        if _NO_QUOTA.search(tail) and name != "RetryableQuotaError":
            return Failure(kind=FailureKind.permanent, reason="no_quota", message=shown)
        if _CAPACITY.search(said):
            return Failure(kind=FailureKind.transient, reason="overloaded", message=shown)
        if code == 429:
            return Failure(
                kind=FailureKind.transient, reason="rate_limit", message=shown, retry_after_seconds=retry_after(text)
            )
    if code is not None and 500 <= code <= 599:
        reason = "overloaded" if code == 503 or "overloaded" in said.lower() else "server_error"
        return Failure(kind=FailureKind.transient, reason=reason, message=shown, retry_after_seconds=retry_after(text))
    if code == 404:
        return Failure(kind=FailureKind.permanent, reason="model_not_found", message=shown)
    if code is not None and 400 <= code <= 499:
        return Failure(kind=FailureKind.permanent, reason="bad_request", message=shown)
    if _FETCH_FAILED.search(said):
        return Failure(kind=FailureKind.transient, reason="network", message=shown)
    return None
