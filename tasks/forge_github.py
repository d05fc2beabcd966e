"""GitHub's REST API as a :class:`~tasks.forge.Forge` (B43), plus the CI-green gate's view of a commit.

Every request goes through :func:`tasks.forge_http.call` (retries on 429, 5xx,
timeouts and GitHub's rate-limit 403s). The endpoints used are those of
``github-endpoints.md``; GitHub differs from Gitea where it matters here:

* a duplicate PR is a **422** "A pull request already exists", not a 409;
* the PR list takes ``head=<owner>:<branch>`` and ``base``;
* merging is a **PUT** (405 when not mergeable);
* editing a PR (its body: the story, ``sdlc.pr_body``) is ``PATCH pulls/{n}``, answered 200
  (Gitea answers 201);
* GitHub Actions report as *check runs*, not commit statuses, and the combined
  status says ``pending`` when there are no statuses at all, so
  :meth:`GitHubForge.ci_status` reads both and counts with ``total_count``.

Creating is idempotent: the open PR is looked up first, and a create that fails
as a duplicate (another caller, or our own retried create whose first answer was
lost) ends with that one PR, found again. A merge whose answer was lost is seen
as merged on the next attempt and returned unchanged.
"""

from __future__ import annotations

from typing import Any

import httpx

from sdlc.models import PullRequestRef, validate_branch
from tasks.ci_status import CiStatus
from tasks.failures import PermanentError, TransientError
from tasks.forge_http import ForgeHTTPError, RestRepository, forge_message, ref_segment

PER_PAGE = 100
MAX_PAGES = 50
FAILED_STATUSES = frozenset({"failure", "error"})
FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "cancelled", "action_required"})
DUPLICATE_MESSAGE = "a pull request already exists"


def _error_messages(response: httpx.Response) -> list[str]:
    try:
        data = response.json()
    except ValueError:
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    found = [str(data.get("message", ""))] if isinstance(data, dict) else []
    for error in errors or []:
        found.append(str(error.get("message", "")) if isinstance(error, dict) else str(error))
    return found


class GitHubForge(RestRepository):
    """Pull requests and CI results of one GitHub repository ``owner/repo``; close it (or use ``with``)."""

    forge_name = "GitHub"
    file_view = "blob"  # GitHub's web view of a file on a branch: <html_url>/blob/<branch>/<path>

    # -- pull requests -----------------------------------------------------------

    def _to_ref(self, data: dict[str, Any]) -> PullRequestRef:
        merged = bool(data.get("merged")) or bool(data.get("merged_at"))
        return PullRequestRef(
            number=int(data["number"]),
            url=str(data.get("html_url") or data.get("url") or ""),
            branch=str(data["head"]["ref"]),
            base=str(data["base"]["ref"]),
            title=str(data.get("title") or ""),
            state="merged" if merged else ("open" if data.get("state") == "open" else "closed"),
            # For an open PR GitHub's merge_commit_sha is a test merge: only a merge's is reported.
            merge_commit=data.get("merge_commit_sha") if merged else None,
        )

    def find_open_pull_request(self, *, branch: str, base: str) -> PullRequestRef | None:
        """The open PR of ``branch`` into ``base``, or None (the oldest one, should there be several)."""
        params = {
            "head": f"{self.owner}:{validate_branch(branch)}",
            "base": validate_branch(base),
            "state": "open",
            "per_page": PER_PAGE,
        }
        found = self._call("GET", "/pulls", params=params).json()
        pulls = [pr for pr in found if isinstance(pr, dict) and pr.get("head", {}).get("ref") == branch]
        if not pulls:
            return None
        return self._to_ref(min(pulls, key=lambda pr: int(pr["number"])))

    def _create_pull_request(self, *, branch: str, base: str, title: str, body: str) -> PullRequestRef | str:
        path = "/pulls"
        response = self._call(
            "POST", path, json={"title": title, "head": branch, "base": base, "body": body}, expected=(201, 422)
        )
        if response.status_code == 201:
            return self._to_ref(response.json())
        # GitHub answers a duplicate with 422 "A pull request already exists"; any other 422 is an error.
        if not any(DUPLICATE_MESSAGE in message.lower() for message in _error_messages(response)):
            raise ForgeHTTPError("POST", self._base + path, 422, forge_message(response), self.forge_name)
        return forge_message(response)

    def get_pull_request(self, *, number: int) -> PullRequestRef:
        return self._to_ref(self._call("GET", f"/pulls/{int(number)}").json())

    def is_merged(self, *, number: int) -> bool:
        return self._call("GET", f"/pulls/{int(number)}/merge", expected=(204, 404)).status_code == 204

    def _send_merge(self, current: PullRequestRef, head_sha: str | None) -> httpx.Response:
        body = {"merge_method": "merge"} | ({"sha": head_sha} if head_sha is not None else {})  # 409: head moved
        return self._call("PUT", f"/pulls/{current.number}/merge", json=body, expected=(200, 405, 409))

    def _merged_from(self, current: PullRequestRef, response: httpx.Response) -> PullRequestRef:
        number = current.number
        if response.status_code == 405:
            # A retried PUT whose first answer was lost finds the PR merged already.
            if self.is_merged(number=number):
                return self.get_pull_request(number=number)
            raise PermanentError(
                f"pull request #{number} ({current.branch} into {current.base}) of {self.owner}/{self.repo} "
                f"cannot be merged: {forge_message(response)}"
            )
        answer = response.json()
        try:
            merged = self.get_pull_request(number=number)
        except TransientError:
            # GitHub answers 200 once the merge is made: it stands when the re-read keeps failing.
            sha = answer.get("sha") if isinstance(answer, dict) else None
            return current.model_copy(update={"state": "merged", "merge_commit": str(sha) if sha else None})
        if merged.state != "merged":
            raise TransientError(f"GitHub answered the merge of #{number} but does not show it merged yet")
        if merged.merge_commit is None and isinstance(answer, dict) and answer.get("sha"):
            merged = merged.model_copy(update={"merge_commit": str(answer["sha"])})
        return merged

    # -- CI ------------------------------------------------------------------------

    def _statuses(self, segment: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The combined state and every latest status (all pages) of the commit."""
        statuses: list[dict[str, Any]] = []
        state: str | None = None
        for page in range(1, MAX_PAGES + 1):
            data = self._call("GET", f"/commits/{segment}/status", params={"per_page": PER_PAGE, "page": page}).json()
            state = data.get("state")
            batch = [status for status in data.get("statuses") or [] if isinstance(status, dict)]
            statuses += batch
            if not batch or len(statuses) >= int(data.get("total_count") or 0):
                break
        return state, statuses

    def _check_runs(self, segment: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            data = self._call(
                "GET", f"/commits/{segment}/check-runs", params={"per_page": PER_PAGE, "page": page}
            ).json()
            batch = [run for run in data.get("check_runs") or [] if isinstance(run, dict)]
            runs += batch
            if not batch or len(runs) >= int(data.get("total_count") or 0):
                break
        return runs

    def ci_status(self, ref: str) -> CiStatus:
        """CI of the commit ``ref`` (SHA, branch or tag): commit statuses and check runs together."""
        segment = ref_segment(ref)
        combined, statuses = self._statuses(segment)
        runs = self._check_runs(segment)
        details: list[str] = []
        failed = pending = False
        for status in statuses:
            value = str(status.get("state"))
            details.append(f"status {status.get('context') or 'default'}: {value}")
            failed |= value in FAILED_STATUSES
            pending |= value == "pending"
        for run in runs:
            progress, conclusion = str(run.get("status")), run.get("conclusion")
            name = run.get("name") or f"check {run.get('id')}"
            if progress == "completed":
                details.append(f"check {name}: {conclusion}")
                failed |= conclusion in FAILED_CONCLUSIONS
            else:
                details.append(f"check {name}: {progress}")
                pending = True
        if statuses and combined == "failure":
            failed = True
        if failed:
            return CiStatus(state="failure", details=details)
        if pending:
            return CiStatus(state="pending", details=details)
        return CiStatus(state="success" if statuses or runs else "none", details=details)
