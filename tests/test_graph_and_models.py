"""The stage graph as data, and validation of everything a work item carries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sdlc.graph import (
    BLOCKED,
    DEFAULT_GRAPH,
    DONE,
    GATE_OUTCOMES,
    GraphFileError,
    StageGraph,
    builtin_prompt,
    dump_graph,
    load_graph,
    prompt_problems,
)
from sdlc.models import WorkItemRequest, default_branch_name


@pytest.mark.parametrize(
    ("stage", "outcome", "to", "block"),
    [
        ("analysis", "pass", "architecture", False),
        ("analysis", "questions", "analysis", False),
        ("architecture", "conflict", "analysis", False),
        ("development", "fail", "development", False),
        ("review", "request_changes", "development", False),
        ("testing", "fail", "development", False),
        ("deploy", "fail", "development", True),
        ("deploy", "pass", DONE, False),
        ("review", "something-unheard-of", BLOCKED, False),
    ],
)
def test_default_graph_routes(stage: str, outcome: str, to: str, block: bool) -> None:
    route = DEFAULT_GRAPH.route(stage, outcome)
    assert (route.to, route.block) == (to, block)


def test_graph_budgets_and_roles() -> None:
    assert DEFAULT_GRAPH.stage("development").max_visits == 3
    assert DEFAULT_GRAPH.roles == ["analyst", "architect", "developer", "reviewer", "tester", "deployer"]
    assert DEFAULT_GRAPH.route("deploy", "pass").merge_pull_request


def test_graph_from_yaml_can_add_a_stage(tmp_path: Path) -> None:
    data = DEFAULT_GRAPH.model_dump()
    security = {
        "name": "security", "role": "security-reviewer", "gate": "verdict",
        "artifacts": ["15-security.md"], "verdicts": {"pass": "(?m)^Verdict: APPROVE"},
        "routes": {"pass": {"to": "deploy"}, "request_changes": {"to": "development"}, "missing": {"to": "blocked"}},
    }
    data["stages"].insert(5, security)
    testing = next(s for s in data["stages"] if s["name"] == "testing")
    testing["routes"]["pass"]["to"] = "security"
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(data))
    graph = load_graph(path)
    assert graph.route("testing", "pass").to == "security"
    assert graph.route("security", "request_changes").to == "development"


def test_graph_rejects_a_route_to_nowhere() -> None:
    data = DEFAULT_GRAPH.model_dump()
    data["stages"][0]["routes"]["pass"]["to"] = "nowhere"
    with pytest.raises(ValidationError, match="unknown 'nowhere'"):
        StageGraph.model_validate(data)


def test_missing_graph_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GraphFileError, match="does not exist"):
        load_graph(tmp_path / "nope.yaml")


def test_a_graph_names_every_problem_when_it_loads(tmp_path: Path) -> None:
    data = DEFAULT_GRAPH.model_dump()
    review = next(s for s in data["stages"] if s["name"] == "review")
    del review["routes"]["missing"]  # the verdict gate can name it
    review["routes"]["request_changes"]["to"] = "nowhere"
    data["stages"][0]["gate"] = "telepathy"
    data["stages"].append({"name": "orphan", "role": "Orphan Role", "gate": "exit_code",
                           "routes": {"pass": {"to": "done"}, "fail": {"to": "blocked"}}})
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GraphFileError) as error:
        load_graph(path)
    assert sorted(error.value.problems) == sorted([
        "stage 'analysis' names gate kind 'telepathy', which does not exist (kinds: artifacts, ci, exit_code, tests, verdict)",
        "stage 'review': its verdict gate can name 'missing', which has no route",
        "stage 'review' routes 'request_changes' to unknown 'nowhere'",
        "stage 'orphan' has role 'Orphan Role': a role is lower-case letters, digits, '-' or '_'",
        "stage 'orphan' is never reached from 'analysis'",
    ])


def test_every_gate_kind_has_a_judge_and_declared_outcomes() -> None:
    from tasks.gates import GATE_JUDGES

    assert GATE_JUDGES.keys() == GATE_OUTCOMES.keys()


def test_roles_without_a_prompt_are_named() -> None:
    data = DEFAULT_GRAPH.model_dump()
    data["stages"][1]["role"] = "security"
    graph = StageGraph.model_validate(data)
    assert prompt_problems(graph, has_prompt=lambda role: builtin_prompt(role) is not None) == [
        "role 'security' has no prompt: add .sdlc/agents/security.md to the repository's default branch"
    ]
    assert prompt_problems(graph, has_prompt=lambda role: True) == []


def test_the_dumped_graph_loads_back_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text(dump_graph(DEFAULT_GRAPH))
    assert load_graph(path) == DEFAULT_GRAPH
    assert "max_visits: 3" in path.read_text()  # every stage field is there to edit


def test_default_branch_is_slug_of_title() -> None:
    assert default_branch_name("ET-12", "Add Login / Logout!") == "feature/ET-12-add-login-logout"
    assert default_branch_name("ET-12", "日本語") == "feature/ET-12-work-item"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("work_item", "et-12", "PROJECT-NUMBER"),
        ("work_item", "ET-12; rm -rf /", "PROJECT-NUMBER"),
        ("work_item", "../ET-1", "PROJECT-NUMBER"),
        ("branch", "--upload-pack=touch /tmp/x", "not allowed"),
        ("branch", "feature/../../etc", "not allowed"),
        ("branch", "a b", "not allowed"),
        ("branch", "feat$(id)", "not allowed"),
        ("title", "line\nbreak", "control characters"),
        ("title", "nul\x00", "control characters"),
        ("title", "   ", "blank"),
        ("repo", "--upload-pack=evil", "not a path"),
        ("repo", "/definitely/not/here", "does not exist"),
    ],
)
def test_hostile_values_are_refused(tmp_path: Path, field: str, value: str, message: str) -> None:
    origin = tmp_path / "origin.git"
    origin.mkdir()
    (origin / "HEAD").write_text("ref: refs/heads/main\n")
    fields = {"work_item": "ET-12", "title": "A title", "repo": str(origin), field: value}
    with pytest.raises(ValidationError, match=message):
        WorkItemRequest(**fields)


def test_shell_text_in_title_and_description_is_plain_data(tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    origin.mkdir()
    (origin / "HEAD").write_text("ref: refs/heads/main\n")
    request = WorkItemRequest(
        work_item="ET-12", title="$(touch /tmp/pwned) `id`; rm -rf ~", description="a\nb $(x)", repo=str(origin)
    )
    assert request.title.startswith("$(touch")
    assert request.feature_branch == "feature/ET-12-touch-tmp-pwned-id-rm-rf"
