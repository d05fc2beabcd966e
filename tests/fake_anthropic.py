"""A fake Anthropic Messages API on 127.0.0.1 for running the real Claude Code CLI in tests.

Stdlib only (``http.server`` in a thread). Use it as a context manager::

    with FakeAnthropic() as api:                       # answers every message with "hi"
        api.script(Reply.error(429, "rate_limit_error", "slow down", headers={"retry-after": "7"}))
        env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-test-dummy"}
        ...                                            # run the CLI
        assert api.message_requests()[0]["body"]["stream"] is True

``POST /v1/messages`` takes the next scripted :class:`Reply` from the queue, or the
``default`` reply when the queue is empty (so a persistent error can be set as the
default and survives the CLI's own retries). A successful reply is sent as SSE when
the request asks for ``"stream": true`` (what the CLI does for its turns) and as one
JSON message otherwise. ``/v1/messages/count_tokens`` is answered with a count; any
other path gets a 404 API error, which the CLI tolerates. Every request is recorded
in :attr:`FakeAnthropic.requests` as ``{"method", "path", "query", "headers"
(lower-cased names), "body" (parsed JSON)}``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from fake_model_api import Exchange, FakeModelAPI, wait_for_reply

_ids = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """One answer of the fake API: a message (text and/or tool uses) or an API error."""

    status: int = 200
    text: str = "hi"
    tool_uses: tuple[dict[str, Any], ...] = ()
    input_tokens: int = 12
    output_tokens: int = 5
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    stop_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0

    @classmethod
    def message(cls, text: str = "hi", **kwargs: Any) -> "Reply":
        """A normal assistant answer (``end_turn``) with the given text and usage."""
        return cls(text=text, **kwargs)

    @classmethod
    def tool_use(cls, name: str, tool_input: dict[str, Any], text: str = "", **kwargs: Any) -> "Reply":
        """An answer that asks the CLI to run one tool (``stop_reason: tool_use``)."""
        use = {"type": "tool_use", "id": f"toolu_fake{next(_ids):06d}", "name": name, "input": tool_input}
        return cls(text=text, tool_uses=(use,), stop_reason="tool_use", **kwargs)

    @classmethod
    def error(cls, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> "Reply":
        """An API error: ``status`` with ``{"type":"error","error":{"type":..., "message":...}}``."""
        return cls(status=status, error_type=error_type, error_message=message, headers=dict(headers or {}))

    @classmethod
    def hang(cls, seconds: float) -> "Reply":
        """Answer "hi", but only after ``seconds``: provokes the client's request timeout."""
        return cls(delay_seconds=seconds)

    @property
    def is_error(self) -> bool:
        return self.status >= 400


RATE_LIMITED = Reply.error(
    429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
    headers={"retry-after": "7"},
)
OVERLOADED = Reply.error(529, "overloaded_error", "Overloaded")
SERVER_ERROR = Reply.error(500, "api_error", "Internal server error")
UNAUTHORIZED = Reply.error(401, "authentication_error", "invalid x-api-key")


def claude_cli_env(home: str, api_url: str, *, timeout_ms: int) -> dict[str, str]:
    """What the real Claude Code CLI needs to talk to a fake API and nothing else: a private HOME,
    a dummy key, no updater, telemetry or error reports, and no retries of its own."""
    return {
        "HOME": home,
        "ANTHROPIC_BASE_URL": api_url,
        "ANTHROPIC_API_KEY": "sk-test-dummy",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "API_TIMEOUT_MS": str(timeout_ms),
    }


class FakeAnthropic(FakeModelAPI):
    """The fake Messages API; a context manager that serves on ``url`` until exit."""

    name = "fake-anthropic"
    model_paths = ("/v1/messages",)
    request_id_header = "request-id"

    def __init__(self, default: Reply | None = None, responder: "Callable[[dict[str, Any]], Reply] | None" = None) -> None:
        super().__init__(default or Reply.message(), responder)  # type: ignore[arg-type]

    def message_requests(self) -> list[dict[str, Any]]:
        """The recorded ``POST /v1/messages`` requests (the model calls; not ``count_tokens``)."""
        return [r for r in self.model_requests() if r["path"] == "/v1/messages"]

    def answer(self, exchange: Exchange) -> bool:
        if exchange.method == "POST" and exchange.path == "/v1/messages":
            self._messages(exchange, exchange.body if isinstance(exchange.body, dict) else {})
        elif exchange.method == "POST" and exchange.path == "/v1/messages/count_tokens":
            exchange.json(200, {"input_tokens": 100})
        elif exchange.method == "HEAD":
            exchange.json(200, None)
        else:
            return False
        return True

    def not_found(self, exchange: Exchange) -> None:
        exchange.json(404, _error_body("not_found_error", f"Not found: {exchange.method} {exchange.path}"))

    def _messages(self, exchange: Exchange, body: dict[str, Any]) -> None:
        reply: Reply = self.next_reply(body)  # type: ignore[assignment]
        wait_for_reply(reply)  # type: ignore[arg-type]
        if reply.is_error:
            error = _error_body(reply.error_type or "api_error", reply.error_message or "")
            exchange.json(reply.status, error, reply.headers)
            return
        model = str(body.get("model") or "claude-sonnet-4-5")
        if body.get("stream"):
            exchange.sse(sse_events(reply, model), reply.headers)
        else:
            exchange.json(200, message_json(reply, model), reply.headers)


def message_json(reply: Reply, model: str) -> dict[str, Any]:
    """The non-streaming Messages API answer for a successful reply."""
    content: list[dict[str, Any]] = []
    if reply.text or not reply.tool_uses:
        content.append({"type": "text", "text": reply.text})
    content.extend(reply.tool_uses)
    return {
        "id": f"msg_fake{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": _usage(reply, reply.output_tokens),
    }


def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_creation_input_tokens,
        "cache_read_input_tokens": reply.cache_read_input_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def sse_events(reply: Reply, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The streaming (SSE) events of a successful reply, as the real API sends them."""
    whole = message_json(reply, model)
    start = {**whole, "content": [], "stop_reason": None, "usage": _usage(reply, 1)}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {**block, "input": {}}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": json.dumps(block["input"])}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": reply.output_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
