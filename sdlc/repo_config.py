"""The repository's own settings for sdlc-flows: `.sdlc/config.yaml` on its branch."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdlc.models import BlockName

CONFIG_PATH = Path(".sdlc") / "config.yaml"


class RepoConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    test_command: list[str] | None = Field(
        default=None,
        description="Local test command of the development gate, as a list or a string (split, never run by a shell).",
    )
    test_timeout_seconds: float = Field(default=600, gt=0)
    agent_profile: BlockName | None = Field(
        default=None,
        description="AgentProfile block of work items that name no agent and find no SDLC_AGENT_PROFILE.",
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Default spend budget of each work item on this repository (B34); read from the default branch.",
    )

    @field_validator("test_command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return shlex.split(value)
        return value


def load_repo_config(worktree: Path) -> RepoConfig:
    """The config on the branch's worktree; defaults when the file is absent."""
    path = worktree / CONFIG_PATH
    if not path.is_file():
        return RepoConfig()
    return parse_repo_config(path.read_text(encoding="utf-8"))


def parse_repo_config(text: str) -> RepoConfig:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{CONFIG_PATH} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_PATH} must be a mapping")
    return RepoConfig.model_validate(data)
