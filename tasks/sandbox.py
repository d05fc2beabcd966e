"""Confine an agent run (or a test command) with bubblewrap: it sees its worktree and what it needs to start.

The agent is the one untrusted part of the system. Inside the sandbox it has:

- read-write: its own worktree, a private HOME and /tmp (tmpfs, gone with the run),
  and a private git directory whose objects come read-only from the main clone,
  so it can commit locally without touching a ref, a hook or a config of sdlc's;
- read-only: the system (``/usr``, a few files of ``/etc`` for TLS and DNS), the
  install prefixes of its command and of the programs on its ``PATH`` (a pyenv or
  nvm install under HOME included), the existing files its argument list names,
  and the paths granted on purpose;
- nothing else: the data directory (ledger, Prefect's database, logs, other work
  items' worktrees), a local origin, the worker's dotfiles and the hidden paths are
  not there at all. Its own PID namespace and ``--die-with-parent`` end every
  process it started when it ends or its driver dies; its own network namespace,
  given outbound access by pasta, reaches neither the worker's loopback services
  nor anything but the model API port its base-URL variable names.

Everything here builds argument lists; nothing goes through a shell.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from sdlc.settings import get_settings
from tasks.failures import PermanentError

SandboxMode = Literal["auto", "bwrap", "none"]

# System directories every program needs; /bin, /lib ... are symlinks into /usr on merged-usr systems.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What a CLI needs of /etc: names, TLS roots, DNS, time zone, the dynamic linker. Not shadow, not ssh.
ETC_FILES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hostname",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
)
# The worker's secrets in HOME, hidden again when a grant exposes HOME itself.
HOME_SECRETS = (
    ".ssh",
    ".netrc",
    ".git-credentials",
    ".config",
    ".aws",
    ".docker",
    ".gnupg",
    ".kube",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".m2/settings.xml",
    ".azure",
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Environment variables naming a model API's address (ANTHROPIC_BASE_URL, OPENAI_API_BASE ...).
BASE_URL_SUFFIXES = ("_BASE_URL", "_API_BASE", "_API_URL", "_ENDPOINT")
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "sdlc-"

logger = logging.getLogger("sdlc.sandbox")


class SandboxUnavailable(PermanentError):
    """`bwrap` was asked for and cannot confine here: nothing is run."""


class SandboxSpec(BaseModel):
    """How one run is confined; made from the profile, `--sandbox` and the settings."""

    mode: SandboxMode = "auto"
    read_paths: list[str] = Field(default_factory=list, description="Granted read-only.")
    write_paths: list[str] = Field(default_factory=list, description="Granted read-write.")
    hide_paths: list[str] = Field(default_factory=list, description="Never visible (data dir, local origin ...).")
    network: bool = Field(default=True, description="Outbound network (pasta); False: none at all.")
    state_dir: str | None = Field(default=None, description="This work item's own CLI state, kept between its runs.")
    home_state: list[str] = Field(
        default_factory=list,
        description="Folders under HOME kept in `state_dir` (a CLI's sessions), the rest of HOME is discarded.",
    )
    masked_files: list[str] = Field(
        default_factory=list,
        description="Files of the worktree the CLI would load as its own settings: shown empty to it.",
    )


def split_paths(value: str | None) -> list[str]:
    """A colon-separated list of paths, as PATH is written."""
    return [part for part in (value or "").split(":") if part.strip()]


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str, network: bool) -> str | None:
    """Why bwrap cannot confine on this machine (None: it can). One short run of bwrap itself."""
    program = shutil.which(bwrap)
    if program is None:
        return f"{bwrap} is not installed (Debian package bubblewrap)"
    try:
        probe = subprocess.run(
            [
                program,
                "--ro-bind",
                "/",
                "/",
                "--unshare-all",
                "--unshare-user",
                "--die-with-parent",
                "--cap-drop",
                "ALL",
                "--",
                "/bin/true",
            ],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} does not start: {exc}"
    if probe.returncode != 0:
        said = probe.stderr.decode(errors="replace").strip().splitlines()
        return f"{bwrap} cannot make namespaces here: {said[-1] if said else f'exit {probe.returncode}'}"
    if network:
        missing = [name for name in ("pasta", "ip", "nsenter") if shutil.which(name) is None]
        if missing:
            return f"outbound network for the sandbox needs {', '.join(missing)} (Debian packages passt, iproute2, util-linux)"
        if os.geteuid() != 0:
            return "outbound network for the sandbox needs the worker to run as root (ip netns); or set network: false"
    return None


def sandbox_problem(network: bool = True) -> str | None:
    """Why runs cannot be confined here, or None when they can."""
    return _probe(get_settings().sandbox_bwrap, network)


def resolve_mode(mode: SandboxMode, network: bool) -> tuple[bool, str]:
    """(confine?, what to tell people): `bwrap` that cannot work raises, `auto` falls back with a reason."""
    if mode == "none":
        return False, "unconfined: sandbox turned off (sandbox: none)"
    problem = sandbox_problem(network)
    if problem is None:
        return True, "bwrap"
    if mode == "bwrap":
        raise SandboxUnavailable(f"sandbox bwrap was asked for and cannot work here: {problem}")
    return False, f"unconfined: {problem}"


# --------------------------------------------------------------------------- what the sandbox shows


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _system_path(path: Path) -> bool:
    return any(_is_under(path, Path(root)) for root in SYSTEM_DIRS)


def install_prefix(program: Path) -> Path:
    """The directory a program's install lives in: the top `node_modules`, or the parent of `bin/`."""
    parts = program.parts
    if "node_modules" in parts:
        return Path(*parts[: parts.index("node_modules") + 1])
    if program.parent.name in ("bin", "sbin", "shims"):
        return program.parent.parent
    return program


def _path_prefixes(path_value: str, home: Path | None) -> list[Path]:
    """Install prefixes of the PATH entries outside the system: a pyenv, an nvm, a venv."""
    prefixes: list[Path] = []
    for entry in split_paths(path_value):
        directory = Path(entry)
        if not directory.is_absolute() or not directory.is_dir() or _system_path(directory):
            continue
        prefix = install_prefix(directory / "x") if directory.name in ("bin", "sbin", "shims") else directory
        if home is not None and (prefix == home or prefix == home / ".local"):
            prefix = directory  # ~/.local/bin, never all of ~/.local or HOME itself
        prefixes.append(prefix)
    return prefixes


def program_paths(argv: list[str], env: Mapping[str, str]) -> list[Path]:
    """What the command needs to start: its program's install (as named and resolved) and the files it names."""
    paths: list[Path] = []
    found = shutil.which(argv[0], path=env.get("PATH")) if "/" not in argv[0] else argv[0]
    if found:
        named = Path(found).absolute()
        for program in (named, named.resolve()):
            prefix = install_prefix(program)
            if not _system_path(prefix):
                paths.append(prefix)
    for arg in argv[1:]:
        candidate = Path(arg)
        if candidate.is_absolute() and candidate.is_file():  # files only: an argument "/" exposes nothing
            paths.append(candidate)
    return paths


def model_api_ports(env: Mapping[str, str]) -> list[int]:
    """Loopback ports the CLI's own base-URL variables point at: the only host ports the sandbox reaches."""
    ports: set[int] = set()
    for name, value in env.items():
        if not name.endswith(BASE_URL_SUFFIXES):
            continue
        try:
            parts = urlsplit(value.strip())
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            continue
        if parts.hostname in LOOPBACK_HOSTS and port:
            ports.add(port)
    return sorted(ports)


# --------------------------------------------------------------------------- private git


def _git_dirs(worktree: Path) -> tuple[Path, Path] | None:
    """(the worktree's own git dir, the main clone's common git dir), or None if it is no linked worktree."""
    dot_git = worktree / ".git"
    if not dot_git.is_file():
        return None
    text = dot_git.read_text(encoding="utf-8").strip()
    if not text.startswith("gitdir:"):
        return None
    own = (worktree / text.removeprefix("gitdir:").strip()).resolve()
    common_file = own / "commondir"
    common = (own / common_file.read_text(encoding="utf-8").strip()).resolve() if common_file.is_file() else own
    return own, common


def _copy_refs(source: Path, target: Path) -> None:
    """Copy the loose refs while other work items' git commands may write them.

    Git writes a ref as ``<ref>.lock`` and renames it, so a ref file is whole when it
    is there; lock files are skipped and a ref that vanishes meanwhile (packed,
    deleted) is left out, as it would be a moment later.
    """
    for folder, _, names in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".lock"):
                continue
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(Path(folder) / name, target / relative / name)


def private_git_dir(worktree: Path, scratch: Path) -> tuple[Path, Path, Path] | None:
    """A throwaway repository for the agent: copies of HEAD, index and refs; objects read from the clone.

    The agent can run git status, diff, log and even commit: its commits land in
    this copy, which is discarded; the clone's refs, hooks and config stay out of
    its reach. Returns (gitlink file, private git dir, the clone's objects dir).
    """
    dirs = _git_dirs(worktree)
    if dirs is None:
        return None
    own, common = dirs
    private = scratch / "git"
    (private / "objects" / "info").mkdir(parents=True)
    objects = common / "objects"
    (private / "objects" / "info" / "alternates").write_text(f"{objects}\n", encoding="utf-8")
    _copy_refs(common / "refs", private / "refs")
    for name, source in (("packed-refs", common), ("shallow", common), ("HEAD", own), ("index", own)):
        with contextlib.suppress(FileNotFoundError):  # gone between the look and the copy: not there
            shutil.copyfile(source / name, private / name)
    (private / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n", encoding="utf-8"
    )
    gitlink = scratch / "gitlink"
    gitlink.write_text(f"gitdir: {private}\n", encoding="utf-8")
    return gitlink, private, objects


# --------------------------------------------------------------------------- network


def _netns_owner_alive(name: str) -> bool:
    try:
        pid = int(name.removeprefix(NETNS_PREFIX).split("-", 1)[0])
    except ValueError:
        return True
    return Path(f"/proc/{pid}").exists()


def _pasta_pid_file(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{name}.pasta.pid"


def _end_pasta(name: str) -> None:
    """End the pasta that serves namespace ``name``, by its pid file (checked against its command line)."""
    pid_file = _pasta_pid_file(name)
    try:
        pid = int(pid_file.read_text().strip())
        if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


def remove_stale_netns() -> None:
    """Delete the network namespaces of drivers that died, and end their pasta."""
    names = {entry.name for entry in NETNS_DIR.glob(f"{NETNS_PREFIX}*")} if NETNS_DIR.is_dir() else set()
    for name in names:
        if not _netns_owner_alive(name):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)
            _end_pasta(name)
    for pid_file in Path(tempfile.gettempdir()).glob(f"{NETNS_PREFIX}*.pasta.pid"):
        name = pid_file.name.removesuffix(".pasta.pid")
        if name not in names and not _netns_owner_alive(name):
            _end_pasta(name)  # its namespace is gone, yet pasta may still run


@dataclass
class Netns:
    """A network namespace being given its network by pasta; `ready()` waits until it has one."""

    path: Path
    pasta: subprocess.Popen[bytes]

    def ready(self) -> None:
        _, err = self.pasta.communicate(timeout=20)
        if self.pasta.returncode != 0:
            said = err.decode(errors="replace").strip().splitlines()
            raise SandboxUnavailable(
                f"pasta could not give the sandbox a network: {said[-1] if said else self.pasta.returncode}"
            )


@contextlib.contextmanager
def outbound_netns(ports: list[int]) -> Iterator[Netns]:
    """A network namespace with outbound access through pasta and, of the host's loopback, only `ports`.

    pasta starts at once and configures the namespace while the caller prepares the
    rest of the sandbox (it forks into the background when the network is up).
    """
    remove_stale_netns()
    name = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    pasta: subprocess.Popen[bytes] | None = None
    try:
        forwarded = ",".join(str(port) for port in ports) or "none"
        pasta = subprocess.Popen(
            [
                "pasta",
                "--runas",
                "0",
                "--config-net",
                "--quiet",
                "--no-map-gw",
                "-t",
                "none",
                "-u",
                "none",
                "-T",
                forwarded,
                "-U",
                "none",
                "--netns",
                name,
                "--pid",
                str(_pasta_pid_file(name)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        yield Netns(NETNS_DIR / name, pasta)
    finally:
        if pasta is not None and pasta.poll() is None:
            pasta.kill()
            pasta.wait()
        # pasta's background process quits once its namespace is deleted; ended by its pid all the same.
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)
        _end_pasta(name)


# --------------------------------------------------------------------------- the command line


@dataclass
class Confinement:
    """The argument list to put before the command, and what the run log and the artifact say about it."""

    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    description: str = "unconfined"

    @property
    def confined(self) -> bool:
        return bool(self.prefix)


def _bind_args(option: str, paths: list[Path]) -> list[str]:
    args: list[str] = []
    for path in dict.fromkeys(paths):
        args += [option, str(path), str(path)]
    return args


def _hide_args(hidden: list[Path], shown: list[Path]) -> list[str]:
    """Cover each hidden path that lies inside something shown: an empty tmpfs for a folder, /dev/null for a file."""
    args: list[str] = []
    for path in dict.fromkeys(hidden):
        if not path.exists() or not any(_is_under(path, root) for root in shown):
            continue
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return args


def bwrap_arguments(
    argv: list[str],
    *,
    worktree: Path,
    env: Mapping[str, str],
    spec: SandboxSpec,
    scratch: Path,
    netns: Path | None,
) -> list[str]:
    """The whole `[nsenter ...] bwrap ... --` prefix for one run; order matters (later mounts cover earlier)."""
    settings = get_settings()
    home_value = env.get("HOME", "")
    home = Path(home_value) if home_value.startswith("/") and home_value != "/" else None
    args = [
        settings.sandbox_bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sdlc-agent",
    ]
    if netns is None:
        args.append("--unshare-net")
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), directory]
        elif path.is_dir():
            args += ["--ro-bind", directory, directory]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    if home is not None:
        args += ["--tmpfs", str(home)]

    program = program_paths(argv, env)
    tools = _path_prefixes(env.get("PATH", ""), home) + program
    granted_read = [Path(p).expanduser() for p in spec.read_paths]
    granted_write = [Path(p).expanduser() for p in spec.write_paths]
    args += _bind_args("--ro-bind-try", [p for p in tools if p.exists()] + granted_read)
    args += _bind_args("--bind-try", granted_write)

    hidden = [settings.root, *(Path(p) for p in spec.hide_paths), *(Path(p) for p in settings.sandbox_hide_paths)]
    if home is not None:
        hidden += [home / name for name in HOME_SECRETS]
    hidden = [p.expanduser().absolute() for p in hidden]
    shown = tools + granted_read + granted_write
    args += _hide_args(hidden, shown)
    # Hidden folders win over granted ones; a file sdlc or the operator names (the system prompt
    # under the data dir, a scenario file) is shown again inside them.
    named_files = [p for p in [*granted_read, *program] if p.is_file()]
    args += _bind_args("--ro-bind", [p for p in named_files if any(_is_under(p, h) for h in hidden)])

    if home is not None and spec.state_dir:
        for relative in spec.home_state:
            kept = Path(spec.state_dir) / relative
            kept.mkdir(parents=True, exist_ok=True)
            args += ["--bind", str(kept), str(home / relative)]
    args += _bind_args("--bind", [worktree])
    # A repository's copy of the CLI's own settings (Aider's .env, which overrides the environment) is
    # data the agent may have written: the CLI finds it empty, so it cannot redirect the model API or its key.
    # (An empty regular file, not /dev/null: a device node bound in the sandbox cannot be opened, nodev;
    # YAML and JSON settings get an empty mapping, which their readers take for "nothing set".)
    for relative in spec.masked_files:
        masked = worktree / relative
        if masked.is_file() and not masked.is_symlink() and _is_under(masked, worktree):
            mapping = masked.suffix in (".yml", ".yaml", ".json")
            empty = scratch / ("empty-mapping" if mapping else "empty")
            empty.write_text("{}\n" if mapping else "", encoding="utf-8")
            args += ["--ro-bind", str(empty), str(masked)]
    git = private_git_dir(worktree, scratch)
    if (worktree / ".git").is_dir():
        args += ["--ro-bind", str(worktree / ".git"), str(worktree / ".git")]  # a plain checkout: no hooks or config
    if git is not None:
        gitlink, private, objects = git
        args += ["--ro-bind", str(gitlink), str(worktree / ".git"), "--bind", str(private), str(private)]
        args += ["--ro-bind", str(objects), str(objects)]
    args += ["--chdir", str(worktree), "--"]
    if netns is not None:
        args = ["nsenter", f"--net={netns}", "--", *args]
    return args


@contextlib.contextmanager
def confinement(
    argv: list[str],
    *,
    worktree: Path,
    env: Mapping[str, str],
    spec: SandboxSpec,
) -> Iterator[Confinement]:
    """Everything a confined run needs for its duration; removed when it ends, whatever happened."""
    confine, description = resolve_mode(spec.mode, spec.network)
    if not confine:
        yield Confinement(description=description)
        return
    scratch = Path(tempfile.mkdtemp(prefix="sdlc-sandbox-"))
    try:
        with contextlib.ExitStack() as stack:
            ports = model_api_ports(env) if spec.network else []
            netns = stack.enter_context(outbound_netns(ports)) if spec.network else None
            prefix = bwrap_arguments(
                argv, worktree=worktree, env=env, spec=spec, scratch=scratch, netns=netns.path if netns else None
            )
            if netns is not None:
                netns.ready()
            what = "network: outbound" + (f", host ports {ports}" if ports else "") if spec.network else "network: none"
            yield Confinement(prefix=prefix, env={"TMPDIR": "/tmp"}, description=f"bwrap ({what})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# What a CLI keeps under HOME that a later run of the same work item needs (claude --resume's sessions).
HOME_STATE: dict[str, list[str]] = {"claude": [".claude/projects"]}
# Files in the repository a CLI loads as its own settings, with no flag to stop it (Aider 0.86.2 loads
# .env from the git root and the working directory, overriding the environment, and its YAML settings).
REPOSITORY_SETTINGS: dict[str, list[str]] = {
    "aider": [".env", ".aider.conf.yml", ".aider.model.settings.yml", ".aider.model.metadata.json"],
}


def scripted_agent_paths() -> list[str]:
    """The folders the built-in scripted agent imports from (its own and the core's)."""
    import demo
    import sdlc

    return [str(Path(package.__file__ or "").resolve().parent) for package in (demo, sdlc)]


def sandbox_spec_for(
    *,
    mode: SandboxMode | None,
    kind: str,
    work_item: str,
    read_paths: list[str],
    write_paths: list[str],
    network: bool,
    repo: str,
) -> SandboxSpec:
    """The run's confinement: `--sandbox` first, then the profile's, then SDLC_AGENT_SANDBOX.

    The built-in scripted agent is sdlc's own code, so its install is sdlc's packages.
    A local origin is hidden even when a granted path holds it.
    """
    settings = get_settings()
    reads = [*settings.sandbox_read_paths, *read_paths]
    if kind == "scripted":
        reads.extend(scripted_agent_paths())
    origin = Path(repo).expanduser()
    hide = [str(origin.absolute())] if "://" not in repo and not _scp_like(repo) else []
    return SandboxSpec(
        mode=mode or settings.agent_sandbox,
        read_paths=reads,
        write_paths=[*settings.sandbox_write_paths, *write_paths],
        hide_paths=hide,
        network=network,
        state_dir=str(settings.root / "agent-state" / work_item),
        home_state=HOME_STATE.get(kind, []),
        masked_files=REPOSITORY_SETTINGS.get(kind, []),
    )


def _scp_like(repo: str) -> bool:
    """git@host:path, the scp-like form of an ssh URL."""
    head = repo.split("/", 1)[0]
    return ":" in head and not repo.startswith("/")
