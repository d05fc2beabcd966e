"""The agent runner on real processes: B5 environment, log file, exit codes, timeout (B7)."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from processes import processes_with
from tasks.agent import AgentInvocation, agent_environment, execute_agent
from tasks.sandbox import SandboxSpec


def invocation(worktree: Path, argv: list[str], timeout: float = 30, sandbox: str = "auto") -> AgentInvocation:
    return AgentInvocation(
        sandbox=SandboxSpec(mode=sandbox),
        work_item="ET-12",
        stage="development",
        role="developer",
        worktree=str(worktree),
        argv=argv,
        timeout_seconds=timeout,
        protocol_env={"SDLC_ROLE": "developer", "SDLC_WORK_ITEM": "ET-12", "SDLC_TASK_FILE": ".task-developer.md"},
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_agent_sees_protocol_env_and_not_the_workers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITEA_TOKEN", "secret-gitea-token")
    monkeypatch.setenv("PREFECT_API_KEY", "secret-prefect-key")
    code = "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"
    result = execute_agent(invocation(tmp_path, python(code)), attempt=2, log_path=tmp_path / "logs" / "a.log")
    assert result.succeeded
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["SDLC_ROLE"] == "developer" and env["SDLC_ATTEMPT"] == "2"
    assert "GITEA_TOKEN" not in env and "PREFECT_API_KEY" not in env
    assert "secret" not in json.dumps(env)


def test_output_and_stderr_go_to_the_log_and_exit_code_is_kept(tmp_path: Path) -> None:
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    log = tmp_path / "run.log"
    result = execute_agent(invocation(tmp_path, python(code)), attempt=1, log_path=log)
    assert result.exit_code == 3 and not result.succeeded and not result.timed_out
    text = log.read_text()
    assert "to stdout" in text and "to stderr" in text
    assert "to stderr" in result.output_tail


def test_arguments_are_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    hostile = f"$(touch {canary}); `touch {canary}` && touch {canary}"
    code = "import sys; open('argv.txt', 'w').write(sys.argv[1])"
    result = execute_agent(invocation(tmp_path, [*python(code), hostile]), attempt=1, log_path=tmp_path / "a.log")
    assert result.succeeded
    assert (tmp_path / "argv.txt").read_text() == hostile
    assert not canary.exists()


def test_missing_binary_is_a_clear_failure(tmp_path: Path) -> None:
    result = execute_agent(invocation(tmp_path, ["no-such-agent-binary"]), attempt=1, log_path=tmp_path / "a.log")
    assert result.exit_code == 127
    assert result.error == "agent command not found: no-such-agent-binary"


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
def test_timeout_ends_the_agent_and_its_background_children(tmp_path: Path, sandbox: str) -> None:
    marker = f"sdlc-timeout-child-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys, time\n"
        f"children = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}]) for _ in range(2)]\n"
        "open('started', 'w').write('yes')\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    try:
        result = execute_agent(
            invocation(tmp_path, python(code), timeout=2, sandbox=sandbox), attempt=1, log_path=tmp_path / "a.log"
        )
        elapsed = time.monotonic() - started
        assert result.timed_out and not result.succeeded
        assert result.error == "timeout after 2 s"
        assert elapsed < 15
        assert (tmp_path / "started").exists()
        deadline = time.monotonic() + 5
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_with(marker)
        assert (tmp_path / "a.log").exists()
    finally:
        for pid in processes_with(marker):
            os.kill(pid, 9)


def test_environment_allowlist() -> None:
    env = agent_environment(
        {"PATH": "/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1"},
        {"SDLC_ROLE": "tester"},
        {"EXTRA": "1"},
    )
    assert env == {
        "PATH": "/bin", "HOME": "/root", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "SDLC_ROLE": "tester", "EXTRA": "1",
        "GOOGLE_GEMINI_BASE_URL": "",  # set, so a repository's .gemini/.env cannot send the key elsewhere
    }
    worker = {"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:2"}
    assert agent_environment(worker, {}, {})["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:2"


def test_a_json_result_with_is_error_fails_the_run_even_with_exit_0(tmp_path: Path) -> None:
    """B31: a CLI's JSON result decides, not its exit code alone (Claude Code 2.1.330 exits 1 with
    is_error itself, so a process that prints its result and exits 0 stands in for one that does not)."""
    from tasks.agent import assess_run

    result_line = json.dumps({
        "type": "result", "subtype": "error_max_budget_usd", "is_error": True, "num_turns": 1,
        "total_cost_usd": 0.02, "errors": ["Reached maximum budget ($0.01)"], "session_id": "s-9",
    })
    code = f"print({result_line!r})"
    run = invocation(tmp_path, python(code))
    executed = execute_agent(run, attempt=1, log_path=tmp_path / "run.log")
    assert executed.exit_code == 0
    assessed, decision = assess_run(executed, run, earlier=[])
    assert decision is not None, "exit 0 with is_error must be a failure"
    assert assessed.failure_kind == "permanent" and assessed.cost_usd == 0.02 and assessed.session_id == "s-9"


@pytest.mark.parametrize("network", [True, False])
def test_a_confined_agent_reaches_only_its_model_api_port_of_the_loopback(tmp_path: Path, network: bool) -> None:
    """Issue 13: the base-URL variable's loopback port is forwarded into the sandbox; no other worker
    service on 127.0.0.1 answers there, and with `network: false` nothing does."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    model, other = (server.server_address[1] for server in servers)
    code = (
        "import json, urllib.request\n"
        "def reach(port):\n"
        "    try:\n"
        "        return urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5).status\n"
        "    except Exception as exc:\n"
        "        return type(exc).__name__\n"
        f"json.dump({{'model': reach({model}), 'other': reach({other})}}, open('reach.json', 'w'))\n"
    )
    run = invocation(tmp_path, python(code), sandbox="bwrap").model_copy(
        update={
            "profile_env": {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model}"},
            "sandbox": SandboxSpec(mode="bwrap", network=network),
        }
    )
    try:
        result = execute_agent(run, attempt=1, log_path=tmp_path / "a.log")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert result.succeeded, (tmp_path / "a.log").read_text()
    reach = json.loads((tmp_path / "reach.json").read_text())
    assert reach["other"] != 200
    assert (reach["model"] == 200) is network
    assert result.sandbox == ("bwrap (network: outbound, host ports [%d])" % model if network else "bwrap (network: none)")


def test_grants_never_uncover_the_data_dir_or_home_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grant of the folder that holds the data dir, or of HOME, and an argument "/" leave the data
    dir, the HOME secrets and the rest of the machine invisible; the granted files themselves show."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret key\n")
    (home / "notes.txt").write_text("granted\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "ledger.db").write_text("ledger\n")
    (tmp_path / "shared.txt").write_text("shared\n")
    worktree = tmp_path / "work"
    worktree.mkdir()
    monkeypatch.setenv("SDLC_DATA_DIR", str(data))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SDLC_SANDBOX_READ_PATHS", f"{tmp_path}:{home}")
    targets = {
        "key": str(home / ".ssh" / "id_ed25519"), "ledger": str(data / "ledger.db"), "notes": str(home / "notes.txt"),
        "shared": str(tmp_path / "shared.txt"), "etc_shadow": "/etc/shadow", "work_repo": str(Path(__file__).parent),
    }
    code = (
        "import json, os, sys\n"
        f"targets = {targets!r}\n"
        "json.dump({name: os.path.exists(path) for name, path in targets.items()}, open('seen.json', 'w'))\n"
    )
    from tasks.sandbox import sandbox_spec_for

    spec = sandbox_spec_for(
        mode="bwrap", kind="custom", work_item="ET-12", read_paths=[], write_paths=[], network=False, repo="x"
    )
    run = invocation(worktree, [*python(code), "/"]).model_copy(update={"sandbox": spec})
    result = execute_agent(run, attempt=1, log_path=tmp_path / "a.log")
    assert result.succeeded, (tmp_path / "a.log").read_text()
    seen = json.loads((worktree / "seen.json").read_text())
    assert seen == {"key": False, "ledger": False, "notes": True, "shared": True, "etc_shadow": False, "work_repo": False}


def test_the_private_git_copy_skips_refs_other_work_items_are_writing(tmp_path: Path) -> None:
    """Another work item's git may hold `<ref>.lock` in the shared clone while a sandbox is made."""
    import subprocess

    from tasks.sandbox import private_git_dir

    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    clone = tmp_path / "clone"
    clone.mkdir()
    git(clone, "init", "-q", "-b", "main")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "--allow-empty", "-m", "one")
    git(clone, "worktree", "add", "-q", "-b", "feature/A-1", str(tmp_path / "work"))
    (clone / ".git" / "refs" / "heads" / "feature" / "B-2.lock").write_text("in flight\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    made = private_git_dir(tmp_path / "work", scratch)
    assert made is not None
    _, private, _ = made
    assert not (private / "refs" / "heads" / "feature" / "B-2.lock").exists()
    assert git(tmp_path, "--git-dir", str(private), "rev-parse", "refs/heads/feature/A-1") == git(clone, "rev-parse", "main")
