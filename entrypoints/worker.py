"""`sdlc worker`: a long-lived runner that executes the pool's flow runs in its own process (B64).

Prefect's process worker starts a new Python process for every flow run, which
costs seconds of start-up and imports and about 100 MiB per run. This worker
polls the same work pool, claims each due run the way Prefect's workers do
(proposing Pending; a run another worker claimed is refused to us), and runs it
with Prefect's own flow engine in a thread of this process: imports happen once,
and a run starts within a poll interval. Each run's agents are still separate
processes (prefect-shell), so the threads mostly wait on them.

It serves the flows of this project (`sdlc-pipeline`, `sdlc-stage`); a suspended
run (waiting for a person, or for a usage-limit reset) ends its thread and is
picked up again when it is rescheduled.

Prefect must already be configured (PREFECT_API_URL) when this module is imported.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort
from prefect.states import Pending
from prefect.utilities.engine import propose_state_sync

from entrypoints.runner import execute
from sdlc.settings import SdlcSettings, get_settings, settings_in_force

logger = logging.getLogger("entrypoints.worker")


def _flows() -> dict[str, Any]:
    from flows.pipeline import sdlc_pipeline
    from flows.stages import stage_flow

    return {"sdlc-pipeline": sdlc_pipeline, "sdlc-stage": stage_flow}


class InProcessWorker:
    """Polls a work pool and runs its due flow runs in threads, at most ``limit`` at once."""

    def __init__(
        self,
        pool: str,
        *,
        limit: int = 50,
        query_seconds: float = 1.0,
        prefetch_seconds: float = 1.0,
        settings: SdlcSettings | None = None,
    ) -> None:
        self.pool, self.limit = pool, limit
        self.settings = settings if settings is not None else get_settings()  # handed to every run
        self.query_seconds, self.prefetch_seconds = query_seconds, prefetch_seconds
        self.flows = _flows()
        self.running: dict[UUID, threading.Thread] = {}
        self.stopping = threading.Event()
        self._flow_names: dict[UUID, str] = {}

    def _flow_name(self, client: Any, flow_id: UUID) -> str:
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = client.read_flow(flow_id).name
        return self._flow_names[flow_id]

    def _claim(self, client: Any, flow_run: FlowRun) -> bool:
        """Pending, as Prefect's workers propose it: the server lets one claimant through."""
        try:
            state = propose_state_sync(client, Pending(), flow_run_id=flow_run.id)
        except Abort:
            return False
        return state.is_pending()

    def _run(self, flow: Any, flow_run_id: UUID) -> None:
        try:
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(flow_run_id)
            with settings_in_force(self.settings):  # a new thread starts with an empty context
                execute(flow, flow_run)  # a suspended run comes back through the pool when it is rescheduled
        except Exception:
            logger.exception("flow run %s ended with an error", flow_run_id)
        finally:
            self.running.pop(flow_run_id, None)

    def poll_once(self) -> int:
        """Claim and start the due runs there is room for; returns how many were started."""
        for run_id, thread in list(self.running.items()):
            if not thread.is_alive():
                self.running.pop(run_id, None)
        room = self.limit - len(self.running)
        if room <= 0:
            return 0
        started = 0
        with get_client(sync_client=True) as client:
            due = client.get_scheduled_flow_runs_for_work_pool(
                self.pool, scheduled_before=datetime.now(UTC) + timedelta(seconds=self.prefetch_seconds)
            )
            for response in sorted(
                due, key=lambda r: r.flow_run.next_scheduled_start_time or datetime.min.replace(tzinfo=UTC)
            ):
                flow_run = response.flow_run
                if started >= room or flow_run.id in self.running:
                    continue
                flow = self.flows.get(self._flow_name(client, flow_run.flow_id))
                if flow is None or not self._claim(client, flow_run):
                    continue
                thread = threading.Thread(
                    target=self._run, args=(flow, flow_run.id), name=f"flow-run-{flow_run.name}", daemon=True
                )
                self.running[flow_run.id] = thread
                thread.start()
                started += 1
                logger.info("started flow run %s (%s)", flow_run.name, flow_run.id)
        return started

    def serve(self) -> None:
        logger.info(
            "sdlc worker polling pool %s every %.1f s (at most %d runs at once)",
            self.pool,
            self.query_seconds,
            self.limit,
        )
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                logger.exception("polling pool %s failed", self.pool)
            self.stopping.wait(self.query_seconds)
        for thread in list(self.running.values()):
            thread.join(timeout=5)
