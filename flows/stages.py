"""One stage of the pipeline as a Prefect flow: worktree, task file, agent, commit, PR, gate,
and the report of a gate that sent the work back.

The body holds task calls and decisions only; the graph says what the stage's
role, gate, commit paths and PR duty are.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.replay import replayed
from sdlc.config import current_graph
from sdlc.graph import CODE_GATES, StageSpec
from sdlc.models import AgentResult, GateResult, PullRequestRef, StageInput, StageResult, UpToDate
from sdlc.settings import settings_in_force
from tasks import agent, artifacts, forge, gates, git, taskfile, up_to_date
from tasks.agent import AgentRunFailed
from tasks.failures import UsageLimitWait
from tasks.worktree import branch_lock, worktree_path

# Finished steps are not redone when the stage runs again after a crash (B21).
# Resume relies on these: each call is replayed by its task's name and its ordinal
# among that task's calls, and a call whose parameters changed stops the run
# (flows/replay.py). Keep the names unique; copies made with .with_options() keep both.
prepare_agent_run = replayed(taskfile.prepare_agent_run)
run_agent = replayed(agent.run_agent)
commit_and_push = replayed(git.commit_and_push)
ensure_pull_request = replayed(forge.ensure_pull_request)
run_gate = replayed(gates.run_gate)
bring_up_to_date = replayed(up_to_date.bring_up_to_date)
publish_gate_report = replayed(artifacts.publish_gate_report)


def _stage_run_name() -> str:
    from prefect.runtime import flow_run

    stage_input: Any = flow_run.parameters.get("stage_input", {})
    if isinstance(stage_input, StageInput):
        stage_input = stage_input.model_dump()
    request = stage_input.get("request", {})
    return f"{request.get('work_item', '?')}-{stage_input.get('stage', '?')}-{stage_input.get('visit', '?')}"


# Resume relies on persist_result=True: a rerun of the pipeline reuses a finished stage
# only when its result was persisted; without it every finished stage runs again.
@flow(name="sdlc-stage", flow_run_name=_stage_run_name, log_prints=True, persist_result=True)
def stage_flow(stage_input: StageInput) -> StageResult:
    request = stage_input.request
    # The pipeline's settings (a stage runs inside it); B2: runs on one branch never
    # interleave, from fetching its worktree to the gate.
    with settings_in_force(), branch_lock(worktree_path(request.repo, request.feature_branch)):
        return _run_stage(stage_input)


def _result(
    stage_input: StageInput, spec: StageSpec, gate: GateResult, merges: list[UpToDate], **done: Any
) -> StageResult:
    merged = [update for update in merges if update.state == "merged"]
    return StageResult(
        stage=spec.name, role=spec.role, visit=stage_input.visit, gate=gate, brought_up_to_date=merged, **done
    )


def _reported(stage_input: StageInput, spec: StageSpec, gate: GateResult) -> GateResult:
    """A failed gate that sends the work on says why in the UI (issue 17): what it read (the review, the
    test report, the end of the tests' log) becomes an artifact of this stage's run, named on the result
    so the next agent's task file and run name it. Questions have their own page (the pipeline's)."""
    if gate.passed or gate.artifact is None:
        return gate
    if current_graph().route(spec.name, gate.outcome).wait_for == "answers":
        return gate
    report = publish_gate_report(stage_input.request, spec.name, stage_input.visit, gate)
    return gate.model_copy(update={"report": report}) if report is not None else gate


def _judge_again(stage_input: StageInput, spec: StageSpec) -> StageResult:
    """The default branch moved after the gates passed: its gate judges the merged code, no agent runs."""
    request = stage_input.request
    update = bring_up_to_date(request.repo, request.feature_branch)
    if update.state == "conflict":
        return _result(stage_input, spec, gates.conflict_result(update), [update])
    worktree = str(worktree_path(request.repo, request.feature_branch))
    gate = run_gate(worktree, request.work_item, stage_input.visit, spec, None, request.repo, request.forge)
    return _result(stage_input, spec, _reported(stage_input, spec, gate), [update])


def _run_stage(stage_input: StageInput) -> StageResult:
    spec = current_graph().stage(stage_input.stage)
    if stage_input.gate_only:
        return _judge_again(stage_input, spec)
    request = stage_input.request
    invocation = prepare_agent_run(stage_input, spec)
    worktree = invocation.worktree
    merges = [invocation.up_to_date] if invocation.up_to_date is not None else []
    before = invocation.up_to_date
    if before is not None and before.state == "conflict" and not before.left_for_agent:
        # This agent would judge code that does not merge: the stage that resolves conflicts comes first.
        return _result(stage_input, spec, gates.conflict_result(before), merges)

    agent: AgentResult
    try:
        # Budgets and waits are decided per failure by the run itself (B31); Prefect schedules each retry
        # for the wait decided (AwaitingRetry), through the task's retry_condition_fn.
        agent = run_agent.with_options(retries=invocation.retry.task_retries)(invocation)
    except AgentRunFailed as failure:
        if failure.waits_for_usage_reset:
            # Handed to the pipeline, which reschedules itself for the reset instead of sleeping (B31).
            assert failure.result.retry_not_before is not None
            raise UsageLimitWait(failure.result.retry_not_before, failure.decision.why) from None
        agent = failure.result

    commit = None
    pull_request: PullRequestRef | None = None
    if agent.succeeded:
        commit = commit_and_push(
            worktree,
            role=spec.role,
            work_item=request.work_item,
            summary=f"{spec.name} for {request.title}",
            allowed=spec.commit_paths,
            branch=request.feature_branch,
        )
        if spec.opens_pull_request:
            pull_request = ensure_pull_request(
                request.repo,
                request.forge,
                request.feature_branch,
                f"{request.work_item}: {request.title}",
                request.description,
                request.work_item,
            )
        if spec.up_to_date and spec.gate in CODE_GATES:
            # The tests judge the code as it would be merged: with the default branch as it is now.
            after = bring_up_to_date(request.repo, request.feature_branch)
            merges.append(after)
            if after.state == "conflict":
                conflict = gates.conflict_result(after)
                if commit.unresolved:
                    left = f"{spec.role} left conflict markers in {', '.join(commit.unresolved)}; "
                    conflict = conflict.model_copy(update={"reason": left + conflict.reason})
                done = {"agent": agent, "commit": commit, "pull_request": pull_request}
                return _result(stage_input, spec, conflict, merges, **done)

    gate = run_gate(worktree, request.work_item, stage_input.visit, spec, agent, request.repo, request.forge)
    gate = _reported(stage_input, spec, gate)
    return _result(stage_input, spec, gate, merges, agent=agent, commit=commit, pull_request=pull_request)
