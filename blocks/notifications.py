"""Notification blocks (B22, B51, B52): Telegram that survives flood control and long texts, and any Apprise URL.

Prefect 3 ships no Telegram block, and neither Apprise's ``tgram://`` nor Prefect's
``CustomWebhookNotificationBlock`` waits out a 429's ``retry_after`` or splits a text
over Telegram's 4096 UTF-16 units, so :class:`TelegramNotification` calls the Bot API
itself with httpx. :class:`AppriseURLNotification` is the generic Apprise block Prefect
does not register (``json://``, ``tgram://``, ``ntfy://``...); Slack uses Prefect's own
``SlackWebhook``.

Failure policy is Prefect's: ``notify()`` logs a failure and returns unless the caller
opts in with ``raise_on_failure()``, which raises ``NotificationError``. The bot token is
in the Telegram URL path, so nothing this module logs or raises carries a URL or a token
(:func:`redact`).
"""

from __future__ import annotations

import asyncio
import functools
import html
import itertools
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.abstract import NotificationError
from prefect.blocks.notifications import AbstractAppriseNotificationBlock, AppriseNotificationBlock
from pydantic import Field, HttpUrl, SecretStr, field_validator

from sdlc.retry import (
    HTTP_MAX_ATTEMPTS,
    NOTIFY_BACKOFF_BASE_SECONDS,
    NOTIFY_BACKOFF_CAP_SECONDS,
    NOTIFY_MAX_RETRY_AFTER_SECONDS,
    HttpRetry,
)

TELEGRAM_TEXT_LIMIT = 4096
"""Telegram's limit on one message, in UTF-16 code units of the rendered text."""

PART_UNITS = 4000
"""Where texts are split: a margin under :data:`TELEGRAM_TEXT_LIMIT`."""

_TOKEN = re.compile(r"bot\d+:[A-Za-z0-9_-]+|\b\d{5,}:[A-Za-z0-9_-]{30,}")
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://[^\s'\"<>)]+")
_ICONS: dict[str, str] = {"success": "✅", "warning": "⚠️", "failure": "❌"}
_escape = functools.partial(html.escape, quote=False)


def redact(text: str, *secrets: str, urls: bool = False) -> str:
    """``text`` with Telegram bot tokens and ``secrets`` masked; with ``urls``, every URL cut to its scheme,
    for text that may quote a notifier's address (Slack and Apprise URLs carry their secrets in the path)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _TOKEN.sub("bot***", text)
    return _URL.sub(r"\1://***", text) if urls else text


class _RedactTokens(logging.Filter):
    """httpx logs every request URL at INFO ("HTTP Request: POST https://…/bot<token>/sendMessage")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, _RedactTokens) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_RedactTokens())


def _char_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def utf16_units(text: str) -> int:
    """Length as Telegram counts it: a character outside the BMP (most emoji) is two units."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = PART_UNITS) -> list[str]:
    """``text`` in order, in parts of at most ``limit`` UTF-16 units that join back to ``text``.

    A part ends after its last newline (else space) in its second half, so lines stay whole;
    parts are cut between Python characters, so never inside a surrogate pair.
    """
    if limit < 2:
        raise ValueError("limit must leave room for a surrogate pair")
    parts: list[str] = []
    rest = text
    while utf16_units(rest) > limit:
        running = itertools.accumulate(map(_char_units, rest))
        cut = sum(1 for _ in itertools.takewhile(lambda units: units <= limit, running))
        for separator in ("\n", " "):
            at = rest.rfind(separator, 0, cut)
            if at >= cut // 2:
                cut = at + 1
                break
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts


@dataclass(frozen=True)
class _Verdict:
    """What one sendMessage attempt came to: delivered, or why not and whether it may pass (``transient``).

    Whether and when to send again is :meth:`sdlc.retry.HttpRetry.decide`'s to say.
    """

    delivered: bool = False
    transient: bool = False
    retry_after: float | None = None
    reason: str = ""
    migrate_to_chat_id: int | None = None


class TelegramNotification(AbstractAppriseNotificationBlock):
    """Sends notifications to a Telegram chat (or forum topic) through a bot.

    Texts over Telegram's limit arrive as several messages in order; a 429 is waited
    out for its ``retry_after`` (never less); 5xx answers and network errors are retried
    with backoff, as :class:`sdlc.retry.HttpRetry` decides. ``notify()`` works from sync
    and async code (the async path runs the same sender in a worker thread, where its
    waits block no event loop).

    Examples:
        ```python
        from blocks.notifications import TelegramNotification

        TelegramNotification(bot_token="123456:ABC...", chat_id="-1001234567890").save("ops")
        telegram = TelegramNotification.load("BLOCK_NAME")
        telegram.notify("ET-7 is done", subject="sdlc-flows")
        ```
    """

    _block_type_name: ClassVar[str] = "SDLC Telegram"
    _block_type_slug: ClassVar[str] = "sdlc-telegram"
    _description: ClassVar[str] = (
        "Telegram messages from a bot, split over 4096 UTF-16 units and retried after flood control (429)."
    )
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://core.telegram.org/bots/api#sendmessage")
    _code_example: ClassVar[str] = """
```python
from blocks.notifications import TelegramNotification

TelegramNotification(bot_token="123456:ABC...", chat_id="-1001234567890").save("ops")
telegram = TelegramNotification.load("BLOCK_NAME")
telegram.notify("ET-7 is done", subject="sdlc-flows")
```
"""

    bot_token: SecretStr = Field(description="Bot token from @BotFather; stored as a secret and never logged.")
    chat_id: str = Field(
        description="Target chat: a user id, a group id (supergroups start with -100) or @channelusername."
    )
    message_thread_id: int | None = Field(
        default=None, description="Forum topic to post in; unset posts to the chat itself."
    )
    api_url: str = Field(
        default="https://api.telegram.org",
        description="Base URL of the Bot API; a local Bot API server or a test double.",
    )
    parse_mode: Literal["HTML"] | None = Field(
        default=None,
        description="HTML bolds the subject; texts are escaped either way, so a `<` in a message never breaks it.",
    )
    max_attempts: int = Field(
        default=HTTP_MAX_ATTEMPTS,
        ge=1,
        le=20,
        description="Attempts per message part, counting 429, 5xx and network failures.",
    )
    max_retry_after_seconds: float = Field(
        default=NOTIFY_MAX_RETRY_AFTER_SECONDS,
        ge=0,
        description="Longest flood-control wait honoured; a longer retry_after fails at once.",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="Timeout of one Bot API request in seconds.")
    approver_user_ids: list[int] = Field(
        default_factory=list,
        description="Telegram user ids whose /approve, /reject, /answer and /retry in chat_id count "
        "(`sdlc telegram poll`, the receiver's /webhooks/telegram); ids, because usernames change.",
    )

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https:// (got {redact(value, urls=True)!r})")
        return value.rstrip("/")

    @field_validator("chat_id")
    @classmethod
    def _chat(cls, value: str) -> str:
        if not re.fullmatch(r"-?\d+|@\w{4,}", value.strip()):
            raise ValueError("chat_id must be a numeric chat id or @channelusername")
        return value.strip()

    def block_initialization(self) -> None:
        """No Apprise client: this block calls the Bot API itself."""

    async def anotify(self, body: str, subject: str | None = None) -> None:
        await asyncio.to_thread(self._deliver, body, subject)

    @async_dispatch(anotify)
    def notify(self, body: str, subject: str | None = None) -> None:  # type: ignore[override]
        self._deliver(body, subject)

    def _deliver(self, body: str, subject: str | None) -> None:
        parts = self._parts(body, subject)
        timeout = httpx.Timeout(self.timeout_seconds, connect=min(5.0, self.timeout_seconds))
        with httpx.Client(timeout=timeout, follow_redirects=False, headers={"user-agent": "sdlc-flows"}) as client:
            for number, text in enumerate(parts, start=1):
                failure = self.send_payload(client, self._payload(text))
                if failure is not None:
                    message = (
                        f"Telegram sendMessage to chat {self.chat_id} failed, part {number} of {len(parts)} "
                        f"not delivered: {failure}"
                    )
                    if self._raise_on_failure:
                        raise NotificationError(message)
                    self.logger.error(message)
                    return

    def _parts(self, body: str, subject: str | None) -> list[str]:
        """The texts to send, split where Telegram needs it and escaped for ``parse_mode``."""
        heading = " ".join(item for item in (_ICONS.get(self.notify_type), subject) if item)
        text = f"{heading}\n\n{body}" if heading and body else heading or body
        parts = split_text(text)
        if self.parse_mode != "HTML":
            return parts
        escaped = [_escape(part) for part in parts]
        if heading and parts[0].startswith(heading):  # escaping and <b> leave the rendered length as split
            escaped[0] = f"<b>{_escape(heading)}</b>{_escape(parts[0][len(heading) :])}"
        return escaped

    def _payload(self, text: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"chat_id": self.chat_id, "text": text}
        if self.message_thread_id is not None:
            payload["message_thread_id"] = self.message_thread_id
        if self.parse_mode:
            payload["parse_mode"] = self.parse_mode
        return payload

    def send_payload(self, client: httpx.Client, payload: dict[str, Any]) -> str | None:
        """Send one sendMessage payload, retrying as Telegram asks; None once delivered, else why not (redacted)."""
        url = f"{self.api_url}/bot{self.bot_token.get_secret_value()}/sendMessage"
        retry = self._retry_policy()
        reason = "not sent"
        for attempt in range(self.max_attempts):
            try:
                verdict = self._judge(client.post(url, json=payload))
            except httpx.TransportError as exc:  # timeouts included; the text may quote the URL
                verdict = _Verdict(transient=True, reason=f"{type(exc).__name__}: {exc}")
            if verdict.delivered:
                return None
            reason = redact(verdict.reason, self.bot_token.get_secret_value(), urls=True)
            if verdict.migrate_to_chat_id is not None:
                self.logger.warning(
                    "Telegram chat %s became %s; set chat_id to it in this block",
                    payload["chat_id"],
                    verdict.migrate_to_chat_id,
                )
                payload["chat_id"] = verdict.migrate_to_chat_id
                continue
            decision = retry.decide(attempt, reason, retry_after=verdict.retry_after, permanent=not verdict.transient)
            if not decision.retry:
                return decision.why
            self.logger.warning(
                "Telegram sendMessage: %s; retry %d of %d in %.1f s",
                reason,
                attempt + 1,
                self.max_attempts - 1,
                decision.wait_seconds,
            )
            time.sleep(decision.wait_seconds)
        return reason

    def _retry_policy(self) -> HttpRetry:
        """The shared HTTP policy with this block's attempts and flood-control cap."""
        return HttpRetry(
            max_attempts=self.max_attempts,
            backoff_base_seconds=NOTIFY_BACKOFF_BASE_SECONDS,
            backoff_cap_seconds=NOTIFY_BACKOFF_CAP_SECONDS,
            max_retry_after_seconds=self.max_retry_after_seconds,
        )

    def _judge(self, response: httpx.Response) -> _Verdict:
        """Read the answer by HTTP status and ``parameters``, never by parsing ``description``."""
        try:
            data = response.json()
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        if response.status_code == 200 and data.get("ok"):
            return _Verdict(delivered=True)
        raw_parameters = data.get("parameters")
        parameters: dict[str, Any] = raw_parameters if isinstance(raw_parameters, dict) else {}
        reason = f"HTTP {response.status_code}: {data.get('description') or response.reason_phrase}"
        retry_after = parameters.get("retry_after")
        if isinstance(parameters.get("migrate_to_chat_id"), int):
            return _Verdict(reason=reason, migrate_to_chat_id=parameters["migrate_to_chat_id"])
        if response.status_code == 429 or response.status_code >= 500:
            wait = retry_after if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool) else None
            return _Verdict(transient=True, retry_after=None if wait is None else max(0.0, float(wait)), reason=reason)
        return _Verdict(reason=reason)


class AppriseURLNotification(AppriseNotificationBlock):
    """Sends notifications to any Apprise URL: ``json://``, ``tgram://``, ``ntfy://``, ``mailto://``...

    Bad configuration fails at load: a URL Apprise does not understand, or
    ``allow_private_urls=False`` with a scheme other than http(s), which Prefect's
    SSRF check (``validate_restricted_url``) rejects whatever the host.

    Examples:
        ```python
        from blocks.notifications import AppriseURLNotification

        AppriseURLNotification(url="json://hooks.example.com/sdlc").save("audit")
        apprise = AppriseURLNotification.load("BLOCK_NAME")
        apprise.notify("ET-7 is done", subject="sdlc-flows")
        ```
    """

    _block_type_name: ClassVar[str] = "SDLC Apprise URL"
    _block_type_slug: ClassVar[str] = "sdlc-apprise-url"
    _description: ClassVar[str] = "Notifications to any Apprise URL (json://, tgram://, ntfy://, mailto://...)."
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/caronc/apprise/wiki")
    _code_example: ClassVar[str] = """
```python
from blocks.notifications import AppriseURLNotification

AppriseURLNotification(url="json://hooks.example.com/sdlc").save("audit")
apprise = AppriseURLNotification.load("BLOCK_NAME")
apprise.notify("ET-7 is done", subject="sdlc-flows")
```
"""

    url: SecretStr = Field(
        default=...,
        title="Apprise URL",
        description="Apprise URL of the service, secrets included; stored as a secret and never logged.",
        examples=["json://hooks.example.com/sdlc", "tgram://TOKEN/CHAT_ID?overflow=split"],
    )

    def block_initialization(self) -> None:
        url = self.url.get_secret_value()
        scheme = url.partition("://")[0]
        if not self.allow_private_urls and scheme not in ("http", "https"):
            raise ValueError(
                f"allow_private_urls=False admits only http(s) URLs; Prefect's SSRF check rejects {scheme}://"
            )
        super().block_initialization()
        if len(self._apprise_client) == 0:
            raise ValueError(f"Apprise does not understand the URL {redact(url, urls=True)}")
