"""A fleet of work items on two repositories at once (issue 16): twenty pipelines, a few at a time.

Each repository (a sample origin on the local forge) gets ten work items; every work item's
developer also appends its line to one of two shared files of its repository, five work
items a file, so branches conflict with main over and over as the others merge. Whatever
the order the machine picks, every work item ends done, or blocked only because conflicts
used up its development budget; main then holds exactly the done items' changes (their
modules and their lines in the shared files), no conflict marker, and sdlc's merge commits.

The pipelines run in threads of this process against the session's Prefect server, at most
``CONCURRENCY`` at once so the test stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from demo.sample import create_sample_repo
from demo.scripted_agent import module_slug
from sdlc.models import AgentSpec, WorkItemRequest

pytestmark = [pytest.mark.usefixtures("prefect_api", "data_dir"), pytest.mark.timeout(900)]

REPOSITORIES = ("alpha", "beta")
SHARED_FILES = ("docs/CHANGES-A.md", "docs/CHANGES-B.md")
ITEMS_PER_FILE = 5
CONCURRENCY = 6  # pipelines at once: they race (a few conflicts a run), and on two cores the fleet takes
# ~2 min (5 at once: ~115 s, fewer conflicts; 8: ~150 s, more contention than progress)
JOIN_SECONDS = 600  # from the start; a pipeline still running then is a hang
CONFLICT_MARKER = r"^(<<<<<<<|>>>>>>>)( |$)|^=======$"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Item:
    request: WorkItemRequest
    origin: Path
    shared_file: str
    outcome: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def work_item(self) -> str:
        return self.request.work_item


def make_items(tmp_path: Path) -> list[Item]:
    """Ten work items per repository, five per shared file, interleaved so every file is busy at once."""
    items: list[Item] = []
    origins = {name: create_sample_repo(tmp_path / name) for name in REPOSITORIES}
    for n in range(len(REPOSITORIES) * len(SHARED_FILES) * ITEMS_PER_FILE):
        name = REPOSITORIES[n % len(REPOSITORIES)]
        shared = SHARED_FILES[(n // len(REPOSITORIES)) % len(SHARED_FILES)]
        work_item = f"FL-{n + 1}"
        scenario = tmp_path / f"scenario-{work_item}.json"
        scenario.write_text(json.dumps({"developer": {"shared_file": shared}}))
        request = WorkItemRequest(
            work_item=work_item,
            title=f"Change for {work_item}",
            repo=str(origins[name]),
            auto_approve=True,
            agent=AgentSpec(kind="scripted", scenario_file=str(scenario)),
        )
        items.append(Item(request, origins[name], shared))
    return items


def run_fleet(items: list[Item]) -> None:
    """Every pipeline in its own thread, at most CONCURRENCY running; every thread joined."""
    from flows.pipeline import sdlc_pipeline

    slots = threading.BoundedSemaphore(CONCURRENCY)
    stop = threading.Event()

    def run(item: Item) -> None:
        with slots:
            if stop.is_set():
                item.outcome["error"] = RuntimeError("not started: the test stopped")
                return
            started = time.monotonic()
            try:
                item.outcome["state"] = sdlc_pipeline(request=item.request, return_state=True)
            except BaseException as error:  # noqa: BLE001 - reported to the test's thread
                item.outcome["error"] = error
            finally:
                item.seconds = time.monotonic() - started

    threads = [threading.Thread(target=run, args=(item,), name=f"pipeline-{item.work_item}") for item in items]
    deadline = time.monotonic() + JOIN_SECONDS
    try:
        for thread in threads:
            thread.start()
    finally:
        try:
            for thread in threads:
                if thread.ident is not None:
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            stop.set()  # threads still waiting for a slot start nothing more
        hung = [thread.name for thread in threads if thread.is_alive()]
        assert not hung, f"pipelines still running after {JOIN_SECONDS} s: {hung}"


def ledger_rows(items: list[Item]) -> dict[str, tuple[Any, list[Any]]]:
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    return {
        item.work_item: (ledger.get_work_item(item.work_item), ledger.transitions(item.work_item)) for item in items
    }


@pytest.mark.xdist_group("twenty-work-items")  # one after another (Makefile)
def test_twenty_work_items_over_two_repositories_end_done_or_blocked_by_budget_and_main_holds_the_done_ones(
    tmp_path: Path,
) -> None:
    items = make_items(tmp_path)
    started = time.monotonic()
    run_fleet(items)
    seconds = time.monotonic() - started

    rows = ledger_rows(items)
    done = [item for item in items if rows[item.work_item][0].state == "done"]
    blocked = [item for item in items if item not in done]
    conflicts = {
        item.work_item: sum("conflict merging main" in t.reason for t in rows[item.work_item][1]) for item in items
    }
    print(
        f"\nfleet of {len(items)} ({CONCURRENCY} at once): {seconds:.1f} s; {len(done)} done, "
        f"{len(blocked)} blocked {[i.work_item for i in blocked]}; conflicts sent to developers: "
        f"{sum(conflicts.values())}; slowest pipeline {max(i.seconds for i in items):.1f} s"
    )

    for item in items:
        row, _ = rows[item.work_item]
        assert "error" not in item.outcome, f"{item.work_item}: {item.outcome.get('error')!r}"
        if row.state == "done":
            assert item.outcome["state"].is_completed(), f"{item.work_item}: {item.outcome['state'].message}"
        else:
            assert row.state == "blocked" and "its budget" in (row.reason or ""), (
                item.work_item,
                row.state,
                row.reason,
            )
    assert len(done) > len(items) // 2, f"only {len(done)} of {len(items)} done"
    assert sum(conflicts.values()) > 0, "the shared files never conflicted: the fleet did not race"

    for origin in sorted({item.origin for item in items}):
        mine = [item for item in items if item.origin == origin]
        tree = set(git(origin, "ls-tree", "-r", "--name-only", "main").splitlines())
        shared = {path: git(origin, "show", f"main:{path}") for path in SHARED_FILES if path in tree}
        for item in mine:
            slug = module_slug(item.work_item)
            line = re.compile(rf"(?m)^{re.escape(item.work_item)} change \d+ \(attempt \d+\)$")
            if item in done:
                assert {f"src/{slug}.py", f"tests/test_{slug}.py"} <= tree, item.work_item
                assert line.search(shared.get(item.shared_file, "")), f"{item.work_item}'s line is not on main"
            else:  # only what was tested is merged: nothing of a blocked work item reaches main
                assert f"src/{slug}.py" not in tree, item.work_item
                assert not any(line.search(text) for text in shared.values()), item.work_item
        markers = subprocess.run(
            ["git", "-C", str(origin), "grep", "-nE", CONFLICT_MARKER, "main", "--"], capture_output=True, text=True
        )
        assert markers.returncode == 1, f"conflict markers on main of {origin}:\n{markers.stdout}"
        merges = git(origin, "log", "--merges", "--format=%s", "main").splitlines()
        assert merges, f"no merge commit on main of {origin}"
        assert any(m.startswith("Merge main (") or "merge main into" in m for m in merges), merges
