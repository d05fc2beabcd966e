"""Approvals from Telegram (issue 15.4): people decide in the chat that gets sdlc's notifications.

``/approve ID [comment]``, ``/reject ID what to change``, ``/answer ID the answers`` and
``/retry ID [comment]`` come in two ways: the receiver's ``POST /webhooks/telegram``
(``setWebhook`` with a ``secret_token``, checked in constant time against the
WebhookSettings block's ``telegram_secret``), or ``sdlc telegram poll`` (``getUpdates``
long polling, for a worker without a public address). Either way an Update becomes an
:class:`entrypoints.webhooks.Decision` that :func:`entrypoints.webhooks.act` applies, the
path every other source takes, so a decision behaves as ``sdlc approve`` would and the
ledger names the person (``@username``, else ``telegram:<user id>``). The answer goes back
to the chat as a reply to the command.

Who may decide is the TelegramNotification block's to say: its ``chat_id`` and its
``approver_user_ids`` (user ids, because usernames change); anyone else gets a reply that
says so and nothing changes. Each command update is recorded in the ledger's deliveries,
and the poller persists its ``getUpdates`` offset under the data dir after each update is
applied, so neither a Telegram retry nor a restart applies a command twice. The bot token
is in every Bot API URL: nothing here logs or raises a URL, and errors pass through
:func:`blocks.notifications.redact`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from blocks import load_block
from blocks.notifications import TelegramNotification, redact
from blocks.webhooks import WebhookSettings
from entrypoints.webhooks import ANSWERS_MAX_LENGTH, Decision, act, body_within_limit, inline_schema
from sdlc.models import validate_comment, validate_work_item_id
from sdlc.retry import NOTIFY_BACKOFF_BASE_SECONDS, backoff_seconds
from sdlc.settings import get_settings

logger = logging.getLogger("entrypoints.telegram")

SOURCE = "telegram"
SECRET_HEADER = "x-telegram-bot-api-secret-token"
BLOCK_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,199}$")
"""A Prefect block name (sdlc.models.BlockName); it also names the offset file."""
POLL_TIMEOUT_SECONDS = 50
"""Long-poll wait of one getUpdates call: Telegram answers at once when an update arrives."""
POLL_BACKOFF_CAP_SECONDS = 60.0
"""Longest wait between getUpdates calls while Telegram is unreachable or overloaded."""

CommandKind = Literal["approve", "reject", "answer", "retry"]
COMMANDS: dict[str, CommandKind] = {"/approve": "approve", "/reject": "reject", "/answer": "answer", "/retry": "retry"}
USAGE: dict[CommandKind, str] = {
    "approve": "/approve ID [comment]",
    "reject": "/reject ID what to change",
    "answer": "/answer ID your answers",
    "retry": "/retry ID [comment]",
}
HELP = "sdlc-flows takes: " + ", ".join(USAGE.values()) + " (ID is the work item, e.g. ET-12)."


# --- the Bot API's shapes (the fields sdlc reads; tests/contracts/telegram.md) ------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TelegramUser(_Loose):
    id: int
    is_bot: bool = False
    username: str | None = Field(default=None, max_length=64)


class TelegramChat(_Loose):
    id: int
    type: str = Field(max_length=20)
    username: str | None = Field(default=None, max_length=64)


class TelegramMessage(_Loose):
    message_id: int
    sender: TelegramUser | None = Field(default=None, alias="from")
    chat: TelegramChat
    date: int
    text: str | None = None
    message_thread_id: int | None = None


class TelegramUpdate(_Loose):
    """One Update; only ``message`` is acted on (an edited command is not a new one)."""

    update_id: int
    message: TelegramMessage | None = None


# --- from an Update to a decision (pure) ------------------------------------------------------------


class ReplyTarget(BaseModel):
    """Where the answer to a command goes: its chat (and forum topic), as a reply to its message."""

    chat_id: int
    message_id: int
    thread_id: int | None = None


class Outcome(BaseModel):
    """What one Update comes to before anything is applied: a decision, a reply only, or nothing."""

    ignored: str | None = Field(default=None, description="Why the update asks for nothing.")
    decision: Decision | None = None
    reply: str | None = Field(default=None, description="The answer when there is no decision: refusal or usage.")
    to: ReplyTarget | None = None


def sender_name(user: TelegramUser) -> str:
    """How the ledger and notifications name a Telegram user: @username, else ``telegram:<id>``."""
    if user.username and re.fullmatch(r"[A-Za-z0-9_]{1,64}", user.username):
        return f"@{user.username}"
    return f"telegram:{user.id}"


def command_of(text: str) -> tuple[str, str] | None:
    """``(command, rest)`` of a message starting with ``/command`` or ``/command@SomeBot``, else None."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    first, *rest = stripped.split(maxsplit=1)
    return first.partition("@")[0].lower(), rest[0].strip() if rest else ""


def _in_chat(chat: TelegramChat, block: TelegramNotification) -> bool:
    if block.chat_id.startswith("@"):
        return chat.username is not None and f"@{chat.username}".lower() == block.chat_id.lower()
    return str(chat.id) == block.chat_id


def decide(update: TelegramUpdate, block: TelegramNotification, block_name: str) -> Outcome:
    """The decision an Update asks for, or the reply it gets instead; nothing is applied here."""
    message = update.message
    if message is None or message.text is None:
        return Outcome(ignored="not a text message")
    where = ReplyTarget(chat_id=message.chat.id, message_id=message.message_id, thread_id=message.message_thread_id)
    command = command_of(message.text)
    if command is None:
        return Outcome(ignored="not a command")
    name, rest = command
    if name in ("/help", "/start"):
        return Outcome(reply=HELP, to=where)
    if name not in COMMANDS:
        return Outcome(ignored=f"{name[:40]} is not an sdlc command")
    kind = COMMANDS[name]
    if not _in_chat(message.chat, block):
        return Outcome(reply="Not allowed: sdlc-flows takes decisions only in its own chat.", to=where)
    if message.sender is None or message.sender.is_bot or message.sender.id not in block.approver_user_ids:
        who = f"Telegram user {message.sender.id}" if message.sender is not None else "An anonymous sender"
        return Outcome(
            reply=f"Not allowed: {who} is not an approver; an admin can add the id to approver_user_ids "
            f"of the TelegramNotification block {block_name!r}. Nothing was changed.",
            to=where,
        )
    by = sender_name(message.sender)
    words = rest.split(maxsplit=1)
    text = words[1].strip() if len(words) > 1 else ""
    try:
        if not words:
            raise ValueError("which work item?")
        work_item = validate_work_item_id(words[0].upper())
        if kind in ("reject", "answer") and not text:
            raise ValueError("say what to change" if kind == "reject" else "the answers are missing")
        if kind == "answer" and len(text) > ANSWERS_MAX_LENGTH:
            raise ValueError(f"the answers are {len(text)} characters long; at most {ANSWERS_MAX_LENGTH}")
        if kind != "answer":
            validate_comment(text)
    except ValueError as exc:
        return Outcome(reply=f"Not done: {exc}. Usage: {USAGE[kind]}", to=where)
    return Outcome(decision=Decision(kind=kind, work_item=work_item, by=by, comment=text), to=where)


def reply_for(decision: Decision, result: Mapping[str, Any]) -> str:
    """The chat's answer to an applied (or refused) decision."""
    if not result.get("accepted"):
        return f"Not done: {result.get('reason') or 'refused'}"
    done = {
        "approve": "approved",
        "reject": "sent back to the analyst",
        "answer": "answered; the analyst runs again with the answers",
    }
    if decision.kind == "retry":
        return str(result.get("summary") or f"{decision.work_item} retried by {decision.by}")
    return f"{decision.work_item} {done[decision.kind]} by {decision.by}"


# --- applying it and answering in the chat ----------------------------------------------------------


class Handled(BaseModel):
    """What became of one Update (the receiver's answer body; one line of `sdlc telegram poll`)."""

    update_id: int
    ignored: str | None = None
    duplicate: bool | None = None
    accepted: bool | None = Field(default=None, description="True: the decision was applied.")
    work_item: str | None = None
    event: str | None = None
    reply: str | None = None
    reply_failed: str | None = Field(default=None, description="Why the reply could not be sent (redacted).")


def send_reply(block: TelegramNotification, to: ReplyTarget, text: str) -> str | None:
    """sendMessage ``text`` to the command's chat as a reply to it; None once sent, else why not (redacted)."""
    payload: dict[str, Any] = {
        "chat_id": to.chat_id,
        "text": text,
        "reply_parameters": {"message_id": to.message_id, "allow_sending_without_reply": True},
    }
    if to.thread_id is not None:
        payload["message_thread_id"] = to.thread_id
    timeout = httpx.Timeout(block.timeout_seconds, connect=min(5.0, block.timeout_seconds))
    with httpx.Client(timeout=timeout, follow_redirects=False, headers={"user-agent": "sdlc-flows"}) as client:
        # The block's own sender: flood control (429 retry_after), 5xx retries and redaction, as for notifications.
        return block.send_payload(client, payload)


def handle_update(update: TelegramUpdate, block: TelegramNotification, *, block_name: str) -> Handled:
    """Decide, apply once (the ledger remembers each command update) and reply in the chat."""
    from tasks.ledger import Ledger

    outcome = decide(update, block, block_name)
    if outcome.ignored is not None:
        return Handled(update_id=update.update_id, ignored=outcome.ignored)
    if not Ledger.from_settings().remember_delivery(SOURCE, f"{block_name}:{update.update_id}", "message"):
        return Handled(update_id=update.update_id, duplicate=True)
    handled = Handled(update_id=update.update_id, accepted=False)
    if outcome.decision is not None:
        try:
            result = act(outcome.decision, SOURCE, f"{block_name}:{update.update_id}")
        except Exception as exc:  # whatever failed, the person hears that nothing was done
            logger.exception("telegram update %s: applying %s failed", update.update_id, outcome.decision.kind)
            result = {"accepted": False, "reason": f"sdlc could not apply it ({type(exc).__name__}); try again"}
        text = reply_for(outcome.decision, result)
        handled = handled.model_copy(
            update={
                "accepted": bool(result.get("accepted")),
                "work_item": result.get("work_item"),
                "event": result.get("event"),
            }
        )
    else:
        text = outcome.reply or HELP
    assert outcome.to is not None  # every outcome but an ignored one answers the command's message
    return handled.model_copy(update={"reply": text, "reply_failed": send_reply(block, outcome.to, text)})


# --- (a) the webhook: POST /webhooks/telegram ---------------------------------------------------------


def secret_valid(secret: SecretStr | None, headers: Mapping[str, str]) -> bool:
    """Telegram's X-Telegram-Bot-Api-Secret-Token, compared in constant time; no secret configured means no."""
    if secret is None:
        return False
    sent = headers.get(SECRET_HEADER, "")
    return hmac.compare_digest(sent.encode(), secret.get_secret_value().encode())


TELEGRAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Handled, "description": "The update was handled: applied, refused with a reply, or ignored."},
    401: {"description": "Missing or wrong X-Telegram-Bot-Api-Secret-Token, or no telegram_secret configured."},
    413: {"description": "The delivery is over 1 MiB."},
    422: {"description": "Not an Update: malformed JSON or invalid values."},
    503: {"description": "The TelegramNotification block cannot be loaded; Telegram sends the update again."},
}


def telegram_openapi() -> dict[str, Any]:
    """The secret header and the Update body of POST /webhooks/telegram, for the OpenAPI document."""
    return {
        "parameters": [
            {
                "name": SECRET_HEADER,
                "in": "header",
                "required": False,
                "description": "The secret_token given to setWebhook; missing or wrong answers 401.",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,256}$"},
            }
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(TelegramUpdate)}}},
    }


def add_webhook_route(app: FastAPI, settings: WebhookSettings) -> None:
    """``POST /webhooks/telegram``: one Update per delivery, as ``setWebhook`` sends them."""

    @app.post(
        "/webhooks/telegram",
        summary="Receive an Update from Telegram (setWebhook with secret_token)",
        description=__doc__,
        status_code=200,
        responses=TELEGRAM_RESPONSES,
        openapi_extra=telegram_openapi(),
    )
    async def receive_telegram(request: Request) -> JSONResponse:
        body = await body_within_limit(request)
        if body is None:
            return JSONResponse({"detail": "delivery over 1 MiB"}, status_code=413)
        if not secret_valid(settings.telegram_secret, request.headers):
            return JSONResponse({"detail": "missing or invalid secret token"}, status_code=401)
        try:
            update = TelegramUpdate.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)
        block_name = settings.telegram_block or ""
        try:
            block = await run_in_threadpool(load_block, TelegramNotification, block_name)
        except (ValueError, ValidationError):
            detail = f"TelegramNotification block {block_name!r} cannot be loaded"
            return JSONResponse({"detail": detail}, status_code=503)
        handled = await run_in_threadpool(lambda: handle_update(update, block, block_name=block_name))
        return JSONResponse(handled.model_dump(exclude_none=True), status_code=200)


# --- (b) long polling: sdlc telegram poll -------------------------------------------------------------


class TelegramApiError(RuntimeError):
    """A Bot API call that failed; the message is redacted, ``transient`` says whether waiting may help."""

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


def get_updates(
    client: httpx.Client, block: TelegramNotification, *, offset: int | None, timeout_seconds: int
) -> list[dict[str, Any]]:
    """One getUpdates call: confirms every update below ``offset``, waits up to ``timeout_seconds`` for new ones."""
    token = block.bot_token.get_secret_value()
    params: dict[str, Any] = {"timeout": timeout_seconds, "allowed_updates": ["message"]}
    if offset is not None:
        params["offset"] = offset
    try:
        response = client.post(f"{block.api_url}/bot{token}/getUpdates", json=params)
    except httpx.TransportError as exc:  # the text may quote the URL, token and all
        message = redact(f"getUpdates: {type(exc).__name__}: {exc}", token, urls=True)
        raise TelegramApiError(message, transient=True) from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if response.status_code == 200 and data.get("ok") and isinstance(data.get("result"), list):
        return [update for update in data["result"] if isinstance(update, dict)]
    reason = redact(f"HTTP {response.status_code}: {data.get('description') or response.reason_phrase}", token)
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
    wait = float(retry_after) if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool) else None
    if response.status_code == 401:
        raise TelegramApiError(f"getUpdates: the bot token of the block was refused ({reason})", transient=False)
    if response.status_code == 409:
        raise TelegramApiError(
            f"getUpdates: {reason} (a webhook is set for this bot: deleteWebhook first, or another poller runs for it)",
            transient=False,
        )
    transient = response.status_code == 429 or response.status_code >= 500
    raise TelegramApiError(f"getUpdates: {reason}", transient=transient, retry_after=wait)


def offset_path(block_name: str) -> Path:
    """Where the poller of ``block_name`` keeps its offset: under the data dir, one file per block."""
    return get_settings().root / "telegram" / f"{block_name}.offset.json"


def read_offset(path: Path) -> int | None:
    """The persisted offset, or None before the first applied update (a broken file is an error, not zero)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["offset"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"the Telegram offset file {path} is unreadable ({exc}); delete it to start over") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RuntimeError(f"the Telegram offset file {path} holds no integer offset; delete it to start over")
    return value


def write_offset(path: Path, offset: int) -> None:
    """Persist ``offset`` atomically (a crash leaves the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"offset": offset}))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def describe(handled: Handled) -> str:
    """One line per handled update, for the poller's output."""
    if handled.ignored is not None:
        return f"telegram update {handled.update_id}: ignored ({handled.ignored})"
    if handled.duplicate:
        return f"telegram update {handled.update_id}: seen before, not applied again"
    line = f"telegram update {handled.update_id}: {handled.reply}"
    return line + (f" (reply not sent: {handled.reply_failed})" if handled.reply_failed else "")


def poll(
    block: TelegramNotification,
    block_name: str,
    *,
    once: bool = False,
    timeout_seconds: int = POLL_TIMEOUT_SECONDS,
    say: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> int:
    """Apply the chat's commands as getUpdates brings them, until ``stop`` (or after one call with ``once``).

    The offset is written after each update is handled, so a restart starts after the last
    one applied; returns how many updates were handled. A permanent Bot API failure (bad
    token, a webhook set) raises :class:`TelegramApiError`; transient ones are waited out.
    """
    if not block.approver_user_ids:
        say(f"telegram: block {block_name!r} has no approver_user_ids: every command will be refused")
    path = offset_path(block_name)
    offset = read_offset(path)
    stop = stop or threading.Event()
    handled, failures = 0, 0
    timeout = httpx.Timeout(timeout_seconds + block.timeout_seconds, connect=min(5.0, block.timeout_seconds))
    with httpx.Client(timeout=timeout, follow_redirects=False, headers={"user-agent": "sdlc-flows"}) as client:
        while not stop.is_set():
            try:
                updates = get_updates(client, block, offset=offset, timeout_seconds=timeout_seconds)
            except TelegramApiError as exc:
                if once or not exc.transient:
                    raise
                wait = backoff_seconds(
                    failures,
                    base=NOTIFY_BACKOFF_BASE_SECONDS,
                    cap=POLL_BACKOFF_CAP_SECONDS,
                    retry_after=exc.retry_after,
                )
                failures += 1
                say(f"telegram: {exc}; trying again in {wait:.0f} s")
                stop.wait(wait)
                continue
            failures = 0
            for raw in updates:
                update_id = raw.get("update_id")
                if not isinstance(update_id, int) or isinstance(update_id, bool):
                    raise TelegramApiError("getUpdates: an update without an integer update_id", transient=False)
                try:
                    update = TelegramUpdate.model_validate(raw)
                except ValidationError as exc:
                    say(f"telegram update {update_id}: skipped, not an Update ({exc.error_count()} errors)")
                else:
                    say(describe(handle_update(update, block, block_name=block_name)))
                    handled += 1
                offset = update_id + 1
                write_offset(path, offset)  # after the update is handled: a restart goes on from the next one
            if once:
                break
    return handled
