"""The shared part of the fake model APIs that real agent CLIs talk to in the tests (issue 18).

Each protocol (``fake_openai_responses.py``: OpenAI's Responses API, for Codex;
``fake_openai_chat.py``: its Chat Completions API, for Aider; ``fake_gemini.py``: the
Gemini API) subclasses :class:`FakeModelAPI` and renders a
protocol-neutral :class:`Reply` in its own wire format; this module holds what they
share: a stdlib HTTP server on 127.0.0.1 in a thread, the queue of scripted replies
(a ``default`` reply, or a ``responder`` that picks one from the request, when the queue
is empty), the record of every request, and the JSON and server-sent-event answers::

    with FakeOpenAIResponses() as api:
        api.script(Reply.error(429, "rate_limit_exceeded", "slow down", headers={"retry-after": "7"}))
        ...                                        # run the CLI with its base URL at api.url
        assert api.model_requests()[0]["body"]["model"] == "gpt-5-codex"

``fake_anthropic.py`` (the Messages API, for Claude Code and OpenCode) keeps a reply of its own
(Anthropic's content blocks, cache tokens and stop reasons) on the same server.
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

ids = itertools.count(1)


@dataclass(frozen=True)
class ToolCall:
    """One tool (function) call the model asks the CLI to make, with its arguments."""

    name: str
    arguments: dict[str, Any]
    call_id: str = field(default_factory=lambda: f"call_fake{next(ids):06d}")


@dataclass(frozen=True)
class Reply:
    """One answer of a fake model API, in no protocol's shape: a message (text and/or tool calls) or an error."""

    status: int = 200
    text: str = "hi"
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 12
    output_tokens: int = 5
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0

    @classmethod
    def message(cls, text: str = "hi", **kwargs: Any) -> "Reply":
        """A normal answer that ends the model's turn."""
        return cls(text=text, **kwargs)

    @classmethod
    def tool_call(cls, name: str, arguments: dict[str, Any], text: str = "", **kwargs: Any) -> "Reply":
        """An answer that asks the CLI to run one tool."""
        return cls(text=text, tool_calls=(ToolCall(name, arguments),), **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> "Reply":
        """An API error with the protocol's error body; ``headers`` such as ``retry-after``."""
        return cls(
            status=status, error_type=error_type, error_code=code, error_message=message, headers=dict(headers or {})
        )

    @classmethod
    def hang(cls, seconds: float) -> "Reply":
        """Answer "hi", but only after ``seconds``: provokes the client's request timeout."""
        return cls(delay_seconds=seconds)

    @property
    def is_error(self) -> bool:
        return self.status >= 400


class Exchange:
    """One request being answered: what it asked, and the ways to answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str, path: str, query: str, body: Any) -> None:
        self._handler = handler
        self.method, self.path, self.query, self.body = method, path, query, body
        self.headers = {k.lower(): v for k, v in handler.headers.items()}

    def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self._start(status, "application/json", len(data), headers)
        if self.method != "HEAD":
            self._handler.wfile.write(data)

    def sse(self, events: list[tuple[str | None, Any]], headers: dict[str, str] | None = None) -> None:
        """Server-sent events, each ``(event name or None, data)``; data that is not a str is sent as JSON."""
        parts = []
        for name, data in events:
            line = data if isinstance(data, str) else json.dumps(data)
            parts.append((f"event: {name}\n" if name else "") + f"data: {line}\n\n")
        payload = "".join(parts).encode()
        self._start(200, "text/event-stream; charset=utf-8", len(payload), {"cache-control": "no-cache", **(headers or {})})
        self._handler.wfile.write(payload)

    def _start(self, status: int, content_type: str, length: int, headers: dict[str, str] | None) -> None:
        handler = self._handler
        handler.send_response(status)
        handler.send_header("content-type", content_type)
        handler.send_header(handler.api.request_id_header, f"req_fake{next(ids):06d}")  # type: ignore[attr-defined]
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(length))
        handler.end_headers()


class FakeModelAPI:
    """A fake model API server; a context manager that serves on ``url`` until exit.

    Subclasses implement :meth:`answer` (and name their model-call paths in :attr:`model_paths`).
    """

    name = "fake-model-api"
    model_paths: tuple[str, ...] = ()
    request_id_header = "x-request-id"  # the header naming each answer, as the real service calls it

    def __init__(self, default: Reply | None = None, responder: Callable[[dict[str, Any]], Reply] | None = None) -> None:
        self.default = default or Reply.message()
        self._first_default = self.default
        self.responder = responder  # a fake model: picks the reply from the request when nothing is queued
        self.requests: list[dict[str, Any]] = []
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what a protocol does --------------------------------------------------------
    def answer(self, exchange: Exchange) -> bool:
        """Answer the request; False when the path is not the protocol's (a 404 is sent)."""
        raise NotImplementedError

    def not_found(self, exchange: Exchange) -> None:
        exchange.json(404, {"error": {"message": f"Not found: {exchange.method} {exchange.path}", "type": "not_found"}})

    # -- scripting -------------------------------------------------------------------
    def script(self, *replies: Reply) -> "FakeModelAPI":
        """Queue replies for the next model calls, in order."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def reset(self, default: Reply | None = None) -> "FakeModelAPI":
        """Forget the requests and the queue and the responder; answer ``default`` (else what it was made
        with): one server serves a whole test module."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()
        self.default = default or self._first_default
        self.responder = None
        return self

    def next_reply(self, body: dict[str, Any] | None = None) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(body or {})
        return self.default

    def model_requests(self) -> list[dict[str, Any]]:
        """The recorded model calls (``POST`` to one of :attr:`model_paths`)."""
        with self._lock:
            return [
                r for r in self.requests if r["method"] == "POST" and any(r["path"].startswith(p) for p in self.model_paths)
            ]

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append({**entry, "at": time.time()})

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, f"{self.name} is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeModelAPI":
        handler = type("BoundHandler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    api: FakeModelAPI
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
            body = self._read_body()
            path, _, query = self.path.partition("?")
            exchange = Exchange(self, self.command, path, query, body)
            self.api.record(
                {"method": self.command, "path": path, "query": query, "headers": exchange.headers, "body": body}
            )
            if not self.api.answer(exchange):
                self.api.not_found(exchange)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (its request timeout): nothing to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def wait_for_reply(reply: Reply) -> None:
    """Hold the answer as long as the reply says (a hang)."""
    if reply.delay_seconds:
        time.sleep(reply.delay_seconds)


# -- requests meant for other hosts (appended for issue 18's Codex tests) -----------------
# With HTTP(S)_PROXY pointing at a fake (and NO_PROXY naming 127.0.0.1), a CLI that tries to reach
# anything but its model API asks the fake instead: a CONNECT or an absolute URL, recorded, then refused.
_Handler.do_CONNECT = _Handler._handle  # type: ignore[attr-defined]


def foreign_requests(api: FakeModelAPI) -> list[dict[str, Any]]:
    """The recorded requests a CLI sent through the fake as its proxy: meant for another host."""
    with api._lock:
        return [r for r in api.requests if r["method"] == "CONNECT" or "://" in r["path"]]


class ForeignHosts(FakeModelAPI):
    """A proxy that forwards nothing, for a CLI's ``HTTP(S)_PROXY``: every request sent through it
    (meant for a host that is not the fake model API: ``CONNECT host:443`` or an absolute URL) is
    recorded and refused with 403. ``requests`` lists them; a test asserts it stays empty."""

    name = "foreign-hosts"

    def answer(self, exchange: Exchange) -> bool:
        exchange.json(403, {"error": {"message": f"no network in the tests: {exchange.method} {exchange.path}"}})
        return True

    def seen(self) -> list[str]:
        """What the CLI reached for, one ``METHOD target`` each."""
        with self._lock:
            return [f"{r['method']} {r['path']}" for r in self.requests]

    def env(self) -> dict[str, str]:
        """Every destination through this proxy but the fake API on loopback. The ``..._BASE_URL``
        variable names its port, so that the sandbox lets a confined CLI reach it too."""
        proxies = {name: self.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
        proxies |= {name.lower(): value for name, value in proxies.items()}
        loopback = "127.0.0.1,localhost"
        return {**proxies, "NO_PROXY": loopback, "no_proxy": loopback, "SDLC_FOREIGN_HOSTS_BASE_URL": self.url}
