"""Scenario files for the scripted agent: read (JSON or YAML) and validate with pydantic.

Only imported when ``SDLC_SCENARIO_FILE`` is set: ``demo.scripted_agent`` imports
this module lazily, because pydantic and yaml would otherwise add ~0.13 s of CPU to
the start of every agent process. The options themselves are defined once, as the
stdlib dataclass ``demo.scripted_agent.RoleScenario`` (types, defaults, and
constraints as pydantic ``Field`` keywords in the field metadata); this module
derives the pydantic model from it, so error messages are the ones pydantic gives
for a model named ``RoleScenario`` ("role.option: Input should be ...",
"Extra inputs are not permitted").

Every entry of the file is validated, whichever role is running, so a bad entry
fails every run (exit 2) instead of only the run of its role. A role's options are
then the options set under ``"*"`` overridden, option by option, by those set under
the role's own entry; options not set anywhere keep the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

# Under `python -m demo.scripted_agent` (or runpy) the running agent is `__main__`, so this
# import loads a second copy of the module: harmless, it is stdlib-only and defines no state.
from demo.scripted_agent import ROLE_OPTIONS, ROLE_PATTERN, WILDCARD, RoleScenario


class ScenarioError(Exception):
    """An unreadable or invalid scenario file; the message names the file and the problem."""


def _model_of(options: type[Any]) -> type[BaseModel]:
    """A pydantic model with the dataclass's fields, defaults and constraints; extra keys rejected."""
    hints = typing.get_type_hints(options)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(default=f.default, **f.metadata)) for f in dataclasses.fields(options)
    }
    return create_model(options.__name__, __config__=ConfigDict(extra="forbid"), **fields)


if TYPE_CHECKING:  # a model made at run time is no type mypy can check against
    RoleScenarioModel = BaseModel
else:
    RoleScenarioModel = _model_of(RoleScenario)


class Scenario(BaseModel):
    """Role name (or "*") -> options, as validated from the file."""

    model_config = ConfigDict(extra="forbid")

    roles: dict[str, RoleScenarioModel] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_roles(self) -> Scenario:
        for role, options in self.roles.items():
            if role != WILDCARD and not ROLE_PATTERN.match(role):
                raise ValueError(f"{role!r} is not a role name (lower-case letters, digits, '-', '_') or '*'")
            for option in ROLE_OPTIONS:
                allowed = ROLE_OPTIONS[option].split("|")
                if option in options.model_fields_set and role not in allowed:
                    raise ValueError(f"option {option!r} is for the {' or '.join(allowed)} only, not for {role!r}")
        return self

    def for_role(self, role: str) -> RoleScenario:
        """The role's options on top of the "*" options, option by option; unset options keep their defaults."""
        merged: dict[str, Any] = {}
        for key in (WILDCARD, role):
            entry = self.roles.get(key)
            if entry is not None:
                merged.update({name: getattr(entry, name) for name in entry.model_fields_set})
        return RoleScenario(**merged)  # values already validated with the entry they came from


def parse_scenario(data: Any) -> Scenario:
    """Validate already-loaded scenario data (a mapping of role -> options)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("a scenario must be a mapping of role name -> options")
    roles: dict[str, Any] = {}
    for key, value in data.items():
        roles[str(key)] = {} if value is None else value
    return Scenario.model_validate({"roles": roles})


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; raises ScenarioError with a clear message."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError(
            f"scenario file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from exc
    try:
        return parse_scenario(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'scenario'}: {err['msg']}" for err in exc.errors()
        )
        raise ScenarioError(f"invalid scenario file {path}: {problems}") from exc
    except ValueError as exc:
        raise ScenarioError(f"invalid scenario file {path}: {exc}") from exc
