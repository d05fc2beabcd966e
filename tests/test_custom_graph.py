"""A team changes its process as data: a stage added through SDLC_GRAPH_FILE runs for real.

The graph is dumped, a security stage is put between architecture and development
(its prompt in the repository's `.sdlc/agents/`), the file is checked with
`sdlc graph check`, and the real pipeline runs on a real Prefect server and real git.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.sample import create_sample_repo
from sdlc.models import AgentSpec, WorkItemRequest
from test_cli import SDLC

pytestmark = pytest.mark.usefixtures("prefect_api")

FINDING = "SQL is built by string concatenation in src/db.py: use parameters"
SECURITY_PROMPT = "You are the security reviewer. Read the architecture and say what is unsafe.\n"


def graph_with_security_stage(tmp_path: Path) -> Path:
    """`sdlc graph dump`, edited: architecture -> security -> development; a failing verdict goes back to the architect."""
    dumped = subprocess.run([*SDLC, "graph", "dump"], check=True, capture_output=True, text=True).stdout
    graph = yaml.safe_load(dumped)
    architecture = next(s for s in graph["stages"] if s["name"] == "architecture")
    architecture["routes"]["pass"]["to"] = "security"
    graph["stages"].insert(2, {
        "name": "security",
        "role": "security",
        "gate": "verdict",
        "artifacts": ["11b-security.md"],
        "verdicts": {"pass": r"(?mi)^verdict: pass\b", "fail": r"(?mi)^verdict: fail\b"},
        "max_visits": 3,
        "routes": {
            "pass": {"to": "development", "feedback": "none"},
            "fail": {"to": "architecture"},
            "missing": {"to": "blocked"},
        },
    })
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(graph, sort_keys=False))
    return path


def security_agent(tmp_path: Path) -> tuple[Path, Path]:
    """Security fails its first review with a finding and passes the second; every role records its run."""
    record = tmp_path / "runs.jsonl"
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import json, os, pathlib, runpy, sys\n"
        "role = os.environ['SDLC_ROLE']\n"
        "prompt = pathlib.Path(os.environ['SDLC_SYSTEM_PROMPT_FILE']).read_text()\n"
        "task = pathlib.Path(os.environ['SDLC_TASK_FILE']).read_text()\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'role': role, 'prompt': prompt, 'task': task}) + '\\n')\n"
        "if role != 'security':\n"
        "    sys.argv = ['scripted']\n"
        "    runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
        "    sys.exit(0)\n"
        "out = pathlib.Path(os.environ['SDLC_ARTIFACTS_DIR'])\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "first = not any((out / 'history').glob('11b-security.*.md'))\n"
        f"verdict = 'Verdict: FAIL\\n\\n' + {FINDING!r} if first else 'Verdict: PASS\\n'\n"
        "(out / '11b-security.md').write_text('# Security review\\n\\n' + verdict + '\\n')\n"
    )
    return agent, record


def add_security_prompt(origin: Path, tmp_path: Path) -> None:
    person = tmp_path / "person"
    subprocess.run(["git", "clone", "-q", str(origin), str(person)], check=True)
    (person / ".sdlc" / "agents").mkdir(parents=True)
    (person / ".sdlc" / "agents" / "security.md").write_text(SECURITY_PROMPT)
    identity = ["-c", "user.name=Person", "-c", "user.email=person@example.com"]
    subprocess.run(["git", "-C", str(person), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(person), *identity, "commit", "-q", "-m", "security prompt"], check=True)
    subprocess.run(["git", "-C", str(person), "push", "-q", "origin", "HEAD"], check=True)


def test_a_stage_added_to_the_graph_runs_in_order_and_its_findings_reach_the_next_agent(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import sdlc_pipeline
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    graph_file = graph_with_security_stage(tmp_path)

    # Without its prompt the graph cannot run, and the check says so before anything runs.
    check = subprocess.run([*SDLC, "graph", "check", str(graph_file), "--repo", str(origin)], capture_output=True, text=True)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "role 'security' has no prompt: add .sdlc/agents/security.md" in check.stderr
    add_security_prompt(origin, tmp_path)
    check = subprocess.run([*SDLC, "graph", "check", str(graph_file), "--repo", str(origin)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "7 stages" in check.stdout

    monkeypatch.setenv("SDLC_GRAPH_FILE", str(graph_file))
    agent, record = security_agent(tmp_path)
    request = WorkItemRequest(
        work_item="SEC-1", title="Store orders", description="Keep orders in the database.", repo=str(origin),
        auto_approve=True, agent=AgentSpec(kind="custom", command=[sys.executable, str(agent)]),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    assert state.is_completed(), state.message

    runs: list[dict[str, Any]] = [json.loads(line) for line in record.read_text().splitlines()]
    assert [run["role"] for run in runs] == [
        "analyst", "architect", "security", "architect", "security", "developer", "reviewer", "tester", "deployer",
    ]
    assert [run.role for run in Ledger.from_settings().agent_runs("SEC-1")] == [run["role"] for run in runs]
    # The security agent got the repository's prompt; the architect's second task carries the finding's text.
    assert runs[2]["prompt"] == SECURITY_PROMPT
    assert FINDING in runs[3]["task"] and FINDING not in runs[1]["task"]
    transitions = [(t.from_stage, t.to_stage) for t in Ledger.from_settings().transitions("SEC-1")]
    assert ("architecture", "security") in transitions and ("security", "architecture") in transitions
    assert ("security", "development") in transitions


def test_a_graph_whose_role_has_no_prompt_fails_before_any_agent_runs(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import sdlc_pipeline
    from tasks.ledger import Ledger

    origin = create_sample_repo(tmp_path / "repos")
    monkeypatch.setenv("SDLC_GRAPH_FILE", str(graph_with_security_stage(tmp_path)))
    agent, record = security_agent(tmp_path)
    request = WorkItemRequest(
        work_item="SEC-2", title="Store orders", repo=str(origin), auto_approve=True,
        agent=AgentSpec(kind="custom", command=[sys.executable, str(agent)]),
    )
    state = sdlc_pipeline(request=request, return_state=True)
    assert state.is_failed()
    assert not record.exists()  # no agent ran
    row = Ledger.from_settings().get_work_item("SEC-2")
    assert row is not None and row.state == "failed"
    assert "role 'security' has no prompt" in (row.reason or "")


def test_a_graph_file_with_problems_is_refused_naming_each_and_nothing_is_created(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"start": "analysis", "stages": [
        {"name": "analysis", "role": "analyst", "gate": "artifacts", "artifacts": ["a.md"],
         "routes": {"pass": {"to": "review"}, "missing": {"to": "blocked"}}},
        {"name": "review", "role": "reviewer", "gate": "verdicts", "routes": {"pass": {"to": "nowhere"}}},
        {"name": "orphan", "role": "tester", "gate": "exit_code", "routes": {"pass": {"to": "done"}}},
    ]}))
    check = subprocess.run([*SDLC, "graph", "check", str(bad)], capture_output=True, text=True)
    assert check.returncode == 2
    assert check.stderr.splitlines() == [
        f"sdlc: error: {bad} has 4 problem(s):",
        "  - stage 'review' routes 'pass' to unknown 'nowhere'",
        "  - stage 'review' names gate kind 'verdicts', which does not exist (kinds: artifacts, ci, exit_code, tests, verdict)",
        "  - stage 'orphan': its exit_code gate can name 'fail', which has no route",
        "  - stage 'orphan' is never reached from 'analysis'",
    ]
    origin = create_sample_repo(tmp_path / "repos")
    data = tmp_path / "data"
    run = subprocess.run(
        [*SDLC, "--data-dir", str(data), "run", "--repo", str(origin), "--work-item", "SEC-3", "--title", "t"],
        capture_output=True, text=True, env={**os.environ, "SDLC_GRAPH_FILE": str(bad)},
    )
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
    assert "unknown 'nowhere'" in run.stderr
    assert not data.exists()
