"""Hostile input (B62, B61): each value is refused before anything exists, or it is plain data.

One table holds hostile values for everything a person or a delivery controls: the
work item ID, title, description, branch, repository, agent command, approval
comment and approver, and issue titles and comments that arrive by webhook. Each
row either is refused (exit 2, one line ``sdlc: error: ...`` on stderr, no data
dir, no new ref in the origin; a webhook answers 422 and records nothing) or is
plain data: it goes through a real pipeline run and reaches the ledger, the pull
request, the commits and the agent's task file and argv exactly as given.

Canaries: every payload that would run something if a shell ever saw it touches
``<arena>/c-<tag>`` (or a relative ``c-rel-<tag>``); no canary may exist after
any test, and no file may change under the arena outside the paths a test expects
(its data dir, its origin, the agent's record). Refusals run in-process through
``entrypoints.cli.main`` (NUL can only be given that way) and a few as real processes;
the plain-data values share two pipeline runs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from entrypoints.cli import main
from sdlc.models import default_branch_name, validate_branch
from sdlc.pr_body import CUT_NOTE, MARKER, neutralise
from demo.sample import create_sample_repo
from test_cli import SDLC, wait_for_runs, wait_for_state
from test_webhooks import events_for

LONG = 100_000
GITEA_SECRET = "hostile-gitea-secret"
PYTHON = sys.executable


# --- the arena: a short temporary root that owns every path a payload aims at -------------------


@dataclass
class Arena:
    root: Path
    origin: Path
    allowed: list[Path] = field(default_factory=list)  # where the current test may write

    def canary(self, tag: str) -> str:
        return str(self.root / f"c-{tag}")

    def fill(self, value: str, tag: str) -> str:
        return value.replace("{C}", self.canary(tag)).replace("{origin}", str(self.origin)).replace("{root}", str(self.root))

    def canaries(self) -> list[Path]:
        found = [*self.root.rglob("c-*"), *Path.cwd().glob("c-*")]
        return [path for path in found if path.name.startswith("c-")]

    def snapshot(self) -> dict[Path, tuple[int, int]]:
        files = {}
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                files[path] = (stat.st_size, stat.st_mtime_ns)
        return files

    def changed_since(self, before: dict[Path, tuple[int, int]]) -> list[Path]:
        after = self.snapshot()
        return sorted({p for p in after if before.get(p) != after[p]} | {p for p in before if p not in after})


@pytest.fixture(scope="module")
def arena() -> Iterator[Arena]:
    # Short, so that several payloads with an absolute canary path fit in one 200-character title.
    root = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp")).resolve()
    try:
        yield Arena(root=root, origin=create_sample_repo(root / "repos"))
        assert Arena(root, root).canaries() == [], "a payload ran"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def watched(arena: Arena) -> Iterator[Arena]:
    """The arena, checked after the test: no canary, and nothing changed outside what the test allows."""
    arena.allowed = []
    before = arena.snapshot()
    yield arena
    assert arena.canaries() == [], "a payload ran"
    stray = [p for p in arena.changed_since(before) if not any(p.is_relative_to(a) for a in arena.allowed)]
    assert stray == [], f"files written outside the expected places: {stray[:10]}"


def refs(origin: Path) -> str:
    return subprocess.run(["git", "-C", str(origin), "for-each-ref"], capture_output=True, text=True, check=True).stdout


# --- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    field: str  # work_item, title, description, branch, repo, agent_command, comment, by, approve_id
    value: str  # {C}: this row's canary path; {origin}: the arena's origin; {root}: the arena
    refused: str  # a fragment of the one-line message

    def argv(self, arena: Arena, tag: str) -> list[str]:
        value = arena.fill(self.value, tag)
        if self.field in ("comment", "by", "approve_id"):
            command = ["reject", "--by=tester", "--comment=why"]
            if self.field == "comment":
                command[2] = f"--comment={value}"
            if self.field == "by":
                command[1] = f"--by={value}"
            return [*command, "--", value if self.field == "approve_id" else "HX-1"]
        options = {"repo": str(arena.origin), "work-item": "HX-1", "title": "A fine title"}
        options[self.field.replace("_", "-")] = value
        return ["run", *(f"--{name}={text}" for name, text in options.items())]


def _rows(field: str, message: str, *values: str) -> list[Hostile]:
    return [Hostile(field, value, message) for value in values]


ID = "PROJECT-NUMBER"
BRANCH = "is not allowed"
CONTROL = "control characters"
REFUSED: list[Hostile] = [
    *_rows(
        "work_item", ID,
        "../../etc", "ET-1\n", "ET-1; touch {C}", "$(touch {C})", "`touch {C}`", "ET-1|touch {C}", "ET-1&&touch {C}",
        "--upload-pack=touch {C}", "-oProxyCommand=touch {C}", "ET-1\x00", "ET-1%00", "ET-1\r", "ET\u202e-1", "ET-\uff11",
        "E" * LONG + "-1", " ET-1", "ET-1 ", "ET-1/../../x", "ET-1.lock", "ET-1\u0301", "ET-1\U0001f389", "",
    ),
    *_rows(
        "branch", BRANCH,
        "../x", "feature/../../x", "--upload-pack=touch {C}", "-oProxyCommand=touch {C}", "refs/heads/..", "feature/x@{1}",
        "@{-1}", "@", "feature/x.lock", "feature/x.lock/y", "feature/x\n", "HEAD", "feature/x y", "feature/$(touch {C})",
        "feature/`touch {C}`", "feature/x;touch {C}", "feature/x|touch", "feature/x&&touch", "b" * LONG,
        "feature/\u202ex", "feature/x\x00", "feature/x\r", "feature//x", "/feature/x", "feature/.hidden", "feature/x.",
        "feature/x~1", "feature/x^{}", "feature/x:y", "feature/x?*[", "feature\\x", "feature/\U0001f389", "feature/e\u0301",
    ),
    *_rows("repo", "not a path or a git URL", "--upload-pack=touch {C}", "-oProxyCommand=touch {C}", ""),
    *_rows("repo", "option-like host", "ssh://-oProxyCommand=touch$IFS{C}/x", "git@-oProxyCommand:x", "ssh://u@-oProxy/x"),
    *_rows(
        "repo", "does not exist",
        "../../x", "ext::sh -c touch% {C}", "$(touch {C})", "`touch {C}`", "{origin}; touch {C}", "{origin} && touch {C}",
        "{origin}|touch {C}", "https://example.invalid/x y", "{origin}%00",
    ),
    *_rows("repo", CONTROL, "{origin}\n", "{origin}\x00", "{origin}\r", "{origin}\u0085"),
    *_rows("repo", "not a usable path", "x" * LONG, "x" * 300),
    *_rows("repo", "is not a git repository", "{root}"),
    *_rows("agent_command", "--agent-command", "'unterminated $(touch {C})", "python3 \"x"),
    *_rows("agent_command", "needs a command", "", "   "),
    *_rows("agent_command", "not the option", "--upload-pack=touch {C}", "-oProxyCommand=touch {C}"),
    *_rows("agent_command", CONTROL, "python3 x\x00", "python3 'a\nb'", "python3 \x1b[2J"),
    *_rows("title", CONTROL, "two\nlines $(touch {C})", "x\ry", "x\x00y", "\x1b[31mred", "x\u0085y"),
    *_rows("title", "at most 200", "T" * LONG, "$(touch {C})" + "T" * 200),
    *_rows("title", "must not be blank", "   ", "\t"),
    *_rows("title", "at least 1", ""),
    *_rows("description", "at most 65536", "D" * LONG),
    *_rows("description", CONTROL, "x\x00y", "\x1b]0;pwned\x07", "ok\n\x1b[2J"),
    *_rows("comment", CONTROL, "x\x00y", "\x1b[2J", "$(touch {C})\x00"),
    *_rows("comment", "at most 20000", "C" * LONG),
    *_rows("by", CONTROL, "alice\nbob", "alice\x00", "\x1b[31malice"),
    *_rows("by", "1 to 200", "B" * 1000, "", "  "),
    *_rows("approve_id", ID, "../../etc", "HX-1\n", "$(touch {C})", "--upload-pack=touch {C}", "HX-1\x00"),
]


def _tag(index: int) -> str:
    return f"r{index}"


def _id(row: Hostile) -> str:
    shown = row.value if len(row.value) < 40 else f"{row.value[:12]}...({len(row.value)})"
    return f"{row.field}={shown!r}"


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return int(exc.code or 0)


@pytest.mark.parametrize("index", range(len(REFUSED)), ids=[_id(row) for row in REFUSED])
def test_refused_with_exit_2_one_line_and_nothing_created(
    index: int, watched: Arena, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = REFUSED[index]
    before = refs(watched.origin)
    code = run_cli(row.argv(watched, _tag(index)))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlc: error: "), err
    assert row.refused in lines[0], lines[0]
    assert len(lines[0]) < 600, "the message quotes the value, not all of it"
    assert out == ""
    assert not data_dir.exists()
    assert refs(watched.origin) == before


def test_the_table_is_large_and_covers_every_field() -> None:
    assert len(REFUSED) >= 30
    assert {row.field for row in REFUSED} >= {
        "work_item", "title", "description", "branch", "repo", "agent_command", "comment", "by", "approve_id"
    }


IN_A_PROCESS = [
    ("--work-item", "ET-1\n", ID),
    ("--branch", "--upload-pack=touch {C}", BRANCH),
    ("--repo", "ssh://-oProxyCommand=touch$IFS{C}/x", "option-like host"),
    ("--title", "T" * LONG, "at most 200"),
    ("--repo", "x" * 300, "not a usable path"),
]


@pytest.mark.parametrize("index", range(len(IN_A_PROCESS)), ids=[f"{f}={v[:20]!r}" for f, v, _ in IN_A_PROCESS])
def test_refused_the_same_way_by_a_real_process(index: int, watched: Arena, data_dir: Path, tmp_path: Path) -> None:
    flag, value, message = IN_A_PROCESS[index]
    value = watched.fill(value, f"p{index}")
    options = {"--repo": str(watched.origin), "--work-item": "HX-2", "--title": "Fine", flag: value}
    env = {**os.environ, "SDLC_DATA_DIR": str(data_dir), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run(
        [*SDLC, "run", *(f"{k}={v}" for k, v in options.items())],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sdlc: error: ") and message in done.stderr
    assert not data_dir.exists()


def test_comment_limits_match_the_approval_form() -> None:
    from flows.inputs import ApprovalDecision
    from sdlc.models import COMMENT_MAX_LENGTH, PERSON_MAX_LENGTH

    def max_length(field: str) -> int:
        return next(m.max_length for m in ApprovalDecision.model_fields[field].metadata if hasattr(m, "max_length"))

    assert max_length("comment") == COMMENT_MAX_LENGTH
    assert max_length("approver") == PERSON_MAX_LENGTH


# --- plain data: values that go through a whole pipeline ------------------------------------------

# Each payload that would run something aims at its own canary; {C} is filled per payload.
TITLE_DATA = ["$(touch {C})", "`touch {C}`", "; touch {C} && echo|cat", "../../etc/passwd %00 %0a"]
TITLE_DATA_2 = ["\u202eevil\u202c \U0001f389 e\u0301 \u0639", "{{ 7*7 }} {% raw %}", "--upload-pack=touch {C}", "@{-1} refs/heads/.. x.lock"]
DESCRIPTION_DATA = [
    *TITLE_DATA, *TITLE_DATA_2,
    "line one\nline two\r\nthree\twith a tab",
    "'; DROP TABLE work_item; --",
    "<script>alert(1)</script> ]]> -->",
    "> {C}\n< /etc/passwd\n2>&1",
    "z" * 60_000,
]
AGENT_ARGS_DATA = [
    "$(touch {C})", "`touch {C}`", "; touch {C}", "&& touch {C}", "| touch {C}", "> {C}", "'$(touch {C})'",
    "\"a b\"", "--upload-pack=touch {C}", "-oProxyCommand=touch {C}", "\U0001f389\u202e", "%00", "~", "*",
]
COMMENT_DATA = (
    "Please redo: $(touch {C})\n`touch {C}`; rm -rf / && echo | cat\n\u202e\U0001f389 e\u0301\n../../etc %00 @{-1}\r\nend"
)
WEBHOOK_COMMENT_DATA = "$(touch {C}) and `touch {C}`;\n|| true & \u202e\U0001f389\n{{ 7*7 }}"
BY_DATA = "$(touch {C}) \U0001f389 Zo\u00eb"

RECORDING_AGENT = """\
import json, os, runpy, sys
with open(os.environ["SDLC_TASK_FILE"], encoding="utf-8", newline="") as handle:
    task = handle.read()
with open({record!r}, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({{"role": os.environ["SDLC_ROLE"], "argv": sys.argv[1:], "task": task}}) + "\\n")
sys.argv = ["scripted"]
runpy.run_module("demo.scripted_agent", run_name="__main__")
"""


def fill_all(arena: Arena, values: list[str], prefix: str) -> list[str]:
    return [arena.fill(value, f"{prefix}{n}") for n, value in enumerate(values)]


def recording_agent(arena: Arena, name: str, env: dict[str, str]) -> tuple[Path, Path]:
    """A B5 agent that records its argv and task file, then does the scripted agent's work.

    Its folder is granted to the sandbox (in ``env``) so that it can write its record there.
    """
    home = arena.root / f"a {name} $(touch c-rel-{name}) ;&|"
    home.mkdir()
    arena.allowed.append(home)
    env["SDLC_SANDBOX_WRITE_PATHS"] = str(home)
    record = home / "seen.jsonl"
    script = home / "agent.py"
    script.write_text(RECORDING_AGENT.format(record=str(record)), encoding="utf-8")
    return script, record


def seen(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def git_out(origin: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(origin), *args], capture_output=True, text=True, check=True).stdout


def test_hostile_text_in_a_whole_pipeline_is_plain_data(
    watched: Arena, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.ledger import Ledger

    root = watched.root
    # Paths with shell metacharacters too: data dir, origin (given relative, through ..) and the agent.
    data = root / "d $(touch c-rel-d) ;&|'\"`touch c-rel-d2`"
    origin = create_sample_repo(root / "o $(touch c-rel-o) ;&|")
    cwd = root / "cwd"
    cwd.mkdir()
    agent, record = recording_agent(watched, "one", cli_env)
    watched.allowed += [data, origin.parent]
    title = " ".join(fill_all(watched, TITLE_DATA, "t"))
    description = "\n".join(fill_all(watched, DESCRIPTION_DATA, "d"))
    agent_args = " ".join(fill_all(watched, AGENT_ARGS_DATA, "a"))
    assert len(title) <= 200
    work_item = "HX-61"

    env = {**cli_env, "SDLC_DATA_DIR": str(data)}
    done = subprocess.run(
        [*SDLC, "run", f"--repo=../{origin.parent.name}/{origin.name}", f"--work-item={work_item}",
         f"--title={title}", f"--description={description}", "--auto-approve",
         f"--agent-command={shlex.quote(PYTHON)} {shlex.quote(str(agent))} {agent_args}"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{work_item} done. PR #1 merged" in done.stdout

    monkeypatch.setenv("SDLC_DATA_DIR", str(data))
    ledger = Ledger.from_settings()
    row = ledger.get_work_item(work_item)
    assert row is not None and row.state == "done"
    assert (row.title, row.description, row.repo) == (title, description, str(origin))
    assert row.branch == default_branch_name(work_item, title) == validate_branch(row.branch)  # a slug, nothing of the payloads
    (pr,) = ledger.pull_requests(work_item)
    assert (pr.title, pr.state) == (f"{work_item}: {title}", "merged")
    # The body tells the story (issue 17): the description under "Work item" as plain data that opens no
    # comment hiding the rest (its 60 000 z's cut to fit GitHub's limit), sdlc's marker once, at its end.
    shown = neutralise(description).strip("\n").split("z" * 100)[0]
    assert f"### Work item\n\n{shown}" in pr.body and CUT_NOTE in pr.body, pr.body
    assert len(pr.body) < 65_536
    assert pr.body.count(MARKER) == 1 and "<!--" not in pr.body.replace(MARKER, ""), pr.body

    runs = seen(record)
    assert [r["role"] for r in runs] == ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
    assert all(r["argv"] == shlex.split(agent_args) for r in runs)
    assert f"- Title: {title}\n" in runs[0]["task"]
    assert description in runs[0]["task"]

    log = git_out(origin, "log", "--format=%B", "main")
    assert f"analyst({work_item}): analysis for {title[:40]}" in log  # the subject holds the title's start
    assert sorted(git_out(origin, "for-each-ref", "--format=%(refname)").split()) == sorted(
        ["refs/heads/main", f"refs/heads/{row.branch}"]
    )


class InProcessReceiver:
    """The receiver app called in-process through httpx's ASGI transport, on one event-loop thread."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> "InProcessReceiver":
        import httpx
        from anyio.from_thread import start_blocking_portal

        self._portal_context = start_blocking_portal()
        self.portal = self._portal_context.__enter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://receiver")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.portal.call(self.client.aclose)
        self._portal_context.__exit__(*exc)

    def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> Any:
        return self.portal.call(functools.partial(self.client.post, path, content=content, headers=headers))


@pytest.fixture
def receiver_app(prefect_api: str, data_dir: Path) -> Iterator[InProcessReceiver]:
    from blocks.webhooks import RunDefaults, WebhookSettings
    from entrypoints.webhooks import create_app

    settings = WebhookSettings(
        gitea_secret=GITEA_SECRET, approvers=["alice"], project_keys={"team/app": "HX"},
        defaults=RunDefaults(agent_profile="scripted-agent"),
    )
    with InProcessReceiver(create_app(settings)) as receiver:
        yield receiver


def deliver(receiver: InProcessReceiver, event: str, payload: dict[str, Any]) -> Any:
    from entrypoints.webhooks import signature_for

    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "x-gitea-event": event, "x-gitea-delivery": str(uuid.uuid4()),
               "x-gitea-signature": signature_for(GITEA_SECRET, body)}
    return receiver.post("/webhooks/gitea", content=body, headers=headers)


def comment(origin: Path, number: int, text: str, by: str = "alice") -> dict[str, Any]:
    return {
        "action": "created", "issue": {"number": number, "title": "t"}, "comment": {"body": text, "user": {"login": by}},
        "repository": {"full_name": "team/app", "name": "app", "clone_url": str(origin)},
    }


def approval_inputs(flow_run_id: str) -> list[dict[str, Any]]:
    """What people answered the run's approval forms, as Prefect stored it."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        inputs = client.filter_flow_run_input(UUID(flow_run_id), key_prefix="", limit=100, exclude_keys=set())
    return [json.loads(item.value) for item in inputs if item.key.endswith("-response")]


def test_hostile_approval_comments_are_plain_data_and_bad_ones_change_nothing(
    watched: Arena, cli_env: dict[str, str], data_dir: Path, receiver_app: InProcessReceiver
) -> None:
    from tasks.ledger import Ledger

    origin = create_sample_repo(watched.root / "o2")
    agent, record = recording_agent(watched, "two", cli_env)
    watched.allowed += [origin.parent]
    title = " ".join(fill_all(watched, TITLE_DATA_2, "u"))
    work_item = "HX-62"
    run = subprocess.Popen(
        [*SDLC, "run", "--repo", str(origin), "--work-item", work_item, f"--title={title}",
         f"--agent-command={shlex.quote(PYTHON)} {shlex.quote(str(agent))}"],
        env=cli_env, cwd=watched.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ledger = Ledger.from_settings
        wait_for_state(data_dir, work_item, "waiting_approval", run)
        transitions = len(ledger().transitions(work_item))

        # Refused while the run really waits: exit 2 or 422, it goes on waiting, nothing is recorded.
        for bad in ("x\x00y", "C" * 20001, "\x1b[2J"):
            with contextlib.redirect_stderr(io.StringIO()) as err:
                assert run_cli(["approve", work_item, f"--comment={bad}"]) == 2
            assert err.getvalue().startswith("sdlc: error: --comment ")
            assert deliver(receiver_app, "issue_comment", comment(origin, 62, f"/approve {bad}")).status_code == 422
        assert ledger().get_work_item(work_item).state == "waiting_approval"
        assert len(ledger().transitions(work_item)) == transitions

        # Hostile but valid: a rejection from the command line, an approval from a webhook comment.
        by, first = watched.fill(BY_DATA, "b"), watched.fill(COMMENT_DATA, "k")
        assert run_cli(["reject", work_item, f"--by={by}", f"--comment={first}"]) == 0
        wait_for_runs(data_dir, work_item, "analyst", 2, run)  # the rejection was taken up
        wait_for_state(data_dir, work_item, "waiting_approval", run)
        second = watched.fill(WEBHOOK_COMMENT_DATA, "w")
        answer = deliver(receiver_app, "issue_comment", comment(origin, 62, f"/approve {second}"))
        assert answer.status_code == 202, answer.text
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, out + err

    row = ledger().get_work_item(work_item)
    reasons = [t.reason for t in ledger().transitions(work_item)]
    assert f"rejected by {by}: {first}" in reasons and "approved by alice" in reasons
    answers = approval_inputs(row.flow_run_id)
    assert {"approve": False, "approver": by, "comment": first} in answers
    assert {"approve": True, "approver": "alice", "comment": second} in answers
    analysts = [r for r in seen(record) if r["role"] == "analyst"]
    assert len(analysts) == 2
    assert f"- Title: {title}\n" in analysts[0]["task"] and first in analysts[1]["task"]
    (pr,) = ledger().pull_requests(work_item)
    assert pr.title == f"{work_item}: {title}" and pr.state == "merged"


# --- webhook-delivered titles -----------------------------------------------------------------------


def labelled(origin: str, number: int, title: str) -> dict[str, Any]:
    return {
        "action": "label_updated",
        "issue": {"number": number, "title": title, "body": "b", "labels": [{"name": "sdlc"}]},
        "repository": {"full_name": "team/app", "name": "app", "clone_url": origin},
    }


WEBHOOK_REFUSED = [
    ("title", "two\nlines $(touch {C})"), ("title", "x\ry"), ("title", "x\x00y"), ("title", "\x1b[2J"),
    ("title", "T" * LONG), ("title", "   "),
    ("repo", "--upload-pack=touch {C}"), ("repo", "-oProxyCommand=touch {C}"), ("repo", "ssh://-oProxyCommand=touch$IFS{C}/x"),
    ("repo", "ext::sh -c touch% {C}"), ("repo", "../../x"), ("repo", "x" * 300), ("repo", "{origin}\n"),
    ("comment", "/approve " + "C" * 20001), ("comment", "/reject x\x00y"),
]


@pytest.mark.parametrize("index", range(len(WEBHOOK_REFUSED)), ids=[f"{f}={v[:20]!r}" for f, v in WEBHOOK_REFUSED])
def test_webhook_refuses_hostile_values_with_422_and_records_nothing(
    index: int, watched: Arena, receiver_app: InProcessReceiver, data_dir: Path, prefect_api: str
) -> None:
    field, value = WEBHOOK_REFUSED[index]
    value = watched.fill(value, f"h{index}")
    if field == "comment":
        answer = deliver(receiver_app, "issue_comment", comment(watched.origin, 70, value))
    else:
        origin = value if field == "repo" else str(watched.origin)
        answer = deliver(receiver_app, "issues", labelled(origin, 70, value if field == "title" else "Fine"))
    assert answer.status_code == 422, answer.text
    assert not data_dir.exists(), "a refused delivery is not even recorded"
    assert events_for(prefect_api, "HX-70", "sdlc.work-item.requested", wait=0) == []


def test_webhook_titles_with_hostile_text_are_plain_data(watched: Arena, receiver_app: InProcessReceiver, prefect_api: str) -> None:
    titles = [
        " ".join(fill_all(watched, TITLE_DATA, "x")),
        " ".join(fill_all(watched, TITLE_DATA_2, "y")),
    ]
    for number, title in enumerate(titles, start=71):
        answer = deliver(receiver_app, "issues", labelled(str(watched.origin), number, title))
        assert answer.status_code == 202, answer.text
        assert answer.json()["work_item"] == f"HX-{number}"
    for number, title in enumerate(titles, start=71):
        (event,) = events_for(prefect_api, f"HX-{number}", "sdlc.work-item.requested")
        assert event["payload"]["title"] == title


@pytest.mark.parametrize("name", ["d?x", "d%41x"])
def test_the_ledger_stays_inside_a_data_dir_whose_name_has_url_characters(name: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from sdlc.settings import SdlcSettings

    settings = SdlcSettings(data_dir=tmp_path / name)
    assert make_url(settings.resolved_ledger_url).database == str(settings.root / "ledger.db")
