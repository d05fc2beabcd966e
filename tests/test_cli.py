"""The `sdlc` command as a user runs it (B5, B11, B20, B62): separate processes, one server."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from demo.sample import create_sample_repo
from processes import end

SDLC = [sys.executable, "-m", "entrypoints.cli"]


def sdlc(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SDLC, *args], env=env, capture_output=True, text=True, timeout=timeout)


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SDLC, "run", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_state(data_dir: Path, work_item: str, state: str, process: subprocess.Popen[str], timeout: float = 90) -> None:
    from tasks.ledger import Ledger

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (data_dir / "ledger.db").exists():
            row = Ledger.from_settings().get_work_item(work_item)
            if row is not None and row.state == state:
                return
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"sdlc run ended early ({process.returncode}):\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError(f"{work_item} never reached {state}")


def wait_for_runs(
    data_dir: Path, work_item: str, role: str, count: int, process: subprocess.Popen[str], timeout: float = 90
) -> None:
    """Until ``role`` has started ``count`` runs on ``work_item`` (a rejection or an answer has been taken up)."""
    from tasks.ledger import Ledger

    deadline = time.monotonic() + timeout
    while (ran := sum(r.role == role for r in Ledger.from_settings().agent_runs(work_item))) < count:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"sdlc run ended early ({process.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{work_item}: {role} ran {ran} times, not {count}"
        time.sleep(0.2)


def wait_for_suspension(flow_run_id: str, timeout: float = 30) -> None:
    """Until the flow run is suspended with its form saved: from then on no process holds it."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from prefect.input.run_input import keyset_from_paused_state

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(UUID(flow_run_id)).state) or not state.is_paused():
            assert time.monotonic() < deadline, f"the run never suspended (it is {state})"
            time.sleep(0.2)
        # Prefect saves the input form (its schema) right after the state.
        form = keyset_from_paused_state(state)["schema"]
        while not any(saved.key == form for saved in client.filter_flow_run_input(
            UUID(flow_run_id), key_prefix=form, limit=10, exclude_keys=set()
        )):
            assert time.monotonic() < deadline, f"the run's input form {form} was never saved"
            time.sleep(0.2)


def status(env: dict[str, str], work_item: str) -> dict[str, Any]:
    result = sdlc(env, "status", work_item, "--json")
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)
    return item


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_questions_answers_and_approval_from_other_processes(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"analyst": {"questions": 1}}))
    run = start_run(
        cli_env, "--repo", str(origin), "--work-item", "ET-21", "--title", "Export to CSV", "--agent", "scripted",
        "--scenario", str(scenario)
    )
    try:
        # B11: the analyst asks; the pipeline waits for typed answers.
        wait_for_state(data_dir, "ET-21", "needs_input", run)
        answers = tmp_path / "answers.md"
        answers.write_text("Use semicolons as separators.\n")
        answered = sdlc(cli_env, "answer", "ET-21", "--file", str(answers), "--by", "bob")
        assert answered.returncode == 0, answered.stderr
        # B20: after a passing analysis gate it waits for approval.
        wait_for_state(data_dir, "ET-21", "waiting_approval", run)
        approved = sdlc(cli_env, "approve", "ET-21", "--by", "alice", "--comment", "ship it")
        assert approved.returncode == 0, approved.stderr
        assert "ET-21 approved by alice" in approved.stdout
        code, out, err = finish(run)
    finally:
        end(run)
    assert code == 0, out + err
    assert "waiting for approval" in out and "sdlc approve ET-21" in out
    assert "/runs/flow-run/" in out and "ET-21 done. PR #1 merged" in out

    item = status(cli_env, "ET-21")
    assert item["state"] == "done" and item["pull_request"]["number"] == 1
    assert [r["role"] for r in item["agent_runs"]] == [
        "analyst", "analyst", "architect", "developer", "reviewer", "tester", "deployer"
    ]
    assert all(r["exit_code"] == 0 and r["duration_seconds"] > 0 for r in item["agent_runs"])
    assert any(t["reason"] == "approved by alice" for t in item["transitions"])
    # The answers reached the analyst's second run.
    brd = subprocess.run(
        ["git", "-C", str(origin), "show", "main:docs/work-items/ET-21/02-brd.md"], capture_output=True, text=True
    ).stdout
    assert "Use semicolons as separators." in brd

    # Where to watch it (issue 17): the run, the PR and each page the work item has in the Prefect UI.
    links = item["links"]
    assert links["run"] == f"{ui_url(cli_env)}/runs/flow-run/{item['flow_run_id']}"
    assert links["pull_request"] == item["pull_request"]["url"]
    assert list(links["pages"]) == ["work-item-et-21", "analysis-et-21", "questions-et-21"]
    assert all(re.fullmatch(rf"{ui_url(cli_env)}/artifacts/artifact/[0-9a-f-]{{36}}", url) for url in links["pages"].values())
    shown = sdlc(cli_env, "status", "ET-21")
    assert shown.returncode == 0, shown.stderr
    assert f"    run: {links['run']}\n    PR: {links['pull_request']}\n" in shown.stdout
    for key, url in links["pages"].items():
        assert f"    page {key}: {url}\n" in shown.stdout
    assert "page " not in sdlc(cli_env, "status").stdout  # the list stays one line and its history per item


def ui_url(env: dict[str, str]) -> str:
    """The Prefect UI's address: the API's, without /api."""
    return env["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")


def test_reject_sends_the_comment_back_to_the_analyst(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    run = start_run(cli_env, "--repo", str(origin), "--work-item", "ET-22", "--title", "Dark mode", "--agent", "scripted")
    try:
        wait_for_state(data_dir, "ET-22", "waiting_approval", run)
        rejected = sdlc(cli_env, "reject", "ET-22", "--comment", "Also cover high-contrast themes", "--by", "carol")
        assert rejected.returncode == 0, rejected.stderr
        wait_for_runs(data_dir, "ET-22", "analyst", 2, run)  # the rejection was taken up
        wait_for_state(data_dir, "ET-22", "waiting_approval", run)
        assert sdlc(cli_env, "approve", "ET-22").returncode == 0
        code, out, err = finish(run)
    finally:
        end(run)
    assert code == 0, out + err
    item = status(cli_env, "ET-22")
    assert [r["role"] for r in item["agent_runs"]][:3] == ["analyst", "analyst", "architect"]
    assert any("rejected by carol: Also cover high-contrast themes" == t["reason"] for t in item["transitions"])
    brd = subprocess.run(
        ["git", "-C", str(origin), "show", "main:docs/work-items/ET-22/02-brd.md"], capture_output=True, text=True
    ).stdout
    assert "Also cover high-contrast themes" in brd


def test_blocked_run_exits_1_with_the_reason(tmp_path: Path, cli_env: dict[str, str]) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"deployer": {"fail": 1}}))
    result = sdlc(
        cli_env, "run", "--repo", str(origin), "--work-item", "ET-23", "--title", "Deploy me",
        "--agent", "scripted", "--scenario", str(scenario), "--auto-approve",
    )
    assert result.returncode == 1
    assert "ET-23 blocked: deployer exited 1" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--work-item", "bad id"], "PROJECT-NUMBER"),
        (["--branch", "--upload-pack=touch /tmp/x"], "branch"),
        (["--branch", "feature/../../x"], "not allowed"),
        (["--repo", "/no/such/repo"], "does not exist"),
        (["--agent", "skynet"], "invalid choice"),
        (["--title", "two\nlines"], "control characters"),
        (["--agent-command", "'unterminated"], "--agent-command"),
        (["--scenario", "/no/such/scenario.json"], "scenario file"),
    ],
)
def test_invalid_input_exits_2_and_creates_nothing(
    tmp_path: Path, args: list[str], message: str, data_dir: Path
) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    branches_before = subprocess.run(["git", "-C", str(origin), "branch"], capture_output=True, text=True).stdout
    base = {"--repo": str(origin), "--work-item": "ET-24", "--title": "Fine title", "--agent": "scripted"}
    overrides = dict(zip(args[::2], args[1::2]))
    argv = [item for pair in {**base, **overrides}.items() for item in pair]
    env = {**os.environ, "SDLC_DATA_DIR": str(data_dir), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    result = subprocess.run([*SDLC, "run", *argv], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not data_dir.exists()
    assert subprocess.run(["git", "-C", str(origin), "branch"], capture_output=True, text=True).stdout == branches_before


def test_approve_unknown_work_item_is_a_usage_error(cli_env: dict[str, str]) -> None:
    result = sdlc(cli_env, "approve", "NOPE-1")
    assert result.returncode == 2 and "unknown work item NOPE-1" in result.stderr


def test_custom_agent_command_follows_the_b5_protocol(tmp_path: Path, cli_env: dict[str, str]) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    record = tmp_path / "seen.jsonl"
    agent = tmp_path / "my agent.py"
    agent.write_text(
        "import json, os, runpy, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'cwd': os.getcwd(), 'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
        "sys.argv = ['scripted']\n"
        "runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
    )
    result = sdlc(
        cli_env, "run", "--repo", str(origin), "--work-item", "ET-25", "--title", "Custom agent",
        "--agent-command", f"{sys.executable} '{agent}' --flag 'two words'", "--auto-approve",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert [s["env"]["SDLC_ROLE"] for s in seen] == ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
    first = seen[0]
    assert first["argv"] == ["--flag", "two words"]
    assert first["cwd"].endswith("feature__ET-25-custom-agent")
    env = first["env"]
    assert env["SDLC_WORK_ITEM"] == "ET-25" and env["SDLC_STAGE"] == "analysis" and env["SDLC_ATTEMPT"] == "1"
    assert env["SDLC_TASK_FILE"] == ".task-analyst.md" and env["SDLC_ARTIFACTS_DIR"] == "docs/work-items/ET-25"
    assert Path(env["SDLC_SYSTEM_PROMPT_FILE"]).is_file() and "SDLC_MODEL" in env
    assert not any(name.startswith("PREFECT_") for name in env)


def test_two_work_items_at_once_on_one_repository(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    runs = [
        start_run(cli_env, "--repo", str(origin), "--work-item", f"ET-3{n}", "--title", f"Feature {n}", "--agent", "scripted", "--auto-approve")
        for n in (1, 2)
    ]
    try:
        for run in runs:
            code, out, err = finish(run, timeout=240)
            assert code == 0, out + err
    finally:
        for run in runs:
            end(run)
    items = [status(cli_env, f"ET-3{n}") for n in (1, 2)]
    assert sorted(item["pull_request"]["number"] for item in items) == [1, 2]
    worktrees = sorted(p.name for p in (data_dir / "worktrees").glob("*/*") if p.is_dir())
    assert worktrees == ["feature__ET-31-feature-1", "feature__ET-32-feature-2"]
    log = subprocess.run(["git", "-C", str(origin), "log", "--format=%s", "main"], capture_output=True, text=True).stdout
    assert "Merge pull request #1" in log and "Merge pull request #2" in log
    for n in (1, 2):
        assert subprocess.run(
            ["git", "-C", str(origin), "cat-file", "-e", f"main:docs/work-items/ET-3{n}/13-test-report.md"]
        ).returncode == 0
    # At once, not one after the other: each work item's agents ran while the other's were running.
    ledger = Ledger.from_settings()
    spans = []
    for n in (1, 2):
        agent_runs = ledger.agent_runs(f"ET-3{n}")
        assert all(r.ended_at is not None for r in agent_runs)
        spans.append((min(r.started_at for r in agent_runs), max(r.ended_at for r in agent_runs)))
    (first_start, first_end), (second_start, second_end) = spans
    assert first_start < second_end and second_start < first_end, spans


def test_a_waiting_run_survives_its_process_and_no_agent_runs_twice(
    tmp_path: Path, cli_env: dict[str, str], data_dir: Path
) -> None:
    """B21: SIGKILL the `sdlc run` that waits for approval, approve, resume: every role ran once."""
    import signal

    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    run = start_run(cli_env, "--repo", str(origin), "--work-item", "ET-31", "--title", "Resilient waits", "--agent", "scripted")
    try:
        wait_for_state(data_dir, "ET-31", "waiting_approval", run)
        wait_for_suspension(Ledger.from_settings().get_work_item("ET-31").flow_run_id)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        end(run)

    approved = sdlc(cli_env, "approve", "ET-31", "--by", "dana")
    assert approved.returncode == 0, approved.stderr
    assert "sdlc resume ET-31" in approved.stdout  # nobody is left to go on: the user is told how

    resumed = sdlc(cli_env, "resume", "ET-31", timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "done" in resumed.stdout
    roles = [run.role for run in Ledger.from_settings().agent_runs("ET-31")]
    assert sorted(roles) == sorted(["analyst", "architect", "developer", "reviewer", "tester", "deployer"])
    item = status(cli_env, "ET-31")
    assert item["state"] == "done"
    # The ledger tells the story once: no replayed transition is recorded twice.
    targets = [t["to"] for t in item["transitions"]]
    assert targets == ["analysis", "architecture", "development", "review", "testing", "deploy", "done"]


def test_resume_refuses_a_work_item_without_an_unfinished_run(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    origin = create_sample_repo(tmp_path / "repos")
    done = sdlc(cli_env, "run", "--repo", str(origin), "--work-item", "ET-32", "--title", "Quick", "--agent", "scripted", "--auto-approve", timeout=180)
    assert done.returncode == 0, done.stderr
    again = sdlc(cli_env, "resume", "ET-32")
    assert again.returncode == 2
    assert again.stderr.strip() == "sdlc: error: ET-32 has no unfinished run to resume"


def test_status_says_when_a_work_item_s_spend_is_incomplete(tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    """Issue 18: a CLI that reports no cost (Codex, Gemini CLI) makes the spend a lower bound, and status says so."""
    from datetime import UTC, datetime

    from sdlc.models import AgentResult, WorkItemRequest
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    ledger.upsert_work_item(
        WorkItemRequest(
            work_item="SP-1", title="Mixed agents", repo=str(create_sample_repo(tmp_path / "repos")), budget_usd=2.0
        ),
        flow_run_id=None,
    )
    now = datetime.now(UTC)
    for role, cost, tokens in (("architect", 0.25, 1000), ("developer", None, 3000)):
        run_id, attempt = ledger.start_agent_run("SP-1", stage=role, role=role, log_path="l", flow_run_id=None)
        ledger.finish_agent_run(run_id, AgentResult(
            role=role, attempt=attempt, exit_code=0, duration_seconds=1.0, log_path="l", started_at=now, ended_at=now,
            cost_usd=cost, input_tokens=tokens, output_tokens=10,
        ))
    shown = sdlc(cli_env, "status", "SP-1")
    assert shown.returncode == 0, shown.stderr
    assert "    spent $0.2500 of $2.0000 (incomplete: 1 of 2 agent runs reported no cost), 4000 input / 20 output tokens\n" in shown.stdout
    assert status(cli_env, "SP-1")["usage"]["runs_without_cost"] == 1
