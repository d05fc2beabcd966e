"""The stage graph (B1): stages, roles, gates, artifacts, routes and budgets, as data.

The pipeline flow reads this and nothing else to decide where a work item goes
next. A team changes the process by editing a YAML file in this shape
(``SDLC_GRAPH_FILE`` or ``.sdlc/graph.yaml`` in the repository) rather than code;
a new gate kind is one function in ``tasks/gates.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Where a route can end besides another stage.
DONE = "done"
BLOCKED = "blocked"
TERMINALS = (DONE, BLOCKED)


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
    tracker_state: Literal["in_progress", "in_review", "needs_input", "blocked", "done"] = Field(
        default="in_progress", description="Tracker state while this stage runs; the tracker block names it (B50)."
    )

    @property
    def stale_artifacts(self) -> list[str]:
        """Files that must be written afresh by each run for the gate to judge them."""
        return [*self.artifacts, *self.alternate_artifacts.values()]


class StageGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str
    stages: list[StageSpec]

    @model_validator(mode="after")
    def _check_routes(self) -> "StageGraph":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique")
        if self.start not in names:
            raise ValueError(f"start stage {self.start!r} is not defined")
        for stage in self.stages:
            if "pass" not in stage.routes:
                raise ValueError(f"stage {stage.name!r} has no 'pass' route")
            for outcome, route in stage.routes.items():
                if route.to not in names and route.to not in TERMINALS:
                    raise ValueError(f"stage {stage.name!r} routes {outcome!r} to unknown {route.to!r}")
        return self

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"no stage {name!r} in the graph")

    def route(self, stage: str, outcome: str) -> Route:
        """The route for a gate outcome; an outcome the graph does not name blocks."""
        spec = self.stage(stage)
        return spec.routes.get(outcome) or Route(to=BLOCKED, alert=True, feedback="gate")

    @property
    def roles(self) -> list[str]:
        return [s.role for s in self.stages]


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
            routes={
                "pass": {"to": "review", "feedback": "none"},
                "fail": {"to": "development"},
            },
        ),
        _stage(
            name="review",
            role="reviewer",
            gate="verdict",
            artifacts=["12-review.md"],
            verdicts={"pass": r"(?mi)^\W*verdict\W*:\W*approve\b", "request_changes": r"(?mi)^\W*verdict\W*:\W*request_changes\b"},
            tracker_state="in_review",
            routes={
                "pass": {"to": "testing", "feedback": "none"},
                "request_changes": {"to": "development"},
                "missing": {"to": BLOCKED, "alert": True},
            },
        ),
        _stage(
            name="testing",
            role="tester",
            gate="verdict",
            artifacts=["13-test-report.md"],
            verdicts={"pass": r"(?mi)^\W*result\W*:\W*pass\b", "fail": r"(?mi)^\W*result\W*:\W*fail\b"},
            routes={
                "pass": {"to": "deploy", "feedback": "none"},
                "fail": {"to": "development"},
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


def load_graph(path: Path | None = None) -> StageGraph:
    """The graph from a YAML file when one is given, else the default."""
    if path is None:
        return DEFAULT_GRAPH
    if not path.is_file():
        raise FileNotFoundError(f"stage graph file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return StageGraph.model_validate(data)
