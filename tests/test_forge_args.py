"""The work item's forge from the command line and the pipeline's parameters (issues 7 and 19):
nested GitLab groups, Forgejo, and clear refusals before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from demo.sample import create_sample_repo
from entrypoints.cli import UsageError, build_parser, request_from_args
from sdlc.models import ForgeSpec, TrackerSpec

@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("repos"))


def forge_of(origin: Path, *forge_args: str) -> ForgeSpec:
    args = build_parser().parse_args(
        ["run", "--repo", str(origin), "--work-item", "ET-1", "--title", "t", "--agent", "scripted", *forge_args]
    )
    return request_from_args(args).forge


def test_gitlab_takes_the_group_path_as_owner_and_the_last_part_as_name(origin: Path) -> None:
    forge = forge_of(origin, "--forge", "gitlab", "--forge-block", "gitlab", "--forge-repo", "team/platform/app")
    assert (forge.kind, forge.owner, forge.name, forge.repository_path) == (
        "gitlab", "team/platform", "app", "team/platform/app"
    )
    assert forge_of(origin, "--forge", "gitlab", "--forge-block", "gitlab", "--forge-repo", "team/app").owner == "team"


def test_forgejo_runs_with_a_gitea_credentials_block(origin: Path) -> None:
    forge = forge_of(origin, "--forge", "forgejo", "--forge-block", "codeberg", "--forge-repo", "team/app")
    assert (forge.kind, forge.credentials_block, forge.owner, forge.name) == ("forgejo", "codeberg", "team", "app")


@pytest.mark.parametrize(
    "repo",
    ["team/../app", "team//app", "app", "team/platform/", "/team/app", "team/ap p", "team/-app/x"],
)
def test_a_bad_gitlab_project_path_is_refused_with_its_value(origin: Path, repo: str) -> None:
    with pytest.raises((UsageError, ValidationError)) as refused:
        forge_of(origin, "--forge", "gitlab", "--forge-block", "gitlab", "--forge-repo", repo)
    assert "forge" in str(refused.value)


def test_only_gitlab_nests_groups() -> None:
    with pytest.raises(ValidationError, match="not a valid name"):
        ForgeSpec(kind="github", credentials_block="github", owner="team/platform", name="app")


def test_a_gitlab_issue_tracker_names_its_project_and_issue() -> None:
    tracker = TrackerSpec(kind="gitlab", credentials_block="gitlab", ref="team/platform/app#12")
    assert tracker.gitlab_issue == ("team/platform", "app", 12)
    for bad in ("team/app", "app#12", "team/app#x", "team/../app#1", None):
        with pytest.raises(ValidationError, match="group/project#iid"):
            TrackerSpec(kind="gitlab", credentials_block="gitlab", ref=bad)
    with pytest.raises(ValidationError, match="ENG-42"):
        TrackerSpec(credentials_block="plane", ref="team/app#12")  # a Plane item is not named so
