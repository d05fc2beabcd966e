"""Plane as the work-item tracker: move work items between states, comment, and read decisions.

Plain methods on one client; the pipeline wraps them in tasks. Every request goes
through :func:`tasks.forge_http.call`, so Plane gets the retry policy the forges
have (:class:`sdlc.retry.HttpRetry`): a 429 waits its ``Retry-After`` (never less),
5xx and timeouts are retried with backoff, any other 4xx fails at once with Plane's
own message. What Plane does that a client must not get wrong
(``tests/contracts/plane-endpoints.md``):

* every path ends with ``/``, and a list without ``per_page`` gets up to 1000
  items (the docs say 20): every list here sends ``per_page`` and follows
  ``next_cursor`` while ``next_page_results`` is true;
* states are UUIDs, and "In Review", "Needs Input" and "Blocked" are not among a
  new project's states: missing ones are created (``create_missing_states``) or
  reported together in one error. Resolved names are shared by every tracker of the
  process for ``STATES_TTL_SECONDS`` (:class:`StateCache`), since Plane allows 60
  requests a minute per key; a cached id Plane refuses is resolved again once;
* comments are HTML only: plain text is escaped here, and read back as text;
* a comment posted with ``external_source``/``external_id`` is refused with 409
  and the existing id when posted again, so a post retried after a lost answer
  does not duplicate;
* reactions are not in the public API: approvals and answers are comments
  (``/approve``, ``/reject``, ``/answer``) by the block's approvers.
"""

from __future__ import annotations

import html
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, field_validator

from blocks.plane import STATE_KEYS, PlaneCredentials, StateKey, canonical_uuid
from sdlc.retry import HttpRetry
from tasks.failures import PermanentError
from tasks.forge_http import ForgeHTTPError, call, forge_message

PER_PAGE = 100  # the documented maximum
STATES_TTL_SECONDS = 300.0  # how soon states renamed or added in Plane are seen by a running process
MAX_PAGES = 100
EXTERNAL_SOURCE = "sdlc-flows"
HUMAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,12}-[0-9]{1,9}$")
STATE_GROUPS: dict[str, str] = {
    "in_progress": "started",
    "in_review": "started",
    "needs_input": "started",
    "blocked": "started",
    "done": "completed",
}
STATE_COLOURS: dict[str, str] = {
    "in_progress": "#F59E0B",
    "in_review": "#8B5CF6",
    "needs_input": "#3B82F6",
    "blocked": "#EF4444",
    "done": "#16A34A",
}
DecisionKind = Literal["approve", "reject", "answer"]
COMMANDS: dict[str, dict[str, DecisionKind]] = {
    "approval": {"/approve": "approve", "/reject": "reject"},
    "answers": {"/answer": "answer"},
}
_BLOCK_TAGS = frozenset({"p", "div", "li", "ul", "ol", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr"})


class PlaneStateMissing(PermanentError):
    """The project lacks states the pipeline needs; retrying will not create them."""

    def __init__(self, missing: dict[str, str], workspace: str, project_id: str, existing: list[str]) -> None:
        self.missing, self.workspace, self.project_id, self.existing = dict(missing), workspace, project_id, existing
        names = ", ".join(f"{name!r} ({key})" for key, name in missing.items())
        super().__init__(
            f"Plane project {project_id} in workspace {workspace!r} has no state named {names}; "
            f"its states are {', '.join(repr(n) for n in existing) or 'none'}. Create them in Plane "
            "(Project settings > States), point state_names of the PlaneCredentials block at existing states, "
            "or set create_missing_states=True in that block to let sdlc-flows create them."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.missing, self.workspace, self.project_id, self.existing))


class PlaneAuthError(ForgeHTTPError):
    """Plane answered 401 or 403: the API key is missing, wrong, expired, or not a member of the project."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(method, path, status, message)
        self.args = (
            f"Plane did not accept the API key of the PlaneCredentials block ({method} {path} answered "
            f"{status}: {message}); set a valid key (Plane: Profile settings > API tokens) of a member of the project",
        )


class PlaneWorkItem(BaseModel):
    """The fields of a Plane work item ("issue") the pipeline uses; ``state`` is a state UUID."""

    model_config = ConfigDict(extra="ignore")
    id: str
    sequence_id: int
    name: str
    project: str
    state: str | None = None

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return canonical_uuid(value, "project")  # compared with the block's project_id


class PlaneComment(BaseModel):
    """A comment as Plane stores it (``html``) and as a person wrote it (``text``)."""

    id: str
    actor: str | None
    created_at: datetime
    text: str
    html: str


class PlaneDecision(BaseModel):
    """An approver's ``/approve``, ``/reject`` or ``/answer`` comment; ``text`` is what follows the command."""

    kind: DecisionKind
    actor: str
    text: str
    comment_id: str
    created_at: datetime


class _TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parts.append("\n" if tag == "br" else "\n\n" if tag in _BLOCK_TAGS else "")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(value: str) -> str:
    """Plain text of comment HTML: tags dropped, entities decoded, paragraphs apart by a blank line."""
    parser = _TextOf()
    parser.feed(value)
    parser.close()
    lines = "".join(parser.parts).split("\n")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in lines)).strip()


def comment_html(text: str, *, link: str | None = None) -> str:
    """Plain text as HTML that shows exactly that text: escaped, ``<p>`` per paragraph, ``<br>`` per line."""
    paragraphs = [part for part in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip()) if part.strip()]
    blocks = [
        "<p>" + "<br>".join(html.escape(line) for line in part.strip("\n").split("\n")) + "</p>" for part in paragraphs
    ]
    if link is not None:
        if not link.startswith(("http://", "https://")) or any(ch.isspace() for ch in link):
            raise ValueError(f"comment link {link[:80]!r} is not an http(s) URL")
        blocks.append(f'<p><a href="{html.escape(link, quote=True)}">{html.escape(link)}</a></p>')
    if not blocks:
        raise ValueError("a Plane comment needs text or a link")
    return "".join(blocks)


def plane_message(response: httpx.Response) -> str:
    """Plane's own explanation: ``error``, DRF's ``detail``, the throttle's ``error_message``, or field errors."""
    try:
        data = response.json()
    except ValueError:
        text = html_to_text(response.text) if "html" in response.headers.get("content-type", "") else response.text
        return text[:300] or response.reason_phrase
    if isinstance(data, dict):
        for key in ("error", "detail", "error_message", "message"):
            if data.get(key):
                return str(data[key])[:500]
        fields = "; ".join(
            _flat(value) if key == "non_field_errors" else f"{key}: {_flat(value)}" for key, value in data.items()
        )
        return fields[:500] or response.reason_phrase
    if isinstance(data, list) and data:
        return _flat(data)[:500]
    return forge_message(response)


def _flat(value: Any) -> str:
    return " ".join(str(item) for item in value) if isinstance(value, list) else str(value)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


StatesKey = tuple[str, str, str, tuple[tuple[str, str], ...], bool]


def states_key(credentials: PlaneCredentials) -> StatesKey:
    """Everything that decides which state ids a block resolves to (the API key does not)."""
    return (
        credentials.api_url,
        credentials.workspace_slug,
        credentials.project_id,
        tuple(sorted(credentials.state_names.items())),
        credentials.create_missing_states,
    )


class StateCache:
    """Resolved state ids per project and block settings, shared by the trackers of one process.

    Every tracker update used to list the project's states again, out of Plane's 60
    requests a minute per key. Entries expire after ``ttl_seconds`` so states renamed
    or added in Plane are picked up. Pipelines run in threads of one worker process:
    a lock guards the entries, and one thread resolves a key while the others wait for
    its answer instead of each listing the states. Failures (missing states) are not kept.
    """

    def __init__(self, ttl_seconds: float = STATES_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[StatesKey, tuple[float, dict[str, str]]] = {}
        self._resolving: dict[StatesKey, threading.Lock] = {}

    def get(self, key: StatesKey) -> dict[str, str] | None:
        """The cached states of ``key`` while they are fresh, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() - entry[0] >= self.ttl_seconds:
                del self._entries[key]
                return None
            return dict(entry[1])

    def get_or_resolve(self, key: StatesKey, resolve: Callable[[], dict[str, str]]) -> dict[str, str]:
        """The cached states of ``key``, else ``resolve()``'s, kept; one resolver per key at a time."""
        cached = self.get(key)
        if cached is not None:
            return cached
        with self._lock:
            gate = self._resolving.setdefault(key, threading.Lock())
        with gate:
            cached = self.get(key)  # another thread resolved it while this one waited
            if cached is not None:
                return cached
            states = dict(resolve())
            with self._lock:
                self._entries[key] = (self.clock(), states)
            return dict(states)

    def drop(self, key: StatesKey, stale: dict[str, str] | None = None) -> None:
        """Forget ``key``; with ``stale``, only while the entry still holds those ids (a fresher one stays)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (stale is None or entry[1] == stale):
                del self._entries[key]

    def clear(self) -> None:
        """Forget every entry: the next update of each project lists its states again."""
        with self._lock:
            self._entries.clear()


_STATE_CACHE = StateCache()


def clear_state_cache() -> None:
    """Forget every resolved state of the process (tests; or after changing states in Plane)."""
    _STATE_CACHE.clear()


_STALE_STATE_SUBJECT = re.compile(r"\bstate", re.IGNORECASE)
_STALE_STATE_VERDICT = re.compile(r"not valid|invalid|does not exist|not found", re.IGNORECASE)


def _is_stale_state(exc: ForgeHTTPError) -> bool:
    """Plane refused the state id itself (deleted, or not this project's): a cached id that went stale."""
    if isinstance(exc, PlaneAuthError) or not 400 <= exc.status < 500 or exc.status == 429:
        return False
    message = exc.forge_message
    return bool(_STALE_STATE_SUBJECT.search(message) and _STALE_STATE_VERDICT.search(message))


class PlaneTracker:
    """Work items of the one Plane project a :class:`PlaneCredentials` block names; close it (or use ``with``).

    ``ref`` is a work item's human id (``ENG-42``) or its UUID. Human-id lookups are
    cached per instance; state UUIDs per process in ``states_cache`` (default: the
    process-wide :class:`StateCache`), so trackers made per update do not list states.
    """

    def __init__(
        self,
        credentials: PlaneCredentials,
        *,
        transport: httpx.BaseTransport | None = None,
        retry: HttpRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        states_cache: StateCache | None = None,
    ) -> None:
        self.credentials = credentials
        self._retry = retry or HttpRetry()
        self._sleep = sleep
        self._client = credentials.get_client(transport=transport)
        self._workspace = f"/workspaces/{credentials.workspace_slug}"
        self._project = f"{self._workspace}/projects/{credentials.project_id}"
        self._states_cache = states_cache if states_cache is not None else _STATE_CACHE
        self._states_key = states_key(credentials)
        self._ids: dict[str, str] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        expected: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        try:
            return call(
                self._client,
                method,
                path,
                params=params,
                json=json,
                expected=expected,
                retry=self._retry,
                sleep=self._sleep,
                describe=plane_message,
            )
        except ForgeHTTPError as exc:
            if exc.status in (401, 403):
                raise PlaneAuthError(exc.method, exc.path, exc.status, exc.forge_message) from exc
            raise

    def _list(self, path: str) -> list[dict[str, Any]]:
        """Every item of a Plane list, page by page (``per_page`` always sent: the server default is 1000)."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"per_page": PER_PAGE}
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            data = self._call("GET", path, params=params).json()
            if isinstance(data, list):  # an unpaged list: all there is
                return items + [item for item in data if isinstance(item, dict)]
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise PermanentError(f"Plane answered the list {path} with {type(data).__name__}, not a page")
            items += [item for item in data["results"] if isinstance(item, dict)]
            cursor = data.get("next_cursor")
            if not data.get("next_page_results") or not cursor or cursor in seen:
                return items
            seen.add(str(cursor))
            params = {"per_page": PER_PAGE, "cursor": cursor}
        raise PermanentError(f"Plane's list {path} has more than {MAX_PAGES} pages of {PER_PAGE}")

    # -- states --------------------------------------------------------------------

    def resolve_states(self) -> dict[str, str]:
        """UUID of each pipeline state (``in_progress`` ... ``done``), by the block's ``state_names``.

        Read from Plane at most once per ``STATES_TTL_SECONDS`` per project and block settings.
        """
        return self._states_cache.get_or_resolve(self._states_key, self._resolve_states)

    def _resolve_states(self) -> dict[str, str]:
        path = f"{self._project}/states/"
        names = self.credentials.state_names
        states = self._list(path)
        found = {key: _state_named(states, name) for key, name in names.items()}
        missing = {key: names[key] for key, state_id in found.items() if state_id is None}
        if missing and not self.credentials.create_missing_states:
            raise PlaneStateMissing(
                missing,
                self.credentials.workspace_slug,
                self.credentials.project_id,
                [str(state.get("name")) for state in states],
            )
        for key, name in missing.items():
            state_id = _state_named(states, name)  # two keys may share one name
            if state_id is None:
                state_id = self._create_state(path, key, name)
                states.append({"id": state_id, "name": name})
            found[key] = state_id
        return {key: str(found[key]) for key in STATE_KEYS}

    def _create_state(self, path: str, key: str, name: str) -> str:
        body = {"name": name, "color": STATE_COLOURS[key], "group": STATE_GROUPS[key]}
        try:
            return str(self._call("POST", path, json=body, expected=(201,)).json()["id"])
        except ForgeHTTPError as exc:
            # A create retried after a lost answer is refused as a duplicate name: the first one made it.
            state_id = _state_named(self._list(path), name) if exc.status in (400, 409) else None
            if state_id is None:
                raise
            return state_id

    # -- work items ----------------------------------------------------------------

    def _item_path(self, ref: str) -> str:
        if _is_uuid(ref):
            return f"{self._project}/work-items/{canonical_uuid(ref, 'work item')}/"
        if HUMAN_ID_PATTERN.match(ref):
            return f"{self._workspace}/work-items/{ref}/"
        raise ValueError(f"Plane work item {ref[:60]!r} is neither a human id like ENG-42 nor a UUID")

    def work_item(self, ref: str) -> PlaneWorkItem:
        """The work item as Plane has it now (``ENG-42`` or its UUID); it must belong to the block's project."""
        data = self._call("GET", self._item_path(ref)).json()
        item = PlaneWorkItem.model_validate(data)
        if item.project != self.credentials.project_id:
            raise PermanentError(
                f"Plane work item {ref} belongs to project {item.project}, not to the PlaneCredentials "
                f"block's project {self.credentials.project_id}"
            )
        self._ids[ref] = item.id
        return item

    def _item_id(self, ref: str) -> str:
        if _is_uuid(ref):
            return canonical_uuid(ref, "work item")
        return self._ids.get(ref) or self.work_item(ref).id

    def set_state(self, ref: str, key: StateKey, *, current: PlaneWorkItem | None = None) -> PlaneWorkItem:
        """Move the work item to the pipeline state ``key``; no PATCH when it is there already.

        ``current`` is the item as just read (by :meth:`work_item`), which saves reading it again.
        """
        _check_key(key)
        states = self.resolve_states()  # first: missing states fail before any work item request
        item = current if current is not None else self.work_item(ref)
        if item.state == states[key]:
            return item
        return self._patch_state(item.id, key, states)

    def move(self, item_id: str, key: StateKey) -> PlaneWorkItem:
        """Move the work item (by UUID) to ``key`` with one PATCH and no read first.

        For callers that already know the item's id (the ledger's link): a read first
        costs a request every time and only spares a PATCH to the state the item has.
        """
        _check_key(key)
        return self._patch_state(canonical_uuid(item_id, "work item"), key, self.resolve_states())

    def _patch_state(self, item_id: str, key: StateKey, states: dict[str, str]) -> PlaneWorkItem:
        """PATCH the state; an id Plane refuses as no valid state (deleted since it was cached) is resolved
        again and the PATCH retried once, with the new id."""
        path = f"{self._project}/work-items/{item_id}/"
        try:
            data = self._call("PATCH", path, json={"state": states[key]}).json()
        except ForgeHTTPError as exc:
            if not _is_stale_state(exc):
                raise
            self._states_cache.drop(self._states_key, states)
            fresh = self.resolve_states()  # PlaneStateMissing when the state is gone for good
            if fresh[key] == states[key]:
                raise  # Plane lists the state it refuses: not a stale cache, retrying will not help
            data = self._call("PATCH", path, json={"state": fresh[key]}).json()
        return PlaneWorkItem.model_validate(data)

    # -- comments ------------------------------------------------------------------

    def _comments_path(self, ref: str) -> str:
        return f"{self._project}/work-items/{self._item_id(ref)}/comments/"

    def add_comment(self, ref: str, text: str, *, link: str | None = None, external_id: str | None = None) -> str:
        """Post ``text`` (shown as written, never as markup) and return the comment's id.

        With ``external_id`` the post is idempotent: Plane refuses a second comment with
        the same id (409) and names the first, whose id is returned.
        """
        body: dict[str, Any] = {"comment_html": comment_html(text, link=link)}
        if external_id is not None:
            body |= {"external_source": EXTERNAL_SOURCE, "external_id": external_id}
        path = self._comments_path(ref)
        response = self._call("POST", path, json=body, expected=(201, 409) if external_id is not None else (201,))
        data = response.json()
        comment_id = data.get("id") if isinstance(data, dict) else None
        if not comment_id:
            raise PermanentError(f"Plane answered the comment on {ref} with {response.status_code} and no comment id")
        return str(comment_id)

    def list_comments(self, ref: str) -> list[PlaneComment]:
        """Every comment of the work item, oldest first (Plane lists newest first)."""
        comments = [
            PlaneComment(
                id=str(data["id"]),
                actor=str(data.get("actor") or data.get("created_by") or "") or None,
                created_at=data["created_at"],
                text=html_to_text(str(data.get("comment_html") or "")),
                html=str(data.get("comment_html") or ""),
            )
            for data in self._list(self._comments_path(ref))
        ]
        return sorted(comments, key=lambda comment: comment.created_at)

    def decision_since(
        self, ref: str, after: datetime | None, *, wanted: Literal["approval", "answers"]
    ) -> PlaneDecision | None:
        """The oldest ``/approve`` or ``/reject`` (``approval``), or ``/answer`` (``answers``), that an
        approver commented after ``after`` (naive means UTC; None means ever); None while there is none.
        Anyone else's comment is ignored, so a decision cannot be forged by whoever can comment."""
        commands = COMMANDS[wanted]
        approvers = set(self.credentials.approvers)
        if not approvers:
            return None
        since = after.replace(tzinfo=UTC) if after is not None and after.tzinfo is None else after
        for comment in self.list_comments(ref):
            actor = comment.actor
            if actor is None or actor.lower() not in approvers:
                continue
            if since is not None and comment.created_at <= since:
                continue
            words = comment.text.split(maxsplit=1)
            kind = commands.get(words[0].lower()) if words else None
            rest = words[1].strip() if len(words) > 1 else ""
            if kind is None or (kind == "answer" and not rest):
                continue  # an /answer without text answers nothing
            return PlaneDecision(
                kind=kind, actor=actor, text=rest, comment_id=comment.id, created_at=comment.created_at
            )
        return None


def _check_key(key: str) -> None:
    if key not in STATE_KEYS:
        raise ValueError(f"state key {key!r} is not one of {list(STATE_KEYS)}")


def _state_named(states: list[dict[str, Any]], name: str) -> str | None:
    """The id of the state called ``name``: exactly, else ignoring case."""
    for matches in (lambda other: other == name, lambda other: other.casefold() == name.casefold()):
        for state in states:
            if matches(str(state.get("name") or "")) and state.get("id"):
                return str(state["id"])
    return None
