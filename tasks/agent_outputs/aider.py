"""What the Aider CLI prints (issue 18): its cost and tokens, and its own failure wording.

Aider (0.86.2, ``aider --message-file ... --no-stream --no-pretty``) prints, per model call,

    Tokens: 1.2k sent, 310 received. Cost: $0.0061 message, $0.0183 session.

(``Tokens: 12 sent, 5 cache write, 7 cache hit, 5 received.`` with prompt caching; no
``Cost:`` part when litellm has no price for the model). Counts of 1,000 and more are
rounded (``1.2k``, ``12k``), so the tokens read back are that precise, no more.

It reports an API error that litellm raised as ``litellm.<Exception>: <Exception>:
<Provider>Exception - <message>`` (wrapped at 80 columns), then a line of its own
(``The API provider has rate limited you. ...``), then either ``Retrying in 0.5 seconds...``
(its own backoff: 0.25 s doubling up to 32 s, about a minute in all) or nothing: it gave
up. Either way it exits 0, so the failure is read from the text, whatever the exit code.
Neither Aider nor litellm prints the server's ``retry-after`` header (the OpenAI SDK under
litellm waits for it silently, two retries per call); OpenAI's own 429 message says
``Please try again in 7s.``, and that is read as the wait. See ``tests/fixtures/aider/``.
"""

from __future__ import annotations

import re
from datetime import datetime

from tasks.classify import Failure, FailureKind, RunUsage

MESSAGE_MAX_CHARS = 300

# The runner's framing line that opens one attempt in the log (tasks.agent.execute_agent).
_STARTED = re.compile(r"^--- \S+ attempt \d+ started ", re.MULTILINE)
_TOKENS = re.compile(
    r"^Tokens: (?P<sent>[\d.]+k?) sent(?:, (?P<write>[\d.]+k?) cache write)?(?:, (?P<hit>[\d.]+k?) cache hit)?"
    r", (?P<received>[\d.]+k?) received\.",
    re.MULTILINE,
)
_COST = re.compile(r"Cost: \$(?P<message>[\d.]+) message, \$(?P<session>[\d.]+) session\.")
# `litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for`
_ERROR = re.compile(r"^litellm\.(?P<name>[A-Za-z]+(?:Error|Timeout)|Timeout)\b:?(?P<rest>.*)$", re.MULTILINE)
_RETRYING = re.compile(r"^Retrying in [\d.]+ seconds\.\.\.$", re.MULTILINE)
# Aider's own lines after an error (its explanation, its backoff): the error's text ends there.
_AIDER_SAYS = re.compile(r"^(The API provider|Insufficient credits|Retrying in )")
_TRY_AGAIN = re.compile(r"try again in (?P<wait>(?:\d+(?:\.\d+)?(?:h|ms|m|s))+)\b", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_QUOTA = re.compile(
    r"exceeded your current quota|insufficient_quota|check your plan and billing|insufficient credits", re.IGNORECASE
)
_OVERLOADED = re.compile(r"overloaded|overloaded_error|\b529\b", re.IGNORECASE)
_CONNECTION = re.compile(r"connection error|connection refused|connecterror|name or service not known", re.IGNORECASE)
_TOKEN_LIMIT = re.compile(r"^Model \S+ has hit a token limit!$", re.MULTILINE)
# A git command of Aider's that failed (`git add` of a new file in a read-only index): edits may be lost.
_GIT_FAILED = re.compile(r"^Cmd\('git'\) failed due to: .*$", re.MULTILINE)

# litellm exception -> (kind, reason); what is not here is left to the generic classification.
_BY_NAME: dict[str, tuple[FailureKind, str]] = {
    "AuthenticationError": (FailureKind.permanent, "authentication"),
    "PermissionDeniedError": (FailureKind.permanent, "authentication"),
    "RateLimitError": (FailureKind.transient, "rate_limit"),
    "RouterRateLimitError": (FailureKind.transient, "rate_limit"),
    "InternalServerError": (FailureKind.transient, "server_error"),
    "BadGatewayError": (FailureKind.transient, "server_error"),
    "ServiceUnavailableError": (FailureKind.transient, "overloaded"),
    # Any status litellm maps to nothing else (403, 402, 409, an unusual 5xx ...), its number not printed.
    "APIError": (FailureKind.permanent, "unexpected_status"),
    "Timeout": (FailureKind.transient, "timeout_api"),
    "APIConnectionError": (FailureKind.transient, "network"),
    "NotFoundError": (FailureKind.permanent, "model_not_found"),
    "BadRequestError": (FailureKind.permanent, "bad_request"),
    "UnsupportedParamsError": (FailureKind.permanent, "bad_request"),
    "InvalidRequestError": (FailureKind.permanent, "bad_request"),
    "ContextWindowExceededError": (FailureKind.permanent, "context_window"),
    "ContentPolicyViolationError": (FailureKind.permanent, "content_policy"),
}


def _last_run(text: str) -> str:
    """The part of the log the last attempt wrote (all of it when the runner's framing is absent)."""
    starts = list(_STARTED.finditer(text))
    return text[starts[-1].start() :] if starts else text


def _count(value: str | None) -> int:
    """``905`` -> 905, ``1.2k`` -> 1200, ``12k`` -> 12000 (Aider's rounding, not undone)."""
    if not value:
        return 0
    if value.endswith("k"):
        return round(float(value[:-1]) * 1000)
    return int(float(value))


def usage(text: str) -> RunUsage | None:
    """Cost and tokens from Aider's ``Tokens: ... Cost: ...`` lines; None when it printed none.

    ``input_tokens`` is the sum of the ``sent`` figures (Aider's count of prompt tokens,
    cache writes included), ``output_tokens`` of the ``received`` ones, ``num_turns`` the
    number of model calls reported; ``cost_usd`` is the last ``session`` figure, None when
    Aider printed no cost (litellm knows no price for the model), never 0 for "unknown".
    """
    run = _last_run(text)
    reports = list(_TOKENS.finditer(run))
    if not reports:
        return None
    costs = list(_COST.finditer(run))
    return RunUsage(
        cost_usd=float(costs[-1].group("session")) if costs else None,
        input_tokens=sum(_count(m.group("sent")) for m in reports),
        output_tokens=sum(_count(m.group("received")) for m in reports),
        num_turns=len(reports),
    )


def _seconds(wait: str) -> float:
    factor = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * factor[unit] for number, unit in _DURATION_PART.findall(wait))


def retry_after(message: str) -> float | None:
    """The wait OpenAI's message names (``Please try again in 7s.``, ``in 1m30s``, ``in 20ms``), if any."""
    match = _TRY_AGAIN.search(message)
    return _seconds(match.group("wait")) if match else None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 1] + "…"


def _error_message(run: str, start: int) -> str:
    """The error Aider printed from ``start`` on: its wrapped lines joined, up to Aider's own words."""
    lines: list[str] = []
    for line in run[start:].splitlines():
        if lines and (not line.strip() or _AIDER_SAYS.match(line)):
            break
        lines.append(line.strip())
    return " ".join(lines)


def failure(text: str, exit_code: int | None, now: datetime) -> Failure | None:
    """The API error Aider gave up on (it exits 0 all the same); None leaves it to the generic classification.

    An error followed by ``Retrying in ...`` is one Aider retried: if nothing failed after it,
    the run went on (or was stopped while waiting, which the runner knows). The wait is the
    one OpenAI's message names; the server's header never reaches the log.
    """
    run = _last_run(text)
    errors = list(_ERROR.finditer(run))
    if not errors:
        for reason, pattern in (("context_window", _TOKEN_LIMIT), ("git_error", _GIT_FAILED)):
            said = pattern.findall(run)
            if said:
                return Failure(kind=FailureKind.permanent, reason=reason, message=_short(said[-1]))
        return None
    last = errors[-1]
    if _RETRYING.search(run, last.end()):
        return None
    name = last.group("name")
    message = _error_message(run, last.start())
    known = _BY_NAME.get(name)
    if known is None:
        return None
    kind, reason = known
    if name in ("RateLimitError", "APIError") and _QUOTA.search(message):
        # Out of credit: no reset time to wait for, so sdlc stops and says why (decide_retry).
        return Failure(kind=FailureKind.usage_limit, reason="quota_exhausted", message=_short(message))
    if kind is FailureKind.transient:
        if reason == "server_error" and _OVERLOADED.search(message):
            reason = "overloaded"
        elif reason == "server_error" and _CONNECTION.search(message):
            reason = "network"
        return Failure(kind=kind, reason=reason, message=_short(message), retry_after_seconds=retry_after(message))
    return Failure(kind=kind, reason=reason, message=_short(message))
