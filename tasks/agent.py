"""Run one agent CLI in one worktree (B4-B7). Knows nothing about stages or gates.

The agent is started through prefect-shell's ``ShellOperation.trigger()`` inside
``with`` so that leaving the block ends its whole process group. The script the
shell runs holds only quoted arguments and variable *names*: the agent gets an
environment built from an allowlist with ``env -i``, so neither the worker's
environment (Prefect credentials, forge tokens) nor any value from a work item
is interpreted by the shell. Output, stderr included, goes to a log file that a
follower thread streams into the Prefect run logs while the agent runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect_shell import ShellOperation
from pydantic import BaseModel, Field

from sdlc.models import AgentResult, NotifyDetails, NotifyEvent, ReportLink, UpToDate, WorkItemState
from sdlc.retry import Classification, FailureKind, RetryDecision, RetryPolicy, decide_retry
from sdlc.settings import get_settings, process_environment
from tasks.breaker import CircuitBreaker
from tasks.classify import classify_output, read_tail, run_usage
from tasks.failures import PermanentError, SdlcError, TransientError
from tasks.git import fold_agent_commits, head_commit, paths_outside, run_logger
from tasks.ledger import Ledger
from tasks.limits import agent_slots
from tasks.notify import announce, flow_run_url
from tasks.processes import TERMINATE_GRACE_SECONDS, end_group, group_alive, process_start_ticks
from tasks.sandbox import SandboxSpec, confinement, resolve_mode

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import State

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Passed through from the worker: what a CLI needs to find itself and its own model API.
PASSTHROUGH_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM")
PASSTHROUGH_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_", "AIDER_", "DISABLE_")


class AgentInvocation(BaseModel):
    """Everything needed to start one agent run; one model so fields can be added safely."""

    work_item: str
    stage: str
    role: str
    worktree: str
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(gt=0)
    protocol_env: dict[str, str] = Field(description="The B5 SDLC_* variables.")
    profile_env: dict[str, str] = Field(default_factory=dict)
    provider: str = Field(
        default="scripted", description="Whose circuit breaker and concurrency limit this run answers to."
    )
    repo_key: str = Field(default="", description="The repository's short name: its concurrency limit (B64).")
    budget_usd: float | None = Field(default=None, description="The work item's spend budget (B34).")
    visit: str | None = Field(default=None, description="Stage visit the retry budgets are counted in.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)
    branch: str | None = Field(
        default=None, description="The work item's branch: only sdlc moves it (folded after the run)."
    )
    allowed_paths: list[str] = Field(default_factory=lambda: ["."], description="What the role may change.")
    up_to_date: UpToDate | None = Field(
        default=None, description="The merge of the default branch made before the agent runs (up_to_date stages)."
    )
    sent_back_by: list[ReportLink] = Field(
        default_factory=list, description="The reports of the gates that sent the work here (issue 17)."
    )


class BudgetExceeded(PermanentError):
    """The work item has spent its budget: no further agent runs (B34)."""


def spend_report(spent: dict[str, float], budget: float) -> str:
    by_stage = ", ".join(f"{stage} ${cost:.4f}" for stage, cost in spent.items()) or "nothing reported"
    return f"spend budget reached: spent ${sum(spent.values()):.4f} of ${budget:.4f} ({by_stage})"


def check_budget(ledger: Ledger, work_item: str, budget: float | None) -> float | None:
    """The budget left before an agent starts; raises BudgetExceeded when none is."""
    if budget is None:
        return None
    spent = ledger.spend_by_stage(work_item)
    left = budget - sum(spent.values())
    if left <= 0:
        raise BudgetExceeded(spend_report(spent, budget))
    return left


class AgentRunFailed(SdlcError):
    """The agent's run failed; carries its result and whether, and when, to run it again.

    Raised as one of the subclasses, named for the kind of failure (see tasks/failures.py);
    catch this class for any failed run.
    """

    def __init__(self, result: AgentResult, decision: RetryDecision) -> None:
        self.result = result
        self.decision = decision
        super().__init__(describe_failure(result))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result, self.decision))

    @property
    def waits_for_usage_reset(self) -> bool:
        """A usage limit with a reset time: the next attempt waits for it and spends no budget."""
        return (
            self.decision.retry
            and self.result.failure_kind == "usage_limit"
            and self.result.retry_not_before is not None
        )


class AgentRunTransient(AgentRunFailed, TransientError):
    """A rate limit (429), an overload (529), another 5xx or a network error: it may pass."""


class AgentUsageLimited(AgentRunFailed):
    """The subscription's usage limit: the run may go on after its reset, never sooner."""


class AgentRunPermanent(AgentRunFailed, PermanentError):
    """The agent's own failure (exit code, timeout, authentication): retried only within its budget."""


def agent_failure(result: AgentResult, decision: RetryDecision) -> AgentRunFailed:
    """The error for a failed run, its class named for what the log said (B30)."""
    kinds: dict[str | None, type[AgentRunFailed]] = {
        FailureKind.transient.value: AgentRunTransient,
        FailureKind.usage_limit.value: AgentUsageLimited,
    }
    return kinds.get(result.failure_kind, AgentRunPermanent)(result, decision)


class RetryNotDue(TransientError):
    """The stage ran again (after a crash) before the wait its last failure decided was over."""

    def __init__(self, not_before: datetime, reason: str) -> None:
        self.not_before, self.reason = not_before, reason
        super().__init__(f"{reason}; not before {not_before.isoformat(timespec='seconds')}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.not_before, self.reason))


def _pipeline_can_suspend() -> bool:
    """True when the root flow run has a deployment, so Prefect can reschedule it (no process waits)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    root = flow_run.root_flow_run_id
    if not root:
        return False
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(root))).deployment_id is not None


def describe_failure(result: AgentResult) -> str:
    if result.timed_out:
        what = f"timeout after {result.duration_seconds:.0f} s"
    elif result.error:
        what = result.error
    else:
        what = f"exit code {result.exit_code}"
    if result.failure_kind and result.failure_reason and not result.timed_out:
        what += f" ({result.failure_kind}: {result.failure_reason})"
    return f"{result.role} attempt {result.attempt} failed: {what} (log: {result.log_path})"


# Variables a CLI would otherwise take from files in the repository it works on (Gemini CLI loads the
# worktree's .env and .gemini/.env for every variable not set): set, even empty (the CLI's default), they
# cannot be redirected there, e.g. the model API's base URL to a host that collects the operator's key.
PINNED_ENV: dict[str, str] = {"GOOGLE_GEMINI_BASE_URL": ""}


def agent_environment(
    worker_env: Mapping[str, str], protocol_env: Mapping[str, str], profile_env: Mapping[str, str]
) -> dict[str, str]:
    """The agent's whole environment: :data:`PINNED_ENV`, an allowlist of the worker's, then B5, then the profile."""
    env = dict(PINNED_ENV)
    env.update(
        (name, value)
        for name, value in worker_env.items()
        if name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES)
    )
    env.update(profile_env)
    env.update(protocol_env)
    bad = [name for name in env if not ENV_NAME.match(name)]
    if bad:
        raise ValueError(f"invalid environment variable names: {bad}")
    return env


SHOWN_ARGUMENT_CHARS = 160


def shown_command(argv: list[str]) -> str:
    """The command line as the log's header shows it: one line, quoted, a long argument (a role's prompt
    given as text) cut to its start and its length."""
    shown = []
    for arg in argv:
        if len(arg) > SHOWN_ARGUMENT_CHARS or "\n" in arg:
            arg = f"{arg[:SHOWN_ARGUMENT_CHARS].splitlines()[0] if arg.strip() else ''}… ({len(arg)} chars)"
        shown.append(arg)
    return shlex.join(shown)


def agent_script(argv: list[str], env_names: list[str], log_path: Path) -> str:
    """One shell line: quoted arguments, variables by name only, output to the log.

    ``argv`` starts with the sandbox's own prefix when the run is confined.
    """
    assignments = " ".join(f'"{name}=${{{name}}}"' for name in env_names)
    return f"exec env -i {assignments} {shlex.join(argv)} >> {shlex.quote(str(log_path))} 2>&1 < /dev/null"


class _LogFollower(threading.Thread):
    """Streams new lines of the log file to the Prefect run logger until stopped."""

    def __init__(self, path: Path, logger: logging.LoggerAdapter[Any] | logging.Logger, label: str) -> None:
        super().__init__(daemon=True, name=f"follow-{label}")
        self._path = path
        self._logger = logger
        self._label = label
        self._stopping = threading.Event()
        self._offset = path.stat().st_size if path.exists() else 0

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        pending = b""
        while True:
            stopping = self._stopping.is_set()
            pending = self._drain(pending)
            if stopping:
                if pending:
                    self._emit(pending)
                return
            self._stopping.wait(0.25)

    def _drain(self, pending: bytes) -> bytes:
        try:
            with open(self._path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read(1024 * 1024)
                self._offset += len(chunk)
        except FileNotFoundError:
            return pending
        data = pending + chunk
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._emit(line)
        return rest

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip()
        if text:
            self._logger.info("%s | %s", self._label, text[:2000])


def end_abandoned_agents(ledger: Ledger, work_item: str, logger: logging.LoggerAdapter[Any] | logging.Logger) -> int:
    """End the process groups of this work item's agents whose driver died, before anything runs again.

    A group whose leader is gone cannot have been reused (its id is taken while it
    has members); a live leader must have the recorded start time to be ours.
    """
    ended = 0
    for run in ledger.unfinished_agent_runs(work_item):
        pgid = run.process_group
        assert pgid is not None
        started = process_start_ticks(pgid)
        ours = started is None or run.process_started is None or started == run.process_started
        if ours and group_alive(pgid):
            logger.warning(
                "%s attempt %s (process group %s) outlived its driver; ending it", run.role, run.attempt, pgid
            )
            end_group(pgid)
            ended += 1
        ledger.end_abandoned_run(run.id, "its driver died while it ran" + ("; sdlc ended it" if ours else ""))  # type: ignore[arg-type]
    return ended


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return run_logger(logging.getLogger("sdlc.agent"))


class _NotStarted(Exception):
    """The command cannot start (not found): the run ends before a process exists."""


def execute_agent(
    invocation: AgentInvocation,
    *,
    attempt: int,
    log_path: Path,
    on_start: Callable[[int], None] | None = None,
) -> AgentResult:
    """Start the agent (confined when it can be), wait at most its timeout, end its process group, describe the run."""
    logger = _run_logger()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = agent_environment(process_environment(), invocation.protocol_env, invocation.profile_env)
    env["SDLC_ATTEMPT"] = str(attempt)
    started = datetime.now(UTC)
    clock = time.monotonic()
    exit_code: int | None = None
    timed_out = False
    error: str | None = None
    sandbox = "not started"
    follower: _LogFollower | None = None
    try:
        if shutil.which(invocation.argv[0], path=env.get("PATH")) is None:
            # Said here, before a sandbox is made, not by its "execvp" line: the same words confined or not.
            with open(log_path, "ab") as log:
                log.write(
                    f"--- {invocation.role} attempt {attempt} started {started.isoformat()} in {invocation.worktree}\n"
                    f"agent command not found: {invocation.argv[0]}\n".encode()
                )
            exit_code = 127
            raise _NotStarted
        with contextlib.ExitStack() as stack:
            confined = stack.enter_context(
                confinement(invocation.argv, worktree=Path(invocation.worktree), env=env, spec=invocation.sandbox)
            )
            sandbox = confined.description
            env.update(confined.env)
            script = agent_script([*confined.prefix, *invocation.argv], sorted(env), log_path)
            with open(log_path, "ab") as log:
                log.write(
                    f"--- {invocation.role} attempt {attempt} started {started.isoformat()} "
                    f"in {invocation.worktree} [{sandbox}]: {shown_command(invocation.argv)}\n".encode()
                )
            if not confined.confined:
                # Turned off on purpose: said once per run; fallen back from `auto`: a warning people must see.
                log_level = logging.INFO if invocation.sandbox.mode == "none" else logging.WARNING
                logger.log(
                    log_level, "%s runs UNCONFINED (%s): it can read what this worker can", invocation.role, sandbox
                )
            follower = _LogFollower(log_path, logger, invocation.role)
            follower.start()
            operation = stack.enter_context(
                ShellOperation(commands=[script], env=env, working_dir=Path(invocation.worktree), stream_output=False)
            )
            process = operation.trigger()
            if on_start is not None:
                on_start(process.pid)
            waiter = threading.Thread(target=_wait_quietly, args=(process,), daemon=True)
            waiter.start()
            waiter.join(invocation.timeout_seconds)
            if waiter.is_alive():
                timed_out = True
                logger.warning(
                    "%s: timeout after %s s, ending its process group", invocation.role, invocation.timeout_seconds
                )
                end_group(process.pid)  # SIGTERM, SIGKILL after the grace: everything it started
                waiter.join(TERMINATE_GRACE_SECONDS)
            exit_code = process.return_code
    except _NotStarted:
        pass
    except OSError as exc:
        error = f"could not start the agent: {exc}"
    finally:
        if follower is not None:
            follower.stop()
    ended = datetime.now(UTC)
    duration = time.monotonic() - clock
    if timed_out:
        error = f"timeout after {invocation.timeout_seconds:g} s"
    elif exit_code == 127:
        error = f"agent command not found: {invocation.argv[0]}"
    with open(log_path, "ab") as log:
        log.write(f"--- {invocation.role} attempt {attempt} ended: exit {exit_code}, {duration:.1f} s\n".encode())
    return AgentResult(
        role=invocation.role,
        attempt=attempt,
        exit_code=exit_code,
        duration_seconds=round(duration, 3),
        log_path=str(log_path),
        output_tail=read_tail(log_path, 4096),
        timed_out=timed_out,
        started_at=started,
        ended_at=ended,
        error=error,
        sandbox=sandbox,
    )


def _wait_quietly(process: Any) -> None:
    try:
        process.wait_for_completion()
    except RuntimeError:
        pass  # non-zero exit: the caller reads the return code


def _seconds_until(when: datetime) -> float:
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _set_retry_delay(task: Task[Any, Any], seconds: float) -> None:
    """The delay Prefect schedules the next attempt after, as one number of seconds.

    ``handle_retry`` in prefect/task_engine.py accepts a number here (it indexes only a
    Sequence), and ``Task.__init__`` annotates the attribute ``float | int | list[float] | None``;
    mypy takes ``list[float]`` from an earlier, unannotated assignment in that ``__init__``.
    """
    task.retry_delay_seconds = seconds  # type: ignore[assignment]  # Prefect's own annotation allows a float


def _retry_agent_failures(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry_condition_fn: retry what the failure's own decision allows, after the wait it decided.

    Prefect 3.8 (``handle_retry`` in prefect/task_engine.py) calls this and only then
    reads ``task.retry_delay_seconds`` for the AwaitingRetry state it schedules, so the
    delay set here is the decided wait: the UI shows when the next attempt starts, and
    no task body sleeps through it. The stage makes a task object per call
    (``with_options``), so no other run reads this delay. Bugs fail at once.
    """
    from prefect.logging.loggers import task_run_logger

    logger = task_run_logger(task_run, task)
    try:
        state.result()
    except RetryNotDue as early:
        delay = _seconds_until(early.not_before)
        _set_retry_delay(task, delay)
        logger.warning("%s: next attempt in %.1f s", early, delay)
        return True
    except AgentRunFailed as failure:
        decision = failure.decision
        if failure.waits_for_usage_reset and _pipeline_can_suspend():
            logger.warning("%s: %s; the run waits without holding a process", failure.result.role, decision.why)
            return False  # the stage hands the wait to the pipeline (UsageLimitWait)
        if not decision.retry:
            logger.warning("not retrying %s: %s", failure.result.role, decision.why)
            return False
        assert failure.result.retry_not_before is not None
        delay = _seconds_until(failure.result.retry_not_before)
        _set_retry_delay(task, delay)
        logger.warning("retrying %s: %s; next attempt in %.1f s", failure.result.role, decision.why, delay)
        return True
    except Exception:  # noqa: BLE001 - any other failure is not the agent's to retry
        return False
    return False


def assess_run(
    result: AgentResult, invocation: AgentInvocation, earlier: list[Any]
) -> tuple[AgentResult, RetryDecision | None]:
    """Classify the run from its log tail (B30) and decide on a retry (B31); None means success."""
    tail = read_tail(result.log_path)
    cli = invocation.provider  # the profile's kind: its CLI's own output reader
    usage = run_usage(tail, cli, result.log_path)
    updates: dict[str, Any] = usage.model_dump(exclude={"is_error", "api_error_status"}) if usage else {}
    failure = classify_output(
        tail, exit_code=result.exit_code, timed_out=result.timed_out, now=result.ended_at, kind=cli
    )
    if failure is None and result.error is None:
        return result.model_copy(update=updates), None
    kind = failure.kind if failure else FailureKind.permanent
    kinds = [run.failure_kind for run in earlier] + [kind.value]
    classification = Classification(
        kind=kind,
        reason=failure.reason if failure else "exit_code",
        retry_after=failure.retry_after_seconds if failure else None,
        resets_at=failure.resets_at if failure else None,
        transient_failures=kinds.count(FailureKind.transient.value),
        permanent_failures=kinds.count(FailureKind.permanent.value),
        usage_limit_waits=kinds.count(FailureKind.usage_limit.value),
    )
    policy = invocation.retry.model_copy(
        update={"usage_limit_margin_seconds": get_settings().usage_limit_margin_seconds}
    )
    decision = decide_retry(classification, policy, now=result.ended_at)
    updates.update(
        failure_kind=kind.value,
        failure_reason=classification.reason,
        retry_after_seconds=classification.retry_after,
        retry_not_before=result.ended_at + timedelta(seconds=decision.wait_seconds) if decision.retry else None,
    )
    return result.model_copy(update=updates), decision


def usage_reset_note(until: datetime) -> str:
    """What `sdlc status` and the UI say while a work item waits for its usage limit to reset."""
    return f"waiting for usage-limit reset until {until.astimezone().strftime('%H:%M %Z')}"


def _enter_retry_window(earlier: list[Any], ledger: Ledger, invocation: AgentInvocation) -> None:
    """Start no sooner than the previous failure allows (backoff, Retry-After, usage-limit reset).

    A retry Prefect scheduled, or a pipeline rescheduled for a usage-limit reset, starts
    in time. Only a rerun (after a crash) can come early: it raises :class:`RetryNotDue`,
    and Prefect schedules the rest of the wait rather than this task sleeping through it.
    """
    if not earlier or earlier[-1].retry_not_before is None:
        return
    previous = earlier[-1]
    usage_limit = previous.failure_kind == FailureKind.usage_limit.value
    if previous.retry_not_before > datetime.now(UTC):
        if usage_limit:
            ledger.set_state(
                invocation.work_item,
                WorkItemState.waiting_usage_limit,
                reason=usage_reset_note(previous.retry_not_before),
            )
        raise RetryNotDue(
            previous.retry_not_before,
            f"{invocation.role} ran again before its last failure's wait ({previous.failure_reason})",
        )
    if usage_limit:
        ledger.set_state(
            invocation.work_item, WorkItemState.running, reason=f"usage limit reset; {invocation.role} runs again"
        )


@task(name="run-agent", retry_condition_fn=_retry_agent_failures)
def run_agent(invocation: AgentInvocation) -> AgentResult:
    """One run of the agent, recorded in the ledger, shown as a Prefect artifact and told to the
    notifiers (agent_started, then agent_finished or agent_failed with what comes next)."""
    settings = get_settings()
    ledger = Ledger.from_settings()
    logger = _run_logger()
    end_abandoned_agents(ledger, invocation.work_item, logger)
    resolve_mode(
        invocation.sandbox.mode, invocation.sandbox.network
    )  # `bwrap` that cannot work: fail before anything runs
    visit_runs = ledger.visit_runs(invocation.work_item, invocation.role, invocation.visit) if invocation.visit else []
    _enter_retry_window(visit_runs, ledger, invocation)
    check_budget(ledger, invocation.work_item, invocation.budget_usd)
    breaker = CircuitBreaker(
        invocation.provider,
        scope=settings.breaker_scope,
        threshold=settings.breaker_threshold,
        cooldown_seconds=settings.breaker_cooldown_seconds,
    )
    breaker.wait_until_closed(logger)

    with agent_slots(invocation.repo_key or Path(invocation.worktree).parent.name, invocation.provider, logger):
        attempt = ledger.count_agent_runs(invocation.work_item, invocation.role) + 1
        log_path = settings.logs_dir / invocation.work_item / f"{invocation.role}-{attempt}.log"
        run_id, attempt = ledger.start_agent_run(
            invocation.work_item,
            stage=invocation.stage,
            role=invocation.role,
            log_path=str(log_path),
            flow_run_id=_current_flow_run_id(),
            visit=invocation.visit,
        )
        _announce_start(invocation, attempt, log_path)
        worktree = Path(invocation.worktree)
        recorded_head = head_commit(worktree) if invocation.branch else None
        outcome = execute_agent(
            invocation,
            attempt=attempt,
            log_path=log_path,
            on_start=lambda pid: ledger.record_process_group(run_id, pid, process_start_ticks(pid)),
        )
    if invocation.branch:
        outcome = _fold_back(outcome, invocation, recorded_head, logger)
    result, decision = assess_run(outcome, invocation, visit_runs)
    ledger.finish_agent_run(run_id, result)
    if result.failure_kind == "transient":
        state = breaker.record_transient()
        if state.open_until is not None:
            logger.warning("circuit breaker for %s: %s", invocation.provider, state.describe(result.ended_at))
    elif decision is None:
        breaker.record_success()
    _publish_run_artifact(invocation, result)
    if decision is not None:
        try:
            check_budget(ledger, invocation.work_item, invocation.budget_usd)  # a spent budget stops, whatever failed
        except BudgetExceeded as spent:
            _announce_failure(invocation, result, RetryDecision(retry=False, why=str(spent)), visit_runs)
            raise
        _announce_failure(invocation, result, decision, visit_runs)
        failure = agent_failure(result, decision)
        if failure.waits_for_usage_reset and not _pipeline_can_suspend():
            # Nothing can reschedule the pipeline: this task's retry, scheduled for the reset, waits instead.
            assert result.retry_not_before is not None
            ledger.set_state(
                invocation.work_item,
                WorkItemState.waiting_usage_limit,
                reason=usage_reset_note(result.retry_not_before),
            )
        raise failure
    _announce_finish(invocation, result)
    return result


# --- what the notifiers hear of an agent run (B75) ----------------------------------------------
# Said from inside the run-agent task, one announce per event: no task run of its own (BENCHMARKS.md).

_KIND_LABELS = {"transient": "transient", "permanent": "permanent", "usage_limit": "usage limit"}


def seconds_text(seconds: float) -> str:
    """A duration as people read it: 0.4 s, 40 s, 5 min 03 s, 2 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours} h {rest:02d} min"


def next_attempt(result: AgentResult, decision: RetryDecision, policy: RetryPolicy, earlier: list[Any]) -> str:
    """What follows a failed run, as its agent_failed event says: "retry 2 of 5 in 40 s" or "no retry: why".

    Counted as :func:`assess_run` counts for the decision: this stage visit's failures of the same kind.
    """
    if not decision.retry:
        return f"no retry: {decision.why}"
    wait = "now" if decision.wait_seconds < 0.05 else f"in {seconds_text(decision.wait_seconds)}"
    kinds = [run.failure_kind for run in earlier] + [result.failure_kind]
    if result.failure_kind == FailureKind.usage_limit.value and result.retry_not_before is not None:
        reset = result.retry_not_before.astimezone().strftime("%H:%M %Z")
        return f"retry after the usage-limit reset, at {reset} ({wait})"
    if result.failure_kind == FailureKind.transient.value:
        done, budget = kinds.count(FailureKind.transient.value), policy.transient_retries
    else:
        done, budget = kinds.count(FailureKind.permanent.value), policy.max_attempts - 1
    return f"retry {done} of {budget} {wait}"


def _announce(event: NotifyEvent, invocation: AgentInvocation, message: str, details: NotifyDetails) -> None:
    """One event of this agent run, linked to the stage's flow run (where the agent's output streams)."""
    details = {"role": invocation.role, "stage": invocation.stage, "agent": invocation.provider, **details}
    announce(
        event,
        f"{invocation.work_item} {message}",
        work_item=invocation.work_item,
        link=flow_run_url(_current_flow_run_id()),
        log=_run_logger(),
        details=details,
    )


def _announce_start(invocation: AgentInvocation, attempt: int, log_path: Path) -> None:
    _announce(
        "agent_started",
        invocation,
        f"{invocation.role} started: attempt {attempt}, stage {invocation.stage}, agent {invocation.provider}; "
        f"log {log_path}",
        {"attempt": attempt, "log": str(log_path)},
    )


def _run_facts(result: AgentResult) -> NotifyDetails:
    return {
        "attempt": result.attempt,
        "exit_code": result.exit_code,
        "duration_seconds": result.duration_seconds,
        "cost_usd": result.cost_usd,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "turns": result.num_turns,
        "log": result.log_path,
    }


def _usage_text(result: AgentResult) -> str:
    """Cost and tokens where the agent reported them (a JSON result, B34); nothing otherwise."""
    parts = []
    if result.cost_usd is not None:
        parts.append(f"cost ${result.cost_usd:.4f}")
    if result.input_tokens is not None or result.output_tokens is not None:
        parts.append(f"tokens {result.input_tokens or 0} in / {result.output_tokens or 0} out")
    if result.num_turns is not None:
        parts.append(f"{result.num_turns} turns")
    return "".join(f", {part}" for part in parts)


def _announce_finish(invocation: AgentInvocation, result: AgentResult) -> None:
    _announce(
        "agent_finished",
        invocation,
        f"{result.role} finished: attempt {result.attempt}, stage {invocation.stage}, exit code {result.exit_code} "
        f"in {seconds_text(result.duration_seconds)}{_usage_text(result)}",
        _run_facts(result),
    )


def _announce_failure(
    invocation: AgentInvocation, result: AgentResult, decision: RetryDecision, earlier: list[Any]
) -> None:
    """agent_failed: how it failed, how that is classified (B30), where its log is (B33), and what comes next."""
    then = next_attempt(result, decision, invocation.retry, earlier)
    if result.timed_out and result.error:
        what = result.error
    else:
        what = f"{result.error or f'exit code {result.exit_code}'} after {seconds_text(result.duration_seconds)}"
    kind = result.failure_kind or FailureKind.permanent.value
    _announce(
        "agent_failed",
        invocation,
        f"{result.role} failed: attempt {result.attempt}, stage {invocation.stage}, {what}{_usage_text(result)}; "
        f"{_KIND_LABELS.get(kind, kind)} ({result.failure_reason}); log {result.log_path}; {then}",
        {
            **_run_facts(result),
            "classification": kind,
            "reason": result.failure_reason,
            "retry": decision.retry,
            "retry_in_seconds": decision.wait_seconds if decision.retry else None,
            "next": then,
        },
    )


def _fold_back(
    result: AgentResult,
    invocation: AgentInvocation,
    recorded_head: str | None,
    logger: logging.LoggerAdapter[Any] | logging.Logger,
) -> AgentResult:
    """Put the branch back where it was before the run and name what the role may not change (issue 13, item 2)."""
    assert invocation.branch is not None
    worktree = Path(invocation.worktree)
    folded = fold_agent_commits(worktree, invocation.branch, recorded_head)
    left_out = paths_outside(worktree, invocation.allowed_paths)
    notes: list[str] = []
    if folded:
        notes.append(f"{invocation.role} made {folded} commit(s) itself; folded back: only sdlc commits the branch")
    if left_out:
        notes.append(
            f"{invocation.role} changed {len(left_out)} path(s) outside {', '.join(invocation.allowed_paths)}; "
            f"not committed: {', '.join(left_out[:50])}"
        )
    if notes:
        with open(result.log_path, "ab") as log:
            log.write("".join(f"--- {note}\n" for note in notes).encode())
        for note in notes:
            logger.warning(note)
    return result.model_copy(update={"folded_commits": folded, "left_out": left_out})


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def _publish_run_artifact(invocation: AgentInvocation, result: AgentResult) -> None:
    key = f"agent-{invocation.work_item.lower()}-{invocation.role}"
    create_table_artifact(
        key=key,
        table=[
            {
                "work item": invocation.work_item,
                "stage": invocation.stage,
                "role": result.role,
                "attempt": result.attempt,
                "started": result.started_at.isoformat(timespec="seconds"),
                "ended": result.ended_at.isoformat(timespec="seconds"),
                "exit code": result.exit_code,
                "duration s": result.duration_seconds,
                "outcome": "ok"
                if result.succeeded
                else f"{result.failure_kind}: {result.failure_reason or result.error}",
                "cost usd": result.cost_usd,
                "input tokens": result.input_tokens,
                "output tokens": result.output_tokens,
                "turns": result.num_turns,
                "session": result.session_id,
                "sandbox": result.sandbox,
                "own commits folded": result.folded_commits,
                "left out (not committed)": ", ".join(result.left_out[:50]) or "-",
                "sent back by": ", ".join(report.describe() for report in invocation.sent_back_by) or "-",
                "log": result.log_path,
            }
        ],
        description=f"{invocation.work_item} {invocation.role} attempt {result.attempt}",
    )
