"""Typed values that cross a boundary: CLI, flow parameters, task inputs and results.

Everything a work item carries (ID, title, description, branch, repository) is
validated here once, so that later code can treat it as plain data: it is never
handed to a shell, and git sees it only as an argument after the checks below.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

# Defined in the stdlib-only sdlc.ids (the scripted agent checks IDs without pydantic); re-exported here.
from sdlc.ids import WORK_ITEM_ID_PATTERN as WORK_ITEM_ID_PATTERN
from sdlc.ids import validate_work_item_id as validate_work_item_id
from sdlc.retry import RetryKnobs

BRANCH_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
URL_PATTERN = re.compile(r"^(https?|ssh|git|file)://[^\s]+$")
SCP_PATTERN = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~-]+$")
BlockName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[a-z0-9][a-z0-9-]*$")]
"""The name of a saved Prefect block (lower case, digits and dashes, as Prefect allows)."""
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A stage graph's role (as sdlc.graph.ROLE_PATTERN): it names the role's prompt and task files."""
AGENT_KINDS = ("scripted", "claude", "codex", "gemini", "aider", "opencode", "custom")
AgentKind = Literal["scripted", "claude", "codex", "gemini", "aider", "opencode", "custom"]
TrackerState = Literal["in_progress", "in_review", "needs_input", "blocked", "done"]
"""The states sdlc moves a tracker's work item through; the tracker block maps them to its own (B50)."""
NotifyEvent = Literal[
    "work_item_started",
    "stage_changed",
    "agent_started",
    "agent_finished",
    "agent_failed",
    "gate_failed",
    "gate_warning",
    "approval_requested",
    "input_requested",
    "usage_limit",
    "blocked",
    "failed",
    "done",
]
"""What the notifiers are told of (B51, B75); SDLC_NOTIFY_EVENTS and SDLC_NOTIFY_BLOCKS route them."""
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)
NotifyDetails = dict[str, str | int | float | bool | None]
"""An event's facts as notifications.jsonl keeps them beside its message (role, attempt, duration, ...)."""


def _no_control_chars(value: str, what: str, allow_newlines: bool = False) -> str:
    allowed = {"\n", "\t", "\r"} if allow_newlines else {"\t"}
    for ch in value:
        if unicodedata.category(ch) == "Cc" and ch not in allowed:
            raise ValueError(f"{what} must not contain control characters (found {ch!r})")
    return value


def validate_branch(value: str) -> str:
    """An allowlist stricter than `git check-ref-format`: no option-like or odd names."""
    if (
        not BRANCH_PATTERN.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", "."))
        or "/." in value
        or any(part.endswith(".lock") for part in value.split("/"))
        or value == "HEAD"
    ):
        raise ValueError(
            f"branch name {value[:60]!r} is not allowed (letters, digits, '.', '_', '-', '/'; no '..', no leading '-')"
        )
    return value


def validate_repo(value: str) -> str:
    """A local path that exists, or a git URL; nothing option-like."""
    if not value or value.startswith("-"):
        raise ValueError(f"repository {value[:60]!r} is not a path or a git URL")
    _no_control_chars(value, "repository")
    if URL_PATTERN.match(value) or SCP_PATTERN.match(value):
        # git itself blocks an option-like host ("ssh://-oProxyCommand=..."); refuse it here already.
        authority = value.split("://", 1)[1].split("/", 1)[0] if "://" in value else value.split(":", 1)[0]
        if authority.rpartition("@")[2].startswith("-"):
            raise ValueError(f"repository {value[:60]!r} has an option-like host")
        return value
    path = Path(value).expanduser()
    try:
        if not path.exists():
            raise ValueError(f"repository {value[:200]} does not exist")
        if not ((path / "HEAD").is_file() or (path / ".git").exists()):
            raise ValueError(f"repository {value[:200]} is not a git repository")
        return str(path.resolve())
    except OSError as exc:  # e.g. a name over the file system's limit
        raise ValueError(f"repository {value[:200]} is not a usable path ({exc.strerror})") from None


# The limits of flows/inputs.py's ApprovalDecision, checked before the input reaches Prefect
# (which would refuse it only after the person's command or webhook had gone through).
COMMENT_MAX_LENGTH = 20000
PERSON_MAX_LENGTH = 200


def validate_comment(value: str, what: str = "comment") -> str:
    """A person's free text (approval, rejection): several lines allowed, no other control characters."""
    if len(value) > COMMENT_MAX_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; at most {COMMENT_MAX_LENGTH} are allowed")
    return _no_control_chars(value, what, allow_newlines=True)


def validate_person(value: str, what: str = "approver") -> str:
    """Who decides: one line of at most 200 characters."""
    if not value.strip() or len(value) > PERSON_MAX_LENGTH:
        raise ValueError(f"{what} must be 1 to {PERSON_MAX_LENGTH} characters")
    return _no_control_chars(value, what)


def slugify(text: str, max_length: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "work-item"


def default_branch_name(work_item: str, title: str) -> str:
    return f"feature/{work_item}-{slugify(title)}"


class AgentSpec(RetryKnobs):
    """Which agent does the work: a CLI kind, or any command under the B5 protocol; its retry budgets (unset:
    its profile's, else the ``SDLC_AGENT_*`` settings)."""

    model_config = ConfigDict(extra="forbid")

    kind: AgentKind | None = Field(
        default=None,
        description="scripted, claude, codex, gemini, aider, opencode or custom; unset: the profile block, else"
        " SDLC_AGENT_PROFILE, else agent_profile in the repository's .sdlc/config.yaml (never a default agent).",
    )
    command: list[str] | None = Field(default=None, description="Argument list of a custom agent (kind=custom).")
    timeout_seconds: float = Field(
        default=1800, gt=0, le=7 * 24 * 3600, description="Per-run timeout; the whole process group is ended."
    )
    scenario_file: str | None = Field(
        default=None, description="Scenario of the built-in scripted agent (JSON or YAML)."
    )
    profile_block: str | None = Field(
        default=None, description="Name of an AgentProfile block to load instead of the defaults."
    )
    sandbox: Literal["auto", "bwrap", "none"] | None = Field(
        default=None,
        description="Confine the agents: auto, bwrap or none (unset: the profile's, else SDLC_AGENT_SANDBOX).",
    )
    role_profiles: dict[RoleName, BlockName] = Field(
        default_factory=dict,
        description="AgentProfile block per role (e.g. developer: codex-team); a role not named here runs the"
        " agent as named above. Every role must be one of the stage graph's.",
    )

    @model_validator(mode="after")
    def _custom_needs_command(self) -> AgentSpec:
        if self.kind == "custom" and not self.command:
            raise ValueError("a custom agent needs a command")
        if self.command is not None:
            if not self.command or not self.command[0]:
                raise ValueError("agent command must not be empty")
            if self.command[0].startswith("-"):
                raise ValueError(f"agent command must start with a program, not the option {self.command[0][:60]!r}")
            for arg in self.command:
                _no_control_chars(arg, "agent command")
        return self


FORGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ForgeSpec(BaseModel):
    """Where the pull request lives (B43): the local forge, or a repository on Gitea, Forgejo, GitHub or GitLab."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "gitea", "forgejo", "github", "gitlab"] = Field(
        default="local", description="local, gitea, forgejo (Codeberg too: the Gitea API), github or gitlab."
    )
    credentials_block: str | None = Field(
        default=None,
        description="Name of the GiteaCredentials (gitea, forgejo) / GitHubCredentials / GitLabCredentials block.",
    )
    owner: str | None = Field(
        default=None, description="Repository owner on the forge; on GitLab its group path (group/subgroup)."
    )
    name: str | None = Field(default=None, description="Repository name on the forge.")
    ci_timeout_seconds: float = Field(
        default=900, gt=0, description="How long the CI-green gate waits while CI is pending."
    )
    ci_poll_seconds: float = Field(default=5, gt=0)

    @field_validator("credentials_block", "owner", "name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _remote_needs_coordinates(self) -> ForgeSpec:
        if self.kind != "local":
            missing = [f for f in ("credentials_block", "owner", "name") if not getattr(self, f)]
            if missing:
                raise ValueError(f"a {self.kind} forge needs {', '.join(missing)}")
            # GitLab nests groups: its owner is a group path, each part a name.
            owner_parts = (self.owner or "").split("/") if self.kind == "gitlab" else [self.owner or ""]
            for value in (*owner_parts, self.name or ""):
                if not FORGE_NAME_PATTERN.match(value) or value in (".", ".."):
                    raise ValueError(f"forge owner/name {value!r} is not a valid name")
        return self

    @property
    def repository_path(self) -> str:
        """``owner/name`` (on GitLab ``group/subgroup/name``)."""
        return f"{self.owner}/{self.name}"


GITLAB_ISSUE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){1,20}#[0-9]{1,9}$")


class TrackerSpec(BaseModel):
    """Where the work item is tracked (B50): a Plane work item kept in step with the pipeline, or the
    GitLab issue it came from, told by notes (issue 19)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["plane", "gitlab"] = Field(default="plane", description="plane, or gitlab (notes on its issue).")
    credentials_block: BlockName = Field(description="Name of the PlaneCredentials (GitLabCredentials) block.")
    ref: str | None = Field(
        default=None,
        max_length=2200,
        description="Plane: the work item's human id (ENG-42) or UUID, default the work item ID; "
        "GitLab: its project path and issue iid, group/subgroup/app#12.",
    )

    @model_validator(mode="after")
    def _ref_of_its_kind(self) -> TrackerSpec:
        if self.kind == "gitlab":
            if self.ref is None or not GITLAB_ISSUE_REF.match(self.ref):
                raise ValueError(f"a GitLab issue is named group/project#iid (got {str(self.ref)[:80]!r})")
        elif self.ref is not None and not re.fullmatch(r"[A-Z][A-Z0-9]{0,11}-[0-9]{1,9}|[0-9a-fA-F-]{36}", self.ref):
            raise ValueError(f"a Plane work item is named ENG-42 or by its UUID (got {self.ref[:80]!r})")
        return self

    @property
    def gitlab_issue(self) -> tuple[str, str, int]:
        """(group path, project, iid) of a GitLab issue ref."""
        assert self.kind == "gitlab" and self.ref is not None
        path, _, iid = self.ref.rpartition("#")
        owner, _, name = path.rpartition("/")
        return owner, name, int(iid)


class WorkItemRequest(BaseModel):
    """One work item to take through the pipeline: the pipeline flow's parameter."""

    model_config = ConfigDict(extra="forbid")

    work_item: str = Field(description="Work item ID, e.g. ET-12.")
    title: str = Field(min_length=1, max_length=200, description="One-line title.")
    description: str = Field(default="", max_length=65536, description="What is asked for.")
    repo: str = Field(description="Origin: a local path (bare repository) or a git URL.")
    branch: str | None = Field(default=None, description="Default feature/<ID>-<slug of title>.")
    agent: AgentSpec = Field(default_factory=AgentSpec)
    forge: ForgeSpec = Field(default_factory=ForgeSpec)
    tracker: TrackerSpec | None = Field(default=None, description="A Plane work item to keep in step; none by default.")
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Spend budget of the work item in dollars, from the agents' reported cost (B34).",
    )
    auto_approve: bool = Field(default=False, description="Skip the human approval of the analysis.")
    approval_timeout_seconds: int = Field(default=7 * 24 * 3600, gt=0)

    @field_validator("work_item")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return validate_work_item_id(value)

    @field_validator("title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title must not be blank")
        return _no_control_chars(value, "title")

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str) -> str:
        return _no_control_chars(value, "description", allow_newlines=True)

    @field_validator("repo")
    @classmethod
    def _check_repo(cls, value: str) -> str:
        return validate_repo(value)

    @field_validator("branch")
    @classmethod
    def _check_branch(cls, value: str | None) -> str | None:
        return None if value is None else validate_branch(value)

    @model_validator(mode="after")
    def _default_branch(self) -> WorkItemRequest:
        if self.branch is None:
            self.branch = default_branch_name(self.work_item, self.title)
        return self

    @property
    def feature_branch(self) -> str:
        assert self.branch is not None
        return self.branch


class WorkItemState(str, Enum):
    running = "running"
    waiting_approval = "waiting_approval"
    needs_input = "needs_input"
    waiting_usage_limit = "waiting_usage_limit"
    blocked = "blocked"
    done = "done"
    failed = "failed"


class ReportLink(BaseModel):
    """A failed gate's report as published in the Prefect UI (issue 17): the artifact's key and its page."""

    key: str
    url: str | None = Field(default=None, description="The artifact's page; none without a UI URL.")

    def describe(self) -> str:
        """``review-report-et-7 http://.../artifacts/artifact/<id>``: the key, and the link when there is one."""
        return f"{self.key} {self.url}" if self.url else self.key


class Feedback(BaseModel):
    """What the previous gate or person said, carried into the next agent's task file."""

    source: str = Field(description="answers, conflict, review, test_report, rejection, deploy, tests, agent")
    summary: str = ""
    file: str | None = Field(default=None, description="Path relative to the worktree.")
    report: ReportLink | None = Field(default=None, description="The gate's report as published in the Prefect UI.")


class StageInput(BaseModel):
    """The one input of a stage flow."""

    request: WorkItemRequest
    stage: str
    visit: int = Field(ge=1, description="How many times this stage has been entered, this one included.")
    feedback: list[Feedback] = Field(default_factory=list)
    retry: int = Field(
        default=0, ge=0, description="How often a person sent the Blocked work item on; budgets count within one."
    )
    gate_only: bool = Field(
        default=False, description="Main moved after the gates passed: judge the merged code again, run no agent."
    )


RETRIED_BY = "retried by"
"""How the ledger's transition of a retry begins (``Continuation.reason``)."""


class Continuation(BaseModel):
    """A person sends a Blocked work item on (`sdlc retry`, the UI's Retry, Telegram's /retry)."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(min_length=1, max_length=100, description="The stage to continue at.")
    number: int = Field(ge=1, description="Which retry of this work item this is (its agents' budgets are fresh).")
    by: str = Field(min_length=1, max_length=100, description="Who sent it on.")
    source: str = Field(default="cli", max_length=40, description="From where: cli, ui, telegram.")
    comment: str = Field(default="", max_length=2000, description="Why, or what was fixed: for the next agent.")

    @property
    def reason(self) -> str:
        """The transition's reason in the ledger: who, from where and why."""
        return f"{RETRIED_BY} {self.by} from {self.source}" + (f": {self.comment}" if self.comment else "")


def pipeline_parameters(request: WorkItemRequest, retry: Continuation | None = None) -> dict[str, Any]:
    """The sdlc-pipeline flow's parameters as a new run of it is given them (JSON)."""
    return {"request": request.model_dump(mode="json"), "retry": retry.model_dump(mode="json") if retry else None}


class AgentResult(BaseModel):
    role: str
    attempt: int
    exit_code: int | None
    duration_seconds: float
    log_path: str
    output_tail: str = ""
    timed_out: bool = False
    started_at: datetime
    ended_at: datetime
    error: str | None = None
    failure_kind: str | None = Field(default=None, description="transient, permanent or usage_limit (B30).")
    failure_reason: str | None = None
    retry_after_seconds: float | None = None
    retry_not_before: datetime | None = Field(default=None, description="The next attempt starts no sooner.")
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    session_id: str | None = None
    sandbox: str | None = Field(
        default=None, description="How the run was confined: bwrap (...), or unconfined and why."
    )
    folded_commits: int = Field(
        default=0, description="Commits the agent made itself, folded back into sdlc's one commit."
    )
    left_out: list[str] = Field(
        default_factory=list, description="Changed paths outside the role's allowlist: never committed."
    )

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None and self.failure_kind is None


class GateResult(BaseModel):
    outcome: str = Field(description="Key into the stage's routes: pass, questions, conflict, ...")
    passed: bool
    reason: str
    details: str = Field(default="", description="Text for the next task: questions, findings, report.")
    artifact: str | None = Field(default=None, description="Artifact the gate read, relative to the worktree.")
    warning: str | None = Field(
        default=None, description="What people must know about a gate that passed, e.g. that it checked nothing."
    )
    report: ReportLink | None = Field(
        default=None, description="What the gate read, published as its stage run's artifact (a failed gate)."
    )


class CommitResult(BaseModel):
    sha: str | None = None
    committed: list[str] = Field(default_factory=list)
    left_out: list[str] = Field(default_factory=list)
    pushed: bool = False
    merged: str | None = Field(default=None, description="The default branch's commit a resolved merge brought in.")
    unresolved: list[str] = Field(
        default_factory=list, description="Conflicted files still holding conflict markers: the merge was not made."
    )


class MainCommit(BaseModel):
    """A commit of the default branch, as a developer resolving a conflict is told of it."""

    sha: str
    subject: str
    author: str


class ConflictingPath(BaseModel):
    path: str
    commits: list[MainCommit] = Field(default_factory=list, description="The default branch's commits that touched it.")


class UpToDate(BaseModel):
    """What bringing a work item's branch up to date with origin's default branch did (issue 16).

    ``current``: the branch already contains it; ``merged``: sdlc merged it in (a merge
    commit, pushed); ``conflict``: it does not merge cleanly, and either the merge is
    left in the worktree for the stage's agent to resolve (``left_for_agent``) or it
    was abandoned and the stage goes to whoever resolves conflicts.
    """

    state: Literal["current", "merged", "conflict"]
    branch: str
    default_branch: str
    target: str | None = Field(default=None, description="The default branch's commit merged, or tried.")
    merge_commit: str | None = None
    commits: int = Field(default=0, description="How many of the default branch's commits the branch did not have.")
    conflicts: list[ConflictingPath] = Field(default_factory=list)
    left_for_agent: bool = False
    git_said: list[str] = Field(default_factory=list, description="git's CONFLICT lines.")

    @property
    def conflicting_paths(self) -> list[str]:
        return [c.path for c in self.conflicts]

    def reason(self) -> str:
        target = (self.target or "")[:12]
        if self.state == "current":
            return f"{self.branch} already contains {self.default_branch} ({target})"
        if self.state == "merged":
            return (
                f"brought up to date: merged {self.default_branch} ({target}, {self.commits} new commit(s)) "
                f"into {self.branch}"
            )
        return (
            f"conflict merging {self.default_branch} ({target}) into {self.branch}: {', '.join(self.conflicting_paths)}"
        )

    def describe_conflicts(self) -> str:
        """The conflicting paths with the default branch's commits that touched them, and git's own words."""
        lines: list[str] = []
        for conflict in self.conflicts:
            lines.append(f"- `{conflict.path}`, changed on {self.default_branch} by:")
            lines += [f"  - {c.sha[:12]} {c.subject} ({c.author})" for c in conflict.commits] or [
                "  - (no commit found)"
            ]
        if self.git_said:
            lines += ["", "git said:", "", *[f"    {line}" for line in self.git_said]]
        return "\n".join(lines)


class PullRequestRef(BaseModel):
    number: int
    url: str
    branch: str
    base: str
    title: str
    state: Literal["open", "merged", "closed"]
    merge_commit: str | None = None


class StageResult(BaseModel):
    stage: str
    role: str
    visit: int
    agent: AgentResult | None = None
    gate: GateResult
    commit: CommitResult | None = None
    pull_request: PullRequestRef | None = None
    brought_up_to_date: list[UpToDate] = Field(
        default_factory=list, description="Merges of the default branch into the branch this stage made."
    )


class MergeOutcome(BaseModel):
    """The end of a work item: its PR merged, or not, because the default branch moved since its gates passed."""

    pull_request: PullRequestRef | None = None
    main_moved: str | None = Field(default=None, description="Why it was not merged: what moved, for the ledger.")


class PipelineResult(BaseModel):
    work_item: str
    state: WorkItemState
    stage: str
    reason: str
    pull_request: PullRequestRef | None = None


class Transition(BaseModel):
    """A move between stages, as the ledger and the tracker show it (``from_stage`` None: the start)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_stage: str | None
    to_stage: str
    reason: str


class Announcement(BaseModel):
    """Something the people who follow a work item are told (B50, B51).

    The notifiers get ``message`` when ``event`` is set; the tracker, when there is
    one, gets ``comment`` and, when set, moves to ``tracker_state``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: NotifyEvent | None = Field(default=None, description="None: for the tracker only.")
    message: str
    details: NotifyDetails = Field(
        default_factory=dict, description="The event's facts for notifications.jsonl (a stage change: from, to, why)."
    )
    tracker_state: TrackerState | None = None
    comment: str | None = Field(default=None, description="The tracker's comment; none: no comment.")


class StepRecord(BaseModel):
    """What one step of a pipeline run leaves behind, written together by one task run.

    In this order: the stage transition, the work item's state, its pull request
    (ledger), then each announcement (notifiers, tracker).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    transition: Transition | None = None
    state: WorkItemState | None = None
    stage: str | None = Field(default=None, description="The stage the state is at.")
    reason: str | None = Field(default=None, description="Why the work item is in that state.")
    pull_request: PullRequestRef | None = None
    announcements: list[Announcement] = Field(default_factory=list)
