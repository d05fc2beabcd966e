"""A private PostgreSQL cluster for tests: initdb in a temp dir, trust auth on 127.0.0.1, a free port.

Tests import this module directly (``from postgres import ...``); it is not a conftest.
The server binaries come from ``SDLC_TEST_PG_BINDIR``, the ``PATH`` or Debian's
``/usr/lib/postgresql/<version>/bin`` (``make install`` installs the package when
none is there). initdb and postgres refuse to run as root, so as root the cluster
runs as the ``postgres`` user (``runuser``) in a directory that user owns. No
Unix socket, no fsync: the cluster lives only as long as the tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from gitrepo import free_port

SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60

# Appended to postgresql.conf: loopback only, throwaway durability, room for every flow run's pool.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are; None when PostgreSQL is not installed."""
    configured = os.environ.get("SDLC_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def _as_cluster_owner() -> list[str]:
    """The command prefix that runs a server binary as a user it accepts."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", SUPERUSER, "--"]


@dataclass
class PostgresCluster:
    bindir: Path
    root: Path
    port: int
    host: str = "127.0.0.1"
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL: ``postgresql+psycopg`` (the ledger) or ``postgresql+asyncpg`` (Prefect's server)."""
        return f"{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*_as_cluster_owner(), *args], cwd=self.root, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.log_tail()}")
        return done

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return "postgres.log:\n" + self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no postgres.log)"

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )
        settings = {**SERVER_SETTINGS, "port": str(self.port)}
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# sdlc-flows tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", str(START_TIMEOUT_SECONDS), "start",
        )

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [*_as_cluster_owner(), str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                cwd=self.root, capture_output=True, timeout=60,
            )


def start_cluster(bindir: Path) -> PostgresCluster:
    """initdb and start a cluster in a new temp dir owned by whoever runs the server."""
    root = Path(tempfile.mkdtemp(prefix="sdlc-tests-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PostgresCluster(bindir=bindir, root=root, port=free_port())
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def remove_cluster(cluster: PostgresCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private cluster with the databases ``prefect`` (Prefect's server) and ``ledger``; removed at the end."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (make install installs it): no initdb on PATH or in /usr/lib/postgresql")
    cluster = start_cluster(bindir)
    try:
        for name in ("prefect", "ledger"):
            cluster.create_database(name)
        yield cluster
    finally:
        remove_cluster(cluster)
