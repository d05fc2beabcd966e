"""A GitLab REST API v4 test double: a real HTTP server over real bare git repositories.

``GitLabTestServer`` speaks, on 127.0.0.1 under ``/api/v4``, the operations of
``tests/contracts/gitlab-endpoints.md`` (routed and checked by
:mod:`forge_servers.gitlab_contract`). Each project is a bare git repository on
disk (:meth:`GitLabTestServer.create_repo` returns its path, the git remote the
pipeline pushes to); merge requests see the branches pushed there, and a merge is
a real merge commit written into the target branch with git plumbing
(``merge-tree``, ``commit-tree``, ``update-ref``).

Behaviour kept from GitLab because clients get it wrong (the contract's Traps):

* ``:id`` is the numeric id or the URL-encoded full path (``group%2Fsub%2Fapp``); an
  unencoded ``/`` finds no route (404), a moved project answers a GET with 301;
* the MR list pages at 20 (``per_page`` at most 100) with ``x-next-page`` / ``link``,
  ``state`` defaults to ``all``, and ``x-total`` is left out past ``count_limit`` rows;
* creating an MR next to an *open* one of the same source and target branch is a 409
  ``{"message": ["Another open merge request already exists ...: !<iid>"]}``; another
  target is no duplicate; right after creation ``diff_refs`` and ``changes_count`` are empty;
* mergeability is asynchronous: after creation and after each push to either branch
  the first ``checking_reads`` GETs of the MR say ``checking``; lists never recheck;
* no ``merged`` boolean: ``state`` is ``opened``/``closed``/``merged``;
* merging: 404, then 401 (``merge_allowed=False``: no merge permission), then 409 for a
  stale ``sha``, then 405 when not mergeable now (not open, unchecked or checking, draft,
  conflict, no commits, CI required and not green), else a real merge (200). With
  ``auto_merge`` and a running head pipeline it is only scheduled (200, still ``opened``)
  and happens when the pipeline succeeds;
* CI jobs are commit statuses; there is no combined status; re-posting the state a
  status already has is a 400 ``Cannot transition status via ...``;
* quick actions in note bodies and MR descriptions run; a note of commands only
  answers 202 and is not stored; notes list newest first; label changes and state
  changes leave system notes;
* a 429 carries ``Retry-After`` and ``RateLimit-*`` (Rack::Attack) unless it is an
  application limit (:meth:`GitLabTestServer.inject_rate_limit`), with a plain text body.

Faults are injected per request (:meth:`GitLabTestServer.inject`, :meth:`GitLabTestServer.chaos`);
their path regex is searched in the path relative to ``/api/v4``, still percent-encoded.
Every request is logged in :attr:`GitLabTestServer.requests` (its path relative to ``/api/v4``,
still encoded; tokens masked); every departure from the contract in
:attr:`GitLabTestServer.violations`; every merge in :attr:`GitLabTestServer.merges`.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from forge_servers.common import (
    Fault,
    ForgeRequestHandler,
    RecordedRequest,
    ThreadedForgeServer,
    seeded_bare_repository,
    server_git,
)
from forge_servers.gitlab_contract import PIPELINE_STATUSES, TOKEN_QUERY, Checked, check_request

DEFAULT_TOKEN = "glpat-test-token"
API_PREFIX = "/api/v4"
GITLAB_VERSION = "19.0.0-pre"
GITLAB_REVISION = "55eb439f6bf"
BOT: dict[str, Any] = {"id": 1, "username": "sdlc-bot", "name": "SDLC Bot", "email": "sdlc-bot@example.test"}
MERGE_IDENTITY: tuple[str, str] = (BOT["name"], BOT["email"])
SEED_IDENTITY = ("Administrator", "admin@example.test")
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
COUNT_LIMIT = 10_000  # §1: past this many rows GitLab leaves out x-total, x-total-pages, rel="last"
DRAFT_RE = re.compile(r"^\s*(?:\[draft\]|\(draft\)|draft:)\s*", re.IGNORECASE)
ACTIVE = ("created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending", "running", "canceling")
FINISHED = ("success", "failed", "canceled", "skipped")
STATUS_EVENTS = {"pending": "enqueue", "running": "run", "success": "success", "failed": "drop",
                 "canceled": "cancel", "skipped": "skip"}
FAULT_BODIES: dict[int, tuple[str, Any]] = {
    429: ("text/plain", "Retry later\n"),
    500: ("application/json", {"message": "500 Internal Server Error"}),
    502: ("text/plain", "502 Bad Gateway\n"),
    503: ("text/plain", "503 Service Unavailable\n"),
    504: ("text/plain", "504 Gateway Timeout\n"),
}
# Quick actions GitLab knows (a line `/name ...`): extracted from the text whatever their effect here.
QUICK_ACTIONS = frozenset({
    "approve", "assign", "assign_reviewer", "award", "board_move", "clone", "close", "confidential",
    "copy_metadata", "done", "draft", "due", "duplicate", "estimate", "label", "lock", "merge", "milestone",
    "move", "react", "ready", "reassign", "reassign_reviewer", "rebase", "relabel", "relate", "remove_due_date",
    "remove_estimate", "remove_milestone", "remove_time_spent", "reopen", "request_review", "reviewer",
    "spend", "squash", "subscribe", "target_branch", "title", "todo", "unapprove", "unassign",
    "unassign_reviewer", "unlabel", "unlock", "unsubscribe", "weight",
})
MR_ONLY_ACTIONS = frozenset({"approve", "unapprove", "merge", "draft", "ready", "rebase", "target_branch",
                             "reviewer", "assign_reviewer", "request_review", "unassign_reviewer",
                             "reassign_reviewer", "squash"})
QUICK_ACTION_RE = re.compile(r"^/([a-z_]+)(?:[ \t]+(.*))?$")
LABEL_TOKEN_RE = re.compile(r'~"([^"]+)"|~(\S+)|"([^"]+)"|(\S+)')


def _now() -> str:
    """GitLab's timestamps: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _git(cwd: Path, *args: str, check: bool = True, stdin: str | None = None,
         identity: tuple[str, str] = SEED_IDENTITY) -> subprocess.CompletedProcess[str]:
    return server_git(cwd, *args, identity=identity, check=check, stdin=stdin)


def composite_status(statuses: Iterable[tuple[str, bool]]) -> str:
    """A pipeline's status from its jobs' ``(status, allow_failure)``, as ``Gitlab::Ci::Status::Composite``
    orders them: an allowed failure counts as a success (with warnings)."""
    seen = {"success" if allowed and status in ("failed", "canceled") else status for status, allowed in statuses}
    if not seen:
        return "created"
    for result, only in (
        ("skipped", {"skipped"}),
        ("success", {"success", "skipped"}),
        ("created", {"created", "skipped"}),
        ("canceled", {"canceled", "success", "skipped"}),
        ("pending", {"pending", "created", "skipped"}),
    ):
        if seen <= only:
            return result
    if seen & {"running", "pending", "canceling", "waiting_for_resource", "preparing", "waiting_for_callback"}:
        return "running"
    for result in ("manual", "scheduled"):
        if result in seen:
            return result
    if "created" in seen:
        return "running"
    return "failed"


@dataclass
class Project:
    """One GitLab project: a bare repository, and what the API keeps about it."""

    id: int
    namespace: str
    name: str
    path: Path
    default_branch: str
    namespace_id: int
    merge_requests: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # name -> colour
    created_at: str = field(default_factory=_now)

    @property
    def full_path(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class MergeRecord:
    """One merge the server carried out (``merges``): tests assert a merge request was merged once."""

    project: str
    iid: int
    merge_commit_sha: str
    squash_commit_sha: str | None
    source_sha: str
    target_branch: str
    auto: bool = False
    at: float = field(default_factory=time.monotonic)


class ApiError(Exception):
    """An answer other than success: ``body`` is one of GitLab's envelopes."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status, self.body, self.headers = status, body, headers or {}


def _message(status: int, text: Any) -> ApiError:
    """``{"message": ...}``: a string, a list of strings, or ``{field: [errors]}``."""
    return ApiError(status, {"message": text})


def _not_found(what: str) -> ApiError:
    return _message(404, f"404 {what} Not Found")


Answer = tuple[int, Any, dict[str, str]]
Params = dict[str, Any]


def _flag(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "t", "yes", "y", "on")


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _names(value: Any) -> list[str]:
    """Label names from a comma-separated string or a list; blanks dropped, order kept, no duplicates."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _flatten(query: dict[str, list[str]], body: Any) -> Params:
    """Query then body as one mapping (GitLab merges them): ``name[]`` becomes a list under ``name``."""
    params: Params = {}
    for key, values in query.items():
        if key.endswith("[]"):
            params[key[:-2]] = list(values)
        elif values:
            params[key] = values[-1]
    if isinstance(body, dict):
        params.update(body)
    return params


def _label_ref(name: str) -> str:
    """A label as system notes write it: ``~"name"``."""
    return '~"' + name + '"'


def _form(raw: bytes) -> dict[str, Any]:
    """A form body as a dict: ``name[]`` keys keep every value (a list), the rest their last one."""
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values if key.endswith("[]") else values[-1] for key, values in parsed.items()}


class GitLabTestServer(ThreadedForgeServer):
    """GitLab's REST API v4 on 127.0.0.1 over bare repositories under ``root``; a context manager.

    Options (attributes, may be changed while running): ``require_pipeline`` (the project's
    "pipelines must succeed": ``ci_must_pass`` / ``ci_still_running``), ``checking_reads`` (how
    many GETs of an MR say ``checking`` after creation or a push), ``merge_allowed`` (False: the
    merge endpoint answers 401), ``token_scopes`` (without ``api`` every write is a 403),
    ``count_limit`` (rows past which pagination totals are left out), ``rate_limit_headers``
    (``RateLimit-*`` on every answer, as when a Rack::Attack throttle is on).
    """

    name = "gitlab"

    def __init__(
        self,
        root: Path | None = None,
        *,
        token: str = DEFAULT_TOKEN,
        require_pipeline: bool = False,
        checking_reads: int = 1,
        merge_allowed: bool = True,
        token_scopes: tuple[str, ...] = ("api",),
        count_limit: int = COUNT_LIMIT,
        rate_limit_headers: bool = False,
        version: str = GITLAB_VERSION,
    ) -> None:
        super().__init__(root)
        self.token = token
        self.require_pipeline = require_pipeline
        self.checking_reads = checking_reads
        self.merge_allowed = merge_allowed
        self.token_scopes = token_scopes
        self.count_limit = count_limit
        self.rate_limit_headers = rate_limit_headers
        self.version = version
        self.merges: list[MergeRecord] = []
        # The project's own CI, as a runner would give it: every commit sdlc asks the pipelines of gets one,
        # ``ci_script[0]`` at first, then each ``(status, reads)`` after that many more answers showing it.
        self.ci_script: list[tuple[str, int]] = []
        self._projects: dict[int, Project] = {}
        self._by_path: dict[str, int] = {}  # lower-case full path -> project id
        self._redirects: dict[str, int] = {}  # old lower-case full paths of moved projects
        self._namespaces: dict[str, int] = {}
        self._ids = 0
        self._memo: dict[Any, Any] = {}  # per request: branch lists (cleared whenever a ref is written)
        self._git_cache: dict[tuple[str, ...], Any] = {}  # commits never change: merge-tree and friends
        self._shown: set[int] = set()  # pipelines the current answer shows (their scripted transitions count reads)
        self._window: tuple[int, int] = (0, 0)  # (minute, requests in it) for RateLimit-Observed

    @property
    def api_url(self) -> str:
        """What ``GitLabCredentials.api_url`` is set to (``https://gitlab.com/api/v4`` in production)."""
        return f"{self.web_url}{API_PREFIX}"

    # -- test helpers ----------------------------------------------------------------

    def create_repo(
        self, namespace: str, name: str, default_branch: str = "main", files: dict[str, str] | None = None
    ) -> Path:
        """A project ``namespace/name`` (``namespace`` may nest: ``group/sub``) whose default branch holds
        ``files`` (default: a README); returns its bare repository's path, the git remote to push to."""
        namespace = namespace.strip("/")
        files = {"README.md": f"# {name}\n"} if files is None else files
        path = self.root / "repositories" / namespace / f"{name}.git"
        seeded_bare_repository(self.root, path, default_branch, files, SEED_IDENTITY)
        with self._lock:
            if f"{namespace}/{name}".lower() in self._by_path:
                raise ValueError(f"project {namespace}/{name} exists")
            project = Project(self._next_id(), namespace, name, path, default_branch, self._namespace_id(namespace))
            self._projects[project.id] = project
            self._by_path[project.full_path.lower()] = project.id
        return path

    def project_id(self, namespace: str, name: str) -> int:
        """The numeric id GitLab gives the project (``:id`` may be it or the encoded path)."""
        with self._lock:
            return self._project(namespace, name).id

    def move_project(self, namespace: str, name: str, new_namespace: str, new_name: str | None = None) -> None:
        """Rename or transfer the project (its repository stays where it is): a GET by the old path
        then answers 301 to ``/api/v4/projects/<id>`` (GitLab 16.7+), any other method 404."""
        with self._lock:
            project = self._project(namespace, name)
            old = project.full_path.lower()
            project.namespace, project.name = new_namespace.strip("/"), new_name or name
            project.namespace_id = self._namespace_id(project.namespace)
            del self._by_path[old]
            self._by_path[project.full_path.lower()] = project.id
            self._redirects[old] = project.id

    def add_label(self, namespace: str, name: str, label: str, color: str = "#6699cc") -> None:
        """A project label (quick actions such as ``/label`` only apply existing ones)."""
        with self._lock:
            self._project(namespace, name).labels.setdefault(label, color)

    def create_issue(
        self, namespace: str, name: str, title: str, description: str | None = None, labels: Iterable[str] = ()
    ) -> int:
        """An open issue (labels created as project labels); returns its iid."""
        with self._lock:
            project = self._project(namespace, name)
            names = list(dict.fromkeys(labels))
            self._ensure_labels(project, names)
            now = _now()
            issue: dict[str, Any] = {
                "id": self._next_id(), "iid": len(project.issues) + 1, "title": title, "description": description,
                "state": "opened", "labels": names, "created_at": now, "updated_at": now, "closed_at": None,
                "confidential": False,
            }
            project.issues.append(issue)
            return int(issue["iid"])

    def issue(self, namespace: str, name: str, iid: int) -> dict[str, Any]:
        """The issue as ``GET .../issues/:iid`` shows it."""
        with self._lock:
            project = self._project(namespace, name)
            return self._issue_json(project, self._find_issue(project, iid))

    def close_merge_request(self, namespace: str, name: str, iid: int) -> None:
        """Close an open MR without merging it (as a person would in the web UI)."""
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            self._set_mr_state(project, self._find_mr(project, iid), "close")

    def merge_requests(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Every MR of the project as ``GET .../merge_requests/:iid`` shows it, oldest first; reading
        them here neither starts nor counts down a mergeability check."""
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            return [self._mr_json(project, mr, full=True, mode="peek") for mr in project.merge_requests]

    def pull_requests(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The MRs in the shape the forge-neutral tests read from every server (``test_forge_chaos``):
        ``number`` (the iid), ``state`` ``open``/``closed``, ``merged``, ``merge_commit_sha``,
        ``head``/``base`` refs. GitLab's own entity is :meth:`merge_requests`."""
        return [
            {
                "number": mr["iid"], "state": "open" if mr["state"] == "opened" else "closed",
                "merged": mr["state"] == "merged", "merge_commit_sha": mr["merge_commit_sha"], "title": mr["title"],
                "body": mr["description"], "head": {"ref": mr["source_branch"], "sha": mr["sha"]},
                "base": {"ref": mr["target_branch"]}, "html_url": mr["web_url"],
            }
            for mr in self.merge_requests(namespace, name)
        ]

    def notes(self, namespace: str, name: str, issue_iid: int) -> list[dict[str, Any]]:
        """The issue's stored notes (system notes included), oldest first."""
        with self._lock:
            project = self._project(namespace, name)
            self._find_issue(project, issue_iid)
            return [dict(note) for note in project.notes.get(("Issue", issue_iid), [])]

    def merge_request_notes(self, namespace: str, name: str, iid: int) -> list[dict[str, Any]]:
        """The MR's stored notes (system notes included), oldest first."""
        with self._lock:
            project = self._project(namespace, name)
            self._find_mr(project, iid)
            return [dict(note) for note in project.notes.get(("MergeRequest", iid), [])]

    def add_pipeline(
        self,
        namespace: str,
        name: str,
        sha: str | None = None,
        ref: str | None = None,
        status: str | None = None,
        jobs: Iterable[tuple[str, str] | tuple[str, str, bool]] | None = None,
        *,
        source: str = "push",
    ) -> int:
        """A pipeline on ``sha`` (default: the head of ``ref``; ``ref`` defaults to a branch holding ``sha``,
        else the default branch). ``jobs`` are ``(name, status[, allow_failure])``; without them one job
        ``test`` has ``status`` (default ``success``). The pipeline's status is its jobs' composite unless
        ``status`` is given. Returns the pipeline id."""
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            if sha is None:
                ref = ref or project.default_branch
                sha = self._resolve(project, ref)
                if sha is None:
                    raise ValueError(f"no commit for ref {ref!r}")
            else:
                full = self._resolve(project, sha)
                if full is None:
                    raise ValueError(f"no commit {sha!r}")
                sha, ref = full, ref or self._ref_for(project, full)
            assert ref is not None
            pipeline = self._new_pipeline(project, sha, ref, source)
            listed = list(jobs) if jobs is not None else [("test", status or "success")]
            for job in listed:
                self._set_job(project, pipeline, job[0], job[1], allow_failure=bool(job[2]) if len(job) > 2 else False)
            pipeline["override"] = status if jobs is not None else None
            self._touch_pipeline(project, pipeline)
            return int(pipeline["id"])

    def _pipeline_on_push(self, project: Project, sha: str) -> None:
        """The pipeline ``ci_script`` gives a commit of a branch (none for an unknown one)."""
        if self._resolve(project, sha) is None:
            return
        (first, _), *later = self.ci_script
        pipeline_id = self.add_pipeline(project.namespace, project.name, sha=sha, status=first)
        for status, reads in later:
            self.set_pipeline_status(project.namespace, project.name, pipeline_id, status, after_reads=reads)

    def add_merge_request_pipeline(
        self,
        namespace: str,
        name: str,
        iid: int,
        status: str | None = None,
        jobs: Iterable[tuple[str, str] | tuple[str, str, bool]] | None = None,
        *,
        merged_results: bool = False,
    ) -> int:
        """A ``merge_request_event`` pipeline of the MR's source head: on ``refs/merge-requests/<iid>/head``,
        or with ``merged_results`` on ``refs/merge-requests/<iid>/merge`` whose ``sha`` is a temporary merge
        commit of source into target (§3.6: not the MR's ``sha``). Returns the pipeline id."""
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            mr = self._find_mr(project, iid)
            head = self._mr_head(project, mr)
            ref, sha = f"refs/merge-requests/{iid}/head", head
            if merged_results:
                target = self._branch_sha(project, mr["target_branch"])
                tree = self._merge_tree(project, target or "", head)
                if target is None or tree is None:
                    raise ValueError(f"!{iid} does not merge cleanly: no merged-results pipeline")
                sha = _git(project.path, "commit-tree", tree, "-p", target, "-p", head, "-m",
                           f"Merge {head} into {target}", identity=MERGE_IDENTITY).stdout.strip()
                ref = f"refs/merge-requests/{iid}/merge"
                _git(project.path, "update-ref", ref, sha)
            pipeline = self._new_pipeline(project, sha, ref, "merge_request_event")
            pipeline["mr_head"] = head
            listed = list(jobs) if jobs is not None else [("test", status or "success")]
            for job in listed:
                self._set_job(project, pipeline, job[0], job[1], allow_failure=bool(job[2]) if len(job) > 2 else False)
            pipeline["override"] = status if jobs is not None else None
            self._touch_pipeline(project, pipeline)
            return int(pipeline["id"])

    def set_pipeline_status(
        self,
        namespace: str,
        name: str,
        pipeline_id: int,
        status: str | None = None,
        *,
        jobs: Iterable[tuple[str, str] | tuple[str, str, bool]] | None = None,
        after_reads: int = 0,
    ) -> None:
        """Move a pipeline to ``status`` (every job with it) and/or set the named ``jobs``' statuses.
        With ``after_reads=N`` the change is scripted: the next N answers that show the pipeline (GET
        pipeline, pipeline lists, the MR's ``head_pipeline``, the commit's statuses) still show the
        current state, then it changes. A pipeline that succeeds runs the auto-merges waiting for it."""
        if status is not None and status not in PIPELINE_STATUSES:
            raise ValueError(f"pipeline status {status!r}")
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            pipeline = self._find_pipeline(project, pipeline_id)
            change = (status, list(jobs) if jobs is not None else None)
            if after_reads > 0:
                pipeline["script"].append([after_reads, change])
            else:
                self._apply_pipeline_change(project, pipeline, change)

    def add_status(
        self,
        namespace: str,
        name: str,
        sha: str,
        state: str,
        *,
        context: str = "default",
        ref: str | None = None,
        target_url: str | None = None,
        description: str | None = None,
        pipeline_id: int | None = None,
    ) -> dict[str, Any]:
        """A commit status, as ``POST .../statuses/:sha`` would create it (a job in a pipeline of the
        commit; a new ``external`` pipeline when there is none); returns it as the API shows it."""
        with self._lock:
            self._memo.clear()
            project = self._project(namespace, name)
            fields: Params = {"state": state, "name": context, "ref": ref, "target_url": target_url,
                              "description": description, "pipeline_id": pipeline_id}
            return self._create_status(project, sha, {k: v for k, v in fields.items() if v is not None})

    def inject_rate_limit(
        self,
        method: str,
        path_regex: str,
        *,
        retry_after: float = 1,
        times: int = 1,
        application_limit: bool = False,
        after: bool = False,
        skip: int = 0,
    ) -> None:
        """Answer the next ``times`` matching requests 429 ``Retry later``: as a Rack::Attack throttle
        (``Retry-After``, ``RateLimit-Reset``, ``RateLimit-ResetTime`` and the other ``RateLimit-*``), or
        with ``application_limit`` as GitLab's application limits do (notes, issues, search): no headers."""
        headers = {} if application_limit else self._fault_headers(429, {"Retry-After": f"{retry_after:g}"})
        with self._lock:
            self._faults.append(Fault(method.upper(), path_regex, 429, None, times, headers, after, None, skip))

    def _fault_headers(self, status: int | None, headers: dict[str, str]) -> dict[str, str]:
        """A throttled answer (§2): ``Retry-After`` (seconds) and ``RateLimit-*``, the reset as Unix time
        (``RateLimit-Reset``) and as an HTTP date (``RateLimit-ResetTime``)."""
        extra = dict(headers)
        if status == 429:
            given = {key.lower(): key for key in extra}
            retry = float(extra[given["retry-after"]]) if "retry-after" in given else 60.0
            reset = int(time.time() + math.ceil(retry))
            defaults = {
                "Retry-After": f"{retry:g}",
                "RateLimit-Name": "throttle_authenticated_api",
                "RateLimit-Limit": "2000",
                "RateLimit-Observed": "2001",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset),
                "RateLimit-ResetTime": formatdate(reset, usegmt=True),
            }
            for key, value in defaults.items():
                if key.lower() not in given:
                    extra[key] = value
        return extra

    # -- state ---------------------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _namespace_id(self, namespace: str) -> int:
        if namespace.lower() not in self._namespaces:
            self._namespaces[namespace.lower()] = self._next_id()
        return self._namespaces[namespace.lower()]

    def _project(self, namespace: str, name: str) -> Project:
        project_id = self._by_path.get(f"{namespace.strip('/')}/{name}".lower())
        if project_id is None:
            raise KeyError(f"no project {namespace}/{name}")
        return self._projects[project_id]

    def _lookup(self, ref: str, method: str, rest: str, raw_query: str) -> Project:
        """The project ``:id`` names: a numeric id, or a full path (case-insensitive, as GitLab)."""
        if ref.isdigit():
            project = self._projects.get(int(ref))
            if project is None:
                raise _not_found("Project")
            return project
        if "/" in ref:
            project_id = self._by_path.get(ref.lower())
            if project_id is not None:
                return self._projects[project_id]
            moved = self._redirects.get(ref.lower())
            if moved is not None and method == "GET":
                location = f"{self.api_url}/projects/{moved}{rest}" + (f"?{raw_query}" if raw_query else "")
                raise ApiError(301, {"message": "301 Moved Permanently"}, {"Location": location})
        raise _not_found("Project")

    def _branches(self, project: Project) -> dict[str, str]:
        """Every branch of the bare repository and its commit (one git call per request)."""
        key = ("branches", project.id)
        if key not in self._memo:
            listed = _git(project.path, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/").stdout
            self._memo[key] = {
                ref[len("refs/heads/"):]: sha for sha, ref in (line.split(" ", 1) for line in listed.splitlines() if line)
            }
        return dict(self._memo[key])

    def _branch_sha(self, project: Project, branch: str) -> str | None:
        return self._branches(project).get(branch)

    def _resolve(self, project: Project, ref: str) -> str | None:
        """The commit of a SHA (full or abbreviated), branch or tag; None when there is none."""
        if not ref or ref.startswith("-"):
            return None
        branch = self._branch_sha(project, ref)
        if branch is not None:
            return branch
        for candidate in (f"refs/tags/{ref}", ref):
            done = _git(project.path, "rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{candidate}^{{commit}}", check=False)
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    def _ref_for(self, project: Project, sha: str) -> str:
        """A branch for a commit: one whose tip it is, else one containing it, else the default branch."""
        branches = self._branches(project)
        for branch in sorted(branches, key=lambda b: (b != project.default_branch, b)):
            if branches[branch] == sha:
                return branch
        listed = _git(project.path, "for-each-ref", "--contains", sha, "--format=%(refname:short)", "refs/heads/",
                      check=False).stdout.split()
        if project.default_branch in listed:
            return project.default_branch
        return listed[0] if listed else project.default_branch

    def _cached(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        if key not in self._git_cache:
            self._git_cache[key] = compute()
        return self._git_cache[key]

    def _merge_tree(self, project: Project, target: str, source: str) -> str | None:
        """The tree of merging ``source`` into ``target``, or None when git finds conflicts."""
        def compute() -> str | None:
            done = _git(project.path, "merge-tree", "--write-tree", "--no-messages", target, source, check=False)
            return done.stdout.split("\n", 1)[0].strip() if done.returncode == 0 else None
        return self._cached(("merge-tree", str(project.path), target, source), compute)

    def _merge_base(self, project: Project, a: str, b: str) -> str | None:
        def compute() -> str | None:
            done = _git(project.path, "merge-base", a, b, check=False)
            return done.stdout.strip() or None
        return self._cached(("merge-base", str(project.path), a, b), compute)

    def _commit_count(self, project: Project, base: str, head: str) -> int:
        return self._cached(("count", str(project.path), base, head), lambda: int(
            _git(project.path, "rev-list", "--count", f"{base}..{head}").stdout.strip() or 0))

    def _changed_files(self, project: Project, base: str, head: str) -> int:
        return self._cached(("changes", str(project.path), base, head), lambda: len(
            _git(project.path, "diff", "--name-only", base, head, "--").stdout.splitlines()))

    def _ensure_labels(self, project: Project, names: Iterable[str]) -> None:
        """§3.8 / Trap 18: unknown label names sent to create or update calls become project labels."""
        for label in names:
            project.labels.setdefault(label, "#6699cc")

    def _find_mr(self, project: Project, iid: int | str) -> dict[str, Any]:
        for mr in project.merge_requests:
            if mr["iid"] == int(iid):
                return mr
        raise _not_found("Merge Request")

    def _find_issue(self, project: Project, iid: int | str) -> dict[str, Any]:
        for issue in project.issues:
            if issue["iid"] == int(iid):
                return issue
        raise _not_found("Issue")

    def _find_pipeline(self, project: Project, pipeline_id: int | str) -> dict[str, Any]:
        for pipeline in project.pipelines:
            if pipeline["id"] == int(pipeline_id):
                return pipeline
        raise _not_found("Pipeline")

    def _user(self) -> dict[str, Any]:
        return {
            "id": BOT["id"], "username": BOT["username"], "name": BOT["name"], "state": "active", "locked": False,
            "avatar_url": None, "web_url": f"{self.web_url}/{BOT['username']}",
        }

    def _project_url(self, project: Project) -> str:
        return f"{self.web_url}/{project.full_path}"

    # -- pipelines and statuses -------------------------------------------------------

    def _new_pipeline(self, project: Project, sha: str, ref: str, source: str) -> dict[str, Any]:
        now = _now()
        pipeline: dict[str, Any] = {
            "id": self._next_id(), "iid": len(project.pipelines) + 1, "sha": sha, "ref": ref, "source": source,
            "jobs": [], "override": None, "script": [], "created_at": now, "updated_at": now,
            "started_at": None, "finished_at": None, "mr_head": None,
            "tag": _git(project.path, "rev-parse", "--verify", "--quiet", f"refs/tags/{ref}",
                        check=False).returncode == 0,
        }
        project.pipelines.append(pipeline)
        return pipeline

    def _pipeline_status(self, pipeline: dict[str, Any]) -> str:
        if pipeline["override"] is not None:
            return str(pipeline["override"])
        return composite_status((job["status"], job["allow_failure"]) for job in pipeline["jobs"] if not job["retried"])

    def _set_job(
        self, project: Project, pipeline: dict[str, Any], name: str, status: str, *, allow_failure: bool = False,
        stage: str = "test", external: bool = False, extra: Params | None = None,
    ) -> dict[str, Any]:
        """Set the latest job ``name`` to ``status``, or add it (finished jobs are replaced: retried)."""
        if status not in PIPELINE_STATUSES:
            raise ValueError(f"job status {status!r}")
        now = _now()
        current = [job for job in pipeline["jobs"] if job["name"] == name and not job["retried"]]
        job = current[-1] if current and (current[-1]["status"] not in FINISHED or not external) else None
        if job is None:
            for old in current:
                old["retried"] = True
            job = {
                "id": self._next_id(), "name": name, "stage": "external" if external else stage, "status": "created",
                "allow_failure": allow_failure, "created_at": now, "started_at": None, "finished_at": None,
                "target_url": None, "description": None, "coverage": None, "retried": False,
            }
            if not external:
                job["target_url"] = f"{self._project_url(project)}/-/jobs/{job['id']}"
            pipeline["jobs"].append(job)
        job.update(extra or {})
        job["status"] = status
        if status in ("running", *FINISHED) and job["started_at"] is None:
            job["started_at"] = now
        if status in FINISHED:
            job["finished_at"] = now
        return job

    def _touch_pipeline(self, project: Project, pipeline: dict[str, Any]) -> None:
        now = _now()
        status = self._pipeline_status(pipeline)
        pipeline["updated_at"] = now
        if status not in ("created", "pending") and pipeline["started_at"] is None:
            pipeline["started_at"] = now
        pipeline["finished_at"] = now if status in FINISHED else None
        self._run_auto_merges(project)

    def _apply_pipeline_change(self, project: Project, pipeline: dict[str, Any], change: tuple[Any, Any]) -> None:
        status, jobs = change
        if jobs is not None:
            for job in jobs:
                self._set_job(project, pipeline, job[0], job[1],
                              allow_failure=bool(job[2]) if len(job) > 2 else False)
            pipeline["override"] = status
        elif status is not None:
            for job in pipeline["jobs"]:
                if not job["retried"]:
                    self._set_job(project, pipeline, job["name"], status, allow_failure=job["allow_failure"])
            pipeline["override"] = status
        self._touch_pipeline(project, pipeline)

    def _advance_scripts(self, shown: set[int]) -> None:
        """One more answer showed these pipelines: count down their scripted changes."""
        for project in self._projects.values():
            for pipeline in project.pipelines:
                if pipeline["id"] not in shown or not pipeline["script"]:
                    continue
                step = pipeline["script"][0]
                step[0] -= 1
                if step[0] <= 0:
                    pipeline["script"].pop(0)
                    self._apply_pipeline_change(project, pipeline, step[1])

    def _pipeline_json(self, project: Project, pipeline: dict[str, Any], *, full: bool = False) -> dict[str, Any]:
        self._shown.add(pipeline["id"])
        status = self._pipeline_status(pipeline)
        web_url = f"{self._project_url(project)}/-/pipelines/{pipeline['id']}"
        data: dict[str, Any] = {
            "id": pipeline["id"], "iid": pipeline["iid"], "project_id": project.id, "sha": pipeline["sha"],
            "ref": pipeline["ref"], "status": status, "source": pipeline["source"], "name": None,
            "created_at": pipeline["created_at"], "updated_at": pipeline["updated_at"], "web_url": web_url,
        }
        if full:
            started, finished = pipeline["started_at"], pipeline["finished_at"]
            duration = None
            if started and finished:
                duration = int((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds())
            data.update(
                before_sha="0" * 40, tag=pipeline["tag"], yaml_errors=None, user=self._user(),
                started_at=started, finished_at=finished, committed_at=None, duration=duration,
                queued_duration=None, coverage=None, archived=False,
                detailed_status={
                    "icon": f"status_{status}", "text": status.replace("_", " "), "label": status.replace("_", " "),
                    "group": status, "tooltip": status.replace("_", " "), "has_details": True,
                    "details_path": web_url.removeprefix(self.web_url), "illustration": None,
                    "favicon": f"/assets/ci_favicons/favicon_status_{status}.png",
                },
            )
        return data

    def _status_json(self, project: Project, pipeline: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        self._shown.add(pipeline["id"])
        return {
            "id": job["id"], "sha": pipeline["sha"], "ref": pipeline["ref"], "status": job["status"],
            "name": job["name"], "target_url": job["target_url"],
            "description": job["description"], "created_at": job["created_at"], "started_at": job["started_at"],
            "finished_at": job["finished_at"], "allow_failure": job["allow_failure"], "coverage": job["coverage"],
            "pipeline_id": pipeline["id"], "author": self._user(),
        }

    def _create_status(self, project: Project, sha_ref: str, params: Params) -> dict[str, Any]:
        """``POST /statuses/:sha``: the status is a job of a pipeline of the commit (§3.5)."""
        sha = self._resolve(project, sha_ref)
        if sha is None:
            raise _not_found("Commit")
        state = str(params.get("state"))
        name = str(params.get("name") or params.get("context") or "default")
        pipeline: dict[str, Any] | None = None
        if params.get("pipeline_id") is not None:
            pipeline = next((p for p in project.pipelines if p["id"] == _int(params["pipeline_id"], -1)
                             and p["sha"] == sha), None)
            if pipeline is None:
                raise _not_found("Pipeline")
        ref = params.get("ref")
        if pipeline is None:
            matching = [p for p in project.pipelines if p["sha"] == sha and (ref is None or p["ref"] == ref)]
            pipeline = max(matching, key=lambda p: p["id"]) if matching else None
        if pipeline is None:
            pipeline = self._new_pipeline(project, sha, str(ref or self._ref_for(project, sha)), "external")
        current = [job for job in pipeline["jobs"] if job["name"] == name and not job["retried"]]
        if current:
            was = current[-1]["status"]
            if was == state or (state == "pending" and was == "running"):
                event = STATUS_EVENTS[state]
                raise _message(400, f'Cannot transition status via :{event} from :{was} '
                                    f'(Reason(s): Status cannot transition via "{event}")')
        extra = {key: params[key] for key in ("target_url", "description") if params.get(key) is not None}
        if params.get("coverage") is not None:
            extra["coverage"] = float(params["coverage"])
        job = self._set_job(project, pipeline, name, state, external=True, extra=extra)
        pipeline["override"] = None  # an external status is a job: the pipeline's status is its jobs' again
        self._touch_pipeline(project, pipeline)
        return self._status_json(project, pipeline, job)

    # -- merge requests -----------------------------------------------------------------

    def _mr_head(self, project: Project, mr: dict[str, Any]) -> str:
        """The MR's ``sha``: the live source head while open (the last one seen if the branch is gone)."""
        if mr["state"] == "opened":
            live = self._branch_sha(project, mr["source_branch"])
            if live is not None:
                mr["head_sha"] = live
        return str(mr["head_sha"])

    def _head_pipeline(self, project: Project, mr: dict[str, Any]) -> dict[str, Any] | None:
        """The latest pipeline of the source head: on the branch, or on the MR's own refs."""
        head, iid = self._mr_head(project, mr), mr["iid"]
        found = [
            p for p in project.pipelines
            if (p["ref"] in (mr["source_branch"], f"refs/merge-requests/{iid}/head") and p["sha"] == head)
            or (p["ref"] == f"refs/merge-requests/{iid}/merge" and p["mr_head"] == head)
        ]
        return max(found, key=lambda p: p["id"]) if found else None

    def _merge_state(self, project: Project, mr: dict[str, Any], mode: str) -> tuple[str, str]:
        """``(detailed_merge_status, merge_status)``. ``mode``: ``get`` (a GET of this MR starts the check
        after a push, or counts it down), ``recheck`` (starts it only), ``peek`` (lists, the merge: neither).
        The first ``checking_reads`` GETs after creation or a push say ``checking``; the check is over
        once a GET has shown its result, so a merge right after a ``checking`` answer is still a 405."""
        if mr["state"] != "opened":
            return "not_open", mr["merge_status"]
        source = self._branch_sha(project, mr["source_branch"])
        target = self._branch_sha(project, mr["target_branch"])
        key = (source, target)
        if mode in ("get", "recheck") and mr["check_key"] != key:
            mr["check_key"], mr["checks_left"] = key, self.checking_reads
            if source is not None:
                _git(project.path, "update-ref", f"refs/merge-requests/{mr['iid']}/head", source)
        if mr["check_key"] != key:
            if self.checking_reads > 0:
                return "unchecked", "unchecked"
            mr["check_key"], mr["checks_left"] = key, 0  # no asynchronous phase: settled at once
        if mr["checks_left"] > 0:
            if mode == "get":
                mr["checks_left"] -= 1
            return "checking", "checking"
        if self.checking_reads > 0 and mr["shown_key"] != key:
            if mode != "get":  # the check ends when a GET shows its result, not before
                return "checking", "checking"
            mr["shown_key"] = key
        return self._settled(project, mr)

    def _settled(self, project: Project, mr: dict[str, Any]) -> tuple[str, str]:
        """Mergeability once the check is done, in GitLab's order of checks."""
        source = self._branch_sha(project, mr["source_branch"])
        target = self._branch_sha(project, mr["target_branch"])
        if source is None or target is None:
            return "commits_status", mr["merge_status"]
        conflict = self._merge_tree(project, target, source) is None
        mr["merge_status"] = "cannot_be_merged" if conflict else "can_be_merged"
        if DRAFT_RE.match(mr["title"]):
            return "draft_status", mr["merge_status"]
        if self._commit_count(project, target, source) == 0:
            return "commits_status", mr["merge_status"]
        if conflict:
            return "conflict", mr["merge_status"]
        if self.require_pipeline:
            pipeline = self._head_pipeline(project, mr)
            status = self._pipeline_status(pipeline) if pipeline is not None else None
            if status in ACTIVE:
                return "ci_still_running", mr["merge_status"]
            if status != "success":
                return "ci_must_pass", mr["merge_status"]
        return "mergeable", mr["merge_status"]

    def _mr_json(self, project: Project, mr: dict[str, Any], *, full: bool, mode: str = "peek",
                 simple: bool = False, created: bool = False) -> dict[str, Any]:
        """The MR entity: the list's basic one, or (``full``) the single MR's, with ``head_pipeline``
        and ``diff_refs`` (both empty straight after creation, §3.2)."""
        web_url = f"{self._project_url(project)}/-/merge_requests/{mr['iid']}"
        if simple:
            return {key: mr[key] for key in ("id", "iid", "title", "description", "state", "created_at",
                                             "updated_at")} | {"project_id": project.id, "web_url": web_url}
        head = self._mr_head(project, mr)
        if created:
            detailed, merge_status = "preparing", "unchecked"
        else:
            detailed, merge_status = self._merge_state(project, mr, mode)
        user = self._user()
        data: dict[str, Any] = {
            "id": mr["id"], "iid": mr["iid"], "project_id": project.id, "title": mr["title"],
            "description": mr["description"], "state": mr["state"], "created_at": mr["created_at"],
            "updated_at": mr["updated_at"], "merged_by": mr["merge_user"] if mr["state"] == "merged" else None,
            "merge_user": mr["merge_user"], "merged_at": mr["merged_at"],
            "closed_by": user if mr["state"] == "closed" else None, "closed_at": mr["closed_at"],
            "target_branch": mr["target_branch"], "source_branch": mr["source_branch"], "user_notes_count": sum(
                not note["system"] for note in project.notes.get(("MergeRequest", mr["iid"]), [])),
            "upvotes": 0, "downvotes": 0, "author": user,
            "assignees": [user] if BOT["id"] in mr["assignee_ids"] else [],
            "assignee": user if BOT["id"] in mr["assignee_ids"] else None,
            "reviewers": [user] if BOT["id"] in mr["reviewer_ids"] else [],
            "source_project_id": project.id, "target_project_id": project.id, "labels": list(mr["labels"]),
            "draft": bool(DRAFT_RE.match(mr["title"])), "work_in_progress": bool(DRAFT_RE.match(mr["title"])),
            "milestone": None, "merge_when_pipeline_succeeds": mr["auto_merge"],
            "merge_status": merge_status, "detailed_merge_status": detailed, "merge_after": mr["merge_after"],
            "sha": head, "merge_commit_sha": mr["merge_commit_sha"], "squash_commit_sha": mr["squash_commit_sha"],
            "discussion_locked": mr["discussion_locked"], "should_remove_source_branch": mr["should_remove"],
            "force_remove_source_branch": mr["force_remove_source_branch"], "prepared_at": None if created
            else mr["created_at"], "allow_collaboration": mr["allow_collaboration"],
            "allow_maintainer_to_push": mr["allow_collaboration"],
            "reference": f"!{mr['iid']}", "references": {
                "short": f"!{mr['iid']}", "relative": f"!{mr['iid']}", "full": f"{project.full_path}!{mr['iid']}",
            },
            "web_url": web_url,
            "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None,
                           "human_total_time_spent": None},
            "squash": mr["squash"], "squash_on_merge": mr["squash"],
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": merge_status == "cannot_be_merged", "blocking_discussions_resolved": True,
            "imported": False, "imported_from": "none",
        }
        if not full:
            return data
        pipeline = self._head_pipeline(project, mr)
        target = self._branch_sha(project, mr["target_branch"])
        diff_refs = None
        changes_count = None
        if not created and target is not None:
            base = mr["merge_base_at_merge"] or self._merge_base(project, target, head)
            start = mr["target_at_merge"] or target
            diff_refs = {"base_sha": base, "head_sha": head, "start_sha": start}
            if base:
                count = self._changed_files(project, base, head)
                changes_count = "1000+" if count > 1000 else str(count)
        data.update(
            subscribed=True, changes_count=changes_count, latest_build_started_at=None,
            latest_build_finished_at=None, first_deployed_to_production_at=None,
            pipeline=self._pipeline_json(project, pipeline) if pipeline else None,
            head_pipeline=self._pipeline_json(project, pipeline, full=True) if pipeline else None,
            diff_refs=diff_refs, merge_error=mr["merge_error"], first_contribution=False,
            user={"can_merge": self.merge_allowed},
        )
        return data

    def _open_duplicate(self, project: Project, mr: dict[str, Any] | None, source: str, target: str) -> dict[str, Any] | None:
        for other in project.merge_requests:
            if other is not mr and other["state"] == "opened" and (other["source_branch"], other["target_branch"]) == (
                source, target
            ):
                return other
        return None

    def _system_note(self, project: Project, kind: str, iid: int, body: str) -> None:
        self._store_note(project, kind, iid, body, system=True)

    def _store_note(self, project: Project, kind: str, iid: int, body: str, *, system: bool = False,
                    internal: bool = False) -> dict[str, Any]:
        noteable = self._find_issue(project, iid) if kind == "Issue" else self._find_mr(project, iid)
        now = _now()
        note = {
            "id": self._next_id(), "type": None, "body": body, "attachment": None, "author": self._user(),
            "created_at": now, "updated_at": now, "system": system, "noteable_id": noteable["id"],
            "noteable_type": kind, "project_id": project.id, "noteable_iid": iid, "resolvable": False,
            "confidential": internal, "internal": internal, "imported": False, "imported_from": "none",
            "commands_changes": {},
        }
        project.notes.setdefault((kind, iid), []).append(note)
        return note

    def _relabel(self, project: Project, kind: str, target: dict[str, Any], new: list[str]) -> None:
        """Set the labels of an issue or MR, with GitLab's system note for what changed."""
        old = list(target["labels"])
        added = [name for name in new if name not in old]
        removed = [name for name in old if name not in new]
        if not added and not removed:
            return
        self._ensure_labels(project, added)
        target["labels"] = list(new)
        target["updated_at"] = _now()
        parts = [
            f"{verb} {' '.join(_label_ref(name) for name in names)} label{'s' if len(names) > 1 else ''}"
            for verb, names in (("added", added), ("removed", removed)) if names
        ]
        self._system_note(project, kind, target["iid"], " and ".join(parts))

    def _set_mr_state(self, project: Project, mr: dict[str, Any], event: str) -> None:
        if event == "close" and mr["state"] == "opened":
            mr["head_sha"] = self._mr_head(project, mr)
            mr.update(state="closed", closed_at=_now(), updated_at=_now(), auto_merge=False)
            self._system_note(project, "MergeRequest", mr["iid"], "closed")
        elif event == "reopen" and mr["state"] == "closed":
            other = self._open_duplicate(project, mr, mr["source_branch"], mr["target_branch"])
            if other is not None:
                raise _message(409, [f"Another open merge request already exists for this source branch: !{other['iid']}"])
            mr.update(state="opened", closed_at=None, updated_at=_now(), check_key=None)
            self._system_note(project, "MergeRequest", mr["iid"], "reopened")

    def _do_merge(self, project: Project, mr: dict[str, Any], options: Params, *, auto: bool = False) -> None:
        """A real merge: an optional squash commit on the merge base, then a merge commit on the target
        branch (``Merge branch '<source>' into '<target>'``), written with compare-and-swap."""
        source_branch, target_branch = mr["source_branch"], mr["target_branch"]
        source = self._branch_sha(project, source_branch)
        target = self._branch_sha(project, target_branch)
        if source is None or target is None:
            mr["merge_error"] = "Branch cannot be merged"
            raise _message(422, "Branch cannot be merged")
        base = self._merge_base(project, target, source) or target
        squash = _flag(options.get("squash")) or mr["squash"]
        squash_sha: str | None = None
        second = source
        if squash:
            if self._commit_count(project, base, source) <= 1:
                squash_sha = source  # SquashService: a single commit is its own squash
            else:
                message = str(options.get("squash_commit_message") or mr["title"])
                squash_sha = _git(project.path, "commit-tree", f"{source}^{{tree}}", "-p", base, "-m", message,
                                  identity=MERGE_IDENTITY).stdout.strip()
            second = squash_sha
        tree = self._merge_tree(project, target, second)
        if tree is None:
            mr["merge_error"] = "Branch cannot be merged"
            raise _message(422, "Branch cannot be merged")
        message = str(options.get("merge_commit_message") or (
            f"Merge branch '{source_branch}' into '{target_branch}'\n\n{mr['title']}\n\n"
            f"See merge request {project.full_path}!{mr['iid']}"))
        commit = _git(project.path, "commit-tree", tree, "-p", target, "-p", second, "-F", "-", stdin=message + "\n",
                      identity=MERGE_IDENTITY).stdout.strip()
        moved = _git(project.path, "update-ref", f"refs/heads/{target_branch}", commit, target, check=False)
        self._memo.clear()
        if moved.returncode != 0:
            mr["merge_error"] = "Branch cannot be merged"
            raise _message(422, "Branch cannot be merged")
        remove = options.get("should_remove_source_branch")
        remove = _flag(remove) if remove is not None else bool(mr["force_remove_source_branch"])
        if remove and source_branch != project.default_branch:
            _git(project.path, "update-ref", "-d", f"refs/heads/{source_branch}", source, check=False)
            self._memo.clear()
        now = _now()
        mr.update(
            state="merged", merged_at=now, updated_at=now, merge_commit_sha=commit, squash_commit_sha=squash_sha,
            head_sha=source, merge_user=self._user(), merge_error=None, auto_merge=False,
            merge_base_at_merge=base, target_at_merge=target, should_remove=remove,
        )
        _git(project.path, "update-ref", f"refs/merge-requests/{mr['iid']}/head", source)
        self._system_note(project, "MergeRequest", mr["iid"], f"merged{' (auto-merge)' if auto else ''}")
        self.merges.append(MergeRecord(project.full_path, mr["iid"], commit, squash_sha, source, target_branch, auto))

    def _run_auto_merges(self, project: Project) -> None:
        """Merge the MRs set to auto-merge whose head pipeline has succeeded and that merge cleanly."""
        for mr in project.merge_requests:
            if mr["state"] != "opened" or not mr["auto_merge"]:
                continue
            pipeline = self._head_pipeline(project, mr)
            if pipeline is None or self._pipeline_status(pipeline) != "success":
                continue
            if self._settled(project, mr)[0] != "mergeable":
                continue
            try:
                self._do_merge(project, mr, mr["merge_params"], auto=True)
            except ApiError:
                mr["auto_merge"] = False

    def _schedulable(self, project: Project, mr: dict[str, Any]) -> bool:
        """Auto-merge can wait for this MR: open, no blocker that waiting cannot clear, pipeline running."""
        if mr["state"] != "opened":
            return False
        pipeline = self._head_pipeline(project, mr)
        if pipeline is None or self._pipeline_status(pipeline) not in ACTIVE:
            return False
        return self._settled(project, mr)[0] in ("mergeable", "ci_still_running")

    # -- quick actions ------------------------------------------------------------------

    def _quick_actions(self, project: Project, kind: str, target: dict[str, Any] | None, text: str,
                       *, diff_head_sha: str | None = None, can_merge: bool = True) -> tuple[str, list[str], list[str]]:
        """Run the quick actions of ``text`` on an issue or MR (``target``; None on creation: the caller
        applies ``title``/``labels`` changes itself). Returns the text without them, the execution
        messages, and the command names."""
        kept: list[str] = []
        messages: list[str] = []
        names: list[str] = []
        fence = False
        for line in text.split("\n"):
            if line.lstrip().startswith("```"):
                fence = not fence
            found = None if fence else QUICK_ACTION_RE.match(line.rstrip())
            if found is None or found.group(1) not in QUICK_ACTIONS:
                kept.append(line)
                continue
            name, argument = found.group(1), (found.group(2) or "").strip()
            names.append(name)
            message = self._quick_action(project, kind, target, name, argument, diff_head_sha, can_merge)
            if message:
                messages.append(message)
        return "\n".join(kept).strip("\n"), messages, names

    def _quick_action(self, project: Project, kind: str, target: dict[str, Any] | None, name: str,
                      argument: str, diff_head_sha: str | None, can_merge: bool) -> str:
        noun = "issue" if kind == "Issue" else "merge request"
        failed = f"Could not apply {name} command."
        if target is None or (name in MR_ONLY_ACTIONS and kind != "MergeRequest"):
            return failed
        if name in ("label", "unlabel", "relabel"):
            wanted = [next(g for g in found.groups() if g) for found in LABEL_TOKEN_RE.finditer(argument)]
            existing = [label for label in wanted if label in project.labels]
            if name == "unlabel" and not argument:
                self._relabel(project, kind, target, [])
                return "Removed all labels."
            if not existing:
                return ""
            shown = " ".join(f"~{label}" for label in existing)
            plural = "labels" if len(existing) > 1 else "label"
            if name == "label":
                self._relabel(project, kind, target, list(dict.fromkeys([*target["labels"], *existing])))
                return f"Added {shown} {plural}."
            if name == "unlabel":
                self._relabel(project, kind, target, [label for label in target["labels"] if label not in existing])
                return f"Removed {shown} {plural}."
            self._relabel(project, kind, target, existing)
            return f"Replaced all labels with {shown} {plural}."
        if name in ("close", "reopen"):
            if (name == "close") != (target["state"] == "opened"):
                return failed
            if kind == "Issue":
                self._set_issue_state(project, target, name)
            else:
                self._set_mr_state(project, target, name)
            return f"{'Closed' if name == 'close' else 'Reopened'} this {noun}."
        if name == "title" and argument:
            target["title"] = argument
            return f'Changed the title to "{argument}".'
        if name == "draft":
            if not DRAFT_RE.match(target["title"]):
                target["title"] = f"Draft: {target['title']}"
            return "Marked this merge request as a draft."
        if name == "ready":
            target["title"] = DRAFT_RE.sub("", target["title"], count=1)
            return "Marked this merge request as ready."
        if name == "merge":
            if not can_merge or not self.merge_allowed or target["state"] != "opened" or not diff_head_sha or (
                diff_head_sha != self._mr_head(project, target)
            ):
                return failed
            if self._schedulable(project, target):
                target.update(auto_merge=True, merge_user=self._user(), merge_params={})
                return "Scheduled to merge this merge request (Merge when checks pass)."
            if self._settled(project, target)[0] != "mergeable":
                return failed
            self._do_merge(project, target, {})
            return "Merged this merge request."
        return failed  # known to GitLab, not modelled here

    def _set_issue_state(self, project: Project, issue: dict[str, Any], event: str) -> None:
        if event == "close" and issue["state"] == "opened":
            issue.update(state="closed", closed_at=_now(), updated_at=_now())
            self._system_note(project, "Issue", issue["iid"], "closed")
        elif event == "reopen" and issue["state"] == "closed":
            issue.update(state="opened", closed_at=None, updated_at=_now())
            self._system_note(project, "Issue", issue["iid"], "reopened")

    # -- JSON shapes ---------------------------------------------------------------------

    def _project_json(self, project: Project) -> dict[str, Any]:
        parts = project.namespace.split("/")
        return {
            "id": project.id, "description": None, "name": project.name,
            "name_with_namespace": " / ".join([*parts, project.name]), "path": project.name,
            "path_with_namespace": project.full_path, "created_at": project.created_at,
            "default_branch": project.default_branch, "tag_list": [], "topics": [],
            "ssh_url_to_repo": str(project.path), "http_url_to_repo": str(project.path),
            "web_url": self._project_url(project), "readme_url": f"{self._project_url(project)}/-/blob/"
            f"{project.default_branch}/README.md", "avatar_url": None, "forks_count": 0, "star_count": 0,
            "last_activity_at": _now(), "visibility": "private", "archived": False, "empty_repo": False,
            "namespace": {
                "id": project.namespace_id, "name": parts[-1], "path": parts[-1], "kind": "group",
                "full_path": project.namespace, "parent_id": None, "avatar_url": None,
                "web_url": f"{self.web_url}/groups/{project.namespace}",
            },
            "merge_requests_enabled": True, "issues_enabled": True, "jobs_enabled": True,
            "merge_method": "merge", "squash_option": "default_off",
            "only_allow_merge_if_pipeline_succeeds": self.require_pipeline,
            "allow_merge_on_skipped_pipeline": False, "remove_source_branch_after_merge": True,
            "permissions": {"project_access": {"access_level": 40, "notification_level": 3}, "group_access": None},
        }

    def _issue_json(self, project: Project, issue: dict[str, Any]) -> dict[str, Any]:
        user = self._user()
        return {
            "id": issue["id"], "iid": issue["iid"], "project_id": project.id, "title": issue["title"],
            "description": issue["description"], "state": issue["state"], "created_at": issue["created_at"],
            "updated_at": issue["updated_at"], "closed_at": issue["closed_at"],
            "closed_by": user if issue["state"] == "closed" else None, "labels": list(issue["labels"]),
            "milestone": None, "assignees": [], "author": user, "type": "ISSUE", "assignee": None,
            "user_notes_count": sum(not n["system"] for n in project.notes.get(("Issue", issue["iid"]), [])),
            "merge_requests_count": 0, "upvotes": 0, "downvotes": 0, "due_date": None,
            "confidential": issue["confidential"], "discussion_locked": None, "issue_type": "issue",
            "web_url": f"{self._project_url(project)}/-/issues/{issue['iid']}",
            "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None,
                           "human_total_time_spent": None},
            "task_completion_status": {"count": 0, "completed_count": 0},
            "references": {"short": f"#{issue['iid']}", "relative": f"#{issue['iid']}",
                           "full": f"{project.full_path}#{issue['iid']}"},
            "severity": "UNKNOWN", "moved_to_id": None, "service_desk_reply_to": None,
        }

    def _paginate(self, items: list[Any], params: Params, raw_path: str,
                  query: dict[str, list[str]]) -> tuple[list[Any], dict[str, str]]:
        """Offset pagination (§1): 20 by default, at most 100; ``x-*`` headers and ``link``; totals left
        out past ``count_limit`` rows."""
        per_page = _int(params.get("per_page"), DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page <= 0 else min(per_page, MAX_PER_PAGE)
        page = max(1, _int(params.get("page"), 1))
        total = len(items)
        pages = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        has_next = page * per_page < total
        counted = total <= self.count_limit
        headers = {
            "x-page": str(page), "x-per-page": str(per_page),
            "x-next-page": str(page + 1) if has_next else "", "x-prev-page": str(page - 1) if page > 1 else "",
        }
        if counted:
            headers["x-total"], headers["x-total-pages"] = str(total), str(pages)

        def url(number: int) -> str:
            pairs = [(key, value) for key, values in query.items() if key not in ("page", "per_page", *TOKEN_QUERY)
                     for value in values]
            pairs += [("page", str(number)), ("per_page", str(per_page))]
            return f"{self.api_url}{raw_path}?{urlencode(pairs)}"

        links = []
        if page > 1:
            links.append(f'<{url(page - 1)}>; rel="prev"')
        if has_next:
            links.append(f'<{url(page + 1)}>; rel="next"')
        links.append(f'<{url(1)}>; rel="first"')
        if counted:
            links.append(f'<{url(pages)}>; rel="last"')
        headers["link"] = ", ".join(links)
        return chunk, headers

    # -- routing ------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, raw_query: str, query: dict[str, list[str]], body: Any,
               checked: Checked) -> Answer:
        """Route one authenticated, contract-matched request (under the server's lock)."""
        assert checked.operation is not None
        handler: Callable[..., Answer] | None = getattr(self, f"_op_{checked.operation.name}", None)
        if handler is None:
            raise _message(404, f"{checked.operation.name} is not implemented by GitLabTestServer")
        with self._lock:
            self._memo.clear()
            self._shown = set()
            try:
                params = _flatten(query, body)
                if "id" not in checked.params:
                    return handler(None, checked.params, params, raw_path, query)
                rest = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else ""
                project = self._lookup(checked.params["id"], method, rest, raw_query)
                return handler(project, checked.params, params, raw_path, query)
            finally:
                shown, self._shown = self._shown, set()
                self._advance_scripts(shown)

    def _rate_headers(self) -> dict[str, str]:
        minute = int(time.time() // 60)
        with self._lock:
            seen = self._window[1] + 1 if self._window[0] == minute else 1
            self._window = (minute, seen)
        return {
            "RateLimit-Name": "throttle_authenticated_api", "RateLimit-Limit": "2000",
            "RateLimit-Observed": str(seen), "RateLimit-Remaining": str(max(0, 2000 - seen)),
            "RateLimit-Reset": str((minute + 1) * 60),
        }

    # -- operations ------------------------------------------------------------------------

    def _op_get_version(self, project: None, path: Params, params: Params, raw_path: str, query: Any) -> Answer:
        return 200, {"version": self.version, "revision": GITLAB_REVISION, "enterprise": False,
                     "kas": {"enabled": False, "externalUrl": None, "externalK8sProxyUrl": None, "version": None}}, {}

    def _op_get_project(self, project: Project, path: Params, params: Params, raw_path: str, query: Any) -> Answer:
        return 200, self._project_json(project), {}

    def _op_list_merge_requests(self, project: Project, path: Params, params: Params, raw_path: str,
                                query: dict[str, list[str]]) -> Answer:
        state = params.get("state", "all")  # Trap 8: not "opened"
        mrs = [mr for mr in project.merge_requests if state == "all" or mr["state"] == state]
        for key in ("source_branch", "target_branch"):
            if key in params:
                mrs = [mr for mr in mrs if mr[key] == params[key]]
        if "source_project_id" in params:
            mrs = [mr for mr in mrs if _int(params["source_project_id"], -1) == project.id]
        if "iids" in params:
            wanted = {_int(iid, -1) for iid in (params["iids"] if isinstance(params["iids"], list) else [params["iids"]])}
            mrs = [mr for mr in mrs if mr["iid"] in wanted]
        draft = _flag(params["draft"]) if "draft" in params else ({"yes": True, "no": False}.get(params.get("wip", "")))
        if draft is not None:
            mrs = [mr for mr in mrs if bool(DRAFT_RE.match(mr["title"])) == draft]
        if params.get("search"):
            needle = str(params["search"]).lower()
            mrs = [mr for mr in mrs if needle in mr["title"].lower() or needle in (mr["description"] or "").lower()]
        scope = params.get("scope", "all")
        if scope == "assigned_to_me":
            mrs = [mr for mr in mrs if BOT["id"] in mr["assignee_ids"]]
        elif scope == "reviews_for_me":
            mrs = [mr for mr in mrs if BOT["id"] in mr["reviewer_ids"]]
        order = params.get("order_by", "created_at")
        key = {"updated_at": "updated_at", "merged_at": "merged_at", "title": "title"}.get(order, "created_at")
        mrs.sort(key=lambda mr: (mr[key] or "", mr["id"]), reverse=params.get("sort", "desc") == "desc")
        page, headers = self._paginate(mrs, params, raw_path, query)
        mode = "recheck" if _flag(params.get("with_merge_status_recheck")) else "peek"  # lists never count down
        simple = params.get("view") == "simple"
        return 200, [self._mr_json(project, mr, full=False, mode=mode, simple=simple) for mr in page], headers

    def _op_create_merge_request(self, project: Project, path: Params, params: Params, raw_path: str,
                                 query: Any) -> Answer:
        source, target = str(params["source_branch"]), str(params["target_branch"])
        title = str(params["title"] or "")
        if params.get("target_project_id") is not None and _int(params["target_project_id"], -1) != project.id:
            if _int(params["target_project_id"], -1) not in self._projects:
                raise _not_found("Project")
            raise _message(422, ["Source project is not a fork of the target project"])
        if source == target:
            raise _message(422, ["You can't use same project/branch for source and target"])
        if not title.strip():
            raise _message(400, {"title": ["can't be blank"]})
        for key, branch in (("source_branch", source), ("target_branch", target)):
            if self._branch_sha(project, branch) is None:
                kind = "Source" if key == "source_branch" else "Target"
                raise _message(400, {key: [f'{kind} branch "{branch}" does not exist']})
        other = self._open_duplicate(project, None, source, target)
        if other is not None:  # Trap 3: same source and target, open; another target is no duplicate
            raise _message(409, [f"Another open merge request already exists for this source branch: !{other['iid']}"])
        now = _now()
        labels = _names(params.get("labels"))
        self._ensure_labels(project, labels)
        remove = params.get("remove_source_branch")
        mr: dict[str, Any] = {
            "id": self._next_id(), "iid": len(project.merge_requests) + 1, "title": title, "description": None,
            "state": "opened", "source_branch": source, "target_branch": target, "labels": labels,
            "force_remove_source_branch": _flag(remove) if remove is not None else None,  # Trap 9
            "should_remove": None, "squash": _flag(params.get("squash")), "created_at": now, "updated_at": now,
            "merged_at": None, "closed_at": None, "merge_commit_sha": None, "squash_commit_sha": None,
            "head_sha": self._branch_sha(project, source), "check_key": None, "checks_left": 0, "shown_key": None,
            "merge_status": "unchecked", "auto_merge": False, "merge_params": {}, "merge_user": None,
            "merge_error": None, "assignee_ids": self._ids_of(params, "assignee_id", "assignee_ids"),
            "reviewer_ids": self._ids_of(params, None, "reviewer_ids"), "discussion_locked": None,
            "merge_after": params.get("merge_after"), "allow_collaboration": _flag(params.get("allow_collaboration")),
            "merge_base_at_merge": None, "target_at_merge": None,
        }
        project.merge_requests.append(mr)
        _git(project.path, "update-ref", f"refs/merge-requests/{mr['iid']}/head", str(mr["head_sha"]))
        if params.get("description") is not None:
            text, _, _ = self._quick_actions(project, "MergeRequest", mr, str(params["description"]), can_merge=False)
            mr["description"] = text
        return 201, self._mr_json(project, mr, full=True, created=True), {}

    @staticmethod
    def _ids_of(params: Params, single: str | None, many: str) -> list[int]:
        values = params.get(many)
        if values is None and single is not None and params.get(single) is not None:
            values = [params[single]]
        items = values if isinstance(values, list) else ([values] if values is not None else [])
        return [_int(value, -1) for value in items if _int(value, 0) > 0]

    def _op_get_merge_request(self, project: Project, path: Params, params: Params, raw_path: str,
                              query: Any) -> Answer:
        mr = self._find_mr(project, path["merge_request_iid"])
        data = self._mr_json(project, mr, full=True, mode="get")
        if _flag(params.get("include_rebase_in_progress")):
            data["rebase_in_progress"] = False
        if _flag(params.get("include_diverged_commits_count")):
            target = self._branch_sha(project, mr["target_branch"])
            data["diverged_commits_count"] = self._commit_count(project, data["sha"], target) if target else 0
        return 200, data, {}

    def _op_update_merge_request(self, project: Project, path: Params, params: Params, raw_path: str,
                                 query: Any) -> Answer:
        mr = self._find_mr(project, path["merge_request_iid"])
        if "target_branch" in params:
            target = str(params["target_branch"])
            if self._branch_sha(project, target) is None:
                raise _message(400, {"target_branch": [f'Target branch "{target}" does not exist']})
            if target == mr["source_branch"]:
                raise _message(422, ["You can't use same project/branch for source and target"])
            if target != mr["target_branch"]:
                if mr["state"] == "opened" and self._open_duplicate(project, mr, mr["source_branch"], target):
                    other = self._open_duplicate(project, mr, mr["source_branch"], target)
                    assert other is not None
                    raise _message(
                        409, [f"Another open merge request already exists for this source branch: !{other['iid']}"])
                mr.update(target_branch=target, check_key=None)
        if params.get("title") is not None:
            if not str(params["title"]).strip():
                raise _message(400, {"title": ["can't be blank"]})
            mr["title"] = str(params["title"])
        if "description" in params:
            text = params["description"]
            if text is not None:
                text, _, _ = self._quick_actions(project, "MergeRequest", mr, str(text), can_merge=False)
            mr["description"] = text
        labels = list(mr["labels"])
        if "labels" in params:
            labels = _names(params["labels"])
        labels += [name for name in _names(params.get("add_labels")) if name not in labels]
        removed = set(_names(params.get("remove_labels")))
        self._relabel(project, "MergeRequest", mr, [name for name in labels if name not in removed])
        if "remove_source_branch" in params:
            mr["force_remove_source_branch"] = _flag(params["remove_source_branch"])
        if "squash" in params:
            mr["squash"] = _flag(params["squash"])
        for key in ("discussion_locked", "allow_collaboration"):
            if key in params:
                mr[key] = _flag(params[key])
        if "merge_after" in params:
            mr["merge_after"] = params["merge_after"]
        if "assignee_ids" in params or "assignee_id" in params:
            mr["assignee_ids"] = self._ids_of(params, "assignee_id", "assignee_ids")
        if "reviewer_ids" in params:
            mr["reviewer_ids"] = self._ids_of(params, None, "reviewer_ids")
        if params.get("state_event"):
            self._set_mr_state(project, mr, str(params["state_event"]))
        mr["updated_at"] = _now()
        return 200, self._mr_json(project, mr, full=True, mode="peek"), {}

    def _op_merge_merge_request(self, project: Project, path: Params, params: Params, raw_path: str,
                                query: Any) -> Answer:
        """§3.4's decision order: 404, 401, 409 (stale sha), auto-merge, 405 / merge / 422."""
        mr = self._find_mr(project, path["merge_request_iid"])
        if not self.merge_allowed:
            raise _message(401, "401 Unauthorized")
        head = self._mr_head(project, mr)
        if params.get("sha") is not None and str(params["sha"]) != head:
            raise _message(409, f"SHA does not match HEAD of source branch: {head}")
        options: Params = {key: params[key] for key in ("squash", "should_remove_source_branch", "merge_commit_message",
                                                "squash_commit_message") if key in params}
        if _flag(params.get("auto_merge")) or _flag(params.get("merge_when_pipeline_succeeds")):
            if self._schedulable(project, mr):
                mr.update(auto_merge=True, merge_user=self._user(), merge_params=options, updated_at=_now())
                return 200, self._mr_json(project, mr, full=True, mode="peek"), {}
            pipeline = self._head_pipeline(project, mr)
            if pipeline is None or self._pipeline_status(pipeline) == "success":
                if self._merge_state(project, mr, "peek")[0] != "mergeable":
                    raise _message(422, "Branch cannot be merged")
                self._do_merge(project, mr, options)
                return 200, self._mr_json(project, mr, full=True, mode="peek"), {}
            raise _message(405, "405 Method Not Allowed")
        if self._merge_state(project, mr, "peek")[0] != "mergeable":
            raise _message(405, "405 Method Not Allowed")
        self._do_merge(project, mr, options)
        return 200, self._mr_json(project, mr, full=True, mode="peek"), {}

    def _op_cancel_auto_merge(self, project: Project, path: Params, params: Params, raw_path: str,
                              query: Any) -> Answer:
        mr = self._find_mr(project, path["merge_request_iid"])
        if mr["state"] == "closed":
            raise _message(406, "Can't cancel the automatic merge")
        if mr["state"] == "opened":
            mr.update(auto_merge=False, merge_user=None, merge_params={}, updated_at=_now())
        return 201, self._mr_json(project, mr, full=True, mode="peek"), {}

    def _op_list_merge_request_pipelines(self, project: Project, path: Params, params: Params, raw_path: str,
                                         query: dict[str, list[str]]) -> Answer:
        mr = self._find_mr(project, path["merge_request_iid"])
        iid = mr["iid"]
        head = self._mr_head(project, mr)
        target = self._branch_sha(project, mr["target_branch"]) or head
        commits = set(_git(project.path, "rev-list", f"{mr['target_at_merge'] or target}..{head}",
                           check=False).stdout.split())
        found = [p for p in project.pipelines
                 if p["ref"] in (f"refs/merge-requests/{iid}/head", f"refs/merge-requests/{iid}/merge")
                 or (p["ref"] == mr["source_branch"] and p["sha"] in commits)]
        found.sort(key=lambda p: p["id"], reverse=True)
        page, headers = self._paginate(found, params, raw_path, query)
        return 200, [self._pipeline_json(project, p) for p in page], headers

    def _list_notes(self, project: Project, kind: str, iid: int, params: Params, raw_path: str,
                    query: dict[str, list[str]]) -> Answer:
        notes = list(project.notes.get((kind, iid), []))
        activity = params.get("activity_filter", "all_notes")
        if activity == "only_comments":
            notes = [n for n in notes if not n["system"]]
        elif activity == "only_activity":
            notes = [n for n in notes if n["system"]]
        key = "updated_at" if params.get("order_by") == "updated_at" else "created_at"
        notes.sort(key=lambda n: (n[key], n["id"]), reverse=params.get("sort", "desc") == "desc")  # Trap 8
        page, headers = self._paginate(notes, params, raw_path, query)
        return 200, [dict(n) for n in page], headers

    def _create_note(self, project: Project, kind: str, target: dict[str, Any], params: Params) -> Answer:
        """§3.7 / Trap 10: quick actions run; commands only: 202 and no note; else 201 without them."""
        body = str(params.get("body") or "")
        if not body.strip():
            raise _message(400, {"note": ["can't be blank"]})
        text, messages, names = self._quick_actions(
            project, kind, target, body, diff_head_sha=params.get("merge_request_diff_head_sha"))
        if names and not text.strip():
            if not messages:
                raise _message(400, 'Note {:commands_only=>["Failed to apply commands."], :command_names=>'
                                    f'{json.dumps(names)}, :commands=>["Failed to apply commands."]}}')
            return 202, {"commands_changes": {}, "summary": messages}, {}
        internal = _flag(params.get("internal")) or _flag(params.get("confidential"))
        note = self._store_note(project, kind, target["iid"], text, internal=internal)
        return 201, dict(note), {}

    def _op_list_merge_request_notes(self, project: Project, path: Params, params: Params, raw_path: str,
                                     query: dict[str, list[str]]) -> Answer:
        mr = self._find_mr(project, path["merge_request_iid"])
        return self._list_notes(project, "MergeRequest", mr["iid"], params, raw_path, query)

    def _op_create_merge_request_note(self, project: Project, path: Params, params: Params, raw_path: str,
                                      query: Any) -> Answer:
        return self._create_note(project, "MergeRequest", self._find_mr(project, path["merge_request_iid"]), params)

    def _op_list_issue_notes(self, project: Project, path: Params, params: Params, raw_path: str,
                             query: dict[str, list[str]]) -> Answer:
        issue = self._find_issue(project, path["issue_iid"])
        return self._list_notes(project, "Issue", issue["iid"], params, raw_path, query)

    def _op_create_issue_note(self, project: Project, path: Params, params: Params, raw_path: str,
                              query: Any) -> Answer:
        return self._create_note(project, "Issue", self._find_issue(project, path["issue_iid"]), params)

    def _op_get_issue(self, project: Project, path: Params, params: Params, raw_path: str, query: Any) -> Answer:
        return 200, self._issue_json(project, self._find_issue(project, path["issue_iid"])), {}

    def _op_update_issue(self, project: Project, path: Params, params: Params, raw_path: str, query: Any) -> Answer:
        issue = self._find_issue(project, path["issue_iid"])
        if params.get("title") is not None:
            if not str(params["title"]).strip():
                raise _message(400, {"title": ["can't be blank"]})
            issue["title"] = str(params["title"])
        if "description" in params:
            text = params["description"]
            if text is not None:
                text, _, _ = self._quick_actions(project, "Issue", issue, str(text))
            issue["description"] = text
        labels = list(issue["labels"])
        if "labels" in params:
            labels = _names(params["labels"])  # labels="" clears them
        labels += [name for name in _names(params.get("add_labels")) if name not in labels]
        removed = set(_names(params.get("remove_labels")))
        self._relabel(project, "Issue", issue, [name for name in labels if name not in removed])
        if params.get("state_event"):
            self._set_issue_state(project, issue, str(params["state_event"]))
        issue["updated_at"] = _now()
        return 200, self._issue_json(project, issue), {}

    def _op_list_commit_statuses(self, project: Project, path: Params, params: Params, raw_path: str,
                                 query: dict[str, list[str]]) -> Answer:
        sha = self._resolve(project, path["sha"])
        if sha is None:
            raise _not_found("Commit")
        rows = [(p, job) for p in project.pipelines if p["sha"] == sha for job in p["jobs"]]
        if not _flag(params.get("all")):
            rows = [(p, job) for p, job in rows if not job["retried"]]  # the latest per name
        if params.get("ref") is not None:  # (code) filtered only when given
            rows = [(p, job) for p, job in rows if p["ref"] == params["ref"]]
        for key in ("stage", "name"):
            if params.get(key) is not None:
                rows = [(p, job) for p, job in rows if job[key] == params[key]]
        if params.get("pipeline_id") is not None:
            rows = [(p, job) for p, job in rows if p["id"] == _int(params["pipeline_id"], -1)]
        by_pipeline = params.get("order_by") == "pipeline_id"
        rows.sort(key=lambda row: (row[0]["id"], row[1]["id"]) if by_pipeline else (row[1]["id"],),
                  reverse=params.get("sort", "asc") == "desc")
        page, headers = self._paginate(rows, params, raw_path, query)
        return 200, [self._status_json(project, p, job) for p, job in page], headers

    def _op_create_commit_status(self, project: Project, path: Params, params: Params, raw_path: str,
                                 query: Any) -> Answer:
        return 201, self._create_status(project, path["sha"], params), {}

    def _op_list_pipelines(self, project: Project, path: Params, params: Params, raw_path: str,
                           query: dict[str, list[str]]) -> Answer:
        sha = params.get("sha")
        if self.ci_script and sha and not any(p["sha"] == sha for p in project.pipelines):
            self._pipeline_on_push(project, str(sha))
        pipelines = list(project.pipelines)
        if params.get("source") != "parent_pipeline":  # §3.6: child pipelines only when asked for
            pipelines = [p for p in pipelines if p["source"] != "parent_pipeline"]
        for key in ("sha", "ref", "source"):
            if params.get(key) is not None:
                pipelines = [p for p in pipelines if p[key] == params[key]]
        if params.get("status") is not None:
            pipelines = [p for p in pipelines if self._pipeline_status(p) == params["status"]]
        scope = params.get("scope")
        if scope == "running":
            pipelines = [p for p in pipelines if self._pipeline_status(p) == "running"]
        elif scope == "pending":
            pipelines = [p for p in pipelines if self._pipeline_status(p) == "pending"]
        elif scope == "finished":
            pipelines = [p for p in pipelines if self._pipeline_status(p) in FINISHED]
        elif scope in ("branches", "tags"):
            pipelines = [p for p in pipelines if p["tag"] == (scope == "tags")]
        for key, newer in (("updated_after", True), ("updated_before", False), ("created_after", True),
                           ("created_before", False)):
            if params.get(key):
                field_name = key.split("_")[0] + "_at"
                bound = str(params[key])
                pipelines = [p for p in pipelines if (p[field_name] > bound) == newer]
        order = params.get("order_by", "id")
        sort_key: Callable[[dict[str, Any]], Any] = {
            "status": lambda p: (self._pipeline_status(p), p["id"]),
            "ref": lambda p: (p["ref"], p["id"]),
            "updated_at": lambda p: (p["updated_at"], p["id"]),
        }.get(order, lambda p: p["id"])
        pipelines.sort(key=sort_key, reverse=params.get("sort", "desc") == "desc")
        page, headers = self._paginate(pipelines, params, raw_path, query)
        return 200, [self._pipeline_json(project, p) for p in page], headers

    def _op_get_latest_pipeline(self, project: Project, path: Params, params: Params, raw_path: str,
                                query: Any) -> Answer:
        ref = str(params.get("ref") or project.default_branch)
        sha = self._branch_sha(project, ref)
        found = [p for p in project.pipelines if p["sha"] == sha and p["ref"] == ref]
        if not found:
            raise _message(403, "403 Forbidden")  # §3.6 / Trap 12: not 404
        return 200, self._pipeline_json(project, max(found, key=lambda p: p["id"]), full=True), {}

    def _op_get_pipeline(self, project: Project, path: Params, params: Params, raw_path: str, query: Any) -> Answer:
        return 200, self._pipeline_json(project, self._find_pipeline(project, path["pipeline_id"]), full=True), {}


class _Handler(ForgeRequestHandler):
    api: GitLabTestServer
    server_version = "nginx"

    def _serve(self, method: str) -> None:
        api = self.api
        incoming = self._read_request(method, API_PREFIX)
        record, headers, bad_json = incoming.record, incoming.headers, incoming.bad_json
        raw_path = record.path
        raw_query = self.path.split("?", 1)[1] if "?" in self.path else ""
        query = {key: list(values) for key, values in record.query.items()}
        body = record.body
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if incoming.raw_body and content_type == "application/x-www-form-urlencoded":
            body, bad_json = _form(incoming.raw_body), False
            record.body = body
        # The log keeps no token: the header and the query forms are masked like Authorization.
        if "private-token" in record.headers:
            record.headers["private-token"] = "***"
        for name in TOKEN_QUERY:
            if name in record.query:
                record.query[name] = ["***"]

        checked = check_request(method, raw_path, query, body, headers)
        record.operation = checked.operation.name if checked.operation else None
        if checked.violations:
            with api._lock:
                api.violations.extend(checked.violations)

        bearer = headers.get("authorization", "")
        token = headers.get("private-token") or (bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None)
        token = token or next((query[name][-1] for name in TOKEN_QUERY if query.get(name)), None)
        if token != api.token:
            return self._answer(record, 401, {"message": "401 Unauthorized"})
        if bad_json:
            return self._answer(record, 400, {"error": "The provided content-type or body is not valid JSON"})
        if checked.operation is None:
            return self._answer(record, 404, {"error": "404 Not Found"})
        if method != "GET" and "api" not in api.token_scopes:
            return self._answer(record, 403, {
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": "api",
            })

        fault = api._take_fault(method, raw_path)
        if fault is not None and not fault.after:
            if fault.timeout:
                time.sleep(fault.timeout)
            return self._fault(record, fault)
        status: int
        data: Any
        extra: dict[str, str]
        if checked.errors:  # Grape's own validation answers before the endpoint runs
            status, data, extra = 400, {"error": ", ".join(checked.errors)}, {}
        else:
            try:
                status, data, extra = api.handle(method, raw_path, raw_query, query, body, checked)
            except ApiError as exc:
                status, data, extra = exc.status, exc.body, exc.headers
        if fault is not None:  # after=True: the operation happened, its answer is lost
            if fault.timeout:
                time.sleep(fault.timeout)
            return self._fault(record, fault)
        return self._answer(record, status, data, extra)

    def _fault(self, record: RecordedRequest, fault: Fault) -> None:
        record.injected = True
        status = fault.status or 504
        content_type, data = FAULT_BODIES.get(status, ("application/json", {"message": f"{status} Injected fault"}))
        if fault.message is not None:
            data = {"message": fault.message} if content_type == "application/json" else fault.message + "\n"
        self._answer(record, status, data, fault.headers, content_type=content_type)

    def _answer(self, record: RecordedRequest, status: int, data: Any, extra: dict[str, str] | None = None,
                *, content_type: str = "application/json") -> None:
        record.status = status
        if data is None:
            payload = b""
        elif isinstance(data, str) and content_type != "application/json":
            payload = data.encode()
        else:
            payload = json.dumps(data).encode()
        try:
            self.send_response(status)
            headers = {
                "X-Request-Id": uuid.uuid4().hex[:26].upper(),
                "X-Runtime": "0.010000",
                "Cache-Control": "max-age=0, private, must-revalidate",
                "Vary": "Origin",
                **(self.api._rate_headers() if self.api.rate_limit_headers else {}),
                **(extra or {}),
            }
            for key, value in headers.items():
                self.send_header(key, value)
            if payload:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (an injected timeout)
            self.close_connection = True


GitLabTestServer.handler_class = _Handler


def encoded(path: str) -> str:
    """A project's full path as ``:id``: every ``/`` as ``%2F`` (Trap 2)."""
    return quote(path, safe="")

