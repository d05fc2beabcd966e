"""The stage graph (B1): stages, roles, gates, artifacts, routes and budgets, as data.

The router (``sdlc/router.py``) reads this and nothing else to decide where a work
item goes next. A team changes the process by editing a YAML file in this shape
(``sdlc graph dump`` prints the graph in force) and pointing ``SDLC_GRAPH_FILE`` at
it, rather than by changing code; a new gate kind is one function in
``tasks/gates.py`` and its outcomes in ``GATE_OUTCOMES`` below.

A graph is checked as a whole when it loads: every structural problem is named
at once (a route to an unknown stage, a stage nothing reaches, a role name that
cannot be a prompt file, a gate kind that does not exist, an outcome its gate can
name with no route); :func:`prompt_problems` adds the roles' prompts, which need the
repository (``sdlc graph check`` and the pipeline's start).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdlc.models import TrackerState

# Where a route can end besides another stage.
DONE = "done"
BLOCKED = "blocked"
TERMINALS = (DONE, BLOCKED)
# A role names its prompt file (`.sdlc/agents/<role>.md`) and its task file.
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")
# The outcome every gate kind but exit_code names when the agent itself failed; unless a
# stage routes it, it blocks (a person looks at the agent's log).
AGENT_FAILED = "agent_failed"
# The outcome of an ``up_to_date`` stage whose branch does not merge origin's default branch cleanly.
CONFLICT = "conflict"
# Gate kinds that run the code itself: they judge the merged code again when the default branch moves.
CODE_GATES = frozenset({"ci", "tests"})
BUILTIN_PROMPTS = Path(__file__).resolve().parent / "prompts"


def builtin_prompt(role: str) -> Path | None:
    """The built-in system prompt of ``role`` (sdlc/prompts/<role>.md), if sdlc has one."""
    path = BUILTIN_PROMPTS / f"{role}.md"
    return path if ROLE_PATTERN.fullmatch(role) and path.is_file() else None


def artifacts_dir(work_item: str) -> str:
    """Where agents write their artifacts and gates read them, relative to the worktree (B10)."""
    return f"docs/work-items/{work_item}"


class Route(BaseModel):
    """Where a gate outcome sends the work item."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="A stage name, 'done' or 'blocked'.")
    feedback: Literal["none", "gate"] = Field(
        default="gate", description="Carry the gate's details into the next task."
    )
    wait_for: Literal["none", "answers"] = Field(
        default="none", description="Pause for typed input (answers to questions) first."
    )
    block: bool = Field(default=False, description="Stop with the work item Blocked, at 'to'.")
    alert: bool = Field(default=False, description="Notify that manual intervention is needed.")
    merge_pull_request: bool = Field(default=False, description="Merge the branch's PR first.")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: str
    gate: str = Field(description="Gate kind, a function in tasks/gates.py.")
    artifacts: list[str] = Field(default_factory=list, description="Files the gate needs, under docs/work-items/<ID>/.")
    alternate_artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="Outcome -> file that, when written, decides the gate instead (questions, conflict).",
    )
    verdicts: dict[str, str] = Field(
        default_factory=dict, description="Outcome -> regex searched in the first artifact (review, test report)."
    )
    routes: dict[str, Route]
    requires_approval: bool = Field(default=False, description="Pause for a human after a passing gate.")
    commit_paths: list[str] = Field(default_factory=lambda: ["docs/"])
    opens_pull_request: bool = False
    retry_agent: bool = Field(
        default=True,
        description="Re-run an agent after a permanent failure; off where the exit code is the gate (transient failures are retried anyway).",
    )
    max_visits: int | None = Field(default=None, description="Entries into this stage per work item.")
    tracker_state: TrackerState = Field(
        default="in_progress", description="Tracker state while this stage runs; the tracker block names it (B50)."
    )
    up_to_date: bool = Field(
        default=False,
        description="Merge origin's default branch into the branch before this stage judges code: before its "
        "agent runs, and again before a ci/tests gate. A conflict is the outcome 'conflict'; the stage whose "
        "'conflict' route comes back to itself resolves it.",
    )
    when_main_moves: Literal["skip", "gate", "stage"] = Field(
        default="skip",
        description="When the default branch moved after the gates passed (at the merge): run this stage's "
        "gate again on the merged code (no agent), the whole stage, or skip it. Only up_to_date stages.",
    )

    @property
    def resolves_conflicts(self) -> bool:
        """This stage's agent resolves a conflicting merge itself (its conflict route comes back to it)."""
        route = self.routes.get(CONFLICT)
        return self.up_to_date and route is not None and route.to == self.name

    @property
    def stale_artifacts(self) -> list[str]:
        """Files that must be written afresh by each run for the gate to judge them."""
        return [*self.artifacts, *self.alternate_artifacts.values()]


class StageGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str
    stages: list[StageSpec]

    @model_validator(mode="after")
    def _check_structure(self) -> StageGraph:
        problems = structural_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"no stage {name!r} in the graph")

    def route(self, stage: str, outcome: str) -> Route:
        """The route for a gate outcome; an outcome the graph does not name (agent_failed) blocks."""
        spec = self.stage(stage)
        return spec.routes.get(outcome) or Route(to=BLOCKED, alert=True, feedback="gate")

    @property
    def roles(self) -> list[str]:
        return [s.role for s in self.stages]

    @property
    def keeps_up_to_date(self) -> bool:
        """Some stage judges code merged with the default branch: a PR is merged only when it is current."""
        return any(s.up_to_date for s in self.stages)

    def first_to_judge_again(self) -> str | None:
        """Where judging the merged code begins when the default branch moved: the first
        ``up_to_date`` stage along the pass routes from the start."""
        by_name = {s.name: s for s in self.stages}
        stage, seen = self.start, set()
        while stage in by_name and stage not in seen:
            seen.add(stage)
            spec = by_name[stage]
            if spec.up_to_date:
                return stage
            stage = spec.routes["pass"].to
        return None


# Every gate kind (its judge is in tasks/gates.py) and the outcomes it can name for a stage;
# each of them needs a route. agent_failed is apart: unless routed, it blocks.
GATE_OUTCOMES: dict[str, Callable[[StageSpec], tuple[str, ...]]] = {
    "ci": lambda spec: ("pass", "fail"),
    "tests": lambda spec: ("pass", "fail"),
    "exit_code": lambda spec: ("pass", "fail"),
    "artifacts": lambda spec: ("pass", "missing", *spec.alternate_artifacts),
    "verdict": lambda spec: ("missing", *spec.verdicts),
}


def structural_problems(graph: StageGraph) -> list[str]:
    """What is wrong with the graph itself (routes, reach, gate kinds), every problem at once."""
    names = [s.name for s in graph.stages]
    problems = [
        f"stage {name!r} is defined more than once" for name in sorted({n for n in names if names.count(n) > 1})
    ]
    if graph.start not in names:
        problems.append(f"start stage {graph.start!r} is not defined")
    for stage in graph.stages:
        if not ROLE_PATTERN.fullmatch(stage.role):
            problems.append(
                f"stage {stage.name!r} has role {stage.role!r}: a role is lower-case letters, digits, '-' or '_'"
            )
        if "pass" not in stage.routes:
            problems.append(f"stage {stage.name!r} has no 'pass' route")
        for outcome, route in stage.routes.items():
            if route.to not in names and route.to not in TERMINALS:
                problems.append(f"stage {stage.name!r} routes {outcome!r} to unknown {route.to!r}")
        problems += _gate_problems(stage)
    reached = _reachable(graph, names)
    problems += [f"stage {name!r} is never reached from {graph.start!r}" for name in names if name not in reached]
    return problems


def _reachable(graph: StageGraph, names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [graph.start] if graph.start in names else []
    by_name = {s.name: s for s in graph.stages}
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo += [route.to for route in by_name[name].routes.values()]
    return seen


def _gate_problems(stage: StageSpec) -> list[str]:
    outcomes = GATE_OUTCOMES.get(stage.gate)
    if outcomes is None:
        known = ", ".join(sorted(GATE_OUTCOMES))
        return [f"stage {stage.name!r} names gate kind {stage.gate!r}, which does not exist (kinds: {known})"]
    if stage.gate == "verdict" and not stage.artifacts:
        return [f"stage {stage.name!r}: a verdict gate reads its first artifact, and it names none"]
    problems = [
        f"stage {stage.name!r}: its {stage.gate} gate can name {outcome!r}, which has no route"
        for outcome in sorted(set(outcomes(stage)) - set(stage.routes))
    ]
    if stage.up_to_date and CONFLICT not in stage.routes:
        problems.append(f"stage {stage.name!r} is up_to_date: its merge can name {CONFLICT!r}, which has no route")
    if stage.when_main_moves != "skip" and not stage.up_to_date:
        problems.append(f"stage {stage.name!r}: when_main_moves {stage.when_main_moves!r} needs up_to_date: true")
    if stage.when_main_moves == "gate" and stage.gate not in CODE_GATES:
        problems.append(
            f"stage {stage.name!r}: when_main_moves 'gate' needs a gate that runs the code "
            f"({', '.join(sorted(CODE_GATES))}), not {stage.gate!r}"
        )
    return problems


WhenMainMoves = Literal["graph", "tests", "all"]
"""What runs again on the merged code when the default branch moved after the gates passed
(``SDLC_WHEN_MAIN_MOVES``): each stage's own ``when_main_moves`` (the default graph: the
development gate's tests and the testing stage), only the gates that run the code, or every
up_to_date stage (review too)."""


def with_when_main_moves(graph: StageGraph, choice: WhenMainMoves) -> StageGraph:
    """The graph with ``SDLC_WHEN_MAIN_MOVES`` applied to its up_to_date stages."""
    if choice == "graph":
        return graph
    stages = []
    for spec in graph.stages:
        if spec.up_to_date:
            if choice == "tests":
                mode = "gate" if spec.gate in CODE_GATES else "skip"
            else:
                mode = spec.when_main_moves if spec.when_main_moves != "skip" else "stage"
            spec = spec.model_copy(update={"when_main_moves": mode})
        stages.append(spec)
    return graph.model_copy(update={"stages": stages})


def missing_prompt(role: str) -> str:
    """What to say of a role with no system prompt, in the repository or built in."""
    return f"role {role!r} has no prompt: add .sdlc/agents/{role}.md to the repository's default branch"


def prompt_problems(graph: StageGraph, has_prompt: Callable[[str], bool]) -> list[str]:
    """The roles with no system prompt (``has_prompt`` says: the repository's or a built-in one).

    The rest of the graph was checked when it loaded; this needs the repository, so it
    comes later: ``sdlc graph check --repo`` and the pipeline's start.
    """
    return [missing_prompt(role) for role in sorted({s.role for s in graph.stages}) if not has_prompt(role)]


def dump_graph(graph: StageGraph) -> str:
    """The graph as the YAML ``load_graph`` reads back (``sdlc graph dump``)."""
    data = graph.model_dump(mode="json")
    for stage, spec in zip(data["stages"], graph.stages, strict=True):
        # Every stage field is written, so people see each knob; a route only says what differs.
        stage["routes"] = {
            outcome: route.model_dump(mode="json", exclude_defaults=True) | {"to": route.to}
            for outcome, route in spec.routes.items()
        }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _stage(**kwargs: object) -> StageSpec:
    return StageSpec.model_validate(kwargs)


DEFAULT_GRAPH = StageGraph(
    start="analysis",
    stages=[
        _stage(
            name="analysis",
            role="analyst",
            gate="artifacts",
            artifacts=["02-brd.md", "03-requirements.md", "04-acceptance-criteria.md", "05-test-plan.md"],
            alternate_artifacts={"questions": "01-questions.md"},
            requires_approval=True,
            max_visits=5,
            routes={
                "pass": {"to": "architecture", "feedback": "none"},
                "questions": {"to": "analysis", "wait_for": "answers"},
                "missing": {"to": BLOCKED, "alert": True},
            },
        ),
        _stage(
            name="architecture",
            role="architect",
            gate="artifacts",
            artifacts=["11-architecture.md"],
            alternate_artifacts={"conflict": "10-conflict.md"},
            routes={
                "pass": {"to": "development", "feedback": "none"},
                "conflict": {"to": "analysis"},
                "missing": {"to": BLOCKED, "alert": True},
            },
        ),
        _stage(
            name="development",
            role="developer",
            gate="ci",
            commit_paths=["docs/", "src/", "tests/"],
            opens_pull_request=True,
            max_visits=3,
            up_to_date=True,
            when_main_moves="gate",
            routes={
                "pass": {"to": "review", "feedback": "none"},
                "fail": {"to": "development"},
                CONFLICT: {"to": "development"},
            },
        ),
        _stage(
            name="review",
            role="reviewer",
            gate="verdict",
            artifacts=["12-review.md"],
            verdicts={
                "pass": r"(?mi)^\W*verdict\W*:\W*approve\b",
                "request_changes": r"(?mi)^\W*verdict\W*:\W*request_changes\b",
            },
            tracker_state="in_review",
            up_to_date=True,
            routes={
                "pass": {"to": "testing", "feedback": "none"},
                "request_changes": {"to": "development"},
                CONFLICT: {"to": "development"},
                "missing": {"to": BLOCKED, "alert": True},
            },
        ),
        _stage(
            name="testing",
            role="tester",
            gate="verdict",
            artifacts=["13-test-report.md"],
            verdicts={"pass": r"(?mi)^\W*result\W*:\W*pass\b", "fail": r"(?mi)^\W*result\W*:\W*fail\b"},
            up_to_date=True,
            when_main_moves="stage",
            routes={
                "pass": {"to": "deploy", "feedback": "none"},
                "fail": {"to": "development"},
                CONFLICT: {"to": "development"},
                "missing": {"to": BLOCKED, "alert": True},
            },
        ),
        _stage(
            name="deploy",
            role="deployer",
            gate="exit_code",
            retry_agent=False,
            routes={
                "pass": {"to": DONE, "feedback": "none", "merge_pull_request": True},
                "fail": {"to": "development", "block": True, "alert": True},
            },
        ),
    ],
)


class GraphFileError(ValueError):
    """A stage graph file that cannot be used; ``problems`` names every problem found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__(f"stage graph file {path}: " + "; ".join(problems))


def load_graph(path: Path | None = None) -> StageGraph:
    """The graph from a YAML file when one is given, else the default; GraphFileError names what is wrong."""
    if path is None:
        return DEFAULT_GRAPH
    if not path.is_file():
        raise GraphFileError(path, ["it does not exist"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GraphFileError(path, [f"it cannot be read: {exc}"]) from None
    try:
        return StageGraph.model_validate(data)
    except ValidationError as exc:
        raise GraphFileError(path, [problem for error in exc.errors() for problem in _problems_of(error)]) from None


def _problems_of(error: Any) -> list[str]:
    """One pydantic error as problems: the graph's own check reports several in one error."""
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not where:
        return message.split("; ")
    return [f"{where}: {message}"]
