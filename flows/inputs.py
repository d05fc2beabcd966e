"""Typed input a person gives a paused pipeline (B11, B20); the Prefect UI renders these as forms."""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


class ApprovalDecision(RunInput):
    """Approve the analysis to start architecture, or send it back to the analyst."""

    approve: bool = Field(default=True, description="Approve the analysis (uncheck to reject).")
    approver: str = Field(default="anonymous", max_length=200, description="Who decides.")
    comment: str = Field(default="", max_length=20000, description="Why; a rejection's comment goes to the analyst.")


class AnalystAnswers(RunInput):
    """Answers to the analyst's questions (01-questions.md)."""

    answers: str = Field(min_length=1, max_length=65536, description="Answers to the analyst's questions.")
    answered_by: str = Field(default="anonymous", max_length=200, description="Who answers.")
