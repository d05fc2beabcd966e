"""The embedded default (B63): a local Prefect server on SQLite, started when none runs.

With ``PREFECT_API_URL`` set, sdlc uses that server and starts nothing. Otherwise
it looks for a healthy server on 127.0.0.1:<SDLC_PREFECT_PORT> (default 4200) and,
if there is none, starts one in the background with its state under
``<data_dir>/prefect``. The server outlives the command so that ``sdlc approve``
in a second terminal and the UI reach the waiting run; ``sdlc server stop`` ends it.

Only a server found on that port is checked to be this data directory's own
(:class:`ServerOfAnotherInstallation`): there, another data directory's server is
an accident. A server named by ``PREFECT_API_URL`` is shared on purpose, as every
machine of several does with the one server they share (README, "Several machines"),
and is never refused.

This module must not import prefect: it sets the environment prefect reads at import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sdlc.settings import SdlcSettings, environment_value, export_environment, process_environment

START_TIMEOUT_SECONDS = 90.0
# Prefect settings sdlc gives the server it starts, and its own clients where the environment sets none.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    # The V1 UI by default: 3.8.8's V2 UI calls Amplitude even with analytics off.
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    # Many pipelines at once make SQLite busy: wait longer for its lock before answering 503,
    # and let clients retry a 503 for longer (measured: 20 concurrent work items on one worker).
    "PREFECT_SERVER_DATABASE_TIMEOUT": "30",
    "PREFECT_CLIENT_MAX_RETRIES": "10",
}


class ServerError(RuntimeError):
    """The embedded Prefect server could not be reached or started."""


class ServerOfAnotherInstallation(ServerError):
    """The port answers with a Prefect server that keeps another data directory's state."""


def api_url_for(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_home(api_url: str, timeout: float = 5.0) -> Path | None:
    """The Prefect home of the server answering at ``api_url``, as its settings say; None when they do not."""
    try:
        with urllib.request.urlopen(f"{api_url}/admin/settings", timeout=timeout) as response:
            home = json.load(response).get("home")
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return Path(home).expanduser().resolve() if isinstance(home, str) and home else None


def _require_ours(settings: SdlcSettings, api_url: str) -> None:
    """Refuse the embedded server of another data directory: its runs and ledger are not this one's."""
    home, ours = server_home(api_url), (settings.root / "prefect").resolve()
    if home is not None and home != ours:
        raise ServerOfAnotherInstallation(
            f"the Prefect server at {api_url} keeps the state of another installation ({home}), "
            f"not of {settings.root}: set SDLC_PREFECT_PORT to give this data directory its own server, "
            f"or PREFECT_API_URL={api_url} to share that one on purpose"
        )


def _pid_file(settings: SdlcSettings) -> Path:
    return settings.root / "prefect" / "server.pid"


def configure_client_environment(settings: SdlcSettings) -> None:
    """Quiet, isolated Prefect client settings for this process (before prefect is imported)."""
    export_environment({**PREFECT_DEFAULTS, "PREFECT_HOME": str(settings.root / "prefect")}, overwrite=False)


def plain_http_ca_file(settings: SdlcSettings) -> Path:
    """A CA file of one certificate, for Prefect clients of an API served over plain HTTP.

    Prefect builds a TLS context from the whole CA bundle (about 150 certificates)
    for every client it makes, whatever the API's scheme: 18 ms of CPU each, and
    a work item makes about 17 clients (a stage subflow alone makes one). Over
    plain HTTP no certificate is ever checked, so one certificate does as well
    and costs 0.4 ms. An https API keeps the whole bundle (see ``_use_api``).
    """
    import certifi

    path = settings.root / "prefect" / "plain-http-ca.pem"
    if not path.is_file():
        bundle = Path(certifi.where()).read_text()
        end = "-----END CERTIFICATE-----"
        first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(first + "\n")
        temporary.replace(path)
    return path


def _use_api(settings: SdlcSettings, api_url: str) -> str:
    """Point this process's Prefect clients at ``api_url`` (before prefect is imported)."""
    export_environment({"PREFECT_API_URL": api_url})
    if api_url.startswith("http://") and not environment_value("PREFECT_API_SSL_CERT_FILE"):
        export_environment({"PREFECT_API_SSL_CERT_FILE": str(plain_http_ca_file(settings))})
    return api_url


def start_server(settings: SdlcSettings) -> str:
    """Start a Prefect server in the background and wait until it answers."""
    api_url = api_url_for(settings.prefect_port)
    home = settings.root / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    # Unbuffered: the log must hold the server's last lines when it is stopped or dies.
    env = {**process_environment(), **PREFECT_DEFAULTS, "PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    # The server imports entrypoints.prefect_server from where this sdlc is, installed or not.
    project = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
    if not (env.get("PREFECT_SERVER_UI_API_URL") or env.get("PREFECT_UI_API_URL")):
        # Prefect's UI points at PREFECT_API_URL or port 4200, not at the port it is served on.
        env["PREFECT_SERVER_UI_API_URL"] = api_url
    log = open(home / "server.log", "ab")
    process = subprocess.Popen(
        # Prefect's server app, retrying in-server what SQLite refused as locked (entrypoints/prefect_server.py).
        [
            sys.executable,
            "-m",
            "entrypoints.prefect_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.prefect_port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    log.close()
    _pid_file(settings).write_text(str(process.pid))
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if is_healthy(api_url):
            return api_url
        if process.poll() is not None:
            tail = (home / "server.log").read_text(errors="replace")[-2000:]
            raise ServerError(
                f"the Prefect server exited with {process.returncode}; see {home / 'server.log'}:\n{tail}"
            )
        time.sleep(0.3)
    raise ServerError(
        f"the Prefect server did not answer within {START_TIMEOUT_SECONDS:.0f} s; see {home / 'server.log'}"
    )


def ensure_prefect_api(settings: SdlcSettings, *, start: bool = True) -> str:
    """The API URL to use, starting the embedded server if needed; exported to PREFECT_API_URL.

    The server found on ``SDLC_PREFECT_PORT`` must be this data directory's own
    (:class:`ServerOfAnotherInstallation` otherwise); a ``PREFECT_API_URL`` is used as given,
    whoever keeps its state: that is how a second machine uses the first one's server.
    """
    configure_client_environment(settings)
    existing = environment_value("PREFECT_API_URL")
    if existing:
        return _use_api(settings, existing)
    api_url = api_url_for(settings.prefect_port)
    if is_healthy(api_url):
        _require_ours(settings, api_url)
    else:
        if not start:
            raise ServerError(f"no Prefect server answers at {api_url}; run `sdlc server start`")
        start_server(settings)
    return _use_api(settings, api_url)


def _reap(pid: int) -> None:
    """Collect the server's exit status when this process started it: a zombie still counts as in its group."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # started by another process: init collects it


def stop_server(settings: SdlcSettings) -> bool:
    """End the embedded server this data directory started; False when none was running."""
    pid_file = _pid_file(settings)
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
