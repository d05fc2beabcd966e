"""What the forge test servers share: the request log, fault injection, and a threaded server's life.

`GiteaTestServer` and `GitHubTestServer` subclass :class:`ThreadedForgeServer` and add
their API; each request handler asks :meth:`ThreadedForgeServer._take_fault` whether
to fail the request it is answering. Faults are either scripted
(:meth:`ThreadedForgeServer.inject`: the next N matching requests) or random
(:meth:`ThreadedForgeServer.chaos`: any request, with a seeded RNG so a failing
sequence can be replayed).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Iterable, Self
from urllib.parse import parse_qs, urlsplit


def server_git(
    cwd: Path, *args: str, identity: tuple[str, str], check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """git as a forge server runs it on its bare repositories: no user config, the forge's identity."""
    name, email = identity
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    done = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=str(cwd), env=env, capture_output=True, text=True, check=False, input=stdin,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done


def seeded_bare_repository(
    root: Path, path: Path, default_branch: str, files: dict[str, str], identity: tuple[str, str]
) -> Path:
    """A bare repository at ``path`` whose ``default_branch`` holds ``files`` in one commit by ``identity``
    (none when ``files`` is empty); made through a scratch clone under ``root``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    server_git(root, "init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path), identity=identity)
    if files:
        seed = Path(tempfile.mkdtemp(prefix="seed-", dir=root))
        try:
            server_git(seed, "init", "--quiet", f"--initial-branch={default_branch}", ".", identity=identity)
            for relative, text in files.items():
                target = seed / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            server_git(seed, "add", "-A", identity=identity)
            server_git(seed, "commit", "--quiet", "-m", "Initial commit", identity=identity)
            server_git(seed, "push", "--quiet", str(path), f"HEAD:refs/heads/{default_branch}", identity=identity)
        finally:
            shutil.rmtree(seed, ignore_errors=True)
    return path


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``status`` is what it answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    operation: str | None = None
    status: int | None = None
    injected: bool = False
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic)


@dataclass
class Fault:
    method: str
    path_regex: str
    status: int | None
    timeout: float | None
    times: int
    headers: dict[str, str]
    after: bool
    message: str | None
    skip: int = 0  # matching requests let through before the fault applies

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in ("*", method) and re.search(self.path_regex, path) is not None


ChaosKind = int | str
CHAOS_KINDS = ("timeout", "lost")  # besides any HTTP status such as 500 or 429


@dataclass
class Chaos:
    """Random faults on every request: each fails with probability ``rate``, as one of ``kinds``.

    ``timeout``: the server sleeps ``sleep_seconds`` (past the client's timeout) and answers 504;
    whether the operation was carried out first is a coin flip, as the client cannot know.
    ``lost``: the operation is carried out and its answer replaced by a 502 (a proxy lost it).
    A status (``500``, ``429``, ...): answered at once, nothing done; a 429 carries ``Retry-After``.
    """

    rate: float
    kinds: tuple[ChaosKind, ...]
    seed: int
    sleep_seconds: float
    retry_after: float
    rng: random.Random

    def draw(self) -> ChaosKind | None:
        if self.rng.random() >= self.rate:
            return None
        return self.kinds[self.rng.randrange(len(self.kinds))]


class ThreadedForgeServer:
    """A forge API on 127.0.0.1 (port 0) in a thread, over repositories under ``root``; a context manager."""

    name: ClassVar[str] = "forge"
    handler_class: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(self, root: Path | None = None) -> None:
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix=f"{self.name}-test-server-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self._faults: list[Fault] = []
        self._chaos: Chaos | None = None
        self.chaos_injected: Counter[str] = Counter()  # kind -> how many requests chaos failed
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        handler = type(f"Bound{type(self).__name__}Handler", (self.handler_class,), {"api": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # a handler asleep in an injected timeout must not hold close()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-test-server", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return int(self._httpd.server_address[1])

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        timeout: float | None = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        after: bool = False,
        message: str | None = None,
        skip: int = 0,
    ) -> None:
        """Fail the next ``times`` requests ``method`` (or ``*``) whose path matches ``path_regex`` (searched):
        with ``status``, and/or after sleeping ``timeout`` seconds. With ``after=True`` the operation is
        carried out first and only its answer is replaced, as when a response is lost. The first
        ``skip`` matching requests are answered normally.
        """
        if status is None and timeout is None:
            raise ValueError("inject needs a status, a timeout or both")
        extra = self._fault_headers(status, headers or {})
        with self._lock:
            self._faults.append(Fault(method.upper(), path_regex, status, timeout, times, extra, after, message, skip))

    def _fault_headers(self, status: int | None, headers: dict[str, str]) -> dict[str, str]:
        """Headers of an injected answer; a forge adds what its real faults carry."""
        return dict(headers)

    def chaos(
        self,
        rate: float,
        *,
        kinds: Iterable[ChaosKind] = (500, "timeout", 429),
        seed: int = 0,
        sleep_seconds: float = 2.0,
        retry_after: float = 1,
    ) -> None:
        """Fail every request with probability ``rate`` (0..1) as one of ``kinds`` (see :class:`Chaos`).

        The draws come from ``random.Random(seed)`` in request order, so a seed replays the same
        faults for the same sequence of requests. Scripted faults (:meth:`inject`) go first.
        ``chaos(0)`` or :meth:`chaos_off` turns it off.
        """
        if not 0 <= rate <= 1:
            raise ValueError(f"chaos rate must be within 0..1, not {rate}")
        chosen = tuple(kinds)
        unknown = [kind for kind in chosen if not isinstance(kind, int) and kind not in CHAOS_KINDS]
        if not chosen or unknown:
            raise ValueError(f"chaos kinds must be HTTP statuses or {CHAOS_KINDS}, not {unknown or 'none'}")
        with self._lock:
            self._chaos = Chaos(rate, chosen, seed, sleep_seconds, retry_after, random.Random(seed)) if rate else None

    def chaos_off(self) -> None:
        with self._lock:
            self._chaos = None

    def _chaos_fault(self, kind: ChaosKind, chaos: Chaos) -> Fault:
        if kind == "timeout":
            done = chaos.rng.random() < 0.5
            return Fault("*", "", 504, chaos.sleep_seconds, 1, {}, done, "injected timeout")
        if kind == "lost":
            return Fault("*", "", 502, None, 1, {}, True, "Bad Gateway (the answer was lost)")
        assert isinstance(kind, int)
        headers = {"Retry-After": f"{chaos.retry_after:g}"} if kind == 429 else {}
        return Fault("*", "", kind, None, 1, self._fault_headers(kind, headers), False, None)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    return fault
            if self._chaos is not None:
                kind = self._chaos.draw()
                if kind is not None:
                    self.chaos_injected[str(kind)] += 1
                    return self._chaos_fault(kind, self._chaos)
        return None

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.violations.clear()


@dataclass
class IncomingRequest:
    """What a handler read off the wire: the logged record, plus what it needs to check and route."""

    record: RecordedRequest
    headers: dict[str, str]
    raw_body: bytes
    bad_json: bool


class ForgeRequestHandler(BaseHTTPRequestHandler):
    """HTTP plumbing of the forge test servers; a subclass answers in `_serve(method)`."""

    api: Any
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        raise NotImplementedError

    def _read_request(self, method: str, path_prefix: str = "") -> IncomingRequest:
        """Parse the request, log it (token masked) in the server's request log."""
        split = urlsplit(self.path)
        raw_path = split.path
        if path_prefix and raw_path.startswith(path_prefix + "/"):
            raw_path = raw_path[len(path_prefix):]
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        shown = {**headers, **({"authorization": "***"} if "authorization" in headers else {})}
        body: Any = None
        bad_json = False
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                bad_json = True
        record = RecordedRequest(method, raw_path, query, body, shown)
        with self.api._lock:
            self.api.requests.append(record)
        return IncomingRequest(record=record, headers=headers, raw_body=raw_body, bad_json=bad_json)
