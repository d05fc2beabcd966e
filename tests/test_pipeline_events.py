"""Every event pushed (B75, issue 15 item 3), through the real pipeline to a Telegram server on 127.0.0.1.

The pipeline flow runs with the scripted agent and a scenario that makes agents fail
(permanently, transiently) and the reviewer ask for changes; a saved ``TelegramNotification``
block in ``SDLC_NOTIFY_BLOCKS`` sends to ``tests/forge_servers/telegram.py``. What people
read there, and what ``notifications.jsonl`` keeps, is checked against the ledger.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_UI_URL, temporary_settings
from pydantic import SecretStr

from blocks.notifications import TelegramNotification
from demo.sample import create_sample_repo
from forge_servers.telegram import ReceivedMessage, TelegramTestServer
from gitrepo import free_port
from sdlc.models import AgentSpec, WorkItemRequest

pytestmark = pytest.mark.usefixtures("prefect_api")

TOKEN = "123456789:AAH-sdlc_events_TOKEN_abcdefghijklmno"
OPS, TEAM = "-1001111111111", "-1002222222222"
UI_URL = "http://ui.sdlc.test:4200"
SUBJECT = re.compile(r"sdlc-flows: (\w+) ET-7\n")


@pytest.fixture
def telegram() -> Iterator[TelegramTestServer]:
    with TelegramTestServer(TOKEN, chats=(OPS, TEAM)) as server:
        yield server


def saved_block(server: TelegramTestServer | None, chat: str = OPS, **fields: Any) -> str:
    """A saved TelegramNotification block (``None``: a dead port), as SDLC_NOTIFY_BLOCKS names it."""
    api_url = server.web_url if server else f"http://127.0.0.1:{free_port()}"
    name = f"events-{uuid.uuid4().hex[:10]}"
    TelegramNotification(bot_token=SecretStr(TOKEN), chat_id=chat, api_url=api_url, **fields).save(name)
    return f"sdlc-telegram/{name}"


def run_pipeline(tmp_path: Path, scenario: dict[str, Any], *, auto_approve: bool = True, **agent: Any) -> Any:
    from flows.pipeline import sdlc_pipeline

    origin = create_sample_repo(tmp_path / "repos")
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    request = WorkItemRequest(
        work_item="ET-7",
        title="Greet by name",
        description="Greet a person by name.",
        repo=str(origin),
        auto_approve=auto_approve,
        approval_timeout_seconds=180,
        agent=AgentSpec(kind="scripted", scenario_file=str(scenario_file), **agent),
    )
    with temporary_settings({PREFECT_UI_URL: UI_URL}):
        return sdlc_pipeline(request=request, return_state=True)


def ledger() -> Any:
    from tasks.ledger import Ledger

    return Ledger.from_settings()


def records(data_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    lines = (data_dir / "notifications.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if event is None or r["event"] == event]


def event_of(message: ReceivedMessage) -> str:
    found = SUBJECT.search(message.text)
    assert found, message.text
    return found.group(1)


def received(server: TelegramTestServer, event: str, *, chat: str = OPS) -> list[str]:
    return [m.text for m in server.delivered if m.chat_id == chat and event_of(m) == event]


def one(texts: list[str], *needles: str) -> str:
    """The one message holding every needle."""
    found = [text for text in texts if all(needle in text for needle in needles)]
    assert len(found) == 1, (needles, texts)
    return found[0]


def body(text: str) -> str:
    """A Telegram message without its subject line and its link: the event's message."""
    return text.split("\n\n", 1)[1].rsplit("\nFlow run: ", 1)[0]


def stage_link(run: Any) -> str:
    return f"Flow run: {UI_URL}/runs/flow-run/{run.flow_run_id}"


def test_agent_runs_failures_and_stage_changes_reach_telegram_and_the_jsonl(
    tmp_path: Path, data_dir: Path, telegram: TelegramTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", saved_block(telegram))
    scenario = {
        "architect": {"exit_times": 1, "exit_code": 3},  # permanent: retried at once, within max_attempts=2
        "developer": {"rate_limit_times": 1, "retry_after_seconds": 2},  # transient: retried after Retry-After
        "reviewer": {"request_changes": 1},  # back to development, with the reason
    }
    state = run_pipeline(tmp_path, scenario, max_attempts=2, transient_retries=3, backoff_base_seconds=0.1)
    assert state.is_completed(), state.message

    runs = ledger().agent_runs("ET-7")
    assert [r.role for r in runs].count("developer") == 3  # rate-limited, retried, then after the review
    started, finished = received(telegram, "agent_started"), received(telegram, "agent_finished")
    failed = received(telegram, "agent_failed")
    assert len(started) == len(runs) and len(finished) == len(runs) - 2 and len(failed) == 2
    for run in runs:
        head = f"ET-7 {run.role} started: attempt {run.attempt}, stage {run.stage}, agent scripted; log {run.log_path}"
        assert one(started, head).endswith(stage_link(run))
        (record,) = [r for r in records(data_dir, "agent_started") if r["details"]["log"] == run.log_path]
        assert (record["details"]["role"], record["details"]["attempt"]) == (run.role, run.attempt)
        assert record["message"] == head
        if run.failure_kind is not None:
            continue
        text = one(finished, f"ET-7 {run.role} finished: attempt {run.attempt}, stage {run.stage}, exit code 0 in ")
        shown = float(re.search(r"exit code 0 in ([\d.]+) s", text).group(1))  # type: ignore[union-attr]
        assert abs(shown - run.duration_seconds) <= 0.051 and text.startswith("sdlc-flows: agent_finished ET-7\n")
        (record,) = [r for r in records(data_dir, "agent_finished") if r["details"]["log"] == run.log_path]
        assert record["details"]["duration_seconds"] == run.duration_seconds
        assert (record["details"]["exit_code"], record["details"]["attempt"]) == (0, run.attempt)

    # agent_failed: how it failed, its classification, its log, and the retry to come.
    architect, developer = (
        next(r for r in runs if r.role == role and r.failure_kind) for role in ("architect", "developer")
    )
    text = one(failed, "ET-7 architect failed: attempt 1, stage architecture, exit code 3 after ")
    assert text.startswith("⚠️ sdlc-flows: agent_failed ET-7\n")
    assert f"; permanent (exit_code); log {architect.log_path}; retry 1 of 1 now\n" in text
    assert text.endswith(stage_link(architect))
    text = one(failed, "ET-7 developer failed: attempt 1, stage development, exit code 1 after ")
    assert f"; transient (rate_limit); log {developer.log_path}; retry 1 of 3 in 2.0 s\n" in text
    retried = next(r for r in runs if r.role == "developer" and r.attempt == 2)
    assert (retried.started_at - developer.ended_at).total_seconds() >= 2  # the retry came as announced
    (record,) = records(data_dir, "agent_failed")[1:]
    assert {k: record["details"][k] for k in ("role", "classification", "reason", "retry", "retry_in_seconds")} == {
        "role": "developer",
        "classification": "transient",
        "reason": "rate_limit",
        "retry": True,
        "retry_in_seconds": 2.0,
    }

    # stage_changed: every move of the ledger's, from, to and why (done has its own event).
    changed = received(telegram, "stage_changed")
    moves = [t for t in ledger().transitions("ET-7") if t.to_stage != "done"]
    expected = Counter(
        f"ET-7 {t.from_stage} -> {t.to_stage}: {t.reason}"
        if t.from_stage
        else f"ET-7 starts at {t.to_stage}: {t.reason}"
        for t in moves
    )
    assert Counter(body(text) for text in changed) == expected  # two visits of a stage: two messages
    back = next(t for t in moves if (t.from_stage, t.to_stage) == ("review", "development"))
    assert back.reason == "12-review.md: request_changes"
    one(changed, "ET-7 review -> development: 12-review.md: request_changes\n")
    assert {"from_stage": "review", "to_stage": "development", "reason": back.reason} in [
        r["details"] for r in records(data_dir, "stage_changed")
    ]
    assert one(received(telegram, "done"), "ET-7 ").startswith("✅ sdlc-flows: done ET-7\n")
    # The jsonl keeps what Telegram got, one record per message.
    assert sorted(r["event"] for r in records(data_dir)) == sorted(event_of(m) for m in telegram.delivered)


def test_a_block_with_its_own_events_gets_only_those_and_notify_events_chooses_the_others(
    tmp_path: Path,
    data_dir: Path,
    telegram: TelegramTestServer,
    monkeypatch: pytest.MonkeyPatch,
    cli_env: dict[str, str],
) -> None:
    ops = saved_block(telegram, OPS)
    team = saved_block(telegram, TEAM)
    monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", f"{ops}=approval_requested|done,{team}")
    monkeypatch.setenv("SDLC_NOTIFY_EVENTS", "stage_changed,done")
    approval: dict[str, Any] = {}

    def approve_when_asked() -> None:
        """A person, from another process: `sdlc approve` once the run waits for it."""
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            row = ledger().get_work_item("ET-7")
            if row is not None and row.state == "waiting_approval":
                approval["done"] = subprocess.run(
                    [sys.executable, "-m", "entrypoints.cli", "approve", "ET-7", "--by", "alice"],
                    env=cli_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                return
            time.sleep(0.2)  # polling the ledger, within the deadline

    person = threading.Thread(target=approve_when_asked, daemon=True)
    person.start()
    try:
        state = run_pipeline(tmp_path, {}, auto_approve=False)
    finally:
        person.join(timeout=180)
    assert not person.is_alive()
    assert approval["done"].returncode == 0, approval["done"].stderr
    assert state.is_completed(), state.message

    routed = [event_of(m) for m in telegram.delivered if m.chat_id == OPS]
    assert sorted(routed) == ["approval_requested", "done"]
    asked = one(
        received(telegram, "approval_requested"),
        "ET-7 analysis is ready; read it: http",
        "/artifacts/artifact/", "; approve in the UI or run",
    )
    assert asked.startswith("⚠️ sdlc-flows: approval_requested ET-7\n")
    others = {event_of(m) for m in telegram.delivered if m.chat_id == TEAM}
    assert others == {"stage_changed", "done"}
    one(received(telegram, "stage_changed", chat=TEAM), "ET-7 analysis -> architecture: approved by alice\n")
    # The local record keeps every event, whichever blocks it went to.
    kept = {r["event"] for r in records(data_dir)}
    assert kept == {
        "work_item_started",
        "stage_changed",
        "agent_started",
        "agent_finished",
        "approval_requested",
        "done",
    }
    assert len(records(data_dir, "agent_started")) == len(ledger().agent_runs("ET-7")) == 6


def test_a_failure_with_no_retry_says_why_and_a_dead_notifier_changes_nothing(
    tmp_path: Path, data_dir: Path, telegram: TelegramTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = saved_block(None, max_attempts=1)
    monkeypatch.setenv("SDLC_NOTIFY_BLOCKS", f"{dead},{saved_block(telegram)}")
    state = run_pipeline(tmp_path, {"analyst": {"exit_times": 1, "exit_code": 4}}, max_attempts=1)

    assert state.is_failed()
    (run,) = ledger().agent_runs("ET-7")
    text = one(received(telegram, "agent_failed"), "ET-7 analyst failed: attempt 1, stage analysis, exit code 4 after ")
    assert f"; permanent (exit_code); log {run.log_path}; no retry: exit_code: 1 of 1 attempts failed\n" in text
    one(received(telegram, "blocked"), "ET-7 blocked at analysis: ")
    (failed,) = records(data_dir, "agent_failed")
    assert failed["details"]["retry"] is False and failed["details"]["log"] == run.log_path
    assert [f["notifier"] for f in failed["failed_notifiers"]] == [dead]
    assert ledger().get_work_item("ET-7").state == "blocked"
