"""The settings of sdlc-flows (prefix ``SDLC_``), and the one place that reads the process environment.

A process reads its settings once where it starts (the CLI's ``main``, the worker,
the webhook receiver, and a flow run's entry when Prefect's own worker started it)
and hands them down with :func:`settings_in_force`: everything that runs inside,
flows and tasks included, gets them from :func:`get_settings`, as Prefect hands its
own settings down (``SettingsContext``). Outside such a block :func:`get_settings`
reads the environment, validated again only when an ``SDLC_*`` variable changed.

Nothing else in the project reads ``os.environ`` (tests/test_settings.py checks):
children's environments start from :func:`process_environment`, and what sdlc
exports to the processes it starts goes through :func:`export_environment`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sdlc.models import NOTIFY_EVENTS, BlockName, NotifyEvent
from sdlc.retry import (
    AGENT_BACKOFF_BASE_SECONDS,
    AGENT_BACKOFF_CAP_SECONDS,
    AGENT_MAX_ATTEMPTS,
    AGENT_TRANSIENT_RETRIES,
    USAGE_LIMIT_MARGIN_SECONDS,
    BackoffBaseSeconds,
    BackoffCapSeconds,
    MaxAttempts,
    TransientRetries,
)


def _event_names(value: Any, separator: str) -> Any:
    """Event names as people write them (``separator``-separated, or a list), each one known."""
    if isinstance(value, str):
        value = [name.strip() for name in value.split(separator) if name.strip()]
    if not isinstance(value, list | tuple):
        return value
    unknown = [name for name in value if name not in NOTIFY_EVENTS]
    if unknown:
        raise ValueError(f"unknown notify event {unknown[0]!r}; the events are {', '.join(NOTIFY_EVENTS)}")
    return value


class NotifyRoute(BaseModel):
    """One entry of ``SDLC_NOTIFY_BLOCKS``: a notification block and, when named, the only events it gets.

    Written ``block-type-slug/block-name=event|event``: Prefect's slugs and block names
    hold only letters, digits and dashes, so ``=`` and ``|`` never clash with a reference,
    nor ``|`` with the commas between entries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str = Field(min_length=1, description='"block-type-slug/block-name", as Block.load takes it.')
    events: tuple[NotifyEvent, ...] | None = Field(
        default=None, description="The events this block gets (unset: those of SDLC_NOTIFY_EVENTS)."
    )

    @field_validator("events", mode="before")
    @classmethod
    def _known_events(cls, value: Any) -> Any:
        names = _event_names(value, "|")
        if isinstance(names, list | tuple) and not names:
            raise ValueError("names no events after '='")
        return names

    def takes(self, event: NotifyEvent, default: tuple[NotifyEvent, ...] | None) -> bool:
        """Whether ``event`` goes to this block: its own events, else ``default`` (None: every event)."""
        events = self.events if self.events is not None else default
        return events is None or event in events


def _notify_route(entry: Any) -> Any:
    """``ref`` or ``ref=event|event`` as a route; anything else (a JSON object) as it is."""
    if not isinstance(entry, str):
        return entry
    ref, routed, events = entry.partition("=")
    return {"ref": ref.strip(), "events": events} if routed else {"ref": ref.strip()}


def _block_refs(value: Any) -> Any:
    """A list from the environment either way people write it: a JSON list or comma-separated."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [ref.strip() for ref in text.split(",") if ref.strip()]
    if not isinstance(value, list):
        return value
    return [_notify_route(entry) for entry in value]


def _notify_events(value: Any) -> Any:
    """SDLC_NOTIFY_EVENTS: comma-separated; empty is unset (every event), as for the other settings."""
    names = _event_names(value, ",")
    return names or None


def _colon_paths(value: Any) -> Any:
    """Paths from the environment as PATH is written: colon-separated."""
    if not isinstance(value, str):
        return value
    return [part.strip() for part in value.split(":") if part.strip()]


class SdlcSettings(BaseSettings):
    """Where sdlc-flows keeps its state on this machine."""

    model_config = SettingsConfigDict(env_prefix="SDLC_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".sdlc"),
        description="Root of clones, worktrees, agent logs, the ledger and the embedded Prefect server.",
    )
    ledger_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the ledger; default sqlite:///<data_dir>/ledger.db.",
    )
    prefect_port: int = Field(default=4200, description="Port of the embedded Prefect server.")
    server_locked_retry_seconds: float = Field(
        default=20,
        ge=0,
        description="How long the embedded server retries a request SQLite refused as locked (0: never).",
    )
    breaker_threshold: int = Field(
        default=3, ge=1, description="Consecutive transient failures of a provider that open its circuit breaker."
    )
    breaker_scope: str = Field(
        default="",
        pattern=r"^[a-z0-9_-]{0,40}$",
        description="Separates the breakers of installations sharing one Prefect server.",
    )
    breaker_cooldown_seconds: float = Field(default=60, gt=0, description="How long an open breaker holds new runs.")
    git_timeout_seconds: float = Field(
        default=120,
        gt=0,
        description="Longest a git clone, fetch or push may take; a remote that stalls past it is a transient failure.",
    )
    repo_concurrency: int | None = Field(
        default=None, ge=1, description="Agent runs at once per repository, across all workers (unset: no limit)."
    )
    provider_concurrency: dict[str, int] = Field(
        default_factory=dict, description='Agent runs at once per provider, e.g. {"claude": 4} (JSON).'
    )
    # An agent's budgets and backoff where neither its run nor its profile sets them.
    agent_profile: BlockName | None = Field(
        default=None,
        description="AgentProfile block of the runs that name no agent (before the repository's agent_profile).",
    )
    agent_max_attempts: MaxAttempts = AGENT_MAX_ATTEMPTS
    agent_transient_retries: TransientRetries = AGENT_TRANSIENT_RETRIES
    agent_backoff_base_seconds: BackoffBaseSeconds = AGENT_BACKOFF_BASE_SECONDS
    agent_backoff_cap_seconds: BackoffCapSeconds = AGENT_BACKOFF_CAP_SECONDS
    usage_limit_margin_seconds: float = Field(
        default=USAGE_LIMIT_MARGIN_SECONDS,
        ge=0,
        description="Wait this long past a usage-limit reset before the next attempt.",
    )
    approval_poll_seconds: int = Field(
        default=1, description="How often a paused pipeline checks for its approval input."
    )
    agent_sandbox: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description="Confine agents with bubblewrap: auto (where it works, else unconfined with a warning), bwrap (or fail), none.",
    )
    sandbox_bwrap: str = Field(default="bwrap", description="The bubblewrap program.")
    sandbox_read_paths: Annotated[list[str], NoDecode, BeforeValidator(_colon_paths)] = Field(
        default_factory=list, description="Paths every sandboxed agent may read (colon-separated)."
    )
    sandbox_write_paths: Annotated[list[str], NoDecode, BeforeValidator(_colon_paths)] = Field(
        default_factory=list, description="Paths every sandboxed agent may write (colon-separated)."
    )
    sandbox_hide_paths: Annotated[list[str], NoDecode, BeforeValidator(_colon_paths)] = Field(
        default_factory=list,
        description="Paths no sandboxed agent ever sees, even inside a granted path (colon-separated).",
    )
    graph_file: Path | None = Field(
        default=None, description="YAML stage graph to run instead of the built-in one (`sdlc graph dump` writes one)."
    )
    when_main_moves: Literal["graph", "tests", "all"] = Field(
        default="graph",
        description="What judges the merged code again when the default branch moved after a work item's gates "
        "passed: 'graph' (each stage's when_main_moves; built in: the tests and the testing stage), 'tests' "
        "(only the gates that run the code, no agent), 'all' (review too).",
    )
    bot_name: str = Field(
        default="sdlc-flows bot", min_length=1, description="Author and committer name of sdlc's commits."
    )
    bot_email: str = Field(
        default="sdlc-bot@localhost", min_length=3, description="Author and committer email of sdlc's commits."
    )
    notify_blocks: Annotated[list[NotifyRoute], NoDecode, BeforeValidator(_block_refs)] = Field(
        default_factory=list,
        description='Notification blocks messages also go to, as "block-type-slug/block-name", each optionally '
        'with its own events after "=" (e.g. "sdlc-telegram/ops=approval_requested|done,slack-webhook/team").',
    )
    notify_events: Annotated[tuple[NotifyEvent, ...] | None, NoDecode, BeforeValidator(_notify_events)] = Field(
        default=None,
        description="Comma-separated events the notification blocks get (unset: every event); "
        "notifications.jsonl and the run log keep every event.",
    )

    @property
    def root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def repos_dir(self) -> Path:
        """Main clones, one per repository."""
        return self.root / "repos"

    @property
    def worktrees_dir(self) -> Path:
        """Worktrees root: one worktree per (repository, branch)."""
        return self.root / "worktrees"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def resolved_ledger_url(self) -> str:
        if self.ledger_url:
            return self.ledger_url
        from sqlalchemy.engine import URL

        # Built, not formatted: a "?" or "%41" in the data dir's name stays part of the path.
        return URL.create("sqlite", database=str(self.ledger_path)).render_as_string(hide_password=False)

    @property
    def ledger_path(self) -> Path:
        """Where the default SQLite ledger lives."""
        return self.root / "ledger.db"


_cached: tuple[tuple[tuple[str, str], ...], SdlcSettings] | None = None
_in_force: ContextVar[SdlcSettings | None] = ContextVar("sdlc_settings_in_force", default=None)


def get_settings() -> SdlcSettings:
    """The settings in force: those handed down by :func:`settings_in_force`, else the environment's."""
    handed_down = _in_force.get()
    if handed_down is not None:
        return handed_down
    return settings_from_environment()


def settings_from_environment() -> SdlcSettings:
    """The settings this process's environment gives, validated once per distinct ``SDLC_*`` environment.

    Validating them costs milliseconds of CPU (pydantic-settings reads and parses
    the whole environment); comparing the ``SDLC_*`` variables costs microseconds.
    """
    global _cached
    key = tuple(sorted((name, value) for name, value in os.environ.items() if name.upper().startswith("SDLC_")))
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = SdlcSettings()
    _cached = (key, settings)
    return settings


@contextlib.contextmanager
def settings_in_force(settings: SdlcSettings | None = None) -> Iterator[SdlcSettings]:
    """Hand ``settings`` down to everything called inside the block, in this thread and its context.

    Without an argument: the settings already in force, else the environment's, read
    now (a flow's entry, when no process entry of sdlc's handed any down).
    """
    chosen = settings if settings is not None else get_settings()
    token = _in_force.set(chosen)
    try:
        yield chosen
    finally:
        _in_force.reset(token)


# --- the process environment ----------------------------------------------------------------


def process_environment() -> dict[str, str]:
    """A copy of this process's environment: what a child's environment is built from."""
    return dict(os.environ)


def environment_value(name: str) -> str | None:
    """One variable of this process's environment (Prefect's, the login name): None when unset or empty."""
    return os.environ.get(name) or None


def export_environment(values: Mapping[str, str], *, overwrite: bool = True) -> None:
    """Set variables for this process and the processes it starts (Prefect reads its own at import).

    With ``overwrite=False`` a variable already set keeps its value (a default).
    """
    for name, value in values.items():
        if overwrite or not os.environ.get(name):
            os.environ[name] = value


def login_name() -> str:
    """Who runs this command, for the record of an approval given from the CLI."""
    return environment_value("USER") or "cli"
