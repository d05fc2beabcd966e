"""The forge-neutral result of the CI-green gate (B43).

Gitea reports CI as commit statuses; GitHub reports Actions as check runs and
other CI as commit statuses. Each forge folds what it has into one
:class:`CiStatus`, so the gate never needs to know which forge it asked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class CiStatus(BaseModel):
    """The forge-neutral result of the CI-green gate for one commit.

    ``success``: at least one status or check exists and all of them passed;
    ``pending``: something is still running (and nothing failed yet);
    ``failure``: at least one status or check failed;
    ``none``: the forge knows no CI result for the commit at all.
    ``details`` names each status or check with its state, for the report.
    """

    state: Literal["success", "pending", "failure", "none"]
    details: list[str] = Field(default_factory=list)
