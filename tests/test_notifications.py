"""Notifications through Prefect blocks (B22, B51, B52): Telegram and an Apprise URL, on servers on 127.0.0.1.

The Telegram server follows ``tests/contracts/telegram.md``: it refuses texts over 4096
UTF-16 units, answers flood control with ``retry_after`` and knows one bot token, which
must never show up in a log, an error or ``notifications.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.blocks.abstract import NotificationError
from prefect.blocks.core import Block
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL, temporary_settings

from blocks.notifications import AppriseURLNotification, TelegramNotification, split_text, utf16_units
from forge_servers.common import ForgeRequestHandler, ThreadedForgeServer
from forge_servers.telegram import TelegramTestServer
from gitrepo import free_port
from sdlc.models import Announcement, StepRecord, WorkItemRequest
from sdlc.settings import SdlcSettings
from tasks.tracking import record_step

TOKEN = "123456789:AAH-sdlc_test_TOKEN_abcdefghijklmnopq"
CHAT = "-1001234567890"
UI_URL = "http://ui.sdlc.test:4200"


@pytest.fixture
def telegram() -> Iterator[TelegramTestServer]:
    with TelegramTestServer(TOKEN, chats=(CHAT,)) as server:
        yield server


def telegram_block(server: TelegramTestServer | None = None, **fields: Any) -> TelegramNotification:
    api_url = server.web_url if server else f"http://127.0.0.1:{free_port()}"  # no server: a dead port
    return TelegramNotification(bot_token=TOKEN, chat_id=CHAT, api_url=api_url, **fields)


def save(block: Block) -> str:
    """Save under a unique name; the "block-type-slug/block-name" reference SDLC_NOTIFY_BLOCKS takes."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    block.save(name)
    return f"{block.get_block_type_slug()}/{name}"


def records(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data_dir / "notifications.jsonl").read_text().splitlines()]


def run_logs(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.instance().drain()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
    return "\n".join(log.message for log in logs)


@flow
def notifying_flow(events: list[tuple[str, str]]) -> str:
    """What the pipeline does: announce from a flow, in a step's record, with the run's own link."""
    request = WorkItemRequest(work_item="ET-9", title="Notify", repo="https://git.example/acme/shop.git")
    for event, message in events:
        record_step(request, flow_run.id, StepRecord(announcements=[Announcement(event=event, message=message)]))  # type: ignore[arg-type]
    return str(flow_run.id)


# --- splitting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 9000,
        "😀" * 4500,  # every character is a surrogate pair
        ("line of text 🚀\n" * 700),
        "x" * 3999 + "😀" + "y" * 10,  # the pair straddles the limit
        "short",
    ],
    ids=["ascii", "astral", "lines", "pair-at-the-limit", "short"],
)
def test_split_keeps_everything_in_order_within_the_limit(text: str) -> None:
    parts = split_text(text)
    assert "".join(parts) == text
    assert all(0 < utf16_units(part) <= 4000 for part in parts)


def test_a_10000_character_message_arrives_as_three_whole_line_parts(telegram: TelegramTestServer) -> None:
    text = "".join(f"{n:04d} " + "x" * 94 + "\n" for n in range(100))
    assert len(text) == 10_000
    block = telegram_block(telegram)
    with block.raise_on_failure():
        block.notify(text)
    parts = [message.text for message in telegram.delivered]
    assert len(parts) == 3 and "".join(parts) == text
    assert all(utf16_units(part) <= 4096 for part in parts)
    assert all(part.endswith("\n") for part in parts[:-1])  # cut between lines, not inside one


def test_emoji_are_counted_in_utf16_units(telegram: TelegramTestServer) -> None:
    text = "🚀" * 3000  # 3,000 characters but 6,000 UTF-16 units: one message would be "too long"
    block = telegram_block(telegram)
    with block.raise_on_failure():
        block.notify(text)
    parts = [message.text for message in telegram.delivered]
    assert len(parts) == 2 and "".join(parts) == text
    assert all(utf16_units(part) <= 4096 for part in parts)


def test_subject_and_html_mode(telegram: TelegramTestServer) -> None:
    block = telegram_block(telegram, parse_mode="HTML", message_thread_id=7, notify_type="failure")
    with block.raise_on_failure():
        block.notify("tests <failed> & stopped", subject="sdlc-flows: failed ET-9")
    (message,) = telegram.delivered
    assert message.text == "<b>❌ sdlc-flows: failed ET-9</b>\n\ntests &lt;failed&gt; &amp; stopped"
    assert (message.parse_mode, message.message_thread_id) == ("HTML", 7)


# --- flood control, retries and failures ------------------------------------------------


def test_flood_control_is_waited_out_and_the_message_arrives_once(telegram: TelegramTestServer) -> None:
    telegram.flood(retry_after=1)
    block = telegram_block(telegram)
    with block.raise_on_failure():
        block.notify("after the flood")
    first, retry = telegram.received
    assert (first.status, retry.status) == (429, 200)
    assert retry.at - first.at >= 1.0  # never sooner than retry_after
    assert [message.text for message in telegram.delivered] == ["after the flood"]


def test_a_wait_over_the_cap_fails_at_once(telegram: TelegramTestServer) -> None:
    telegram.flood(retry_after=120)
    block = telegram_block(telegram, max_retry_after_seconds=5)
    started = time.monotonic()
    with pytest.raises(NotificationError, match=r"HTTP 429: Too Many Requests.*max_retry_after_seconds=5"):
        with block.raise_on_failure():
            block.notify("flooded")
    assert time.monotonic() - started < 5 and telegram.delivered == []


def test_a_5xx_is_retried(telegram: TelegramTestServer) -> None:
    telegram.inject("POST", r"/sendmessage$", status=502)
    block = telegram_block(telegram)
    with block.raise_on_failure():
        block.notify("eventually")
    assert [message.status for message in telegram.received] == [502, 200]


@pytest.mark.parametrize(
    ("make_block", "expected"),
    [
        (lambda server: TelegramNotification(bot_token=TOKEN, chat_id="-100999", api_url=server.web_url),
         "HTTP 400: Bad Request: chat not found"),
        (lambda server: TelegramNotification(bot_token="42:" + "z" * 35, chat_id=CHAT, api_url=server.web_url),
         "HTTP 401: Unauthorized"),
        (lambda server: telegram_block(None, max_attempts=2), "ConnectError"),
    ],
    ids=["unknown-chat", "bad-token", "dead-port"],
)
def test_failures_say_why_and_never_show_the_token(
    telegram: TelegramTestServer, caplog: pytest.LogCaptureFixture, make_block: Any, expected: str
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs every request URL at INFO
    block = make_block(telegram)
    with pytest.raises(NotificationError) as raised:
        with block.raise_on_failure():
            block.notify("hello")
    assert expected in str(raised.value)
    block.notify("hello")  # without raise_on_failure: logged, as Prefect's blocks do
    assert expected in caplog.text
    for secret in (TOKEN, TOKEN.split(":")[1], "z" * 35):
        assert secret not in str(raised.value) and secret not in caplog.text


def test_notify_works_from_async_code(telegram: TelegramTestServer) -> None:
    async def main() -> None:
        await telegram_block(telegram).notify("from a coroutine")

    asyncio.run(main())
    assert [message.text for message in telegram.delivered] == ["from a coroutine"]


# --- configuration and the pipeline's step records ---------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sdlc-telegram/ops, slack-webhook/team", [("sdlc-telegram/ops", None), ("slack-webhook/team", None)]),
        ('["sdlc-telegram/ops", "sdlc-apprise-url/audit"]', [("sdlc-telegram/ops", None), ("sdlc-apprise-url/audit", None)]),
        ("", []),
        # B75: a block's own events after "=", separated by "|" (never a comma: that separates blocks).
        (
            "sdlc-telegram/ops=approval_requested|blocked | done|failed,slack-webhook/team",
            [("sdlc-telegram/ops", ("approval_requested", "blocked", "done", "failed")), ("slack-webhook/team", None)],
        ),
        (
            '["sdlc-telegram/ops=done", {"ref": "slack-webhook/team", "events": ["agent_failed"]}]',
            [("sdlc-telegram/ops", ("done",)), ("slack-webhook/team", ("agent_failed",))],
        ),
    ],
)
def test_notify_blocks_setting_takes_a_comma_list_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[tuple[str, Any]]
) -> None:
    monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", value)
    assert [(route.ref, route.events) for route in SdlcSettings().notify_blocks] == expected


def test_notify_events_chooses_what_the_blocks_get_and_a_block_of_its_own_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SdlcSettings().notify_events is None  # unset: every event
    monkeypatch.setenv("SDLC_NOTIFY_EVENTS", " agent_failed, done ")
    monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", "sdlc-telegram/ops=approval_requested,slack-webhook/team")
    settings = SdlcSettings()
    assert settings.notify_events == ("agent_failed", "done")
    ops, team = settings.notify_blocks
    assert [ops.takes(e, settings.notify_events) for e in ("approval_requested", "done")] == [True, False]
    assert [team.takes(e, settings.notify_events) for e in ("approval_requested", "done")] == [False, True]
    monkeypatch.setenv("SDLC_NOTIFY_EVENTS", "")  # empty: unset, as for the other settings
    assert SdlcSettings().notify_events is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SDLC_NOTIFY_EVENTS", "done,agent_start", "notify_events: unknown notify event 'agent_start'; the events are "),
        ("SDLC_NOTIFY_BLOCKS", "sdlc-telegram/ops=done|bogus", "notify_blocks.0.events: unknown notify event 'bogus'"),
        ("SDLC_NOTIFY_BLOCKS", "slack-webhook/team,sdlc-telegram/ops=", "notify_blocks.1.events: names no events"),
    ],
    ids=["events", "block-events", "block-without-events"],
)
def test_an_unknown_event_name_is_a_bad_setting_one_line_and_exit_2(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    env = {**os.environ, "SDLC_DATA_DIR": str(tmp_path / "data"), name: value}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "status"], env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"sdlc: error: invalid SDLC_* setting: {expected}")
    assert not (tmp_path / "data").exists()


def test_the_blocks_register_from_the_command_line(cli_env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "blocks.notifications"],
        env=cli_env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SDLC Telegram" in result.stdout and "SDLC Apprise URL" in result.stdout


def test_a_saved_telegram_block_round_trips_through_prefect(prefect_api: str, telegram: TelegramTestServer) -> None:
    ref = save(telegram_block(telegram, message_thread_id=3))
    loaded = Block.load(ref)
    assert ref.startswith("sdlc-telegram/") and isinstance(loaded, TelegramNotification)
    assert loaded.bot_token.get_secret_value() == TOKEN and loaded.message_thread_id == 3
    assert TOKEN not in repr(loaded)


def test_pipeline_notifications_reach_telegram_with_the_run_link_and_failing_notifiers_never_fail_it(
    prefect_api: str, data_dir: Path, telegram: TelegramTestServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with TelegramTestServer(TOKEN, chats=(CHAT,)) as broken:
        broken.inject("*", r"/sendmessage$", status=500, times=100)
        good = save(telegram_block(telegram))
        failing = [save(telegram_block(None, max_attempts=1)), save(telegram_block(broken, max_attempts=2))]
        missing = f"sdlc-telegram/missing-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", ",".join([good, *failing, missing]))
        long_message = "ET-9 gate failed:\n" + "details of the failure\n" * 300
        with temporary_settings({PREFECT_UI_URL: UI_URL}):
            state = notifying_flow(
                [("work_item_started", "ET-9 started: Greet"), ("gate_failed", long_message), ("done", "ET-9 merged")],
                return_state=True,
            )
    assert state.is_completed(), state.message
    run_id = state.result()
    link = f"{UI_URL}/runs/flow-run/{run_id}"

    texts = [message.text for message in telegram.delivered]
    assert texts[0] == f"sdlc-flows: work_item_started ET-9\n\nET-9 started: Greet\nFlow run: {link}"
    assert texts[-1] == f"✅ sdlc-flows: done ET-9\n\nET-9 merged\nFlow run: {link}"
    gate_parts = texts[1:-1]
    assert len(gate_parts) == 2 and gate_parts[0].startswith("⚠️ sdlc-flows: gate_failed ET-9")
    assert "".join(gate_parts).endswith(f"{long_message}\nFlow run: {link}")

    written = records(data_dir)
    assert [record["event"] for record in written] == ["work_item_started", "gate_failed", "done"]
    for record in written:
        assert record["link"] == link
        assert [failure["notifier"] for failure in record["failed_notifiers"]] == [*failing, missing]
    reasons = [failure["reason"] for failure in written[0]["failed_notifiers"]]
    assert "ConnectError" in reasons[0] and "HTTP 500" in reasons[1] and "Unable to find block document" in reasons[2]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(message.startswith(f"notifier {failing[0]} failed: ") for message in warnings)
    logs = run_logs(run_id)
    assert f"notifier {failing[1]} failed: " in logs
    journal = (data_dir / "notifications.jsonl").read_text()
    for text in (caplog.text, logs, journal):
        assert TOKEN not in text and TOKEN.split(":")[1] not in text


class _JsonSink(ThreadedForgeServer):
    """Where Apprise's json:// posts: records each JSON body, answers 200."""

    name = "json-sink"


class _JsonSinkHandler(ForgeRequestHandler):
    def _serve(self, method: str) -> None:
        self._read_request(method)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


_JsonSink.handler_class = _JsonSinkHandler


def test_an_apprise_url_block_delivers_to_a_json_endpoint(
    prefect_api: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _JsonSink() as sink:
        ref = save(AppriseURLNotification(url=f"json://127.0.0.1:{sink.port}/sdlc"))
        monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", ref)
        with temporary_settings({PREFECT_UI_URL: UI_URL}):
            state = notifying_flow([("failed", "ET-9 failed: the tester crashed")], return_state=True)
    assert state.is_completed(), state.message
    (request,) = sink.requests
    assert (request.method, request.path) == ("POST", "/sdlc")
    assert request.body["title"] == "sdlc-flows: failed ET-9" and request.body["type"] == "failure"
    link = f"{UI_URL}/runs/flow-run/{state.result()}"
    assert request.body["message"] == f"ET-9 failed: the tester crashed\nFlow run: {link}"
    assert records(data_dir)[0]["failed_notifiers"] == []


def test_apprise_url_block_refuses_bad_configuration_at_load() -> None:
    with pytest.raises(ValueError, match="does not understand"):
        AppriseURLNotification(url="nosuchscheme://secret-token@example.com/")
    # Prefect's SSRF check admits only http(s), so private-URL protection cannot guard json:// and friends.
    with pytest.raises(ValueError, match=r"admits only http\(s\)"):
        AppriseURLNotification(url="json://127.0.0.1:9/", allow_private_urls=False)


