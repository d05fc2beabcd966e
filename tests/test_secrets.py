"""B52: credentials live in Prefect blocks and appear nowhere else.

Every secret (forge token, tracker key, notifier token, webhook secrets) gets a
unique value; a whole pipeline runs with every integration on (Gitea forge, Plane
tracker, Telegram notifier, a signed Plane /approve delivery); then every place a
value could leak to is read back and searched.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx

from blocks.forge import GiteaCredentials
from blocks.notifications import TelegramNotification
from blocks.plane import PlaneCredentials
from blocks.webhooks import WebhookSettings
from forge_servers.gitea import GiteaTestServer
from forge_servers.plane import PlaneServer
from forge_servers.telegram import TelegramTestServer
from processes import end
from test_cli import finish, wait_for_state
from test_plane_pipeline import APPROVER, comment_delivery
from test_webhooks import Receiver

CHAT = "-1001234567890"


def paged(api: str, path: str, key: str | None = None) -> Iterator[Any]:
    """Every object a Prefect filter endpoint holds."""
    offset = 0
    while True:
        answer = httpx.post(f"{api}{path}", json={"limit": 200, "offset": offset}, timeout=30)
        answer.raise_for_status()
        page = answer.json()[key] if key else answer.json()
        yield from page
        if len(page) < 200:
            return
        offset += 200


def prefect_records(api: str) -> dict[str, str]:
    """What the Prefect server keeps about runs: logs, artifacts, flow and task runs, variables, events."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.instance().drain()
    EventsWorker.drain_all()
    events = httpx.post(f"{api}/events/filter", json={"limit": 50}, timeout=30).json()
    return {
        "logs": json.dumps(list(paged(api, "/logs/filter"))),
        "artifacts": json.dumps(list(paged(api, "/artifacts/filter"))),
        "flow runs (parameters)": json.dumps(list(paged(api, "/flow_runs/filter"))),
        "task runs": json.dumps(list(paged(api, "/task_runs/filter"))),
        "variables": json.dumps(list(paged(api, "/variables/filter"))),
        "events": json.dumps(events),
    }


def ledger_rows(path: Path) -> str:
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type='table'")]
        return json.dumps({table: db.execute(f'select * from "{table}"').fetchall() for table in tables}, default=str)


def files_under(root: Path) -> dict[str, str]:
    """Every file's bytes as text (git objects are compressed: their content is read through git below)."""
    return {
        str(path): path.read_bytes().decode("utf-8", "replace")
        for path in root.rglob("*")
        if path.is_file() and "/.git/objects/" not in str(path) and "/objects/" not in str(path)
    }


def test_no_secret_appears_in_logs_artifacts_parameters_ledger_or_agent_environment(
    prefect_api: str, cli_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    secrets = {
        "gitea token": f"gitea-tok-{tag}",
        "plane key": f"plane_api_{tag}",
        "telegram token": f"123456789:AAH{tag}",
        "gitea webhook secret": f"whsec-gitea-{tag}",
        "plane webhook secret": f"whsec-plane-{tag}",
    }
    assert len({value for value in secrets.values()}) == len(secrets)
    names = {kind: f"{kind.split()[0]}-{tag[:8]}" for kind in ("gitea", "plane", "telegram")}
    agent = tmp_path / "agent.py"
    seen_env = tmp_path / "agent-env.jsonl"
    agent.write_text(
        "import json, os, runpy, sys\n"
        f"with open({str(seen_env)!r}, 'a') as f:\n"
        "    f.write(json.dumps(dict(os.environ)) + '\\n')\n"
        "sys.argv = ['scripted']\n"
        "runpy.run_module('demo.scripted_agent', run_name='__main__')\n"
    )

    with (
        GiteaTestServer(tmp_path / "gitea", token=secrets["gitea token"]) as gitea,
        PlaneServer(tmp_path / "plane", api_key=secrets["plane key"]) as plane,
        TelegramTestServer(secrets["telegram token"], chats=(CHAT,)) as telegram,
    ):
        origin = gitea.create_repo("team", "app")
        project = plane.add_project("APP")
        for state in ("In Review", "Needs Input", "Blocked"):
            plane.add_state(project, state)
        item = plane.add_work_item(project, "Export to CSV", state="Todo")
        GiteaCredentials(api_url=gitea.api_url, token=secrets["gitea token"], timeout_seconds=10).save(
            names["gitea"], overwrite=True
        )
        PlaneCredentials(
            api_url=plane.api_url, api_key=secrets["plane key"], workspace_slug=plane.workspace,
            project_id=project, approvers=[APPROVER], timeout_seconds=5,
        ).save(names["plane"], overwrite=True)
        TelegramNotification(bot_token=secrets["telegram token"], chat_id=CHAT, api_url=telegram.web_url).save(
            names["telegram"], overwrite=True
        )
        env = {**cli_env, "SDLC_NOTIFY_BLOCKS": f"sdlc-telegram/{names['telegram']}",
               "PREFECT_UI_URL": prefect_api.removesuffix("/api")}
        work_item = f"APP-{item['sequence_id']}"
        run = subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", "run", "--repo", str(origin), "--work-item", work_item,
             "--title", "Export to CSV", "--agent-command", f"{sys.executable} {agent}",
             "--forge", "gitea", "--forge-block", names["gitea"], "--forge-repo", "team/app",
             "--plane-block", names["plane"], "--verbose"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            settings = WebhookSettings(gitea_secret=secrets["gitea webhook secret"], plane_secret=secrets["plane webhook secret"])
            with Receiver(settings) as receiver:
                wait_for_state(data_dir, work_item, "waiting_approval", run)
                approval = comment_delivery(plane, item["id"], APPROVER, "/approve")
                answer = receiver.send("plane", "issue_comment", approval, secret=secrets["plane webhook secret"])
                assert answer.status_code == 202, answer.text
                code, out, err = finish(run, timeout=240)
        finally:
            end(run)
        assert code == 0, out + err

        # Every integration was really on.
        assert [pr.get("merged") for pr in gitea.pull_requests("team", "app")] == [True]
        assert any("done" in message.text for message in telegram.delivered)
        assert any("/runs/flow-run/" in message.text for message in telegram.delivered)
        assert len(plane.comments(item["id"])) > 5

    places: dict[str, str] = {
        "sdlc run output": out + err,
        "ledger": ledger_rows(data_dir / "ledger.db"),
        "agent environment": seen_env.read_text(),
        "git history": subprocess.run(["git", "-C", str(origin), "log", "--all", "-p"], capture_output=True,
                                      text=True, check=True).stdout,
        **prefect_records(prefect_api),
        **files_under(data_dir),
    }
    assert len(places["agent environment"].splitlines()) == 6  # one line per role
    # The places searched hold this run's story (a search of empty places would prove nothing).
    for place in ("logs", "artifacts", "flow runs (parameters)", "ledger", "events"):
        assert work_item in places[place], place
    leaks = [(kind, place) for kind, value in secrets.items() for place, text in places.items() if value in text]
    assert leaks == []
