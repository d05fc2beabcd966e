"""A Plane v1 REST API test double, built from ``tests/contracts/plane-endpoints.md``.

``PlaneServer`` serves, on 127.0.0.1, the operations sdlc-flows uses: states
(list, create), work items (by human id ``ENG-42`` and by UUID, state PATCH) and
comments (list, create). Behaviour kept from real Plane, because clients get it wrong:

* every path ends with ``/``: a path without it is Django's HTML 404, not JSON;
* ``X-API-Key`` is required: missing is 401, unknown is 403
  ``{"detail": "Given API token is not valid"}``;
* a new project has only the default states (Backlog, Todo, In Progress, Done,
  Cancelled, Triage); a state is a UUID, and one from another project is a 400;
* lists are pages (cursor ``per_page:page:is_prev``, comments newest first), and
  a list without ``per_page`` gets the code default of 1000 items: such requests
  are noted in :attr:`PlaneServer.unpaged_lists`;
* a comment with an ``external_source``/``external_id`` already used is a 409
  whose body names the existing comment's ``id``;
* a rolling rate limit per API key (60 a minute by default): 429
  ``{"error_code": 5900, "error_message": "RATE_LIMIT_EXCEEDED"}`` with
  ``Retry-After``, and ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` otherwise.

Faults are injected per request with :meth:`PlaneServer.inject` (paths relative
to ``/api/v1``); :attr:`PlaneServer.timeline` holds each logged request with the
time it arrived, so tests can measure how long a client waited.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from forge_servers.common import Fault, ForgeRequestHandler, RecordedRequest, ThreadedForgeServer

DEFAULT_API_KEY = "plane_api_0123456789abcdef0123456789abcdef"
DEFAULT_WORKSPACE = "acme"
API_PREFIX = "/api/v1"
CODE_DEFAULT_PER_PAGE = 1000  # what Plane's paginator uses when per_page is absent (the docs say 20)
MAX_PER_PAGE = 1000
DEFAULT_STATES: tuple[tuple[str, str, str], ...] = (
    ("Backlog", "backlog", "#A3A3A3"),
    ("Todo", "unstarted", "#3A3A3A"),
    ("In Progress", "started", "#F59E0B"),
    ("Done", "completed", "#16A34A"),
    ("Cancelled", "cancelled", "#EF4444"),
    ("Triage", "triage", "#4E5355"),
)
STATE_GROUPS = ("backlog", "unstarted", "started", "completed", "cancelled", "triage")
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
NOT_FOUND = "The requested resource does not exist."
DJANGO_NOT_FOUND = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    "  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)
RATE_LIMITED = {"error_code": 5900, "error_message": "RATE_LIMIT_EXCEEDED"}
FAULT_MESSAGES = {500: "Something went wrong please try again later", 502: "Bad Gateway", 503: "Service Unavailable"}


def _now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    """DRF's rendering of a UTC datetime: ISO 8601 with microseconds and ``Z``."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Project:
    id: str
    identifier: str
    name: str
    states: list[dict[str, Any]] = field(default_factory=list)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    next_sequence: int = 1


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: tuple[str, ...]


ROUTES = (
    Route("states", re.compile(rf"^/workspaces/(?P<slug>[^/]+)/projects/(?P<project>{UUID})/states/$"), ("GET", "POST")),
    Route("state", re.compile(rf"^/workspaces/(?P<slug>[^/]+)/projects/(?P<project>{UUID})/states/(?P<state>{UUID})/$"),
          ("GET",)),
    Route("work_item_by_identifier",
          re.compile(r"^/workspaces/(?P<slug>[^/]+)/work-items/(?P<identifier>[^/]+)-(?P<sequence>[^/-]+)/$"), ("GET",)),
    Route("work_item", re.compile(rf"^/workspaces/(?P<slug>[^/]+)/projects/(?P<project>{UUID})/work-items/(?P<item>{UUID})/$"),
          ("GET", "PATCH")),
    Route("comments",
          re.compile(rf"^/workspaces/(?P<slug>[^/]+)/projects/(?P<project>{UUID})/work-items/(?P<item>{UUID})/comments/$"),
          ("GET", "POST")),
)


def route_of(path: str) -> tuple[Route, dict[str, str]] | None:
    """The route of a path below ``/api/v1`` and its parameters; None is Django's 404."""
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            return route, found.groupdict()
    return None


class ApiError(Exception):
    def __init__(self, status: int, data: Any) -> None:
        super().__init__(str(data))
        self.status, self.data = status, data


Answer = tuple[int, Any]


class PlaneServer(ThreadedForgeServer):
    """Plane's v1 API for one workspace on 127.0.0.1 (port 0); use as a context manager or start()/close()."""

    name = "plane"

    def __init__(
        self,
        root: Path | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        workspace: str = DEFAULT_WORKSPACE,
        rate_limit: int = 60,
        rate_window_seconds: float = 60.0,
    ) -> None:
        super().__init__(root)
        self.api_key = api_key
        self.workspace = workspace
        self.workspace_id = str(uuid.uuid4())
        self.bot_id = str(uuid.uuid4())  # the user the API key belongs to: author of comments posted through the API
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.projects: dict[str, Project] = {}
        self.timeline: list[tuple[float, RecordedRequest]] = []  # (time.monotonic() on arrival, request)
        self.unpaged_lists: list[str] = []  # list requests that left out per_page
        self._history: dict[str, list[float]] = {}  # request times per API key, newest first (as DRF keeps them)

    @property
    def api_url(self) -> str:
        """What ``PlaneCredentials.api_url`` is set to: the origin (the client adds ``/api/v1``)."""
        return self.web_url

    # -- test set-up and inspection ---------------------------------------------------

    def add_project(self, identifier: str = "ENG", name: str | None = None) -> str:
        """A project with Plane's default states only; returns its UUID."""
        project = Project(id=str(uuid.uuid4()), identifier=identifier, name=name or identifier)
        with self._lock:
            self.projects[project.id] = project
            for state_name, group, color in DEFAULT_STATES:
                self._create_state(project, {"name": state_name, "group": group, "color": color})
        return project.id

    def add_state(self, project_id: str, name: str, group: str = "started", color: str = "#8B5CF6") -> str:
        """A state created as a person would in the UI; returns its UUID."""
        with self._lock:
            return str(self._create_state(self._project(project_id), {"name": name, "group": group, "color": color})["id"])

    def add_work_item(self, project_id: str, name: str, state: str = "Backlog") -> dict[str, Any]:
        """A work item in state ``state`` (a name); returns its JSON (``id``, ``sequence_id``, ...)."""
        with self._lock:
            project = self._project(project_id)
            state_id = self.state_id(project_id, state)
            now = _now()
            item = {
                "id": str(uuid.uuid4()), "sequence_id": project.next_sequence, "name": name,
                "description_html": "<p></p>", "priority": "none", "state": state_id, "assignees": [], "labels": [],
                "parent": None, "start_date": None, "target_date": None, "completed_at": None, "archived_at": None,
                "external_source": None, "external_id": None, "project": project.id, "workspace": self.workspace_id,
                "created_at": now, "updated_at": now, "created_by": self.bot_id, "updated_by": self.bot_id,
            }
            project.next_sequence += 1
            project.items[item["id"]] = item
            project.comments[item["id"]] = []
            return dict(item)

    def add_comment(
        self, work_item_id: str, comment_html: str, *, actor: str, created_at: datetime | None = None
    ) -> dict[str, Any]:
        """A comment by ``actor`` (a user UUID), as if written in Plane's editor; returns its JSON."""
        with self._lock:
            project, item = self._find_item(work_item_id)
            return dict(self._create_comment(project, item, {"comment_html": comment_html}, actor, created_at))

    def work_item(self, work_item_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._find_item(work_item_id)[1])

    def states(self, project_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(state) for state in self._project(project_id).states]

    def state_id(self, project_id: str, name: str) -> str:
        for state in self.states(project_id):
            if state["name"] == name:
                return str(state["id"])
        raise KeyError(f"project {project_id} has no state {name!r}")

    def comments(self, work_item_id: str) -> list[dict[str, Any]]:
        """The work item's comments, oldest first."""
        with self._lock:
            project, item = self._find_item(work_item_id)
            return [dict(comment) for comment in project.comments[item["id"]]]

    def reset_log(self) -> None:
        super().reset_log()
        with self._lock:
            self.timeline.clear()
            self.unpaged_lists.clear()

    def _fault_headers(self, status: int | None, headers: dict[str, str]) -> dict[str, str]:
        """Plane's throttle always names a Retry-After on a 429."""
        extra = dict(headers)
        if status == 429 and not any(key.lower() == "retry-after" for key in extra):
            extra["Retry-After"] = "1"
        return extra

    # -- state -------------------------------------------------------------------------

    def _project(self, project_id: str) -> Project:
        project = self.projects.get(project_id.lower())
        if project is None:
            raise ApiError(404, {"error": NOT_FOUND})
        return project

    def _find_item(self, work_item_id: str) -> tuple[Project, dict[str, Any]]:
        for project in self.projects.values():
            item = project.items.get(work_item_id.lower())
            if item is not None:
                return project, item
        raise ApiError(404, {"error": NOT_FOUND})

    def _create_state(self, project: Project, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("name") or "").strip()
        if not name:
            raise ApiError(400, {"name": ["This field is required."]})
        if any(state["name"] == name for state in project.states):
            raise ApiError(400, {"name": "The state name is already taken"})
        group = body.get("group") or "backlog"
        if group not in STATE_GROUPS:
            raise ApiError(400, {"group": [f'"{group}" is not a valid choice.']})
        now = _now()
        state = {
            "id": str(uuid.uuid4()), "name": name, "color": str(body.get("color") or "#A3A3A3"), "group": group,
            "sequence": 15000 + 10000 * len(project.states), "default": not project.states,
            "description": str(body.get("description") or ""), "external_source": body.get("external_source"),
            "external_id": body.get("external_id"), "project": project.id, "workspace": self.workspace_id,
            "created_at": now, "updated_at": now,
        }
        project.states.append(state)
        return state

    def _create_comment(
        self, project: Project, item: dict[str, Any], body: dict[str, Any], actor: str, created_at: datetime | None = None
    ) -> dict[str, Any]:
        source, external = body.get("external_source"), body.get("external_id")
        comments = project.comments[item["id"]]
        if source and external:
            for comment in comments:
                if comment["external_source"] == source and comment["external_id"] == external:
                    raise ApiError(409, {
                        "error": "Issue Comment with the same external id and external source already exists",
                        "id": comment["id"],
                    })
        stamp = _iso(created_at) if created_at is not None else _now()
        comment = {
            "id": str(uuid.uuid4()), "comment_html": str(body.get("comment_html") or "<p></p>"), "actor": actor,
            "created_by": actor, "updated_by": actor, "created_at": stamp, "updated_at": stamp, "edited_at": None,
            "access": body.get("access") or "INTERNAL", "external_source": source, "external_id": external,
            "parent": None, "is_member": True, "issue": item["id"], "project": project.id, "workspace": self.workspace_id,
        }
        comments.append(comment)
        return comment

    def _throttle(self, key: str) -> tuple[bool, dict[str, str]]:
        """DRF's SimpleRateThrottle with Plane's headers: a rolling window of request times per key."""
        now = time.time()
        with self._lock:
            history = self._history.setdefault(key, [])
            while history and history[-1] <= now - self.rate_window_seconds:
                history.pop()
            if len(history) >= self.rate_limit:
                wait = self.rate_window_seconds - (now - history[-1])  # until the oldest leaves the window
                return False, {"Retry-After": str(max(1, math.ceil(wait)))}
            history.insert(0, now)
            reset = history[-1] + self.rate_window_seconds
            return True, {
                "X-RateLimit-Remaining": str(max(0, self.rate_limit - len(history))),
                "X-RateLimit-Reset": str(int(reset)),
            }

    # -- operations ----------------------------------------------------------------------

    def handle(self, route: Route, params: dict[str, str], method: str, query: dict[str, str], body: Any) -> Answer:
        """Answer one authenticated, throttled request on a known route."""
        if params["slug"] != self.workspace:
            raise ApiError(404, {"error": NOT_FOUND})
        operation: Callable[..., Answer] = getattr(self, f"_op_{route.name}_{method.lower()}")
        data = body if isinstance(body, dict) else {}
        with self._lock:
            return operation(params, query, data)

    def _page(self, path: str, items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        """Plane's offset paginator: cursor ``per_page:page:is_prev``; without per_page, pages of 1000."""
        if "per_page" not in query:
            self.unpaged_lists.append(path)
        try:
            per_page = min(int(query.get("per_page") or CODE_DEFAULT_PER_PAGE), MAX_PER_PAGE)
            size, page, _ = (int(bit) for bit in (query.get("cursor") or f"{per_page}:0:0").split(":"))
        except ValueError:
            raise ApiError(400, {"error": "Invalid cursor parameter."}) from None
        if per_page <= 0 or size <= 0 or page < 0:
            raise ApiError(400, {"error": "Invalid cursor parameter."})
        start = page * size
        results = items[start:start + size]
        return {
            "grouped_by": None, "sub_grouped_by": None, "total_count": len(items),
            "next_cursor": f"{size}:{page + 1}:0", "prev_cursor": f"{size}:{max(page - 1, 0)}:1",
            "next_page_results": len(items) > start + size, "prev_page_results": page > 0,
            "count": len(results), "total_pages": math.ceil(len(items) / size), "total_results": len(items),
            "extra_stats": None, "results": [dict(item) for item in results],
        }

    def _op_states_get(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        project = self._project(params["project"])
        return 200, self._page(f"states of {project.identifier}", project.states, query)

    def _op_states_post(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        project = self._project(params["project"])
        if not body.get("color"):
            raise ApiError(400, {"color": ["This field is required."]})
        return 201, dict(self._create_state(project, body))

    def _op_state_get(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        for state in self._project(params["project"]).states:
            if state["id"] == params["state"].lower():
                return 200, dict(state)
        raise ApiError(404, {"error": NOT_FOUND})

    def _op_work_item_by_identifier_get(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        for project in self.projects.values():
            if project.identifier == params["identifier"]:
                for item in project.items.values():
                    if str(item["sequence_id"]) == params["sequence"]:
                        return 200, dict(item)
        raise ApiError(404, {"error": NOT_FOUND})

    def _project_item(self, params: dict[str, str]) -> tuple[Project, dict[str, Any]]:
        project = self._project(params["project"])
        item = project.items.get(params["item"].lower())
        if item is None:
            raise ApiError(404, {"error": NOT_FOUND})
        return project, item

    def _op_work_item_get(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        return 200, dict(self._project_item(params)[1])

    def _op_work_item_patch(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        project, item = self._project_item(params)
        changes: dict[str, Any] = {}
        if "state" in body:
            state = str(body["state"])
            if not re.fullmatch(UUID, state):
                raise ApiError(400, {"state": [f"“{state}” is not a valid UUID."]})
            owner = next((p for p in self.projects.values() if any(s["id"] == state.lower() for s in p.states)), None)
            if owner is None:
                raise ApiError(400, {"state": [f'Invalid pk "{state}" - object does not exist.']})
            if owner is not project:
                raise ApiError(400, {"non_field_errors": ["State is not valid please pass a valid state_id"]})
            changes["state"] = state.lower()
        if "name" in body:
            changes["name"] = str(body["name"])
        item.update(changes, updated_at=_now(), updated_by=self.bot_id)
        return 200, dict(item)

    def _op_comments_get(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        project, item = self._project_item(params)
        newest_first = sorted(
            enumerate(project.comments[item["id"]]), key=lambda pair: (pair[1]["created_at"], pair[0]), reverse=True
        )
        return 200, self._page(f"comments of {project.identifier}-{item['sequence_id']}", [c for _, c in newest_first], query)

    def _op_comments_post(self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        project, item = self._project_item(params)
        return 201, dict(self._create_comment(project, item, body, self.bot_id))


class _Handler(ForgeRequestHandler):
    api: PlaneServer
    server_version = "PlaneTestServer/1.3.1"

    def _serve(self, method: str) -> None:
        api = self.api
        incoming = self._read_request(method)
        arrived = time.monotonic()
        record, headers = incoming.record, incoming.headers
        if "x-api-key" in record.headers:
            record.headers["x-api-key"] = "***"  # the log never holds the key
        with api._lock:
            api.timeline.append((arrived, record))

        # Django resolves the URL first: an unknown path (or one without its trailing slash) is an HTML 404.
        relative = record.path[len(API_PREFIX):] if record.path.startswith(API_PREFIX + "/") else ""
        routed = route_of(relative)
        if routed is None:
            return self._answer(record, 404, DJANGO_NOT_FOUND, content_type="text/html; charset=utf-8")
        route, params = routed

        key = headers.get("x-api-key")
        if not key:
            return self._answer(record, 401, {"detail": "Authentication credentials were not provided."})
        if key != api.api_key:
            return self._answer(record, 403, {"detail": "Given API token is not valid"})
        allowed, rate_headers = api._throttle(key)
        if not allowed:
            return self._answer(record, 429, RATE_LIMITED, rate_headers)
        if method not in route.methods:
            return self._answer(record, 405, {"detail": f'Method "{method}" not allowed.'}, rate_headers)
        if incoming.bad_json:
            return self._answer(record, 400, {"detail": "JSON parse error"}, rate_headers)

        fault = api._take_fault(method, relative)
        if fault is not None and not fault.after and self._fault(record, fault):
            return None
        query = {name: values[-1] for name, values in record.query.items()}
        try:
            status, data = api.handle(route, params, method, query, record.body)
        except ApiError as exc:
            status, data = exc.status, exc.data
        if fault is not None and fault.after and self._fault(record, fault):  # done, but the answer is lost
            return None
        return self._answer(record, status, data, rate_headers)

    def _fault(self, record: RecordedRequest, fault: Fault) -> bool:
        """Sleep and/or answer the injected fault; True when it answered."""
        if fault.timeout:
            time.sleep(fault.timeout)
        if fault.status is None:
            return False
        record.injected = True
        if fault.status == 429:
            data: dict[str, Any] = dict(RATE_LIMITED)
        else:
            data = {"error": fault.message or FAULT_MESSAGES.get(fault.status, "injected fault")}
        self._answer(record, fault.status, data, fault.headers)
        return True

    def _answer(
        self, record: RecordedRequest, status: int, data: Any, extra: dict[str, str] | None = None,
        *, content_type: str = "application/json",
    ) -> None:
        record.status = status
        payload = data.encode() if isinstance(data, str) else json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (an injected timeout)
            pass


PlaneServer.handler_class = _Handler
