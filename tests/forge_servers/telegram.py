"""A Telegram Bot API test double: ``sendMessage`` and ``getUpdates`` on 127.0.0.1, as ``tests/contracts/telegram.md``
(and ``../shared/contracts/telegram.md``, "Receiving") describe.

``POST``/``GET /bot<token>/sendMessage`` (method name case-insensitive) with parameters
in the query string, as JSON or as a form. Telegram's own failures are kept, because
clients get them wrong: 401 for an unknown token, 400 ``message is too long`` over 4096
UTF-16 units (not characters), 400 ``chat not found``, and flood control
(:meth:`TelegramTestServer.flood`): 429 with ``parameters.retry_after``. Every answered
request is kept in :attr:`TelegramTestServer.received` with its arrival time; the token
is masked in the request log.

Incoming messages: a test queues one with :meth:`TelegramTestServer.queue_message` (an
Update of the contract's shape, ``update_id`` increasing) and a client fetches it with
``getUpdates``: every update below ``offset`` is confirmed and forgotten, and a call with
nothing to return waits up to its ``timeout`` seconds for one to be queued (a condition,
not a sleep). While a webhook is set (``setWebhook``), ``getUpdates`` answers 409.
Injected faults (:meth:`inject`, :meth:`chaos`) apply to every method.
:meth:`TelegramTestServer.update_for` builds an Update without queuing it, to POST to a
webhook receiver.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
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
    reply_to: int | None = None  # reply_parameters.message_id, or the older reply_to_message_id


@dataclass
class UpdatesCall:
    """One getUpdates call: its ``offset`` and ``timeout`` and the update ids it returned (empty for an error)."""

    at: float
    offset: int | None
    timeout: float
    returned: list[int] = field(default_factory=list)
    status: int = 200


class TelegramTestServer(ThreadedForgeServer):
    """One bot (``token``) that may post to ``chats``; a context manager."""

    name = "telegram"

    def __init__(self, token: str, chats: tuple[str, ...] = ("-1001234567890",)) -> None:
        super().__init__()
        self.token = token
        self.chats = set(chats)
        self.received: list[ReceivedMessage] = []
        self._next_message_id = 1
        self.updates_calls: list[UpdatesCall] = []
        self.webhook: dict[str, Any] | None = None  # what setWebhook set: url, secret_token, allowed_updates
        self._pending: list[dict[str, Any]] = []  # updates not yet confirmed by an offset above them
        self._next_update_id = 510_000_001
        self._arrived = threading.Condition(self._lock)
        self._closing = False

    def close(self) -> None:
        """Wake every waiting getUpdates first, so no long poll holds a client past the test."""
        with self._arrived:
            self._closing = True
            self._arrived.notify_all()
        super().close()

    def update_for(
        self,
        text: str,
        *,
        user_id: int,
        username: str | None = None,
        first_name: str = "Tester",
        chat_id: str | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """A new Update carrying a text message from ``user_id`` in ``chat_id`` (default: the first chat), not queued.

        A leading ``/command`` (``/approve@MyBot`` too) is marked as a ``bot_command`` entity, as Telegram does.
        """
        chat = chat_id if chat_id is not None else sorted(self.chats)[0]
        with self._lock:
            update_id, self._next_update_id = self._next_update_id, self._next_update_id + 1
            message_id, self._next_message_id = self._next_message_id, self._next_message_id + 1
        sender: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username is not None:
            sender["username"] = username
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": sender,
            "chat": _chat(chat) | ({"title": "sdlc"} if chat.startswith("-") else {}),
            "date": int(time.time()),
            "text": text,
        }
        command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
        if command:
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command.group(0))}]
        if message_thread_id is not None:
            message |= {"message_thread_id": message_thread_id, "is_topic_message": True}
        return {"update_id": update_id, "message": message}

    def queue_message(self, text: str, *, user_id: int, **fields: Any) -> dict[str, Any]:
        """Queue a text message for the next getUpdates (see :meth:`update_for`); returns its Update."""
        update = self.update_for(text, user_id=user_id, **fields)
        with self._arrived:
            self._pending.append(update)
            self._arrived.notify_all()
        return update

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Updates Telegram still keeps: not confirmed by a getUpdates offset above them."""
        with self._lock:
            return list(self._pending)

    def get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Telegram's answer to getUpdates ``params``: confirm below ``offset``, then long-poll up to ``timeout``."""
        try:
            offset = int(params["offset"]) if params.get("offset") is not None else None
            limit = int(params.get("limit", 100))
            timeout = float(params.get("timeout", 0))
        except (TypeError, ValueError):
            return 400, _error(400, "Bad Request: invalid parameters")
        if not 1 <= limit <= 100 or timeout < 0:
            return 400, _error(400, "Bad Request: invalid limit or timeout")
        call = UpdatesCall(time.monotonic(), offset, timeout)
        with self._arrived:
            self.updates_calls.append(call)
            if self.webhook is not None:
                call.status = 409
                return 409, _error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            if offset is not None and offset < 0:  # the last -offset updates; all before are forgotten
                self._pending = self._pending[offset:]
            elif offset is not None:
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
            self._arrived.wait_for(lambda: bool(self._pending) or self._closing, timeout=timeout)
            result = self._pending[:limit]
            call.returned = [u["update_id"] for u in result]
        return 200, {"ok": True, "result": result}

    def set_webhook(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """setWebhook: an HTTPS url on 443, 80, 88 or 8443, a secret_token of 1-256 of ``A-Za-z0-9_-``."""
        url, secret = str(params.get("url", "")), params.get("secret_token")
        if not url:
            with self._lock:
                self.webhook = None
            return 200, {"ok": True, "result": True, "description": "Webhook was deleted"}
        if not re.fullmatch(r"https://[^/:]+(:(443|80|88|8443))?(/.*)?", url):
            return 400, _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            return 400, _error(400, "Bad Request: secret token contains unallowed characters")
        with self._lock:
            self.webhook = {"url": url, "secret_token": secret, "allowed_updates": params.get("allowed_updates")}
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}

    def delete_webhook(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.webhook = None
        return 200, {"ok": True, "result": True, "description": "Webhook was deleted"}

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
        result: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": _chat(chat_id),
            "text": text,
        }
        if params.get("message_thread_id") is not None:
            result |= {"message_thread_id": int(params["message_thread_id"]), "is_topic_message": True}
        return 200, {"ok": True, "result": result}


def _chat(chat_id: str) -> dict[str, Any]:
    """A Chat of the contract's shape: supergroups start with -100, groups with -, users are positive."""
    chat_type = "supergroup" if chat_id.startswith("-100") else "group" if chat_id.startswith("-") else "private"
    return {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id, "type": chat_type}


def _reply_to(params: dict[str, Any]) -> int | None:
    """The message a sendMessage answers: ``reply_parameters.message_id`` (JSON or a JSON string), else the older field."""
    reply = params.get("reply_parameters")
    if isinstance(reply, str):
        try:
            reply = json.loads(reply)
        except ValueError:
            reply = None
    if isinstance(reply, dict) and reply.get("message_id") is not None:
        return int(reply["message_id"])
    older = params.get("reply_to_message_id")
    return int(older) if older is not None else None


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
        token, _, operation = record.path[len("/bot") :].partition("/")
        record.path = f"/bot***/{operation}"  # the token is in the path: never keep it
        if token != self.api.token:
            return self._answer(record, 401, _error(401, "Unauthorized"))
        if operation.lower() not in ("sendmessage", "getupdates", "setwebhook", "deletewebhook"):
            return self._answer(record, 404, _error(404, "Not Found"))
        params = self._params(incoming.headers, incoming.raw_body, record)
        if params is None:
            return self._answer(record, 400, _error(400, "Bad Request: can't parse JSON object"))
        fault = self.api._take_fault(method, record.path.lower())
        if fault is not None and fault.timeout:
            time.sleep(fault.timeout)
        record.injected = fault is not None
        if operation.lower() != "sendmessage":
            if fault is not None and fault.status:
                return self._answer(record, *self._fault_answer(fault))
            if operation.lower() == "getupdates":
                return self._answer(record, *self.api.get_updates(params))
            if operation.lower() == "setwebhook":
                return self._answer(record, *self.api.set_webhook(params))
            return self._answer(record, *self.api.delete_webhook())
        status, data = self._fault_answer(fault) if fault and fault.status else self.api.send_message(params)
        thread = params.get("message_thread_id")
        message = ReceivedMessage(
            arrived,
            str(params.get("chat_id", "")),
            str(params.get("text", "")),
            int(thread) if thread is not None else None,
            params.get("parse_mode"),
            status,
            _reply_to(params),
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
