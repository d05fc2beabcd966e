"""Forge faults through a whole pipeline (issue 7 item 4).

`sdlc run --auto-approve` takes a work item from analysis to a merged PR on a Gitea or
GitHub test server that fails about 30 % of *all* its requests at random: 500s, 429s
with Retry-After, timeouts (the server sleeps past the block's timeout) and lost
answers (the operation is done, the answer replaced by a 502). Each seed replays the
same faults for the same requests.

Every run ends either done with exactly one PR, merged, or failed/blocked with a
reason naming the forge call (in `sdlc status --json` and on stderr) and at most one
PR: never a duplicate PR, never "done" over an unmerged PR. A permanent outage ends
failed within a bounded time.

The eight runs (3 seeds x 2 forges, and an outage per forge) are started together by
one module fixture, each with its own data dir, forge server and block, against the
session's Prefect server; each test waits for its own run. A pipeline spends most of
its time waiting, so together they take about as long as the slowest one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

import pytest

from blocks.forge import GiteaCredentials, GitHubCredentials
from forge_servers.common import ThreadedForgeServer
from forge_servers.gitea import DEFAULT_TOKEN as GITEA_TOKEN
from forge_servers.gitea import GiteaTestServer
from forge_servers.github import DEFAULT_TOKEN as GITHUB_TOKEN
from forge_servers.github import GitHubTestServer

OWNER, REPO = "team", "app"
RATE = 0.3
KINDS = (500, 429, "timeout", "lost")
CLIENT_TIMEOUT = 1.0  # the block's timeout_seconds
SERVER_SLEEP = 1.5  # an injected timeout sleeps this long: past the client's timeout
SEEDS = (1, 2, 3)
RUN_TIMEOUT = 240
OUTAGE_BOUND_SECONDS = 120

FORGES = {
    "gitea": (GiteaTestServer, GiteaCredentials, GITEA_TOKEN, "Gitea"),
    "github": (GitHubTestServer, GitHubCredentials, GITHUB_TOKEN, "GitHub"),
}


RunKey = tuple[str, int | None]  # (forge, seed); seed None is the permanent outage


@dataclass
class Run:
    """One `sdlc run` under way against its own forge server."""

    forge: str
    seed: int | None
    work_item: str
    env: dict[str, str]
    server: ThreadedForgeServer
    process: subprocess.Popen[str]
    stderr_file: Path
    started: float
    outcome: Outcome | None = None


@dataclass
class Outcome:
    forge: str
    seed: int | None
    code: int
    state: str
    reason: str
    stderr: str
    pulls: list[dict[str, Any]]
    injected: dict[str, int]
    retries: int
    requests: int
    seconds: float
    violations: list[str] = field(default_factory=list)


def retries_after_faults(server: ThreadedForgeServer) -> int:
    """Injected faults the client answered by sending the same request again."""
    log = list(server.requests)
    return sum(
        1
        for at, request in enumerate(log)
        if request.injected
        and any((later.method, later.path) == (request.method, request.path) for later in log[at + 1 : at + 12])
    )


def start_run(forge: str, seed: int | None, root: Path, prefect_api: str) -> Run:
    server_class, credentials_class, token, _ = FORGES[forge]
    server = server_class(root / "forge").start()
    origin = server.create_repo(OWNER, REPO)
    block = f"{forge}-chaos-{uuid.uuid4().hex[:8]}"
    credentials_class(api_url=server.api_url, token=token, timeout_seconds=CLIENT_TIMEOUT).save(block)
    if seed is None:
        server.chaos(1.0, kinds=(500,))
    else:
        server.chaos(RATE, kinds=KINDS, seed=seed, sleep_seconds=SERVER_SLEEP)
    env = {
        **os.environ, "PREFECT_API_URL": prefect_api, "SDLC_DATA_DIR": str(root / "data"), "PYTHONUNBUFFERED": "1",
        "SDLC_BREAKER_SCOPE": uuid.uuid4().hex[:12],
    }
    work_item = f"CH-{uuid.uuid4().int % 100000}"
    stderr_file = root / "stderr.txt"
    with open(root / "stdout.txt", "w") as out, open(stderr_file, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "sdlc.cli", "run", "--repo", str(origin), "--work-item", work_item,
             "--title", "Survive a flaky forge", "--auto-approve",
             "--forge", forge, "--forge-block", block, "--forge-repo", f"{OWNER}/{REPO}"],
            env=env, stdout=out, stderr=err, text=True,
        )
    return Run(forge, seed, work_item, env, server, process, stderr_file, time.monotonic())


def finish_run(run: Run) -> Outcome:
    """Wait for the run, read `sdlc status --json` and what the forge holds."""
    if run.outcome is not None:
        return run.outcome
    try:
        code = run.process.wait(timeout=max(1.0, RUN_TIMEOUT - (time.monotonic() - run.started)))
    except subprocess.TimeoutExpired:
        run.process.kill()
        run.process.wait()
        raise AssertionError(f"{run.forge} seed {run.seed}: sdlc run hung for {RUN_TIMEOUT} s") from None
    seconds = time.monotonic() - run.started
    run.server.chaos_off()
    status = subprocess.run(
        [sys.executable, "-m", "sdlc.cli", "status", run.work_item, "--json"],
        env=run.env, capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    [item] = json.loads(status.stdout)
    server = run.server
    run.outcome = Outcome(
        forge=run.forge, seed=run.seed, code=code, state=item["state"], reason=item["reason"] or "",
        stderr=run.stderr_file.read_text(), pulls=server.pull_requests(OWNER, REPO),
        injected=dict(server.chaos_injected), retries=retries_after_faults(server), requests=len(server.requests),
        seconds=seconds, violations=list(server.violations),
    )
    o = run.outcome
    print(f"{o.forge} seed {o.seed}: exit {o.code} {o.state} in {o.seconds:.1f} s, {o.requests} requests, "
          f"faults {o.injected}, {o.retries} retries; {o.reason[:300]}")
    return o


def wanted_runs(items: list[pytest.Item]) -> list[RunKey]:
    """The runs the selected tests of this module read; outages first (they wait longest)."""
    chaos = [(forge, seed) for forge in sorted(FORGES) for seed in SEEDS]
    keys: set[RunKey] = set()
    for item in items:
        if item.module is None or item.module.__name__ != __name__:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "forge" in params:
            keys.add((params["forge"], params.get("seed")))
        elif item.name.startswith("test_the_retry_policy"):
            keys.update(chaos)
    return sorted(keys, key=lambda key: (key[1] is not None, key[0], key[1] or 0))


@pytest.fixture(scope="module")
def runs(
    prefect_api: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[RunKey, Run]]:
    """The runs of the selected tests, started at once."""
    keys = wanted_runs(request.session.items)
    started: dict[RunKey, Run] = {}
    try:
        for forge, seed in keys:
            root = tmp_path_factory.mktemp(f"{forge}-{'outage' if seed is None else f'seed{seed}'}")
            started[(forge, seed)] = start_run(forge, seed, root, prefect_api)
        yield started
    finally:
        for run in started.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            run.server.close()


def assert_ended_cleanly(outcome: Outcome) -> None:
    """Done with one merged PR, or failed/blocked naming the forge call, with at most one PR."""
    name = FORGES[outcome.forge][3]
    context = f"{outcome.forge} seed {outcome.seed}: {outcome.state} ({outcome.reason})\n{outcome.stderr[-2000:]}"
    assert outcome.violations == [], f"requests outside the {outcome.forge} contract: {outcome.violations}"
    assert len(outcome.pulls) <= 1, f"duplicate PRs: {context}"
    if outcome.code == 0:
        assert outcome.state == "done", context
        assert [pr["merged"] for pr in outcome.pulls] == [True], f"done without a merged PR: {context}"
        return
    assert outcome.code == 1, context
    assert outcome.state in ("failed", "blocked"), context
    assert name in outcome.reason and f"/repos/{OWNER}/{REPO}" in outcome.reason, f"reason names no forge call: {context}"
    assert outcome.reason in outcome.stderr, context


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("forge", sorted(FORGES))
def test_random_forge_faults_end_done_with_one_merged_pr_or_failed_naming_the_call(
    forge: str, seed: int, runs: dict[RunKey, Run]
) -> None:
    outcome = finish_run(runs[(forge, seed)])
    assert_ended_cleanly(outcome)
    assert sum(outcome.injected.values()) > 0, "no fault was injected: the seed proves nothing"


def test_the_retry_policy_absorbs_most_faults(runs: dict[RunKey, Run]) -> None:
    """At a 30 % fault rate at least most runs end done."""
    outcomes = [finish_run(run) for (_, seed), run in runs.items() if seed is not None]
    done = sum(outcome.code == 0 for outcome in outcomes)
    assert done * 2 > len(outcomes), [(o.forge, o.seed, o.state, o.reason) for o in outcomes]


@pytest.mark.parametrize("forge", sorted(FORGES))
def test_permanent_outage_fails_in_bounded_time_naming_the_call(forge: str, runs: dict[RunKey, Run]) -> None:
    outcome = finish_run(runs[(forge, None)])
    assert outcome.code == 1
    assert_ended_cleanly(outcome)
    assert outcome.pulls == []
    assert outcome.seconds < OUTAGE_BOUND_SECONDS
