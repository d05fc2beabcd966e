"""GitLab's REST API v4 as a :class:`~tasks.forge.Forge` (issue 19), plus the CI gate's view of a commit.

Every request goes through :func:`tasks.forge_http.call` (429 and 5xx retried, never
sooner than ``Retry-After`` or ``RateLimit-Reset``). The endpoints and their traps are
those of ``tests/contracts/gitlab-endpoints.md``; GitLab differs from Gitea and GitHub
where it matters here:

* a project is addressed by its full path URL-encoded (``group%2Fsub%2Fapp``): groups nest;
* merge requests are addressed by ``iid``; their list shows *all* states unless asked for
  ``state=opened`` and pages at 20 unless asked for more, so both are always sent and
  ``x-next-page`` is followed;
* a duplicate create is a **409** (an open MR of the same source and target branch): the
  MR is adopted by listing again, never by parsing ``!iid`` out of the message;
* mergeability is computed asynchronously: ``detailed_merge_status`` is polled while it
  says ``unchecked``, ``checking``, ``preparing``, ``approvals_syncing`` or
  ``ci_still_running``; any other value than ``mergeable`` is a refusal, an unknown one too;
* merging is ``PUT …/merge`` with the head ``sha`` that was judged: **409** when someone
  pushed since, **405** when the MR cannot be merged now, **401** when the token may not
  merge (not a bad token), **422** when GitLab tried and failed; each is a Blocked reason;
* CI is the latest pipeline of the commit together with its commit statuses (the
  pipeline's jobs and external CI), folded here: GitLab has no combined status.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from sdlc.models import PullRequestRef, validate_branch
from sdlc.retry import HttpRetry
from tasks.ci_status import CiStatus
from tasks.failures import PermanentError, TransientError
from tasks.forge_http import RestRepository, forge_message, ref_segment

if TYPE_CHECKING:
    from blocks.forge import _ForgeCredentials

PER_PAGE = 100
# A line that starts with "/" in an MR description or a note is a quick action GitLab runs (/merge,
# /approve, /label): text sdlc writes (a work item's description, an agent's words) gets its slash escaped,
# which Markdown still shows as "/".
QUICK_ACTION_LINE = re.compile(r"^(\s*)/", re.MULTILINE)
MAX_PAGES = 50
# detailed_merge_status values that mean "ask again later" (contract §3.3).
STILL_CHECKING = frozenset({"unchecked", "checking", "preparing", "approvals_syncing", "ci_still_running"})
# Pipeline and job statuses (Ci::HasStatus): what counts as running, failed or passed.
RUNNING = frozenset(
    {
        "created",
        "waiting_for_resource",
        "preparing",
        "waiting_for_callback",
        "pending",
        "running",
        "canceling",
        "manual",
        "scheduled",
    }
)
FAILED = frozenset({"failed", "canceled"})
PASSED = frozenset({"success", "skipped"})
REFUSALS = {
    "conflict": "it conflicts with {base}",
    "need_rebase": "it needs a rebase onto {base}",
    "ci_must_pass": "a successful pipeline is required and there is none",
    "draft_status": "it is a draft",
    "not_open": "it is not open",
    "not_approved": "it is not approved",
    "requested_changes": "a reviewer requested changes",
    "discussions_not_resolved": "its threads are not resolved",
    "merge_request_blocked": "another merge request blocks it",
    "commits_status": "its source branch is missing or has no commits",
}


class GitLabForge(RestRepository):
    """Merge requests, pipelines and notes of one GitLab project ``group[/subgroup…]/name``."""

    forge_name = "GitLab"
    file_view = "-/blob"  # GitLab's web view of a file on a branch: <web_url>/-/blob/<branch>/<path>
    web_url_field = "web_url"
    pulls_path = "/merge_requests"
    body_field = "description"
    edit_method = "PUT"

    def __init__(
        self,
        *,
        credentials: _ForgeCredentials,
        owner: str,
        repo: str,
        transport: httpx.BaseTransport | None = None,
        retry: HttpRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ci_timeout_seconds: float = 900.0,
        poll_seconds: float = 5.0,
    ) -> None:
        super().__init__(credentials=credentials, owner=owner, repo=repo, transport=transport, retry=retry, sleep=sleep)
        self._base = f"/projects/{quote(f'{self.owner}/{self.repo}', safe='')}"
        self._mergeability_timeout = ci_timeout_seconds
        self._poll_seconds = poll_seconds

    def _name(self, value: str, what: str) -> str:
        if what == "owner":  # a group path: each part a name
            for part in value.split("/"):
                super()._name(part, "group")
            return value
        return super()._name(value, what)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a list, following ``x-next-page`` (never ``x-total-pages``: it may be missing)."""
        page = "1"
        for _ in range(MAX_PAGES):
            response = self._call("GET", path, params={**params, "per_page": PER_PAGE, "page": page})
            batch = response.json()
            if not isinstance(batch, list):
                raise PermanentError(f"GitLab answered {path or 'the project'} with {type(batch).__name__}, not a list")
            yield from (item for item in batch if isinstance(item, dict))
            page = response.headers.get("x-next-page", "").strip()
            if not page or not batch:
                return
        raise PermanentError(
            f"GitLab lists more than {MAX_PAGES * PER_PAGE} items at {path} of {self.owner}/{self.repo}"
        )

    # -- merge requests ------------------------------------------------------------

    def _to_ref(self, data: dict[str, Any]) -> PullRequestRef:
        state = str(data.get("state") or "")
        merged = state == "merged"
        return PullRequestRef(
            number=int(data["iid"]),
            url=str(data.get("web_url") or ""),
            branch=str(data.get("source_branch") or ""),
            base=str(data.get("target_branch") or ""),
            title=str(data.get("title") or ""),
            # `locked` is a short transitional state of an open MR being merged.
            state="merged" if merged else ("open" if state in ("opened", "locked") else "closed"),
            merge_commit=(data.get("merge_commit_sha") or data.get("squash_commit_sha")) if merged else None,
        )

    def find_open_pull_request(self, *, branch: str, base: str) -> PullRequestRef | None:
        """The open MR of ``branch`` into ``base`` from this project (not a fork's), or None; the oldest."""
        params = {
            "state": "opened",
            "source_branch": validate_branch(branch),
            "target_branch": validate_branch(base),
            "order_by": "created_at",
            "sort": "asc",
        }
        found = [
            mr
            for mr in self._pages("/merge_requests", params)
            if mr.get("source_branch") == branch
            and mr.get("target_branch") == base
            and mr.get("source_project_id", mr.get("project_id")) == mr.get("project_id")
        ]
        if not found:
            return None
        return self._to_ref(min(found, key=lambda mr: int(mr["iid"])))

    def _create_pull_request(self, *, branch: str, base: str, title: str, body: str) -> PullRequestRef | str:
        response = self._call(
            "POST",
            "/merge_requests",
            json={"source_branch": branch, "target_branch": base, "title": title, "description": self._outgoing(body)},
            expected=(201, 409),
        )
        return self._to_ref(response.json()) if response.status_code == 201 else forge_message(response)

    def get_pull_request(self, *, number: int) -> PullRequestRef:
        return self._to_ref(self._merge_request(int(number)))

    def _merge_request(self, number: int) -> dict[str, Any]:
        data = self._call("GET", f"/merge_requests/{number}").json()
        if not isinstance(data, dict) or "iid" not in data:
            raise PermanentError(f"GitLab answered merge request !{number} with something that is not one")
        return data

    def _outgoing(self, text: str) -> str:
        return inert(text)

    def _settled(self, number: int) -> dict[str, Any]:
        """The MR once GitLab has decided whether it can be merged (polled while it checks), up to the bound."""
        deadline = time.monotonic() + self._mergeability_timeout
        while True:
            data = self._merge_request(number)
            status = str(data.get("detailed_merge_status") or data.get("merge_status") or "")
            if data.get("state") != "opened" or status not in STILL_CHECKING:
                return data
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"GitLab still says {status!r} for merge request !{number} of {self.owner}/{self.repo} "
                    f"after {self._mergeability_timeout:g} s"
                )
            self._sleep(self._poll_seconds)

    def merge_pull_request(self, *, number: int, head_sha: str | None = None) -> PullRequestRef:
        """Merge MR ``number`` with a merge commit once GitLab has judged it mergeable, passing the head
        ``sha`` that was judged: ``head_sha`` (sdlc's gates) when given, else the one GitLab checked; a
        push since is refused (409), never merged unjudged. A merged MR is returned unchanged; a refusal
        is a PermanentError naming GitLab's reason."""
        number = int(number)
        data = self._settled(number)
        current = self._to_ref(data)
        if current.state == "merged":
            return current
        if current.state != "open":
            raise PermanentError(f"merge request !{number} of {self.owner}/{self.repo} is closed; it cannot be merged")
        status = str(data.get("detailed_merge_status") or "")
        if status and status != "mergeable":
            raise PermanentError(self._refusal(current, status, data))
        sha = str(data.get("sha") or "")
        if head_sha is not None and sha != head_sha:
            raise PermanentError(
                f"merge request !{number} ({current.branch} into {current.base}) of {self.owner}/{self.repo} was "
                f"not merged: its head moved since its gates judged {head_sha[:12]} (now {sha[:12]}); retry the "
                "work item to judge the new commits"
            )
        try:
            response = self._call(
                "PUT",
                f"/merge_requests/{number}/merge",
                json={"sha": sha, "should_remove_source_branch": False},
                expected=(200, 401, 405, 406, 409, 422),
            )
        except TransientError as error:
            return self._merged_despite(error, number)
        return self._merge_answer(current, response, sha)

    def _refusal(self, current: PullRequestRef, status: str, data: dict[str, Any]) -> str:
        why = REFUSALS.get(status, "GitLab's checks refuse it ({status})").format(base=current.base, status=status)
        error = data.get("merge_error")
        return (
            f"merge request !{current.number} ({current.branch} into {current.base}) of {self.owner}/{self.repo} "
            f"cannot be merged: {why}" + (f"; GitLab says: {error}" if error else "")
        )

    def _merge_answer(self, current: PullRequestRef, response: httpx.Response, sha: str) -> PullRequestRef:
        number = current.number
        status = response.status_code
        if status == 200:
            answer = response.json()
            if isinstance(answer, dict) and answer.get("state") == "merged":
                return self._to_ref(answer)
            # A 200 with auto-merge set is not a merge (contract §3.4): read it again.
            merged = self.get_pull_request(number=number)
            if merged.state != "merged":
                raise TransientError(f"GitLab answered the merge of !{number} but does not show it merged yet")
            return merged
        # A retried PUT whose first answer was lost finds the MR merged already.
        again = self._merge_request(number)
        if again.get("state") == "merged":
            return self._to_ref(again)
        message = forge_message(response)
        name = f"merge request !{number} ({current.branch} into {current.base}) of {self.owner}/{self.repo}"
        if status == 409:
            raise PermanentError(
                f"{name} was not merged: its head moved since it was judged ({sha[:12]}); GitLab says: {message}"
            )
        if status == 401:
            raise PermanentError(f"{name} cannot be merged: the token may not merge into {current.base} ({message})")
        if status == 422:
            raise PermanentError(f"{name}: GitLab tried to merge and failed: {again.get('merge_error') or message}")
        detailed = str(again.get("detailed_merge_status") or "")
        if detailed in STILL_CHECKING:
            raise TransientError(f"GitLab cannot merge !{number} yet: it says {detailed!r}")
        raise PermanentError(self._refusal(current, detailed or "not mergeable", again))

    # -- CI ------------------------------------------------------------------------

    def _latest_pipeline(self, sha: str) -> dict[str, Any] | None:
        found = self._call(
            "GET", "/pipelines", params={"sha": sha, "order_by": "id", "sort": "desc", "per_page": 1}
        ).json()
        return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None

    def ci_status(self, ref: str) -> CiStatus:
        """CI of the commit ``ref`` (a SHA): its latest pipeline and its commit statuses (the jobs and
        external CI), failed jobs named. Neither a pipeline nor a status: ``none`` (no CI), not pending."""
        segment = ref_segment(ref)
        pipeline = self._latest_pipeline(ref)
        statuses = [s for s in self._pages(f"/repository/commits/{segment}/statuses", {}) if not s.get("allow_failure")]
        details: list[str] = []
        states: set[str] = set()
        if pipeline is not None:
            value = str(pipeline.get("status") or "")
            details.append(f"pipeline #{pipeline.get('id')}: {value}")
            states.add(_fold(value))
        for status in statuses:
            value = str(status.get("status") or "")
            details.append(f"job {status.get('name') or 'default'}: {value}")
            states.add(_fold(value))
        if pipeline is None and not statuses:
            return CiStatus(state="none", details=details)
        if "failure" in states:
            return CiStatus(state="failure", details=details)
        if "pending" in states:
            return CiStatus(state="pending", details=details)
        return CiStatus(state="success", details=details)

    # -- notes ---------------------------------------------------------------------

    def comment_on_issue(self, *, issue: int, body: str) -> int | None:
        """Post ``body`` as a note on issue ``issue``; the note's id (None when GitLab stored none)."""
        response = self._call(
            "POST", f"/issues/{int(issue)}/notes", json={"body": self._outgoing(body)}, expected=(201, 202)
        )
        data = response.json() if response.status_code == 201 else None
        return int(data["id"]) if isinstance(data, dict) and isinstance(data.get("id"), int) else None


def inert(text: str) -> str:
    """``text`` with no line GitLab would run as a quick action: each leading ``/`` escaped as ``\\/``."""
    return QUICK_ACTION_LINE.sub(lambda match: f"{match.group(1)}\\/", text)


def _fold(status: str) -> str:
    """A pipeline's or job's status as the gate counts it; an unknown one is still running, not a pass."""
    if status in FAILED:
        return "failure"
    if status in PASSED:
        return "success"
    return "pending"
