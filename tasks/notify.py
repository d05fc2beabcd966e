"""Notifications (B22, B33, B51): what happened, to whom it matters, with a link to the run.

Every message is appended to ``<data_dir>/notifications.jsonl`` (which
``sdlc status`` and tests read) and logged to the run. It also goes to the
Prefect notification blocks named in ``SDLC_NOTIFY_BLOCKS`` (``sdlc-telegram/ops``,
``slack-webhook/team``, ...) that take its event: a block's own events
(``sdlc-telegram/ops=done|failed``), else ``SDLC_NOTIFY_EVENTS``, else every event (B75).
A failing notifier is logged, recorded in the jsonl record under ``failed_notifiers``
and never fails the pipeline.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.blocks.notifications import AbstractAppriseNotificationBlock

from blocks import load_block
from blocks.notifications import redact  # also registers the sdlc block types, so Block.load finds them
from sdlc.models import NotifyDetails, NotifyEvent
from sdlc.settings import get_settings

logger = logging.getLogger("sdlc.notify")

_NOTIFY_TYPES: dict[str, Literal["info", "success", "warning", "failure"]] = {
    "gate_failed": "warning",
    "gate_warning": "warning",
    "approval_requested": "warning",
    "input_requested": "warning",
    "usage_limit": "warning",
    "agent_failed": "warning",
    "blocked": "failure",
    "failed": "failure",
    "done": "success",
}
"""How Apprise services (a Slack colour, a Telegram icon) show each event; others are info."""

_WARNINGS: frozenset[NotifyEvent] = frozenset({"blocked", "failed", "gate_failed", "gate_warning", "agent_failed"})
"""Events the run log shows as warnings."""
_REASON_CHARS = 500


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, where people watch and approve."""
    if not flow_run_id:
        return None
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def deliver(
    event: NotifyEvent,
    message: str,
    *,
    work_item: str,
    link: str | None = None,
    failed_notifiers: list[dict[str, str]] | None = None,
    details: NotifyDetails | None = None,
) -> None:
    """Append the event to notifications.jsonl: every event, whichever blocks it was routed to."""
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "event": event,
        "work_item": work_item,
        "message": message,
        "details": details or {},
        "link": link,
        "failed_notifiers": failed_notifiers or [],
    }
    try:
        path = get_settings().root / "notifications.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:  # a notifier never fails the pipeline
        logger.warning("notification not delivered: %s", exc)


def send_to_blocks(
    event: NotifyEvent,
    message: str,
    *,
    work_item: str,
    link: str | None,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> list[dict[str, str]]:
    """Send to each block in ``SDLC_NOTIFY_BLOCKS`` that takes ``event``; the ones that failed,
    as ``{"notifier", "reason"}``.

    Blocks are loaded for every message: an edited block or setting takes effect at once,
    for one call to the Prefect API. Each block bounds its own time (timeouts, attempts).
    A block the event is not routed to is not loaded.
    """
    body = f"{message}\nFlow run: {link}" if link else message
    subject = f"sdlc-flows: {event} {work_item}"
    failures: list[dict[str, str]] = []
    settings = get_settings()
    for route in settings.notify_blocks:
        if not route.takes(event, settings.notify_events):
            continue
        ref = route.ref
        try:
            block = load_block(Block, ref)
            if not isinstance(block, NotificationBlock):
                raise TypeError(f"{type(block).__name__} is not a notification block")
            if isinstance(block, AbstractAppriseNotificationBlock):
                block.notify_type = _NOTIFY_TYPES.get(event, "info")
            with block.raise_on_failure():
                # NotificationBlock declares notify async, but Prefect's blocks and ours override it
                # with @async_dispatch, which sends at once (and returns None) from sync code.
                block.notify(body, subject=subject)  # type: ignore[unused-coroutine]
        except Exception as exc:  # noqa: BLE001 - whatever a notifier does, the pipeline goes on
            reason = _reason(exc)
            log.warning("notifier %s failed: %s", ref, reason)
            failures.append({"notifier": ref, "reason": reason})
    return failures


def _reason(exc: Exception) -> str:
    """One line, no URL, no token: Apprise's log (``NotificationError.log``) or the exception's text."""
    detail = " ".join(str(getattr(exc, "log", "") or exc).split())
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return redact(text, urls=True)[:_REASON_CHARS]


def announce(
    event: NotifyEvent,
    message: str,
    *,
    work_item: str,
    link: str | None,
    log: logging.Logger | logging.LoggerAdapter[Any],
    details: NotifyDetails | None = None,
) -> None:
    """Tell everyone configured: the run's log, each notifier block it is routed to, and the notifications file.

    Never raises: whatever goes wrong telling people, the run goes on (B51).
    """
    try:
        level = logging.WARNING if event in _WARNINGS else logging.INFO
        log.log(level, "[%s] %s%s", event, message, f" ({link})" if link else "")
        failures = send_to_blocks(event, message, work_item=work_item, link=link, log=log)
        deliver(event, message, work_item=work_item, link=link, failed_notifiers=failures, details=details)
    except Exception as exc:  # noqa: BLE001 - a notification never fails the pipeline
        logger.warning("notification %s for %s not delivered: %s", event, work_item, _reason(exc))
