"""A Telegram Bot API test double: ``sendMessage`` on 127.0.0.1, as ``tests/contracts/telegram.md`` describes.

``POST``/``GET /bot<token>/sendMessage`` (method name case-insensitive) with parameters
in the query string, as JSON or as a form. Telegram's own failures are kept, because
clients get them wrong: 401 for an unknown token, 400 ``message is too long`` over 4096
UTF-16 units (not characters), 400 ``chat not found``, and flood control
(:meth:`TelegramTestServer.flood`): 429 with ``parameters.retry_after``. Every answered
request is kept in :attr:`TelegramTestServer.received` with its arrival time; the token
is masked in the request log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from forge_servers.common import Fault, ForgeRequestHandler, RecordedRequest, ThreadedForgeServer

TEXT_LIMIT = 4096

FAULT_DESCRIPTIONS = {500: "Internal Server Error", 502: "Bad Gateway", 429: "Too Many Requests"}


@dataclass
class ReceivedMessage:
    """One sendMessage call: what it asked for, when it arrived (``time.monotonic()``) and the status answered."""

    at: float
    chat_id: str
    text: str
    message_thread_id: int | None
    parse_mode: str | None
    status: int


class TelegramTestServer(ThreadedForgeServer):
    """One bot (``token``) that may post to ``chats``; a context manager."""

    name = "telegram"

    def __init__(self, token: str, chats: tuple[str, ...] = ("-1001234567890",)) -> None:
        super().__init__()
        self.token = token
        self.chats = set(chats)
        self.received: list[ReceivedMessage] = []
        self._next_message_id = 1

    @property
    def delivered(self) -> list[ReceivedMessage]:
        """The messages Telegram would show, in order."""
        with self._lock:
            return [message for message in self.received if message.status == 200]

    def flood(self, retry_after: int, *, times: int = 1) -> None:
        """Answer the next ``times`` sendMessage calls with flood control: 429, wait ``retry_after`` seconds."""
        self.inject("*", r"/sendmessage$", status=429, times=times, headers={"Retry-After": str(retry_after)})

    def send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Telegram's answer to valid-token sendMessage ``params``."""
        chat_id, text = str(params.get("chat_id", "")), params.get("text")
        if not chat_id:
            return 400, _error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            return 400, _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            return 400, _error(400, "Bad Request: message is too long")
        if chat_id not in self.chats:
            return 400, _error(400, "Bad Request: chat not found")
        with self._lock:
            message_id, self._next_message_id = self._next_message_id, self._next_message_id + 1
        chat_type = "supergroup" if chat_id.startswith("-100") else "group" if chat_id.startswith("-") else "private"
        result: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id, "type": chat_type},
            "text": text,
        }
        if params.get("message_thread_id") is not None:
            result |= {"message_thread_id": int(params["message_thread_id"]), "is_topic_message": True}
        return 200, {"ok": True, "result": result}


def _error(code: int, description: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    return body | ({"parameters": parameters} if parameters else {})


class _Handler(ForgeRequestHandler):
    api: TelegramTestServer

    def _serve(self, method: str) -> None:
        arrived = time.monotonic()
        incoming = self._read_request(method)
        record = incoming.record
        if not record.path.startswith("/bot"):
            return self._answer(record, 404, _error(404, "Not Found"))
        token, _, operation = record.path[len("/bot"):].partition("/")
        record.path = f"/bot***/{operation}"  # the token is in the path: never keep it
        if token != self.api.token:
            return self._answer(record, 401, _error(401, "Unauthorized"))
        if operation.lower() != "sendmessage":
            return self._answer(record, 404, _error(404, "Not Found"))
        params = self._params(incoming.headers, incoming.raw_body, record)
        if params is None:
            return self._answer(record, 400, _error(400, "Bad Request: can't parse JSON object"))
        fault = self.api._take_fault(method, record.path.lower())
        if fault is not None and fault.timeout:
            time.sleep(fault.timeout)
        status, data = self._fault_answer(fault) if fault and fault.status else self.api.send_message(params)
        record.injected = fault is not None
        thread = params.get("message_thread_id")
        message = ReceivedMessage(
            arrived, str(params.get("chat_id", "")), str(params.get("text", "")),
            int(thread) if thread is not None else None, params.get("parse_mode"), status,
        )
        with self.api._lock:
            self.api.received.append(message)
        self._answer(record, status, data)

    def _params(self, headers: dict[str, str], raw_body: bytes, record: RecordedRequest) -> dict[str, Any] | None:
        """Query string, then a JSON or form body, as the Bot API accepts them; None for a broken JSON body."""
        params: dict[str, Any] = {key: values[-1] for key, values in record.query.items()}
        content_type = headers.get("content-type", "")
        if raw_body and "json" in content_type:
            try:
                body = json.loads(raw_body)
            except ValueError:
                return None
            if not isinstance(body, dict):
                return None
            params |= body
        elif raw_body and "x-www-form-urlencoded" in content_type:
            params |= {key: values[-1] for key, values in parse_qs(raw_body.decode(), keep_blank_values=True).items()}
        return params

    @staticmethod
    def _fault_answer(fault: Fault) -> tuple[int, dict[str, Any]]:
        assert fault.status is not None
        if fault.status == 429:
            retry_after = int(fault.headers.get("Retry-After", "1"))
            return 429, _error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
        description = fault.message or FAULT_DESCRIPTIONS.get(fault.status, "injected fault")
        return fault.status, _error(fault.status, description)

    def _answer(self, record: RecordedRequest, status: int, data: dict[str, Any]) -> None:
        record.status = status
        payload = json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 429:
                self.send_header("Retry-After", str(data["parameters"]["retry_after"]))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (an injected timeout)
            pass


TelegramTestServer.handler_class = _Handler
