"""Quality gates (B10): read what this run of the agent wrote and name an outcome.

Each gate kind is one function from a :class:`GateContext` to a
:class:`GateResult`; the stage graph names the kind and maps outcomes to routes.
Before an agent runs, :func:`archive_stale_artifacts_in` moves the files its gate
reads into ``history/`` with a round number, so a verdict or a question from an
earlier run can never decide the gate again, while the history stays readable.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from sdlc.graph import AGENT_FAILED, CONFLICT, StageSpec, artifacts_dir
from sdlc.models import AgentResult, ForgeSpec, GateResult, UpToDate
from sdlc.repo_config import CONFIG_PATH, RepoConfig
from sdlc.retry import HTTP_STEP_RETRY_DELAYS_SECONDS
from sdlc.settings import get_settings, process_environment
from tasks.agent import agent_environment, describe_failure
from tasks.classify import read_tail
from tasks.failures import retried_on_transient
from tasks.processes import end_process_group
from tasks.sandbox import SandboxSpec, confinement, sandbox_spec_for
from tasks.worktree import base_repo_config

MAX_DETAILS = 8000


class GateContext(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    worktree: Path
    work_item: str
    visit: int
    spec: StageSpec
    agent: AgentResult | None
    repo: str | None = None
    forge: ForgeSpec | None = None


def _relative(ctx: GateContext, name: str) -> str:
    return f"{artifacts_dir(ctx.work_item)}/{name}"


def _read(ctx: GateContext, name: str) -> str | None:
    path = ctx.worktree / _relative(ctx, name)
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def artifacts_gate(ctx: GateContext) -> GateResult:
    """Pass when every artifact is there; an alternate file (questions, conflict) decides first."""
    for outcome, name in ctx.spec.alternate_artifacts.items():
        text = _read(ctx, name)
        if text is not None:
            return GateResult(
                outcome=outcome,
                passed=False,
                reason=f"{ctx.spec.role} wrote {name}",
                details=text[:MAX_DETAILS],
                artifact=_relative(ctx, name),
            )
    missing = [name for name in ctx.spec.artifacts if _read(ctx, name) is None]
    if missing:
        return GateResult(
            outcome="missing",
            passed=False,
            reason=f"warning: {ctx.spec.role} did not write {', '.join(missing)}",
        )
    return GateResult(outcome="pass", passed=True, reason=f"{ctx.spec.role} wrote {', '.join(ctx.spec.artifacts)}")


def verdict_gate(ctx: GateContext) -> GateResult:
    """Find the verdict line (review, test report) in the stage's first artifact."""
    name = ctx.spec.artifacts[0]
    text = _read(ctx, name)
    if text is None:
        return GateResult(outcome="missing", passed=False, reason=f"warning: {ctx.spec.role} did not write {name}")
    for outcome, pattern in ctx.spec.verdicts.items():
        if re.search(pattern, text):
            return GateResult(
                outcome=outcome,
                passed=outcome == "pass",
                reason=f"{name}: {outcome}",
                details=text[:MAX_DETAILS],
                artifact=_relative(ctx, name),
            )
    return GateResult(
        outcome="missing", passed=False, reason=f"{name} has no verdict line", artifact=_relative(ctx, name)
    )


def exit_code_gate(ctx: GateContext) -> GateResult:
    """The agent's own check decides (deploy: its smoke or health check)."""
    agent = ctx.agent
    if agent is not None and agent.succeeded:
        return GateResult(outcome="pass", passed=True, reason=f"{ctx.spec.role} exited 0")
    reason = "did not run" if agent is None else (agent.error or f"exited {agent.exit_code}")
    return GateResult(
        outcome="fail",
        passed=False,
        reason=f"{ctx.spec.role} {reason}",
        details=(agent.output_tail if agent else "")[-MAX_DETAILS:],
        artifact=agent.log_path if agent else None,
    )


def gate_repo_config(ctx: GateContext) -> RepoConfig:
    """`.sdlc/config.yaml` of the default branch at the work item's base commit, never the worktree's.

    The agent can rewrite its worktree, so a test command read there would be its
    own to choose; the base commit is recorded in the ledger when the work item's
    first agent run is prepared.
    """
    if ctx.repo is None:
        return RepoConfig()
    from tasks.ledger import Ledger

    row = Ledger.from_settings().get_work_item(ctx.work_item)
    return base_repo_config(ctx.repo, row.base_sha if row is not None else None)


def run_test_command(
    argv: list[str], cwd: Path, log_path: Path, timeout: float, sandbox: SandboxSpec | None = None
) -> int | None:
    """Run the test command, output to ``log_path``; its exit code, None when it ran out of time.

    The tests are code the agent wrote: they run confined like the agent (same
    sandbox, no model API port) and with the agent's environment, never the worker's.
    It runs in a session of its own; on timeout the whole process group ends (a
    test command's background jobs too, which ``subprocess.run`` would leave), and
    so do stragglers of a command that exited.
    """
    env = agent_environment(process_environment(), {}, {})
    with (
        open(log_path, "wb") as log,
        confinement(argv, worktree=cwd, env=env, spec=sandbox or SandboxSpec()) as confined,
    ):
        env.update(confined.env)
        log.write(f"--- test command [{confined.description}]: {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                [*confined.prefix, *argv],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.write(f"could not start the test command: {exc}\n".encode())
            return 127
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:
            end_process_group(process)
            raise
        end_process_group(process)
    return code


def tests_gate(ctx: GateContext) -> GateResult:
    """The test command of the default branch's `.sdlc/config.yaml` passes on the worktree."""
    config = gate_repo_config(ctx)
    if not config.test_command:
        unchecked = (
            f"no test command configured in {CONFIG_PATH.as_posix()} on the default branch; "
            f"the {ctx.spec.name} gate checked nothing"
        )
        return GateResult(outcome="pass", passed=True, reason=unchecked, warning=unchecked)
    log_path = get_settings().logs_dir / ctx.work_item / f"tests-{ctx.spec.name}-{ctx.visit}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sandbox = sandbox_spec_for(
        mode=None,
        kind="tests",
        work_item=ctx.work_item,
        read_paths=[],
        write_paths=[],
        network=True,
        repo=ctx.repo or "",
    )
    code = run_test_command(config.test_command, ctx.worktree, log_path, config.test_timeout_seconds, sandbox)
    command = " ".join(config.test_command)
    if code == 0:
        return GateResult(outcome="pass", passed=True, reason=f"tests passed: {command}", artifact=str(log_path))
    what = f"timed out after {config.test_timeout_seconds:g} s" if code is None else f"exit {code}"
    return GateResult(
        outcome="fail",
        passed=False,
        reason=f"tests failed ({what}): {command}",
        details=read_tail(log_path, MAX_DETAILS),
        artifact=str(log_path),
    )


def ci_gate(ctx: GateContext) -> GateResult:
    """CI green on the branch head where the forge runs CI (bounded wait while pending); else local tests."""
    if ctx.forge is None or ctx.repo is None or ctx.forge.kind == "local":
        return tests_gate(ctx)
    from tasks.forge import ci_status_of
    from tasks.git import head_commit

    sha = head_commit(ctx.worktree)
    deadline = time.monotonic() + ctx.forge.ci_timeout_seconds
    while True:
        status = ci_status_of(ctx.repo, ctx.forge, sha)
        details = "\n".join(status.details)
        if status.state == "none":
            local = tests_gate(ctx)
            return local.model_copy(update={"reason": f"no CI reported for {sha[:12]}; {local.reason}"})
        if status.state == "success":
            return GateResult(outcome="pass", passed=True, reason=f"CI green on {sha[:12]}", details=details)
        if status.state == "failure":
            return GateResult(outcome="fail", passed=False, reason=f"CI failed on {sha[:12]}", details=details)
        if time.monotonic() >= deadline:
            return GateResult(
                outcome="fail",
                passed=False,
                details=details,
                reason=f"CI still pending on {sha[:12]} after {ctx.forge.ci_timeout_seconds:g} s",
            )
        time.sleep(ctx.forge.ci_poll_seconds)


def conflict_result(update: UpToDate) -> GateResult:
    """The outcome of an up_to_date stage whose branch does not merge the default branch cleanly:
    the stage that resolves conflicts gets the paths and the commits that touched them."""
    return GateResult(
        outcome=CONFLICT,
        passed=False,
        reason=update.reason(),
        details=update.describe_conflicts()[:MAX_DETAILS],
    )


# The judge of every gate kind; the kinds and the outcomes each can name are declared in
# sdlc/graph.py (GATE_OUTCOMES), where a graph is checked without Prefect. A new kind is one
# function here and one line there.
GATE_JUDGES: dict[str, Callable[[GateContext], GateResult]] = {
    "ci": ci_gate,
    "artifacts": artifacts_gate,
    "verdict": verdict_gate,
    "exit_code": exit_code_gate,
    "tests": tests_gate,
}


# Gate kinds that judge the agent's exit themselves; the others see a failed run as "agent_failed".
JUDGES_EXIT_CODE = frozenset({"exit_code"})


def evaluate_gate(ctx: GateContext) -> GateResult:
    if ctx.agent is not None and not ctx.agent.succeeded and ctx.spec.gate not in JUDGES_EXIT_CODE:
        return GateResult(
            outcome=AGENT_FAILED,
            passed=False,
            reason=describe_failure(ctx.agent),
            details=ctx.agent.output_tail[-MAX_DETAILS:],
            artifact=ctx.agent.log_path,
        )
    try:
        judge = GATE_JUDGES[ctx.spec.gate]
    except KeyError:
        raise ValueError(f"stage {ctx.spec.name!r} names unknown gate {ctx.spec.gate!r}") from None
    return judge(ctx)


def archive_stale_artifacts_in(worktree: Path, work_item: str, spec: StageSpec) -> dict[str, str]:
    """Move the gate's files left by earlier runs to history/<stem>.<round>.md; returns old -> new."""
    base = worktree / artifacts_dir(work_item)
    moved: dict[str, str] = {}
    for name in spec.stale_artifacts:
        path = base / name
        if not path.is_file():
            continue
        history = base / "history"
        history.mkdir(parents=True, exist_ok=True)
        stem, suffix = Path(name).stem, Path(name).suffix
        round_number = 1
        while (history / f"{stem}.{round_number}{suffix}").exists():
            round_number += 1
        target = history / f"{stem}.{round_number}{suffix}"
        path.rename(target)
        moved[str(path.relative_to(worktree))] = str(target.relative_to(worktree))
    return moved


# A CI read that still fails after the forge client's own retries (TransientError) is read
# again later rather than blocking a work item whose developer's work is already pushed.
@task(name="run-gate", **retried_on_transient(HTTP_STEP_RETRY_DELAYS_SECONDS))
def run_gate(
    worktree: str,
    work_item: str,
    visit: int,
    spec: StageSpec,
    agent: AgentResult | None,
    repo: str | None = None,
    forge: ForgeSpec | None = None,
) -> GateResult:
    return evaluate_gate(
        GateContext(
            worktree=Path(worktree), work_item=work_item, visit=visit, spec=spec, agent=agent, repo=repo, forge=forge
        )
    )
