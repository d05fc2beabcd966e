"""The server sdlc starts retries, in-server, the requests Prefect answers 503 (SQLite locked).

Prefect registers its "retryable or not" handler for every exception on Starlette's
ServerErrorMiddleware, which answers and then raises the exception again; the
Starlette app below is built the same way, so the middleware meets what it meets
in Prefect's app. A whole Prefect server behind it runs in every pipeline test.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from entrypoints.prefect_server import RetryBusyRequests


class DatabaseLocked(Exception):
    pass


def prefect_like_app(locked_times: int, seen: list[dict[str, Any]]) -> Starlette:
    """`POST /api/flows/` fails as locked ``locked_times`` times, then answers; `/api/broken` always fails."""

    async def create_flow(request: Request) -> JSONResponse:
        seen.append(await request.json())
        if len(seen) <= locked_times:
            raise DatabaseLocked("database is locked")
        return JSONResponse({"created": seen[-1]["name"], "attempts": len(seen)}, status_code=201)

    async def broken(request: Request) -> JSONResponse:
        seen.append({})
        raise ValueError("a bug, not a lock")

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        # As prefect.server.api.server.custom_internal_exception_handler: 503 for what a client may retry.
        if isinstance(exc, DatabaseLocked):
            return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
        return JSONResponse({"exception_message": "Internal Server Error"}, status_code=500)

    api = Starlette(
        routes=[Route("/flows/", create_flow, methods=["POST"]), Route("/broken", broken, methods=["POST"])],
        exception_handlers={Exception: handler},  # on the API app, as Prefect's create_api_app does
    )
    # Mounted, as Prefect mounts its API: routing rewrites the scope's path on each pass.
    return Starlette(routes=[Mount("/api", app=api)])


def post(app: Any, path: str, payload: dict[str, Any] | None = None) -> tuple[httpx.Response, float]:
    async def go() -> tuple[httpx.Response, float]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            started = time.monotonic()
            response = await client.post(
                path, content=json.dumps(payload or {}), headers={"content-type": "application/json"}
            )
            return response, time.monotonic() - started

    return asyncio.run(go())


def test_a_request_refused_as_locked_is_answered_after_the_server_runs_it_again() -> None:
    seen: list[dict[str, Any]] = []
    server = RetryBusyRequests(prefect_like_app(locked_times=3, seen=seen), budget_seconds=10)
    response, _ = post(server, "/api/flows/", {"name": "sdlc-stage"})
    assert response.status_code == 201, response.text
    assert response.json() == {"created": "sdlc-stage", "attempts": 4}
    assert seen == [{"name": "sdlc-stage"}] * 4  # every attempt read the whole body
    assert server.retried == 1


def test_the_client_gets_the_503_when_the_lock_outlasts_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []
    server = RetryBusyRequests(prefect_like_app(locked_times=10_000, seen=seen), budget_seconds=0.5)
    response, took = post(server, "/api/flows/", {"name": "x"})
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}
    assert 0.5 <= took < 5
    assert 2 <= len(seen) < 100
    assert f"POST /api/flows/ still answered 503 after {len(seen)} attempts" in caplog.text


def test_other_errors_and_answers_pass_through_once() -> None:
    seen: list[dict[str, Any]] = []
    server = RetryBusyRequests(prefect_like_app(locked_times=0, seen=seen), budget_seconds=10)
    broken, _ = post(server, "/api/broken")
    assert broken.status_code == 500 and len(seen) == 1  # a bug is not retried
    missing, _ = post(server, "/api/nothing-here")
    assert missing.status_code == 404
    created, _ = post(server, "/api/flows/", {"name": "y"})
    assert created.status_code == 201 and created.json()["attempts"] == 2
    assert server.retried == 0


def test_on_sqlite_a_server_transaction_holds_the_write_lock_from_its_first_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a writer waits for the lock instead of failing when another wrote since it began reading."""
    import sqlite3

    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import MODELS_DEPENDENCIES
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings
    from sqlalchemy import text

    from entrypoints.prefect_server import write_lock_first_on_sqlite

    database = tmp_path / "prefect.db"
    url = f"sqlite+aiosqlite:///{database}"

    def others_can_write_during_a_read(config: AioSqliteConfiguration) -> bool:
        async def go() -> bool:
            engine = await config.engine()
            try:
                session = await config.session(engine)
                async with session, config.begin_transaction(session):
                    await session.execute(text("SELECT 1"))  # a transaction that has only read so far
                    other = sqlite3.connect(database, timeout=0, isolation_level=None)
                    try:
                        other.execute("BEGIN IMMEDIATE")
                        other.execute("ROLLBACK")
                        return True
                    except sqlite3.OperationalError as exc:
                        assert "locked" in str(exc)
                        return False
                    finally:
                        other.close()
            finally:
                await engine.dispose()

        return asyncio.run(go())

    monkeypatch.setitem(MODELS_DEPENDENCIES, "database_config", None)
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
        assert others_can_write_during_a_read(AioSqliteConfiguration(connection_url=url))  # Prefect's DEFERRED
        assert write_lock_first_on_sqlite()
        assert not others_can_write_during_a_read(MODELS_DEPENDENCIES["database_config"])  # type: ignore[arg-type]
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: "postgresql+asyncpg://u@127.0.0.1:1/prefect"}):
        assert not write_lock_first_on_sqlite()  # PostgreSQL is left as Prefect configures it


def test_clients_of_a_plain_http_api_load_one_certificate_and_still_reach_it(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect parses the whole CA bundle per client; over plain HTTP sdlc gives it one certificate."""
    import os
    import subprocess
    import sys

    from entrypoints.server import ensure_prefect_api
    from sdlc.settings import SdlcSettings

    monkeypatch.delenv("PREFECT_API_SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    assert ensure_prefect_api(SdlcSettings(data_dir=tmp_path / "data")) == prefect_api
    ca_file = Path(os.environ["PREFECT_API_SSL_CERT_FILE"])
    assert ca_file.read_text().count("BEGIN CERTIFICATE") == 1

    # A process started with that environment (as `sdlc worker` starts) reaches the real server.
    probe = "from prefect.client.orchestration import get_client\nwith get_client(sync_client=True) as c: print(c.hello().status_code)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "200", done.stderr[-2000:]

    # An https API keeps the whole bundle: there the certificates are checked.
    monkeypatch.delenv("PREFECT_API_SSL_CERT_FILE")
    monkeypatch.setenv("PREFECT_API_URL", "https://prefect.example.internal/api")
    ensure_prefect_api(SdlcSettings(data_dir=tmp_path / "data"))
    assert "PREFECT_API_SSL_CERT_FILE" not in os.environ
