"""Plane credentials: where a Plane project lives, the API key to reach it, and how its states are named.

Plane's API takes state UUIDs, never names, and a new project has no "In Review",
"Needs Input" or "Blocked" state (``tests/contracts/plane-endpoints.md``). The block
therefore names the states the pipeline moves work items into, and says whether
missing ones may be created or must be reported. The API key is a SecretStr,
unwrapped only where the HTTP client is built; bad configuration fails when the
block loads.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

import httpx
from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr, field_validator

from sdlc.models import TrackerState

StateKey = TrackerState
STATE_KEYS: tuple[StateKey, ...] = ("in_progress", "in_review", "needs_input", "blocked", "done")
DEFAULT_STATE_NAMES: dict[str, str] = {
    "in_progress": "In Progress",
    "in_review": "In Review",
    "needs_input": "Needs Input",
    "blocked": "Blocked",
    "done": "Done",
}
API_PREFIX = "/api/v1"
SLUG_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def canonical_uuid(value: str, what: str) -> str:
    """A UUID in Plane's own spelling (lower case, dashed); a clear error for anything else."""
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ValueError(f"{what} {str(value)[:60]!r} is not a UUID") from None


class PlaneCredentials(CredentialsBlock):
    """A Plane project (workspace slug + project UUID), an API key for it, and the pipeline's state names.

    Approvals are read from comments, so the block also says whose comments count:
    anyone else's ``/approve`` is ignored.
    """

    _block_type_name: ClassVar[str] = "SDLC Plane Credentials"
    _block_type_slug: ClassVar[str] = "sdlc-plane-credentials"
    _description: ClassVar[str] = "Plane API key, project and state names for sdlc-flows work items."
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://docs.prefect.io/v3/concepts/blocks")
    _code_example: ClassVar[str] = """
```python
from blocks.plane import PlaneCredentials

PlaneCredentials(
    api_url="https://api.plane.so",
    api_key="plane_api_...",
    workspace_slug="acme",
    project_id="4af68566-94a4-4eb3-94aa-50dc9427067b",
).save("plane")
credentials = PlaneCredentials.load("BLOCK_NAME")
```
"""

    api_url: str = Field(
        default="https://api.plane.so",
        description="Origin of the Plane instance (e.g. https://api.plane.so); /api/v1/ is added by the client.",
    )
    api_key: SecretStr = Field(description="Plane API key, sent as X-API-Key; stored as a secret and never logged.")
    workspace_slug: str = Field(description="The workspace's slug, as in the Plane URL /{slug}/projects/.")
    project_id: str = Field(description="UUID of the Plane project whose work items the pipeline moves.")
    state_names: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_STATE_NAMES),
        description=(
            "Plane state name per pipeline state (in_progress, in_review, needs_input, blocked, done); "
            "keys left out keep their default name."
        ),
    )
    create_missing_states: bool = Field(
        default=False,
        description="Create the named states that the project lacks, instead of failing with their names.",
    )
    approvers: list[str] = Field(
        default_factory=list,
        description="Plane user UUIDs whose /approve, /reject and /answer comments count; empty means nobody's.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Timeout of one API request in seconds.")

    @field_validator("api_url")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https:// (got {value[:60]!r})")
        value = value.rstrip("/")
        if value.endswith(API_PREFIX):
            raise ValueError(f"api_url is the Plane origin; leave out {API_PREFIX} (got {value[:80]!r})")
        return value

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("api_key is empty; create one in Plane under Profile settings > API tokens")
        return value

    @field_validator("workspace_slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_PATTERN.match(value):
            raise ValueError(f"workspace_slug {value[:60]!r} is not a Plane workspace slug (letters, digits, - and _)")
        return value

    @field_validator("project_id")
    @classmethod
    def _project(cls, value: str) -> str:
        return canonical_uuid(value, "project_id")

    @field_validator("state_names", mode="before")
    @classmethod
    def _states(cls, value: Any) -> dict[str, str]:
        """Overrides are merged over the defaults, so ``{"blocked": "On Hold"}`` keeps the other four."""
        if not isinstance(value, dict):
            raise ValueError("state_names must map state keys to Plane state names")
        unknown = sorted(set(value) - set(STATE_KEYS))
        if unknown:
            raise ValueError(f"state_names has unknown keys {unknown}; the keys are {list(STATE_KEYS)}")
        merged = {**DEFAULT_STATE_NAMES, **{key: str(name).strip() for key, name in value.items()}}
        empty = [key for key, name in merged.items() if not name]
        if empty:
            raise ValueError(f"state_names gives an empty name for {empty}")
        return merged

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[str]) -> list[str]:
        # Plane comments name their author by UUID only; a display name here would never match.
        return [canonical_uuid(actor, "approver") for actor in value]

    @property
    def base_url(self) -> str:
        """Where every API path starts: ``{api_url}/api/v1``."""
        return self.api_url + API_PREFIX

    def get_client(self, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        """An httpx client with the API key, base URL and timeout set; the caller closes it."""
        return httpx.Client(
            base_url=self.base_url,
            headers={"X-API-Key": self.api_key.get_secret_value(), "Accept": "application/json"},
            timeout=httpx.Timeout(self.timeout_seconds, connect=min(10.0, self.timeout_seconds)),
            transport=transport,
            follow_redirects=False,
        )
