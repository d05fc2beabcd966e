"""One HTTP call to a forge's REST API with the retry policy every forge shares (B42, B43).

429, 5xx, timeouts and transport errors are retried as :class:`sdlc.retry.HttpRetry`
decides, never sooner than a Retry-After (or GitHub's ``x-ratelimit-reset`` when the
limit is spent, GitLab's ``RateLimit-Reset`` on a 429); any other 4xx fails at once with
the forge's own message. The
statuses a caller handles itself (a 409 for a duplicate PR, a 404 for "none yet")
are passed in ``expected`` and returned, not raised.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import quote

import httpx

from sdlc.models import PullRequestRef, validate_branch, validate_work_item_id
from sdlc.pr_body import same_body
from sdlc.retry import HttpRetry as HttpRetry
from sdlc.retry import backoff_seconds
from tasks.failures import PermanentError, TransientError

if TYPE_CHECKING:
    from blocks.forge import _ForgeCredentials

REFIND_ATTEMPTS = 3

logger = logging.getLogger("sdlc.forge")


class ForgeHTTPError(PermanentError):
    """A 4xx the forge meant: wrong token, missing repository, invalid request."""

    def __init__(self, method: str, path: str, status: int, message: str, service: str = "") -> None:
        self.method, self.path, self.status, self.forge_message = method, path, status, message
        self.service = service
        super().__init__(f"{_call_name(service, method, path)} answered {status}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses (Plane's PlaneAuthError) take the four arguments and name no service.
        args = (self.method, self.path, self.status, self.forge_message)
        return (type(self), (*args, self.service) if self.service else args)


def _call_name(service: str, method: str, path: str) -> str:
    """How an error names the call: ``Gitea GET /repos/team/app``, so a reason says which API failed."""
    return f"{service} {method} {path}" if service else f"{method} {path}"


def forge_message(response: httpx.Response) -> str:
    """The forge's own explanation: `message` (Gitea, GitHub, GitLab in its four shapes) plus GitHub's `errors`."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(data, dict):
        message = _flat(data.get("message") or data.get("error") or response.reason_phrase)
        errors = data.get("errors")
        if errors:
            message += f" ({errors})"
        return message[:500]
    return str(data)[:300]


def _flat(message: Any) -> str:
    """GitLab's message in any of its shapes: a string, a list of them, or ``{field: [errors]}``."""
    if isinstance(message, list):
        return "; ".join(_flat(part) for part in message)
    if isinstance(message, dict):
        return "; ".join(f"{field}: {_flat(value)}" for field, value in message.items())
    return str(message)


def _retry_after(response: httpx.Response, now: float) -> float | None:
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    # GitHub's spent limit (x-ratelimit-*), GitLab's 429 (RateLimit-Reset): the reset, in Unix seconds.
    reset = None
    if response.headers.get("x-ratelimit-remaining") == "0":
        reset = response.headers.get("x-ratelimit-reset")
    elif response.status_code == 429:
        reset = response.headers.get("ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


def _is_transient(response: httpx.Response) -> bool:
    if response.status_code == 429 or response.status_code >= 500:
        return True
    # GitHub signals a spent (secondary) rate limit with 403 and these headers.
    return response.status_code == 403 and (
        response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    )


def call(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    json: Any = None,
    expected: Iterable[int] = (200,),
    retry: HttpRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[httpx.Response], str] = forge_message,
    service: str = "",
) -> httpx.Response:
    """Send one request, retrying transient failures; returns a response whose status is expected.

    ``describe`` reads the API's own explanation out of an error answer (another
    API than a forge, e.g. Plane, words its errors differently); ``service`` (``Gitea``,
    ``GitHub``) starts every error message, so a work item's reason names the API.
    """
    retry = retry or HttpRetry()
    wanted = set(expected)
    name = _call_name(service, method, path)
    last = ""
    for attempt in range(retry.max_attempts):
        retry_after: float | None = None
        try:
            response = client.request(method, path, params=params, json=json)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code in wanted:
                return response
            if not _is_transient(response):
                raise ForgeHTTPError(method, path, response.status_code, describe(response), service)
            last = f"{response.status_code}: {describe(response)}"
            retry_after = _retry_after(response, time.time())
        decision = retry.decide(attempt, last, retry_after=retry_after)
        if not decision.retry:
            if attempt + 1 < retry.max_attempts:  # asked to wait longer than the policy allows
                raise TransientError(f"{name}: {decision.why}")
            break
        logger.warning(
            "%s failed (%s); retry %d of %d in %.1f s",
            name,
            last,
            attempt + 1,
            retry.max_attempts - 1,
            decision.wait_seconds,
        )
        sleep(decision.wait_seconds)
    raise TransientError(f"{name} kept failing after {retry.max_attempts} attempts: {last}")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
REF_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")


FILE_PATH_PATTERN = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,1023}$")


def file_path_segments(path: str) -> str:
    """A file's path in the repository (``docs/work-items/ET-7/02-brd.md``) as URL path segments."""
    if not FILE_PATH_PATTERN.match(path) or ".." in path.split("/") or "//" in path:
        raise ValueError(f"file path {path[:60]!r} is not allowed")
    return quote(path, safe="/")


def ref_segment(ref: str) -> str:
    """A SHA, branch or tag as one URL path segment (a branch's '/' is percent-encoded)."""
    if not REF_PATTERN.match(ref) or ".." in ref:
        raise ValueError(f"git ref {ref[:60]!r} is not allowed")
    return quote(ref, safe="")


class RestRepository:
    """One repository on a REST forge: checked names, a client built from the credentials block,
    and every request sent through :func:`call`. Gitea and GitHub add their own endpoints."""

    forge_name: ClassVar[str] = "forge"
    # The web view of a file on a branch: <repository html_url>/<file_view>/<branch>/<path>.
    file_view: ClassVar[str] = "blob"
    # The repository's field naming its web page (GitLab calls it web_url).
    web_url_field: ClassVar[str] = "html_url"
    # Where a PR is read and edited, its body's field, and the edit's method (GitLab: merge_requests,
    # description, PUT).
    pulls_path: ClassVar[str] = "/pulls"
    body_field: ClassVar[str] = "body"
    edit_method: ClassVar[str] = "PATCH"
    # Web pages already read in this process, by API and repository: a repository's page does not move
    # while a worker runs, and every work-item page and PR story would otherwise ask again.
    _web_urls: ClassVar[dict[tuple[str, str], str]] = {}

    def __init__(
        self,
        *,
        credentials: _ForgeCredentials,
        owner: str,
        repo: str,
        transport: httpx.BaseTransport | None = None,
        retry: HttpRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.owner = self._name(owner, "owner")
        self.repo = self._name(repo, "repository")
        self._retry = retry or HttpRetry()
        self._sleep = sleep
        self._client = credentials.get_client(transport=transport)
        self._base = f"/repos/{self.owner}/{self.repo}"

    def _name(self, value: str, what: str) -> str:
        if not NAME_PATTERN.match(value) or value in (".", ".."):
            raise ValueError(f"{self.forge_name} {what} {value[:60]!r} is not a valid name")
        return value

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        expected: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        return call(
            self._client,
            method,
            self._base + path,
            params=params,
            json=json,
            expected=expected,
            retry=self._retry,
            sleep=self._sleep,
            service=self.forge_name,
        )

    def find_open_pull_request(self, *, branch: str, base: str) -> PullRequestRef | None:
        raise NotImplementedError

    def get_pull_request(self, *, number: int) -> PullRequestRef:
        raise NotImplementedError

    def _merged_despite(self, error: TransientError, number: int) -> PullRequestRef:
        """After a merge call that kept failing: the PR, if one of its lost attempts merged it; else ``error``.

        :func:`call` gives up after its last attempt, and that attempt may have merged the PR
        with its answer lost. A retry would find it merged, but the last one has no retry: one
        look decides, so a merged PR is never reported as a failed merge.
        """
        try:
            current = self.get_pull_request(number=number)
        except TransientError:
            raise error from None
        if current.state != "merged":
            raise error
        logger.warning("%s: #%d is merged although the merge call kept failing (%s)", self.forge_name, number, error)
        return current

    def _create_pull_request(self, *, branch: str, base: str, title: str, body: str) -> PullRequestRef | str:
        """Create the PR; the forge's answer when it says one already exists."""
        raise NotImplementedError

    def _send_merge(self, current: PullRequestRef, head_sha: str | None) -> httpx.Response:
        """The forge's merge call for the open PR ``current``; refused by the forge if its head is not ``head_sha``."""
        raise NotImplementedError

    def _merged_from(self, current: PullRequestRef, response: httpx.Response) -> PullRequestRef:
        """The merged PR, from the forge's answer to the merge call; raises when it did not merge."""
        raise NotImplementedError

    def merge_pull_request(self, *, number: int, head_sha: str | None = None) -> PullRequestRef:
        """Merge PR ``number`` with a merge commit, only while its head is ``head_sha`` when given (the forge
        checks it); a PR already merged is returned unchanged."""
        number = int(number)
        current = self.get_pull_request(number=number)
        if current.state == "merged":
            return current
        if current.state != "open":
            raise PermanentError(f"pull request #{number} of {self.owner}/{self.repo} is closed; it cannot be merged")
        try:
            response = self._send_merge(current, head_sha)
        except TransientError as error:
            return self._merged_despite(error, number)
        if response.status_code == 409:  # the head is not head_sha: merged by a lost attempt, or pushed to
            again = self.get_pull_request(number=number)
            if again.state == "merged":
                return again
            raise PermanentError(
                f"pull request #{number} ({current.branch} into {current.base}) of {self.owner}/{self.repo} was "
                f"not merged: its head moved since its gates judged {str(head_sha)[:12]} ({forge_message(response)}); "
                "retry the work item to judge the new commits"
            )
        return self._merged_from(current, response)

    def ensure_pull_request(self, *, branch: str, base: str, title: str, body: str, work_item: str) -> PullRequestRef:
        """The one open PR of ``branch`` into ``base``; created only when there is none.

        A 5xx or timeout on the create is retried by :func:`call`; if the lost attempt did
        create the PR, the retry is answered "already exists" and that PR is found again, and
        when the last attempt fails the PR is looked for once more before giving up.
        """
        validate_branch(branch)
        validate_branch(base)
        validate_work_item_id(work_item)
        existing = self.find_open_pull_request(branch=branch, base=base)
        if existing is not None:
            return existing
        try:
            created = self._create_pull_request(branch=branch, base=base, title=title, body=body)
        except TransientError as error:
            # The create's last attempt may have made the PR, its answer lost: look once more.
            try:
                existing = self.find_open_pull_request(branch=branch, base=base)
            except TransientError:
                raise error from None
            if existing is None:
                raise
            return existing
        if not isinstance(created, str):
            return created
        for attempt in range(REFIND_ATTEMPTS):
            existing = self.find_open_pull_request(branch=branch, base=base)
            if existing is not None:
                return existing
            if attempt + 1 < REFIND_ATTEMPTS:
                self._sleep(
                    backoff_seconds(attempt, base=self._retry.backoff_base_seconds, cap=self._retry.backoff_cap_seconds)
                )
        raise TransientError(
            f"{self.forge_name} says a pull request already exists for {branch} into {base} of "
            f"{self.owner}/{self.repo} ({created}), but lists none open"
        )

    def default_branch(self) -> str:
        """The repository's default branch, e.g. ``main``."""
        data = self._call("GET", "").json()
        branch = data.get("default_branch") if isinstance(data, dict) else None
        if not isinstance(branch, str) or not branch:
            raise PermanentError(f"{self.forge_name} did not name a default branch for {self.owner}/{self.repo}")
        return branch

    def web_url(self) -> str | None:
        """The repository's web page (its ``html_url``), read once per process; None if the forge names none."""
        key = (str(self._client.base_url), self._base)
        if key not in self._web_urls:
            data = self._call("GET", "").json()
            url = data.get(self.web_url_field) if isinstance(data, dict) else None
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                return None
            if len(self._web_urls) > 1000:
                self._web_urls.clear()
            self._web_urls[key] = url.rstrip("/")
        return self._web_urls[key]

    def file_url(self, *, branch: str, path: str) -> str | None:
        """The forge's web view of ``path`` on ``branch`` (Gitea ``src/branch``, GitHub ``blob``)."""
        segments = file_path_segments(path)
        branch_segments = quote(validate_branch(branch), safe="/")
        web = self.web_url()
        return f"{web}/{self.file_view}/{branch_segments}/{segments}" if web else None

    def _outgoing(self, text: str) -> str:
        """Text sdlc writes into the forge, as the forge must get it (GitLab escapes its quick actions)."""
        return text

    def pull_request_body(self, *, number: int) -> str | None:
        """The PR's current body (None when the forge holds none)."""
        data = self._call("GET", f"{self.pulls_path}/{int(number)}").json()
        body = data.get(self.body_field) if isinstance(data, dict) else None
        return body if isinstance(body, str) else None

    def update_pull_request_body(self, *, number: int, body_of: Callable[[str | None], str]) -> bool:
        """Set the PR's body to ``body_of(current body)``; no PATCH when it says the same. True when written.

        The PATCH carries the whole body, so a retried one (its first answer lost) writes the
        same text again. A person's edit landing between the read and the write is lost to it:
        the forges offer no conditional update of a PR, and the window is one round trip.
        """
        number = int(number)
        current = self.pull_request_body(number=number)
        body = self._outgoing(body_of(current))  # compared as the forge keeps it
        if same_body(body, current):
            return False
        self._call(self.edit_method, f"{self.pulls_path}/{number}", json={self.body_field: body}, expected=(200, 201))
        return True
