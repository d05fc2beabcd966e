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

import collections
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

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


class FakeAnthropic:
    """The fake API server; a context manager that serves on ``url`` until exit."""

    def __init__(self, default: Reply | None = None, responder: "Callable[[dict[str, Any]], Reply] | None" = None) -> None:
        self.default = default or Reply.message()
        self.responder = responder  # a fake model: picks the reply from the request when nothing is queued
        self.requests: list[dict[str, Any]] = []
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------------------
    def script(self, *replies: Reply) -> "FakeAnthropic":
        """Queue replies for the next ``POST /v1/messages`` requests, in order."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def next_reply(self, body: dict[str, Any] | None = None) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body or {})
        return self.default

    def message_requests(self) -> list[dict[str, Any]]:
        """The recorded ``POST /v1/messages`` requests (the model calls)."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == "/v1/messages"]

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append({**entry, "at": time.time()})

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeAnthropic is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeAnthropic":
        handler = type("BoundHandler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeAnthropic":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


class _Handler(BaseHTTPRequestHandler):
    api: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def _handle(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (its request timeout): nothing to answer

    def _answer(self) -> None:
        body = self._read_body()
        path, _, query = self.path.partition("?")
        self.api.record({"method": self.command, "path": path, "query": query,
                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        if self.command == "POST" and path == "/v1/messages":
            self._messages(body if isinstance(body, dict) else {})
        elif self.command == "POST" and path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": 100})
        elif self.command == "HEAD":
            self._json(200, None)
        else:
            self._json(404, _error_body("not_found_error", f"Not found: {self.command} {path}"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _messages(self, body: dict[str, Any]) -> None:
        reply = self.api.next_reply(body)
        if reply.delay_seconds:
            time.sleep(reply.delay_seconds)
        if reply.is_error:
            self._json(reply.status, _error_body(reply.error_type or "api_error", reply.error_message or ""),
                       reply.headers)
            return
        model = str(body.get("model") or "claude-sonnet-4-5")
        if not body.get("stream"):
            self._json(200, message_json(reply, model), reply.headers)
            return
        payload = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in sse_events(reply, model))
        data = payload.encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
