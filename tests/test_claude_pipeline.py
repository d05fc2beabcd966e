"""The whole pipeline with the real Claude Code CLI as every role (B4, B6, B30-B31).

A fake Messages API plays the model: asked by a role, it answers with a Bash tool
call that writes that role's artifacts (using the B5 variables the CLI inherits),
then ends the turn. The CLI really runs the tool in the worktree, reports cost and
tokens in its JSON result, and really fails on the 429 the fake sends first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from blocks.agent_profile import AgentProfile
from fake_anthropic import FakeAnthropic, Reply, claude_cli_env
from real_clis import pinned_cli
from sdlc.models import AgentSpec, WorkItemRequest
from demo.sample import create_sample_repo
from sdlc.graph import BUILTIN_PROMPTS

REPOSITORY_ARCHITECT_PROMPT = "You are Team Ledger's architect: every design must name its rollback plan.\n"
ROLE_IN_PROMPT = re.compile(r"You are the (\w+) of this repository's delivery pipeline")
OUT = '"$SDLC_ARTIFACTS_DIR"'
WRITES = {
    "analyst": f"mkdir -p {OUT} && for f in 02-brd 03-requirements 04-acceptance-criteria 05-test-plan; "
    f'do echo "# $f" > {OUT}/$f.md; done',
    "architect": f'echo "# Architecture" > {OUT}/11-architecture.md',
    "developer": f'echo "def feature():\n    return $SDLC_ATTEMPT" > src/feature.py && echo notes > {OUT}/dev-notes.md',
    "tester": f"printf 'Result: PASS\\n' > {OUT}/13-test-report.md",
    "deployer": f"echo deployed > {OUT}/14-deploy.md",
}


class FakeModel:
    """Answers each role's first turn with a tool call, every later turn with 'done'."""

    def __init__(self) -> None:
        self.reviews = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or []
        content = messages[-1].get("content") if messages else None
        if isinstance(content, list) and any(part.get("type") == "tool_result" for part in content):
            return Reply.message("done", output_tokens=12)
        match = ROLE_IN_PROMPT.search(json.dumps(messages))
        if not match:
            return Reply.message("ok")
        role = match.group(1)
        if role == "reviewer":
            self.reviews += 1
            verdict = "REQUEST_CHANGES\\n- add a docstring" if self.reviews == 1 else "APPROVE"
            command = f"printf '# Review\\nVerdict: {verdict}\\n' > {OUT}/12-review.md"
        else:
            command = WRITES[role]
        return Reply.tool_use("Bash", {"command": command, "description": f"write the {role}'s files"})


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_", "DISABLE_")) or name == "IS_SANDBOX":
            monkeypatch.delenv(name)
    with FakeAnthropic(responder=FakeModel()) as api:
        yield api


def save_claude_profile(tmp_path: Path, fake_api: FakeAnthropic) -> str:
    """An AgentProfile block for the pinned CLI pointed at the fake API; returns its name."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    block_name = f"claude-test-{uuid.uuid4().hex[:8]}"
    AgentProfile(
        kind="claude",
        binary=pinned_cli("claude"),
        allowed_tools={role: ["Bash", "Read", "Write", "Edit"] for role in [*WRITES, "reviewer"]},
        env=claude_cli_env(str(home), fake_api.url, timeout_ms=20000),
        default_timeout_seconds=120,
    ).save(block_name)
    return block_name


@pytest.mark.usefixtures("prefect_api")
def test_pipeline_with_the_real_claude_cli(tmp_path: Path, data_dir: Path, fake_api: FakeAnthropic) -> None:
    from flows.pipeline import sdlc_pipeline
    from entrypoints.cli import status_report
    from tasks.ledger import Ledger

    block_name = save_claude_profile(tmp_path, fake_api)
    # The first model call is rate limited: the CLI exits 1, the run is classified transient and retried.
    fake_api.script(Reply.error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"))

    origin = create_sample_repo(tmp_path / "repos")
    # The repository's own architect prompt, on origin's default branch, overrides the built-in one.
    person = tmp_path / "person"
    subprocess.run(["git", "clone", "-q", str(origin), str(person)], check=True)
    (person / ".sdlc" / "agents").mkdir(parents=True)
    (person / ".sdlc" / "agents" / "architect.md").write_text(REPOSITORY_ARCHITECT_PROMPT)
    identity = ["-c", "user.name=Test Person", "-c", "user.email=person@example.test", "-c", "commit.gpgsign=false"]
    for args in (["add", ".sdlc"], [*identity, "commit", "-q", "-m", "our architect"], ["push", "-q", "origin", "main"]):
        subprocess.run(["git", "-C", str(person), *args], check=True)
    request = WorkItemRequest(
        work_item="ET-50", title="Claude does it", repo=str(origin), auto_approve=True,
        agent=AgentSpec(kind="claude", profile_block=block_name, backoff_base_seconds=0.2),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    runs = Ledger.from_settings().agent_runs("ET-50")
    assert state.is_completed(), f"{state.message}\n" + "\n".join(f"{r.role} {r.exit_code} {r.error} {r.log_path}" for r in runs)

    assert [(r.role, r.failure_kind) for r in runs] == [
        ("analyst", "transient"), ("analyst", None), ("architect", None), ("developer", None),
        ("reviewer", None), ("developer", None), ("reviewer", None), ("tester", None), ("deployer", None),
    ]
    assert runs[0].failure_reason == "rate_limit"
    ok = runs[1:]
    assert all(r.exit_code == 0 and r.cost_usd and r.cost_usd > 0 and r.session_id for r in ok)
    assert all(r.input_tokens and r.output_tokens and r.num_turns == 2 for r in ok)
    (item,) = status_report("ET-50")
    assert item["state"] == "done"
    assert item["usage"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in ok), abs=1e-6)
    assert item["usage"]["output_tokens"] == sum(r.output_tokens for r in ok)
    # The developer's second round continued its first session, with the review in its task.
    first_dev, second_dev = [r for r in runs if r.role == "developer"]
    second_argv = Path(second_dev.log_path).read_text().splitlines()[0]
    assert f"--resume {first_dev.session_id}" in second_argv
    first_argv = Path(first_dev.log_path).read_text().splitlines()[0]
    assert "--resume" not in first_argv
    # The model saw round one again: a request whose history holds the developer's prompt twice.
    asked = [json.dumps(r["body"].get("messages", [])) for r in fake_api.message_requests()]
    assert any(text.count("You are the developer") >= 2 for text in asked)
    # The system prompt the model got: the repository's for the architect, the built-in one for the others.
    systems: dict[str, set[str]] = {}
    for r in fake_api.message_requests():
        match = ROLE_IN_PROMPT.search(json.dumps(r["body"].get("messages", [])))
        if match:
            systems.setdefault(match.group(1), set()).add(json.dumps(r["body"].get("system", "")))
    assert sorted(systems) == ["analyst", "architect", "deployer", "developer", "reviewer", "tester"]
    assert all(REPOSITORY_ARCHITECT_PROMPT.strip() in system for system in systems["architect"])
    assert not any(REPOSITORY_ARCHITECT_PROMPT.strip() in system for role in systems if role != "architect"
                   for system in systems[role])
    assert any(BUILTIN_PROMPTS.joinpath("developer.md").read_text().splitlines()[0] in system
               for system in systems["developer"])
    # What the CLI's tools wrote was committed and merged.
    merged = os.popen(f"git -C {origin} show main:src/feature.py").read()
    assert "return 2" in merged  # the developer's second round, after the review


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("set_in", ["parameter", "repository"])
def test_a_spend_budget_blocks_before_the_next_agent_and_caps_each_run(
    tmp_path: Path, data_dir: Path, fake_api: FakeAnthropic, set_in: str
) -> None:
    from flows.pipeline import sdlc_pipeline
    from gitrepo import clone_of, commit_file, git
    from tasks.ledger import Ledger

    block_name = save_claude_profile(tmp_path, fake_api)
    origin = create_sample_repo(tmp_path / "repos")
    if set_in == "repository":  # the repository's default budget, on its default branch
        clone = clone_of(origin, tmp_path / "admin")
        config = (clone / ".sdlc" / "config.yaml").read_text() + "budget_usd: 0.0001\n"
        commit_file(clone, ".sdlc/config.yaml", config, "Cap agent spend per work item")
        git(clone, "push", "--quiet", "origin", "HEAD:main")
    request = WorkItemRequest(
        work_item="ET-51", title="Cheap", repo=str(origin), auto_approve=True,
        budget_usd=0.0001 if set_in == "parameter" else None,
        agent=AgentSpec(kind="claude", profile_block=block_name, max_attempts=1),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    assert state.is_failed()
    ledger = Ledger.from_settings()
    row = ledger.get_work_item("ET-51")
    runs = ledger.agent_runs("ET-51")
    assert row.state == "blocked" and "spend budget reached: spent $" in row.reason and "of $0.0001" in row.reason
    assert row.budget_usd == 0.0001  # `sdlc status` shows spent / budget
    assert "analysis $" in row.reason
    assert [r.role for r in runs] == ["analyst"] and runs[0].cost_usd > 0.0001
    # No model call after the run that spent the budget; that run had the budget as its own cap.
    assert all(req["at"] <= runs[0].ended_at.timestamp() for req in fake_api.requests)
    first_call = [r for r in fake_api.message_requests()]
    assert first_call, "the analyst reached the model"
    argv_line = Path(runs[0].log_path).read_text().splitlines()[0]
    assert "--max-budget-usd 0.0001" in argv_line


@pytest.mark.usefixtures("prefect_api")
def test_a_usage_limit_waits_for_its_reset_without_holding_the_run(
    tmp_path: Path, data_dir: Path, fake_api: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B31: the real CLI prints the API's usage-limit message; the run is rescheduled for the reset."""
    import threading
    import time
    from datetime import datetime, timezone

    import httpx

    from entrypoints import runner
    from entrypoints.cli import status_report
    from tasks.ledger import Ledger

    monkeypatch.setenv("SDLC_USAGE_LIMIT_MARGIN_SECONDS", "1")
    block_name = save_claude_profile(tmp_path, fake_api)
    reset = int(time.time()) + 5
    fake_api.script(Reply.error(429, "rate_limit_error", f"Claude AI usage limit reached|{reset}"))
    origin = create_sample_repo(tmp_path / "repos")
    request = WorkItemRequest(
        work_item="ET-53", title="Wait for the reset", repo=str(origin), auto_approve=True,
        # No transient retries at all: the run only goes on if the usage limit spends none.
        agent=AgentSpec(kind="claude", profile_block=block_name, transient_retries=0, max_attempts=1),
    )

    seen: list[tuple[str, str | None]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.3):
            for item in status_report("ET-53"):
                if (item["state"], item["reason"]) not in seen:
                    seen.append((item["state"], item["reason"]))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_id = runner.start_run(request)
    try:
        final = runner.drive(run_id, "ET-53")
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert final.state is not None and final.state.is_completed(), final.state

    runs = Ledger.from_settings().agent_runs("ET-53")
    assert [(r.role, r.failure_kind) for r in runs][:2] == [("analyst", "usage_limit"), ("analyst", None)]
    second_start = runs[1].started_at
    assert second_start >= datetime.fromtimestamp(reset, timezone.utc), (second_start, reset)
    # While it waited, the work item said so, and the flow run was scheduled, not running in a process.
    assert any(state == "waiting_usage_limit" and reason and reason.startswith("waiting for usage-limit reset until ")
               for state, reason in seen), seen
    api = os.environ["PREFECT_API_URL"]
    history = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": str(run_id)}).json()
    assert "AwaitingUsageReset" in [state["name"] for state in history]
