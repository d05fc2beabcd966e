"""The ledger's schema at revision 0001, frozen: what it was when it was first versioned.

Never edit this file: later changes are new revisions in ``versions/``. A ledger
made before versioning is brought up to exactly these tables and columns, then
stamped at the baseline (see ``upgrade.py``), so every later revision applies to it.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


sa.Table(
    "agent_run",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("work_item_id", sa.String(), nullable=False, index=True),
    sa.Column("stage", sa.String(), nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("duration_seconds", sa.Float(), nullable=True),
    sa.Column("log_path", sa.String(), nullable=False),
    sa.Column("timed_out", sa.Boolean(), nullable=False),
    sa.Column("error", sa.String(), nullable=True),
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("visit", sa.String(), nullable=True, index=True),
    _timestamp("started_at", nullable=False),
    _timestamp("ended_at", nullable=True),
    sa.Column("failure_kind", sa.String(), nullable=True),
    sa.Column("failure_reason", sa.String(), nullable=True),
    sa.Column("retry_after_seconds", sa.Float(), nullable=True),
    _timestamp("retry_not_before", nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("input_tokens", sa.Integer(), nullable=True),
    sa.Column("output_tokens", sa.Integer(), nullable=True),
    sa.Column("num_turns", sa.Integer(), nullable=True),
    sa.Column("session_id", sa.String(), nullable=True),
    sa.Column("sandbox", sa.String(), nullable=True),
    sa.Column("process_group", sa.Integer(), nullable=True),
    sa.Column("process_started", sa.Integer(), nullable=True),
)

sa.Table(
    "pull_request",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("repo", sa.String(), nullable=False, index=True),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("branch", sa.String(), nullable=False),
    sa.Column("base", sa.String(), nullable=False),
    sa.Column("title", sa.String(), nullable=False),
    sa.Column("body", sa.String(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("url", sa.String(), nullable=False),
    sa.Column("merge_commit", sa.String(), nullable=True),
    sa.Column("work_item_id", sa.String(), nullable=False, index=True),
    _timestamp("created_at", nullable=False),
    _timestamp("merged_at", nullable=True),
    sa.UniqueConstraint("repo", "number", name="uq_pull_request_repo_number"),
)

sa.Table(
    "stage_transition",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("work_item_id", sa.String(), nullable=False, index=True),
    sa.Column("from_stage", sa.String(), nullable=True),
    sa.Column("to_stage", sa.String(), nullable=False),
    sa.Column("reason", sa.String(), nullable=False),
    _timestamp("at", nullable=False),
)

sa.Table(
    "tracker_link",
    metadata,
    sa.Column("work_item_id", sa.String(), primary_key=True),
    sa.Column("tracker", sa.String(), nullable=False),
    sa.Column("tracker_item_id", sa.String(), nullable=False, index=True),
    sa.Column("credentials_block", sa.String(), nullable=False),
)

sa.Table(
    "webhook_delivery",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("event", sa.String(), nullable=False),
    _timestamp("received_at", nullable=False),
)

sa.Table(
    "work_item",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("title", sa.String(), nullable=False),
    sa.Column("description", sa.String(), nullable=False),
    sa.Column("repo", sa.String(), nullable=False),
    sa.Column("branch", sa.String(), nullable=False),
    sa.Column("stage", sa.String(), nullable=True),
    sa.Column("state", sa.String(), nullable=False, index=True),
    sa.Column("reason", sa.String(), nullable=True),
    sa.Column("flow_run_id", sa.String(), nullable=True),
    sa.Column("pr_number", sa.Integer(), nullable=True),
    sa.Column("pr_url", sa.String(), nullable=True),
    sa.Column("budget_usd", sa.Float(), nullable=True),
    sa.Column("base_sha", sa.String(), nullable=True),
    _timestamp("created_at", nullable=False),
    _timestamp("updated_at", nullable=False),
)
