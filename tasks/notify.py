"""Notifications (B22, B33, B51): what happened, to whom it matters, with a link to the run.

Every message is appended to ``<data_dir>/notifications.jsonl`` (which
``sdlc status`` and tests read) and logged to the run. A failing notifier is
logged and never fails the pipeline.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Literal

from prefect import task

from sdlc.settings import get_settings

logger = logging.getLogger("sdlc.notify")

Event = Literal[
    "work_item_started", "stage_changed", "gate_failed", "approval_requested",
    "input_requested", "blocked", "failed", "done",
]


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, where people watch and approve."""
    if not flow_run_id:
        return None
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def deliver(event: Event, message: str, *, work_item: str, link: str | None = None) -> None:
    record = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "event": event,
        "work_item": work_item,
        "message": message,
        "link": link,
    }
    try:
        path = get_settings().root / "notifications.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:  # a notifier never fails the pipeline
        logger.warning("notification not delivered: %s", exc)


@task(name="notify")
def notify(event: Event, message: str, *, work_item: str, flow_run_id: str | None = None) -> None:
    from prefect.logging import get_run_logger

    link = flow_run_url(flow_run_id)
    level = logging.WARNING if event in ("blocked", "failed", "gate_failed") else logging.INFO
    get_run_logger().log(level, "[%s] %s%s", event, message, f" ({link})" if link else "")
    deliver(event, message, work_item=work_item, link=link)
