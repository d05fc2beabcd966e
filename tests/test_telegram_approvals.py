"""Approvals from Telegram (issue 15.4): commands in the notification chat decide, by webhook or by long polling.

The Bot API is tests/forge_servers/telegram.py (tests/contracts/telegram.md); pipelines run as
`sdlc run --agent scripted` in their own process against the session's Prefect server, as the
CLI and webhook approval tests do, and the receiver is the real app under uvicorn.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from blocks.notifications import TelegramNotification
from blocks.webhooks import WebhookSettings
from demo.sample import create_sample_repo
from entrypoints.telegram import (
    TelegramApiError,
    TelegramUpdate,
    decide,
    get_updates,
    offset_path,
    poll,
    read_offset,
)
from forge_servers.telegram import TelegramTestServer
from processes import end
from test_cli import finish, sdlc, start_run, wait_for_runs, wait_for_state
from test_webhooks import Receiver, events_for

TOKEN = "987654321:AAE-telegram-approvals-test-token_0123456789"
CHAT = "-1001234567890"
OTHER_CHAT = "-1009999999999"
ALICE, MALLORY, NAMELESS = 111111, 666666, 222222
SECRET = "telegram-webhook-secret_42"


@pytest.fixture
def telegram() -> Iterator[TelegramTestServer]:
    with TelegramTestServer(TOKEN, chats=(CHAT, OTHER_CHAT)) as server:
        yield server


def block_for(server: TelegramTestServer) -> TelegramNotification:
    return TelegramNotification(
        bot_token=TOKEN,
        chat_id=CHAT,
        api_url=server.web_url,
        approver_user_ids=[ALICE, NAMELESS],
        timeout_seconds=5,
        max_attempts=2,
    )


@pytest.fixture
def saved_block(telegram: TelegramTestServer, prefect_api: str) -> str:
    """A TelegramNotification block on the session's server, pointed at the test double."""
    name = f"tg-{uuid.uuid4().hex[:8]}"
    block_for(telegram).save(name, overwrite=True)
    return name


def outcome_of(server: TelegramTestServer, text: str, *, user_id: int = ALICE, **fields: Any) -> Any:
    update = TelegramUpdate.model_validate(server.update_for(text, user_id=user_id, **fields))
    return decide(update, block_for(server), "ops")


def replies_to(server: TelegramTestServer, update: dict[str, Any], timeout: float = 30) -> str:
    """The text of the bot's reply to ``update``'s message, as soon as it was delivered."""
    message_id = update["message"]["message_id"]
    deadline = time.monotonic() + timeout
    while True:
        found = [m.text for m in server.delivered if m.reply_to == message_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no reply to message {message_id}: {server.delivered}"
        time.sleep(0.05)


# --- parsing and who may decide (no Prefect) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "work_item", "comment"),
    [
        ("/approve ET-7", "approve", "ET-7", ""),
        ("/approve@SdlcFlowsBot et-7 looks good", "approve", "ET-7", "looks good"),
        ("/reject ET-7 add a header row\nand a footer", "reject", "ET-7", "add a header row\nand a footer"),
        ("/answer\nET-7\nUse semicolons.", "answer", "ET-7", "Use semicolons."),
        ("/retry ET-7", "retry", "ET-7", ""),
        ("/RETRY ET-7 the CI was flaky", "retry", "ET-7", "the CI was flaky"),
    ],
)
def test_commands_become_decisions_naming_the_person(
    telegram: TelegramTestServer, text: str, kind: str, work_item: str, comment: str
) -> None:
    outcome = outcome_of(telegram, text, username="alice")
    assert outcome.decision is not None, outcome
    assert (outcome.decision.kind, outcome.decision.work_item, outcome.decision.comment) == (kind, work_item, comment)
    assert outcome.decision.by == "@alice"
    assert outcome_of(telegram, text, user_id=NAMELESS).decision.by == f"telegram:{NAMELESS}"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("/approve", "which work item?"),
        ("/approve 7", "is not of the form PROJECT-NUMBER"),
        ("/reject ET-7", "say what to change. Usage: /reject ID what to change"),
        ("/answer ET-7   ", "the answers are missing. Usage: /answer ID your answers"),
        ("/approve ET-7 bad\x07bell", "control character"),
    ],
)
def test_a_malformed_command_gets_its_usage_and_decides_nothing(
    telegram: TelegramTestServer, text: str, says: str
) -> None:
    outcome = outcome_of(telegram, text)
    assert outcome.decision is None and outcome.reply is not None
    assert outcome.reply.startswith("Not done: ") and says in outcome.reply


def test_strangers_other_chats_and_chatter_decide_nothing(telegram: TelegramTestServer) -> None:
    stranger = outcome_of(telegram, "/approve ET-7", user_id=MALLORY, username="alice")  # a username proves nothing
    assert stranger.decision is None and stranger.reply.startswith("Not allowed: Telegram user 666666")
    elsewhere = outcome_of(telegram, "/approve ET-7", chat_id=OTHER_CHAT)
    assert elsewhere.decision is None and elsewhere.reply.startswith("Not allowed: ")
    assert outcome_of(telegram, "good morning").ignored == "not a command"
    assert outcome_of(telegram, "/deploy ET-7").ignored is not None
    assert "/approve ID [comment]" in outcome_of(telegram, "/help").reply
    edited = telegram.update_for("/approve ET-7", user_id=ALICE)
    edited["edited_message"] = edited.pop("message")
    assert decide(TelegramUpdate.model_validate(edited), block_for(telegram), "ops").ignored is not None


# --- the Bot API double and the client: offsets, long polls, refusals -------------------------------


def test_get_updates_confirms_below_the_offset_and_long_polls_until_one_arrives(
    telegram: TelegramTestServer,
) -> None:
    block = block_for(telegram)
    with httpx.Client(timeout=30) as client:
        first = telegram.queue_message("/approve ET-1", user_id=ALICE)
        second = telegram.queue_message("/approve ET-2", user_id=ALICE)
        got = get_updates(client, block, offset=None, timeout_seconds=0)
        assert [u["update_id"] for u in got] == [first["update_id"], second["update_id"]]
        assert got[0]["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 8}]
        # An offset confirms every update below it: they are gone for good.
        again = get_updates(client, block, offset=second["update_id"], timeout_seconds=0)
        assert [u["update_id"] for u in again] == [second["update_id"]]
        assert [u["update_id"] for u in telegram.pending] == [second["update_id"]]

        # Nothing waiting: the call is held until an update is queued, not for its whole timeout.
        results: list[list[dict[str, Any]]] = []
        waiter = threading.Thread(
            target=lambda: results.append(
                get_updates(client, block, offset=second["update_id"] + 1, timeout_seconds=20)
            )
        )
        started = time.monotonic()
        waiter.start()
        try:
            deadline = time.monotonic() + 10
            while len(telegram.updates_calls) < 3:  # the long poll has reached the server
                assert time.monotonic() < deadline, "the long poll never arrived"
                time.sleep(0.02)
            third = telegram.queue_message("/approve ET-3", user_id=ALICE)
        finally:
            waiter.join(timeout=25)
        assert [u["update_id"] for u in results[0]] == [third["update_id"]]
        assert time.monotonic() - started < 10
        # And with nothing queued it answers an empty list once its timeout has passed.
        started = time.monotonic()
        assert get_updates(client, block, offset=third["update_id"] + 1, timeout_seconds=1) == []
        assert time.monotonic() - started >= 1


def test_bot_api_refusals_are_named_without_the_token(telegram: TelegramTestServer) -> None:
    wrong = block_for(telegram).model_copy(update={"bot_token": SecretStr(TOKEN + "x")})
    with httpx.Client(timeout=10) as client:
        with pytest.raises(TelegramApiError) as refused:
            get_updates(client, wrong, offset=None, timeout_seconds=0)
        assert not refused.value.transient and "bot token" in str(refused.value) and TOKEN not in str(refused.value)
        set_hook = client.post(
            f"{telegram.web_url}/bot{TOKEN}/setWebhook",
            json={"url": "https://sdlc.example.com/webhooks/telegram", "secret_token": SECRET},
        )
        assert set_hook.json()["ok"] is True
        with pytest.raises(TelegramApiError) as conflict:
            get_updates(client, block_for(telegram), offset=None, timeout_seconds=0)
        assert "deleteWebhook" in str(conflict.value) and TOKEN not in str(conflict.value)


def test_the_poll_loop_waits_out_an_outage_and_persists_its_offset(
    telegram: TelegramTestServer, data_dir: Path
) -> None:
    telegram.inject("*", r"/getupdates$", status=502)
    lines: list[str] = []
    stop = threading.Event()
    poller = threading.Thread(
        target=poll, args=(block_for(telegram), "ops"), kwargs={"timeout_seconds": 1, "say": lines.append, "stop": stop}
    )
    poller.start()
    try:
        helped = telegram.queue_message("/help", user_id=MALLORY)
        assert "/reject ID what to change" in replies_to(telegram, helped)
    finally:
        stop.set()
        poller.join(timeout=30)
    assert not poller.is_alive()
    assert lines[0].startswith("telegram: getUpdates: HTTP 502: ") and "trying again in 1 s" in lines[0]
    assert any(line.startswith(f"telegram update {helped['update_id']}: sdlc-flows takes:") for line in lines)
    assert read_offset(offset_path("ops")) == helped["update_id"] + 1
    assert all(TOKEN not in line for line in lines)


# --- end to end: a pipeline waiting for people ---------------------------------------------------------


def transitions(work_item: str) -> list[str]:
    from tasks.ledger import Ledger

    return [t.reason or "" for t in Ledger.from_settings().transitions(work_item)]


def test_the_webhook_approves_only_for_an_allowed_user_with_the_secret(
    telegram: TelegramTestServer,
    saved_block: str,
    prefect_api: str,
    cli_env: dict[str, str],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    run = start_run(
        {**cli_env, "SDLC_NOTIFY_BLOCKS": f"sdlc-telegram/{saved_block}"},
        "--repo",
        str(origin),
        "--work-item",
        "TG-1",
        "--title",
        "Approve in chat",
        "--agent",
        "scripted",
    )
    try:
        with Receiver(WebhookSettings(telegram_secret=SECRET, telegram_block=saved_block)) as receiver:
            url = f"http://127.0.0.1:{receiver.port}/webhooks/telegram"

            def deliver(update: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
                headers = {"content-type": "application/json"}
                if secret is not None:
                    headers["X-Telegram-Bot-Api-Secret-Token"] = secret
                return httpx.post(url, content=json.dumps(update).encode(), headers=headers, timeout=60)

            wait_for_state(data_dir, "TG-1", "waiting_approval", run)
            approve = telegram.update_for("/approve TG-1 ship it", user_id=ALICE, username="alice")
            # A wrong or missing secret token: 401, no reply, nothing decided or remembered.
            assert deliver(approve, secret=SECRET + "x").status_code == 401
            assert deliver(approve, secret=None).status_code == 401
            # Someone not in approver_user_ids is told so; the item keeps waiting.
            stranger = telegram.update_for("/approve TG-1", user_id=MALLORY, username="mallory")
            refused = deliver(stranger)
            assert refused.status_code == 200 and refused.json()["accepted"] is False, refused.text
            assert replies_to(telegram, stranger).startswith("Not allowed: Telegram user 666666 is not an approver")
            assert [m.text for m in telegram.delivered if m.reply_to == approve["message"]["message_id"]] == []
            wait_for_state(data_dir, "TG-1", "waiting_approval", run, timeout=1)

            answer = deliver(approve)
            assert answer.status_code == 200 and answer.json()["accepted"] is True, answer.text
            assert replies_to(telegram, approve) == "TG-1 approved by @alice"
            # Telegram delivering the same update again applies nothing twice.
            assert deliver(approve).json()["duplicate"] is True
            code, out, err = finish(run, timeout=240)
    finally:
        end(run)
    assert code == 0, out + err
    reasons = transitions("TG-1")
    assert "approved by @alice" in reasons and not any("mallory" in r or "666666" in r for r in reasons)
    (event,) = events_for(prefect_api, "TG-1", "sdlc.work-item.approved")
    assert event["payload"] == {"work_item": "TG-1", "by": "@alice", "source": "telegram"}
    # The approval request told the chat how to answer.
    asked = [m.text for m in telegram.delivered if "approval_requested TG-1" in m.text]
    assert asked and "/approve TG-1 [comment]" in asked[0] and "/reject TG-1" in asked[0]
    assert all(r.path.startswith("/bot***/") for r in telegram.requests)


def test_polling_answers_and_rejects_once_across_restarts(
    telegram: TelegramTestServer,
    saved_block: str,
    prefect_api: str,
    cli_env: dict[str, str],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"analyst": {"questions": 1}}))
    env = {**cli_env, "SDLC_NOTIFY_BLOCKS": f"sdlc-telegram/{saved_block}"}
    run = start_run(
        env,
        "--repo",
        str(origin),
        "--work-item",
        "TG-2",
        "--title",
        "Poll for it",
        "--agent",
        "scripted",
        "--scenario",
        str(scenario),
    )

    def poll_once(*extra: str) -> str:
        done = sdlc(env, "telegram", "poll", "--once", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert TOKEN not in done.stdout + done.stderr
        return done.stdout

    try:
        # /answer reaches the item that waits for answers (the block comes from SDLC_NOTIFY_BLOCKS).
        wait_for_state(data_dir, "TG-2", "needs_input", run)
        answer = telegram.queue_message("/answer TG-2 Use semicolons as separators.", user_id=ALICE, username="alice")
        assert "TG-2 answered" in poll_once()
        assert replies_to(telegram, answer).startswith("TG-2 answered; the analyst runs again")
        wait_for_state(data_dir, "TG-2", "waiting_approval", run)

        reject = telegram.queue_message("/reject TG-2 add a header row", user_id=ALICE, username="alice")
        assert "TG-2 sent back to the analyst by @alice" in poll_once("--block", saved_block)
        assert read_offset(offset_path(saved_block)) == reject["update_id"] + 1
        wait_for_runs(data_dir, "TG-2", "analyst", 3, run)
        wait_for_state(data_dir, "TG-2", "waiting_approval", run)
        # Telegram still holds the /reject (no call has confirmed it yet): a restarted poller starts
        # from the persisted offset, confirming it, and applies nothing again.
        assert reject["update_id"] in [u["update_id"] for u in telegram.pending]
        calls_before = len(telegram.updates_calls)
        assert "sent back" not in poll_once("--block", saved_block)
        (restart_call,) = telegram.updates_calls[calls_before:]
        assert restart_call.offset == reject["update_id"] + 1 and restart_call.returned == []
        assert telegram.pending == []
        assert sum(r.startswith("rejected by @alice") for r in transitions("TG-2")) == 1

        approve = telegram.queue_message("/approve TG-2", user_id=ALICE, username="alice")
        assert "TG-2 approved by @alice" in poll_once("--block", saved_block)
        assert replies_to(telegram, approve) == "TG-2 approved by @alice"
        code, out, err = finish(run, timeout=240)
    finally:
        end(run)
    assert code == 0, out + err
    reasons = transitions("TG-2")
    assert "rejected by @alice: add a header row" in reasons and "approved by @alice" in reasons
    # The answers reached the analyst's second run; the rejection its third (the history of its BRD).
    history = subprocess.run(
        ["git", "-C", str(origin), "log", "-p", "main", "--", "docs/work-items/TG-2/02-brd.md"],
        capture_output=True,
        text=True,
    ).stdout
    assert "Use semicolons as separators." in history and "add a header row" in history


def test_poll_without_a_known_block_is_a_usage_error(cli_env: dict[str, str], data_dir: Path) -> None:
    env = {**cli_env, "SDLC_NOTIFY_BLOCKS": ""}
    missing = sdlc(env, "telegram", "poll", "--once")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "sdlc: error: give --block NAME: SDLC_NOTIFY_BLOCKS names none sdlc-telegram block"
    )
    bad = sdlc(env, "telegram", "poll", "--once", "--block", "../etc")
    assert bad.returncode == 2 and "is not a block name" in bad.stderr
    unknown = sdlc(env, "telegram", "poll", "--once", "--block", f"nope-{uuid.uuid4().hex[:6]}")
    assert unknown.returncode == 2 and unknown.stderr.startswith("sdlc: error: Telegram block 'nope-")
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert not (data_dir / "telegram").exists()


def test_the_receiver_refuses_telegram_without_a_configured_secret(prefect_api: str, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="telegram_secret needs telegram_block"):
        WebhookSettings(telegram_secret=SECRET)
    with pytest.raises(ValueError, match="telegram_secret must be"):
        WebhookSettings(telegram_secret="has spaces", telegram_block="ops")
    with Receiver(WebhookSettings()) as receiver:
        answer = httpx.post(
            f"http://127.0.0.1:{receiver.port}/webhooks/telegram",
            json={"update_id": 1},
            headers={"X-Telegram-Bot-Api-Secret-Token": ""},
            timeout=30,
        )
    assert answer.status_code == 401
