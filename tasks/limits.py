"""Concurrency limits per repository and per agent provider (B64), held by the Prefect server.

An agent run takes one slot of its repository's limit and one of its provider's
limit (Prefect global concurrency limits ``sdlc-repo-<repository>`` and
``sdlc-provider-<kind>``) for as long as it runs, so the limits hold across every
worker and process that shares the server. The numbers come from configuration
(``SDLC_REPO_CONCURRENCY``, ``SDLC_PROVIDER_CONCURRENCY``) and are written to the
server before use; no configuration means no limit.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from sdlc.settings import SdlcSettings, get_settings

logger = logging.getLogger("sdlc.limits")

# A slot is leased and renewed while the agent runs; a process that dies frees it when the lease ends.
LEASE_SECONDS = 120.0


def _name_part(value: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:80] or "x"


def agent_limits(repo_key: str, provider: str, settings: SdlcSettings) -> dict[str, int]:
    """The Prefect limit names an agent run of this repository and provider must hold, with their sizes."""
    limits: dict[str, int] = {}
    if settings.repo_concurrency is not None:
        limits[f"sdlc-repo-{_name_part(repo_key)}"] = settings.repo_concurrency
    provider_limit = settings.provider_concurrency.get(provider)
    if provider_limit is not None:
        limits[f"sdlc-provider-{_name_part(provider)}"] = provider_limit
    return limits


def _write_limits(limits: dict[str, int]) -> None:
    """Create or resize the limits on the server (two processes may race to create one: both end right)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name, size in limits.items():
            try:
                client.upsert_global_concurrency_limit_by_name(name, size)
            except ObjectAlreadyExists:
                client.upsert_global_concurrency_limit_by_name(name, size)


@contextlib.contextmanager
def agent_slots(
    repo_key: str, provider: str, log: logging.Logger | logging.LoggerAdapter[Any] = logger
) -> Iterator[None]:
    """Hold one slot of each configured limit while the block runs; waits for free slots first."""
    limits = agent_limits(repo_key, provider, get_settings())
    if not limits:
        yield
        return
    from prefect.concurrency.sync import concurrency

    _write_limits(limits)
    log.info("taking a slot of %s", ", ".join(f"{name} (limit {size})" for name, size in limits.items()))
    with concurrency(list(limits), occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield


@contextlib.contextmanager
def merge_slot(repo_key: str) -> Iterator[None]:
    """One merge at a time into a repository, across every worker that shares the Prefect server:
    two work items cannot both find their branch up to date and then merge one after the other."""
    from prefect.concurrency.sync import concurrency

    name = f"sdlc-merge-{_name_part(repo_key)}"
    _write_limits({name: 1})
    with concurrency([name], occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
