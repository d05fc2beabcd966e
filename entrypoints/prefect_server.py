"""The Prefect server sdlc starts: Prefect's own app (API, UI, services), run again on a busy SQLite.

    python -m entrypoints.prefect_server --host 127.0.0.1 --port 4200

It serves exactly what ``prefect server start`` serves (``create_app(final=True)``
under uvicorn), with two differences, both for SQLite. There Prefect answers 503 when a
write finds that another of its own connections wrote first (the task-run recorder
writing a batch of task runs while a flow run creates its subflow's task run, for
instance), and Prefect's client backs off 2, 4, 8, ... seconds: with twenty work items
at once that stalled single pipelines for minutes (measured: one waited 233 s between
two stages).

1. Write transactions begin IMMEDIATE (:func:`write_lock_first_on_sqlite`): a writer
   waits for the lock rather than failing when someone wrote since it began reading.
2. A request still answered 503 is run again by this server after a pause of a few
   tens of milliseconds (:class:`RetryBusyRequests`), for up to
   ``SDLC_SERVER_LOCKED_RETRY_SECONDS`` (default 20 s, 0 turns it off); only then does
   the client see the 503. Such a request changed nothing (its transaction was rolled
   back), which is why Prefect's client may send it again too.

On PostgreSQL neither applies: there are no such answers and nothing is changed.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from sdlc.settings import get_settings

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

logger = logging.getLogger("entrypoints.prefect_server")


class RetryBusyRequests:
    """ASGI middleware: a request answered 503 (Prefect's "retry me") runs again, within a time budget."""

    def __init__(self, app: ASGIApp, *, budget_seconds: float = 20.0) -> None:
        self.app = app
        self.budget_seconds = budget_seconds
        self.retried = 0  # requests answered only after at least one retry

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.budget_seconds <= 0:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        deadline = time.monotonic() + self.budget_seconds
        attempt = 0
        while True:
            attempt += 1
            busy = False
            status = 0

            async def forward_unless_busy(message: Message) -> None:
                nonlocal busy, status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    busy = status == 503 and time.monotonic() < deadline
                if not busy:
                    await send(message)

            # A fresh scope each time: routing writes into it (a mounted app's root_path and path).
            try:
                await self.app(dict(scope), _replay(body, receive), forward_unless_busy)
            except Exception:
                # Starlette re-raises what its error handler answered; an answer held back is retried.
                if not busy:
                    self._answered(scope, attempt, status)
                    raise
            if not busy:
                self._answered(scope, attempt, status)
                return
            # Short, random and growing a little: the lock is held for milliseconds.
            await anyio.sleep(random.uniform(0.02, 0.1) * min(attempt, 10))

    def _answered(self, scope: MutableMapping[str, Any], attempts: int, status: int) -> None:
        if attempts == 1:
            return
        self.retried += 1
        if status == 503:
            logger.warning(
                "%s %s still answered 503 after %d attempts in %.0f s",
                scope.get("method"),
                scope.get("path"),
                attempts,
                self.budget_seconds,
            )


async def _read_body(receive: Receive) -> list[Message]:
    """The request's body messages, kept so that each attempt reads the same body."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(body: list[Message], receive: Receive) -> Receive:
    """A receive that hands out the kept body, then waits on the real one (for a disconnect)."""
    pending = list(body)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def write_lock_first_on_sqlite() -> bool:
    """On SQLite, make every write transaction of the server take the write lock when it begins.

    Prefect begins most write transactions DEFERRED: they read, then try to write, and
    fail at once (SQLITE_BUSY_SNAPSHOT, answered 503) if any other connection wrote in
    between. Under a steady stream of writes (task-run recorder, event persister) one
    request failed that way 34 times in a row over 20 s (measured, twenty work items
    at once). BEGIN IMMEDIATE makes writers queue for the lock instead (SQLite's busy
    timeout), which cannot starve. Installed through Prefect's own hook for the database
    configuration; returns whether it applies (False on PostgreSQL).
    """
    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import MODELS_DEPENDENCIES
    from prefect.server.utilities.database import get_dialect
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name != "sqlite":
        return False

    class WriteLockFirstSqlite(AioSqliteConfiguration):
        @asynccontextmanager
        async def begin_transaction(self, session: Any, with_for_update: bool = False) -> AsyncIterator[Any]:
            async with super().begin_transaction(session, with_for_update=True) as transaction:
                yield transaction

    MODELS_DEPENDENCIES["database_config"] = WriteLockFirstSqlite(connection_url=url)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.prefect_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    budget = get_settings().server_locked_retry_seconds

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    # As `prefect server start` runs it with one worker process: API, UI and services in one app.
    app: ASGIApp = create_app(final=True)
    if write_lock_first_on_sqlite():  # both changes are for SQLite; PostgreSQL gets Prefect's app as it is
        app = RetryBusyRequests(app, budget_seconds=budget)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
