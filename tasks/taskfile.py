"""The agent's task file (B3) and system prompt file (B4).

The task file is how work-item text reaches an agent: as the content of a file in
its worktree, never on a command line. It is excluded from commits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from prefect import task

from blocks import load_block
from blocks.agent_profile import AgentProfile, profile_for
from sdlc.config import current_graph
from sdlc.graph import StageSpec, artifacts_dir, builtin_prompt, missing_prompt
from sdlc.models import AgentSpec, Feedback, StageInput, UpToDate, WorkItemRequest, validate_work_item_id
from sdlc.retry import STEP_RETRY_DELAYS_SECONDS, RetryPolicy
from sdlc.settings import get_settings
from tasks.agent import AgentInvocation, check_budget
from tasks.failures import PermanentError, retried_on_transient
from tasks.gates import archive_stale_artifacts_in
from tasks.graph_check import InvalidStageGraph, role_profile_problems
from tasks.ledger import Ledger
from tasks.sandbox import sandbox_spec_for
from tasks.up_to_date import merge_default_branch
from tasks.worktree import (
    base_commit,
    base_file,
    base_repo_config,
    ensure_worktree,
    main_clone_path,
    origin_repo_config,
)

T = TypeVar("T")


def task_file_name(role: str) -> str:
    return f".task-{role}.md"


def work_item_base(repo: str, work_item: str) -> str | None:
    """The commit of origin's default branch the work item started from.

    Recorded in the ledger the first time an agent run of the work item is prepared
    and never moved after: the gates' config and the prompts are read at it, so a
    change on the default branch later, or in the worktree ever, does not reach them.
    """
    ledger = Ledger.from_settings()
    row = ledger.get_work_item(work_item)
    if row is not None and row.base_sha:
        return row.base_sha
    sha = base_commit(repo)
    if sha is None or row is None:
        return sha  # not registered (a stage run on its own): the default branch as it is now
    return ledger.set_base_sha(work_item, sha)


def system_prompt_path(repo: str, work_item: str, role: str, base_sha: str | None) -> Path:
    """The default branch's `.sdlc/agents/<role>.md` at ``base_sha``, else the built-in prompt.

    Never the worktree's copy, which an agent can rewrite: the file is read from the
    main clone's objects and written to ``<data dir>/prompts/<work item>/<role>.md``,
    outside every worktree.
    """
    validate_work_item_id(work_item)
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", role):
        raise ValueError(f"{role!r} is not a role name")
    text = base_file(repo, f".sdlc/agents/{role}.md", base_sha)
    if text is None:
        builtin = builtin_prompt(role)
        if builtin is None:
            raise InvalidStageGraph(missing_prompt(role))
        return builtin
    path = get_settings().root / "prompts" / work_item / f"{role}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _merge_section(update: UpToDate) -> list[str]:
    """What the agent is told of the merge sdlc made before it runs: merged cleanly, or conflicts to resolve."""
    target = (update.target or "")[:12]
    if update.state == "merged":
        return [
            "## Brought up to date",
            "",
            f"sdlc merged `{update.default_branch}` ({target}, {update.commits} new commit(s)) into this branch "
            "before this run: the code here is the merged code.",
            "",
        ]
    return [
        "## Merge in progress: resolve the conflicts first",
        "",
        f"sdlc is merging `{update.default_branch}` ({target}, {update.commits} new commit(s)) into this branch, "
        "and git could not merge these files; they hold conflict markers (`<<<<<<<`, `=======`, `>>>>>>>`):",
        "",
        update.describe_conflicts(),
        "",
        "Edit each of them so that both changes work together and no marker is left, then do your task. "
        "Do not commit, merge or abort the merge yourself: sdlc commits the merge with your resolution.",
        "",
    ]


def render_task(stage_input: StageInput, spec: StageSpec, *, attempt: int, up_to_date: UpToDate | None = None) -> str:
    request = stage_input.request
    out_dir = artifacts_dir(request.work_item)
    lines = [
        f"# Task for the {spec.role}: {request.work_item}",
        "",
        f"- Work item: {request.work_item}",
        f"- Title: {request.title}",
        f"- Stage: {spec.name} (visit {stage_input.visit})",
        f"- Attempt: {attempt}",
        f"- Branch: {request.feature_branch}",
        f"- Artifacts directory: {out_dir}/",
        f"- You may change: {', '.join(spec.commit_paths)} (anything else is not committed)",
        "",
    ]
    if up_to_date is not None and (up_to_date.state == "merged" or up_to_date.left_for_agent):
        lines += _merge_section(up_to_date)
    lines += [
        "## Description",
        "",
        request.description.strip() or "(no description)",
        "",
        "## What to write",
        "",
    ]
    if spec.artifacts:
        lines += [f"- `{out_dir}/{name}`" for name in spec.artifacts]
    for outcome, name in spec.alternate_artifacts.items():
        lines.append(f"- or only `{out_dir}/{name}` ({outcome})")
    for outcome, pattern in spec.verdicts.items():
        lines.append(f"- verdict `{outcome}` must match the pattern `{pattern}` in the first file")
    if not spec.artifacts and not spec.alternate_artifacts:
        lines.append("- the changes your role makes; exit 0 when done, non-zero when it failed")
    if stage_input.feedback:
        lines += ["", "## What the previous step said", ""]
        for item in stage_input.feedback:
            where = f" (see `{item.file}`)" if item.file else ""
            if item.report is not None:
                where += f" (report: {item.report.url or item.report.key})"
            lines += [f"### From {item.source}{where}", "", item.summary.strip() or "(no text)", ""]
    return "\n".join(lines).rstrip() + "\n"


def relocate_feedback(feedback: list[Feedback], moved: dict[str, str]) -> list[Feedback]:
    """Point feedback at the archived copy of a file that was moved to history/."""
    return [
        item.model_copy(update={"file": moved.get(item.file, item.file)}) if item.file else item for item in feedback
    ]


def write_task(
    worktree: str,
    task_file: str,
    stage_input: StageInput,
    spec: StageSpec,
    moved: dict[str, str],
    up_to_date: UpToDate | None = None,
) -> None:
    """Write the task file (`.task-<role>.md`, relative to the worktree) for this attempt."""
    attempt = Ledger.from_settings().count_agent_runs(stage_input.request.work_item, spec.role) + 1
    stage_input = stage_input.model_copy(update={"feedback": relocate_feedback(stage_input.feedback, moved)})
    text = render_task(stage_input, spec, attempt=attempt, up_to_date=up_to_date)
    (Path(worktree) / task_file).write_text(text, encoding="utf-8")


def previous_session(work_item: str, role: str) -> str | None:
    """The CLI session of the role's last successful run, to continue when work comes back to it."""
    runs = [
        r for r in Ledger.from_settings().agent_runs(work_item) if r.role == role and r.session_id and r.exit_code == 0
    ]
    return runs[-1].session_id if runs else None


class AgentNotNamed(PermanentError):
    """No agent is named anywhere: sdlc never falls back to the scripted one on a real repository."""


NO_AGENT_NAMED = (
    "no agent is named for {work_item}: give --agent KIND (e.g. --agent claude) or --agent-profile NAME,"
    " set SDLC_AGENT_PROFILE to a saved AgentProfile block, or put agent_profile: NAME"
    " in the repository's .sdlc/config.yaml"
)


def named_agent(request: WorkItemRequest) -> AgentSpec:
    """The run's agent as named: its own kind or profile, else SDLC_AGENT_PROFILE, else the
    ``agent_profile`` of `.sdlc/config.yaml` on origin's default branch; raises AgentNotNamed."""
    agent = request.agent
    if agent.kind is not None or agent.profile_block:
        return agent
    name = get_settings().agent_profile or origin_repo_config(request.repo).agent_profile
    if name is None:
        raise AgentNotNamed(NO_AGENT_NAMED.format(work_item=request.work_item))
    return agent.model_copy(update={"profile_block": name})


def load_profile(stage_input: StageInput, role: str | None = None) -> AgentProfile:
    """The role's own profile block (``role_profiles``), else the run's agent as named."""
    block = stage_input.request.agent.role_profiles.get(role) if role is not None else None
    if block is not None:
        return load_block(AgentProfile, block)
    agent = named_agent(stage_input.request)
    if agent.profile_block:
        return load_block(AgentProfile, agent.profile_block)
    assert agent.kind is not None  # named_agent names a kind or a profile
    return profile_for(agent.kind, agent.command, agent.timeout_seconds)


def _first(*values: T | None) -> T:
    """The first value that is set (the last one always is)."""
    return next(value for value in values if value is not None)


def retry_policy(agent: AgentSpec, profile: AgentProfile, *, retry_agent: bool) -> RetryPolicy:
    """The run's own budgets and backoff, else its profile's, else the SDLC_AGENT_* settings."""
    settings = get_settings()
    return RetryPolicy(
        max_attempts=_first(agent.max_attempts, profile.max_attempts, settings.agent_max_attempts)
        if retry_agent
        else 1,
        transient_retries=_first(agent.transient_retries, profile.transient_retries, settings.agent_transient_retries),
        backoff_base_seconds=_first(
            agent.backoff_base_seconds, profile.backoff_base_seconds, settings.agent_backoff_base_seconds
        ),
        backoff_cap_seconds=_first(
            agent.backoff_cap_seconds, profile.backoff_cap_seconds, settings.agent_backoff_cap_seconds
        ),
    )


def agent_invocation(worktree: str, stage_input: StageInput, spec: StageSpec, task_file: str) -> AgentInvocation:
    """The command line and the B5 environment for this stage's agent."""
    request = stage_input.request
    problems = role_profile_problems(request.agent, current_graph())
    if problems:  # the pipeline's start names these already; a stage started on its own stops here
        raise InvalidStageGraph("the stage graph cannot run: " + "; ".join(problems))
    profile = load_profile(stage_input, spec.role)
    base_sha = work_item_base(request.repo, request.work_item)
    prompt_file = str(system_prompt_path(request.repo, request.work_item, spec.role, base_sha))
    model = profile.model_for(spec.role)
    protocol_env = {
        "SDLC_ROLE": spec.role,
        "SDLC_STAGE": spec.name,
        "SDLC_WORK_ITEM": request.work_item,
        "SDLC_TASK_FILE": task_file,
        "SDLC_SYSTEM_PROMPT_FILE": prompt_file,
        "SDLC_MODEL": model,
        "SDLC_ARTIFACTS_DIR": artifacts_dir(request.work_item),
    }
    if request.agent.scenario_file:
        protocol_env["SDLC_SCENARIO_FILE"] = request.agent.scenario_file
    agent = request.agent
    ledger = Ledger.from_settings()
    budget = request.budget_usd
    if budget is None:  # the repository's default (B34), from its default branch
        budget = base_repo_config(request.repo, base_sha).budget_usd
        if budget is not None:
            ledger.set_budget(request.work_item, budget)
    left = check_budget(ledger, request.work_item, budget)
    return AgentInvocation(
        provider=profile.kind,
        repo_key=main_clone_path(request.repo).name,
        budget_usd=budget,
        visit=f"{spec.name}-{stage_input.visit}" + (f"-retry{stage_input.retry}" if stage_input.retry else ""),
        retry=retry_policy(agent, profile, retry_agent=spec.retry_agent),
        work_item=request.work_item,
        stage=spec.name,
        role=spec.role,
        worktree=worktree,
        argv=profile.build_command(
            role=spec.role,
            task_file=task_file,
            system_prompt_file=prompt_file,
            max_budget_usd=left,
            resume_session=previous_session(request.work_item, spec.role) if stage_input.feedback else None,
        ),
        timeout_seconds=profile.timeout_for(spec.role),
        protocol_env=protocol_env,
        profile_env=profile.env,
        sandbox=sandbox_spec_for(
            mode=agent.sandbox or profile.sandbox,
            kind=profile.kind,
            work_item=request.work_item,
            read_paths=[*profile.sandbox_read_paths, prompt_file, *filter(None, [agent.scenario_file])],
            write_paths=profile.sandbox_write_paths,
            network=profile.network,
            repo=request.repo,
        ),
        branch=request.feature_branch,
        allowed_paths=spec.commit_paths,
        sent_back_by=[item.report for item in stage_input.feedback if item.report is not None],
    )


class StageOfUnknownWorkItem(PermanentError):
    """The sdlc-stage deployment was asked for a work item no pipeline registered."""


@task(name="prepare-agent-run", **retried_on_transient(STEP_RETRY_DELAYS_SECONDS))
def prepare_agent_run(stage_input: StageInput, spec: StageSpec) -> AgentInvocation:
    """Everything before the agent starts, as one task: the branch's worktree, up to date (B2),
    the gate's stale files archived (B10), the task file written (B3), and the invocation (B5).

    One task rather than four because every task run costs the Prefect server its
    events (about 30 ms of its CPU each), which adds up with many work items at once.
    The caller holds the branch's lock (``tasks.worktree.branch_lock``). The invocation
    is built before anything in the worktree moves: it checks the budget and loads the
    profile, so when that fails, running this again (a resumed or retried stage, B21)
    finds the stale files where they were. Fetch failures that look transient are retried.
    """
    request = stage_input.request
    if Ledger.from_settings().get_work_item(request.work_item) is None:
        raise StageOfUnknownWorkItem(
            f"{request.work_item} is not in the ledger: a stage runs for a work item its pipeline started "
            f"(its budget, spend and history live there); start it with `sdlc run` or the sdlc-pipeline deployment"
        )
    worktree = str(ensure_worktree(request.repo, request.feature_branch))
    task_file = task_file_name(spec.role)
    invocation = agent_invocation(worktree, stage_input, spec, task_file)
    if spec.up_to_date:  # the agent judges, or writes, the code merged with the default branch (issue 16)
        resolvable = spec.commit_paths if spec.resolves_conflicts else None
        invocation.up_to_date = merge_default_branch(
            request.repo, request.feature_branch, Path(worktree), resolvable=resolvable
        )
    moved = archive_stale_artifacts_in(Path(worktree), request.work_item, spec)
    write_task(worktree, task_file, stage_input, spec, moved, invocation.up_to_date)
    return invocation
