"""A fake Gemini API (generativelanguage.googleapis.com, v1beta) on 127.0.0.1 for the real Gemini CLI (issue 18).

The Gemini CLI (``@google/gemini-cli``, through ``@google/genai``) calls, under its base URL
(``GOOGLE_GEMINI_BASE_URL``, with ``GEMINI_API_KEY`` sent as ``x-goog-api-key``):

* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``: the agent's turns. Answered
  as server-sent events, each ``data:`` a ``GenerateContentResponse``: ``candidates[0].content.parts``
  (``{"text"}`` or ``{"functionCall": {"name", "args"}}``), ``finishReason`` ``STOP`` on the last
  chunk (a function call ends with ``STOP`` too, as the real API does), and ``usageMetadata``
  (``promptTokenCount``, ``candidatesTokenCount``, ``totalTokenCount``);
* ``POST /v1beta/models/{model}:generateContent``: one JSON ``GenerateContentResponse`` (the CLI's
  side calls: its model router, loop checks and the like);
* ``POST /v1beta/models/{model}:countTokens``: ``{"totalTokens"}``.

Both generate calls take the next scripted :class:`~fake_model_api.Reply` (or the ``default`` /
``responder`` one). An error reply is Google's error body, ``{"error": {"code", "message",
"status", "details"}}``, with the reply's HTTP status and headers (see :func:`google_error` and
the constants below, copied from what the real service answers). Every other path gets Google's
404. Every request is recorded (see :class:`~fake_model_api.FakeModelAPI`)::

    with FakeGemini() as api:
        api.script(RATE_LIMITED)                  # 429 RESOURCE_EXHAUSTED, RetryInfo retryDelay 7s
        ...                                       # run gemini with GOOGLE_GEMINI_BASE_URL=api.url
        assert api.generate_requests()[0]["path"].endswith(":streamGenerateContent")
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from fake_model_api import Exchange, FakeModelAPI, Reply, ToolCall, wait_for_reply

_ids = itertools.count(1)

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
HELP = "type.googleapis.com/google.rpc.Help"
LOCALIZED_MESSAGE = "type.googleapis.com/google.rpc.LocalizedMessage"


@dataclass(frozen=True)
class GoogleReply(Reply):
    """A :class:`~fake_model_api.Reply` that also carries a Google error's ``details`` list."""

    details: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def google_error(
    status: int,
    status_name: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> GoogleReply:
    """A Google API error: HTTP ``status``, body ``{"error": {"code": status, "message", "status": status_name, "details"}}``."""
    return GoogleReply(
        status=status,
        error_type=status_name,
        error_message=message,
        headers=dict(headers or {}),
        details=tuple(details or ()),
    )


def _quota_failure(quota_id: str, metric: str, value: str, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    return {
        "@type": QUOTA_FAILURE,
        "violations": [
            {
                "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": value,
            }
        ],
    }


_RATE_HELP = {
    "@type": HELP,
    "links": [
        {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }
    ],
}

# The per-minute rate limit as the Gemini API answers it (free tier): RetryInfo names the wait.
RATE_LIMITED = google_error(
    429,
    "RESOURCE_EXHAUSTED",
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: "
    "https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 10, model: gemini-2.5-flash\n"
    "Please retry in 7.000000s.",
    [
        _RATE_HELP,
        _quota_failure(
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "generate_content_free_tier_requests", "10"
        ),
        {"@type": RETRY_INFO, "retryDelay": "7s"},
    ],
)
# The daily quota used up: the CLI calls it terminal ("You have exhausted your daily quota on this model.").
QUOTA_EXHAUSTED = google_error(
    429,
    "RESOURCE_EXHAUSTED",
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: "
    "https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 250, model: gemini-2.5-flash\n"
    "Please retry in 50600.123456s.",
    [
        _RATE_HELP,
        _quota_failure(
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "generate_content_free_tier_requests", "250"
        ),
        {"@type": RETRY_INFO, "retryDelay": "50600s"},
    ],
)
# A model the project's tier has no quota for at all ("limit: 0"): the CLI calls it terminal too.
NO_QUOTA = google_error(
    429,
    "RESOURCE_EXHAUSTED",
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: "
    "https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro\n"
    "Please retry in 25.465784708s.",
    [
        _RATE_HELP,
        _quota_failure(
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "generate_content_free_tier_requests",
            "0",
            model="gemini-2.5-pro",
        ),
        {"@type": RETRY_INFO, "retryDelay": "25s"},
    ],
)
SERVER_ERROR = google_error(
    500,
    "INTERNAL",
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
)
OVERLOADED = google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
# What the Gemini API really answers for a wrong API key: 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
API_KEY_INVALID = google_error(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    [
        {
            "@type": ERROR_INFO,
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {"@type": LOCALIZED_MESSAGE, "locale": "en-US", "message": "API key not valid. Please pass a valid API key."},
    ],
)
# A credential that is not accepted at all (an OAuth token or a proxy's own check): 401 UNAUTHENTICATED.
UNAUTHENTICATED = google_error(
    401,
    "UNAUTHENTICATED",
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    [
        {
            "@type": ERROR_INFO,
            "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            "domain": "googleapis.com",
            "metadata": {
                "service": "generativelanguage.googleapis.com",
                "method": "google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent",
            },
        }
    ],
)
# A key of a project that may not call the API (or one reported as leaked): 403 PERMISSION_DENIED.
PERMISSION_DENIED = google_error(
    403,
    "PERMISSION_DENIED",
    "Your API key was reported as leaked. Please use another API key.",
)

_MODEL_CALL = re.compile(
    r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent|countTokens)$"
)


def error_body(reply: Reply) -> dict[str, Any]:
    """Google's error body for an error reply."""
    details = list(getattr(reply, "details", ()) or ())
    error: dict[str, Any] = {
        "code": reply.status,
        "message": reply.error_message or "",
        "status": reply.error_type or "UNKNOWN",
    }
    if details:
        error["details"] = details
    return {"error": error}


def _usage(reply: Reply, done: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": reply.input_tokens, "totalTokenCount": reply.input_tokens}
    if done:
        usage.update(candidatesTokenCount=reply.output_tokens, totalTokenCount=reply.input_tokens + reply.output_tokens)
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.input_tokens}]
    return usage


def _call_part(call: ToolCall) -> dict[str, Any]:
    return {"functionCall": {"name": call.name, "args": call.arguments}}


def response_chunks(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The ``GenerateContentResponse`` chunks of a successful reply, as the API streams them: the text in
    two pieces, then the function calls, the last chunk with ``finishReason`` and the full usage."""
    response_id = f"fake{next(_ids):06d}"
    parts: list[list[dict[str, Any]]] = []
    text = reply.text
    if text:
        half = max(1, len(text) // 2)
        parts += [[{"text": text[:half]}]] + ([[{"text": text[half:]}]] if text[half:] else [])
    if reply.tool_calls:
        parts.append([_call_part(call) for call in reply.tool_calls])
    if not parts:
        parts = [[{"text": ""}]]
    chunks = []
    for index, chunk_parts in enumerate(parts):
        last = index == len(parts) - 1
        candidate: dict[str, Any] = {"content": {"parts": chunk_parts, "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        chunks.append(
            {
                "candidates": [candidate],
                "usageMetadata": _usage(reply, last),
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    return chunks


def whole_response(reply: Reply, model: str) -> dict[str, Any]:
    """One ``GenerateContentResponse`` with every part (``:generateContent``)."""
    chunks = response_chunks(reply, model)
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    merged: list[dict[str, Any]] = []
    for part in parts:  # the two text pieces become one part again
        if merged and "text" in part and "text" in merged[-1]:
            merged[-1] = {"text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(part)
    last = chunks[-1]
    return {**last, "candidates": [{**last["candidates"][0], "content": {"parts": merged, "role": "model"}}]}


def declared_functions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The functions a request offers (``tools[].functionDeclarations``), by name."""
    found: dict[str, dict[str, Any]] = {}
    for tool in body.get("tools") or []:
        for declaration in (tool or {}).get("functionDeclarations") or []:
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                found[declaration["name"]] = declaration
    return found


def function_parameters(declaration: dict[str, Any]) -> dict[str, Any]:
    """A declared function's parameter schema (``parametersJsonSchema`` or ``parameters``)."""
    return declaration.get("parametersJsonSchema") or declaration.get("parameters") or {}


class FakeGemini(FakeModelAPI):
    """The fake Gemini API; a context manager serving on ``url`` (the CLI's ``GOOGLE_GEMINI_BASE_URL``)."""

    name = "fake-gemini"
    model_paths = ("/v1beta/models/",)

    def answer(self, exchange: Exchange) -> bool:
        match = _MODEL_CALL.match(exchange.path)
        if exchange.method != "POST" or match is None:
            return False
        model, method = match.group("model"), match.group("method")
        body = exchange.body if isinstance(exchange.body, dict) else {}
        if method == "countTokens":
            exchange.json(200, {"totalTokens": max(1, len(str(body)) // 4)})
            return True
        reply = self.next_reply(body)
        wait_for_reply(reply)
        if reply.is_error:
            exchange.json(reply.status, error_body(reply), reply.headers)
        elif method == "streamGenerateContent":
            exchange.sse([(None, chunk) for chunk in response_chunks(reply, model)], reply.headers)
        else:
            exchange.json(200, whole_response(reply, model), reply.headers)
        return True

    def not_found(self, exchange: Exchange) -> None:
        exchange.json(
            404,
            {
                "error": {
                    "code": 404,
                    "message": f"Method not found: {exchange.method} {exchange.path}",
                    "status": "NOT_FOUND",
                }
            },
        )

    def generate_requests(self) -> list[dict[str, Any]]:
        """The recorded generate calls (streamed or not); ``countTokens`` left out."""
        return [r for r in self.model_requests() if r["path"].endswith(("GenerateContent", "generateContent"))]

    def unserved_requests(self) -> list[dict[str, Any]]:
        """Requests for anything but a model call (a model list, a quota check ...): should stay empty."""
        return [r for r in self.requests if _MODEL_CALL.match(r["path"]) is None]


# -- the CLI's side -----------------------------------------------------------------------

TEST_API_KEY = "gemini-test-dummy-key"


# ~/.gemini/settings.json for unattended runs against a fake API: API-key auth, no usage statistics
# (they go to play.googleapis.com), no telemetry, no update check or auto-update, no IDE client, and one
# attempt per request (``general.maxAttempts``; the CLI's own default is 10 attempts, 5 s to 30 s apart).
# Folder trust stays on (the CLI's default) and the profile passes ``--skip-trust``: trusted for the
# session only, after the settings are read, so the worktree's own ``.gemini/settings.json`` (MCP
# servers, hooks: commands the CLI would start) is never loaded; with folder trust off every folder
# is trusted and it is. ``advanced.ignoreLocalEnv`` keeps the worktree's ``.env`` out of the CLI's
# environment. ``overrides`` are merged in (one level deep).
def gemini_settings(max_attempts: int = 1, **overrides: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": True}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False, "logPrompts": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False, "maxAttempts": max_attempts},
        "advanced": {"ignoreLocalEnv": True},
        "ide": {"enabled": False},
    }
    for section, values in overrides.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


def write_gemini_home(home: str, max_attempts: int = 1, **overrides: dict[str, Any]) -> str:
    """Write ``home/.gemini/settings.json`` (see :func:`gemini_settings`); returns its path."""
    import json
    import os

    folder = os.path.join(home, ".gemini")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "settings.json")
    with open(path, "w") as handle:
        json.dump(gemini_settings(max_attempts, **overrides), handle, indent=2)
    return path


def gemini_cli_env(home: str, api_url: str) -> dict[str, str]:
    """What the real Gemini CLI needs to talk to a fake API and nothing else: a private HOME (its
    ``.gemini/settings.json`` written by :func:`write_gemini_home`), the base URL and a dummy key."""
    return {"HOME": home, "GOOGLE_GEMINI_BASE_URL": api_url, "GEMINI_API_KEY": TEST_API_KEY}
