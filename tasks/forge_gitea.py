"""Gitea's REST API (v1, as of Gitea 1.25) as a :class:`~tasks.forge.Forge` (B43), plus the CI-green gate's view.

Every request goes through :func:`tasks.forge_http.call` (retries on 429, 5xx,
timeouts; any other 4xx fails at once with Gitea's message). Where Gitea
differs from GitHub, and what this module does about it (``gitea-endpoints.md``):

* the PR list has **no** ``head`` filter (Gitea ignores the parameter and lists
  every PR), so the open PR of a branch is found by listing open PRs into the
  base (``base_branch``), page by page, and filtering on ``head.ref`` here.
  ``GET pulls/{base}/{head}`` is not used: it has no state filter and may answer
  an old closed or merged PR of the same branch;
* a duplicate PR is a **409**; creating is idempotent: the open PR is looked up
  first, and a create that answers 409 (another caller, or our own create
  retried after a 5xx whose PR was in fact made) ends with that one PR, found
  again. There is never a second PR, because Gitea refuses it with the 409;
* merging is ``POST pulls/{index}/merge`` with Go-style keys (``Do``,
  ``MergeTitleField``, ``MergeMessageField``); a merged PR answers 405
  ``PR already merged``, so the PR is read first and re-read after a 405
  (a retried merge whose first answer was lost is merged already);
* editing a PR (its body: the story, ``sdlc.pr_body``) is ``PATCH pulls/{index}``
  (``repoEditPullRequest``), answered **201**, not 200 as on GitHub;
* CI: Gitea Actions (and external CI) report as **commit statuses**; a commit
  without any has the combined state ``""`` and ``statuses: null`` (GitHub says
  ``pending``), and a single status carries its state in ``status``.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from sdlc.models import PullRequestRef, validate_branch
from tasks.ci_status import CiStatus
from tasks.failures import PermanentError, TransientError
from tasks.forge_http import RestRepository, forge_message, ref_segment

PAGE_LIMIT = 50  # Gitea's default MAX_RESPONSE_ITEMS: a larger limit is cut to it anyway
MAX_PAGES = 100
# How one Gitea commit status counts for the gate. `warning` and `skipped` are
# finished and not failed: Gitea's own combined state folds them into success
# (a job skipped by its `if:` or path filter, or a check that passed with
# warnings), and waiting on them as pending would never end.
STATUS_TO_CI = {
    "success": "success",
    "warning": "success",
    "skipped": "success",
    "pending": "pending",
    "error": "failure",
    "failure": "failure",
}


def pull_request_ref(data: dict[str, Any]) -> PullRequestRef:
    """Gitea's ``PullRequest`` as a :class:`PullRequestRef`: closed + merged is ``merged``."""
    merged = bool(data.get("merged"))
    state: Literal["open", "merged", "closed"] = (
        "merged" if merged else ("open" if data.get("state") == "open" else "closed")
    )
    return PullRequestRef(
        number=int(data["number"]),
        url=str(data.get("html_url") or data.get("url") or ""),
        branch=str((data.get("head") or {}).get("ref") or ""),
        base=str((data.get("base") or {}).get("ref") or ""),
        title=str(data.get("title") or ""),
        state=state,
        merge_commit=(data.get("merge_commit_sha") or None) if merged else None,
    )


class GiteaForge(RestRepository):
    """Pull requests and CI results of one Gitea repository ``owner/repo``; close it (or use ``with``)."""

    forge_name = "Gitea"
    file_view = "src/branch"  # Gitea's web view of a file on a branch: <html_url>/src/branch/<branch>/<path>

    # -- pull requests -----------------------------------------------------------

    def _is_ours(self, data: dict[str, Any], branch: str, base: str) -> bool:
        """``branch`` of this repository (not a fork's branch of the same name) into ``base``."""
        head = data.get("head") or {}
        if head.get("ref") != branch or (data.get("base") or {}).get("ref") != base:
            return False
        head_repo = head.get("repo")
        if isinstance(head_repo, dict) and head_repo.get("full_name"):
            return str(head_repo["full_name"]).lower() == f"{self.owner}/{self.repo}".lower()
        base_repo_id = (data.get("base") or {}).get("repo_id")
        return head.get("repo_id") is None or base_repo_id is None or head.get("repo_id") == base_repo_id

    def find_open_pull_request(self, *, branch: str, base: str) -> PullRequestRef | None:
        """The open PR of ``branch`` into ``base``, or None (the oldest one, should there be several)."""
        validate_branch(branch)
        validate_branch(base)
        found: list[dict[str, Any]] = []
        seen = 0
        for page in range(1, MAX_PAGES + 1):
            response = self._call(
                "GET",
                "/pulls",
                params={"state": "open", "base_branch": base, "sort": "oldest", "page": page, "limit": PAGE_LIMIT},
            )
            batch = response.json()
            if not isinstance(batch, list):
                raise PermanentError(
                    f"Gitea answered the PR list of {self.owner}/{self.repo} with {type(batch).__name__}"
                )
            found += [pr for pr in batch if isinstance(pr, dict) and self._is_ours(pr, branch, base)]
            seen += len(batch)
            total = response.headers.get("x-total-count")
            if not batch or len(batch) < PAGE_LIMIT or (total is not None and total.isdigit() and seen >= int(total)):
                break
        else:
            raise PermanentError(
                f"{self.owner}/{self.repo} has more than {MAX_PAGES * PAGE_LIMIT} open PRs into {base}"
            )
        if not found:
            return None
        return pull_request_ref(min(found, key=lambda pr: int(pr["number"])))

    def _create_pull_request(self, *, branch: str, base: str, title: str, body: str) -> PullRequestRef | str:
        response = self._call(
            "POST", "/pulls", json={"head": branch, "base": base, "title": title, "body": body}, expected=(201, 409)
        )
        return pull_request_ref(response.json()) if response.status_code == 201 else forge_message(response)

    def get_pull_request(self, *, number: int) -> PullRequestRef:
        return pull_request_ref(self._call("GET", f"/pulls/{int(number)}").json())

    def _send_merge(self, current: PullRequestRef, head_sha: str | None) -> httpx.Response:
        number = current.number
        body = {
            "Do": "merge",
            "MergeTitleField": f"Merge pull request #{number} from {current.branch}",
            "MergeMessageField": current.title,
        }
        if head_sha is not None:
            body["head_commit_id"] = head_sha  # Gitea answers 409 when the head is another commit
        return self._call("POST", f"/pulls/{number}/merge", json=body, expected=(200, 405, 409))

    def _merged_from(self, current: PullRequestRef, response: httpx.Response) -> PullRequestRef:
        number = current.number
        try:
            merged = self.get_pull_request(number=number)
        except TransientError:
            if response.status_code != 200:
                raise
            # Gitea answers 200 once the merge is made: it stands when the re-read keeps failing.
            return current.model_copy(update={"state": "merged"})
        if response.status_code == 405:
            # 'PR already merged': our own merge, retried after its answer was lost.
            if merged.state == "merged":
                return merged
            message = forge_message(response)
            if "try again later" in message.lower():
                # Gitea says this both while its mergeability check runs and when the PR
                # conflicts with its base: worth another try, not a merge.
                raise TransientError(
                    f"Gitea cannot merge #{number} ({current.branch} into {current.base}) of "
                    f"{self.owner}/{self.repo} yet: {message} (mergeability check running, or a conflict)"
                )
            raise PermanentError(
                f"pull request #{number} ({current.branch} into {current.base}) of {self.owner}/{self.repo} "
                f"cannot be merged: {message}"
            )
        if merged.state != "merged":
            raise TransientError(f"Gitea answered the merge of #{number} but does not show it merged yet")
        return merged

    # -- CI ------------------------------------------------------------------------

    def ci_status(self, ref: str) -> CiStatus:
        """CI of the commit ``ref`` (SHA, branch or tag), from its commit statuses (Gitea Actions included)."""
        segment = ref_segment(ref)
        statuses: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            data = self._call("GET", f"/commits/{segment}/status", params={"page": page, "limit": PAGE_LIMIT}).json()
            if not isinstance(data, dict):
                raise PermanentError(f"Gitea answered the combined status of {ref} with {type(data).__name__}")
            # No statuses at all: state "" and statuses null (not "pending" as on GitHub).
            batch = [status for status in data.get("statuses") or [] if isinstance(status, dict)]
            statuses += batch
            if not batch or len(batch) < PAGE_LIMIT or len(statuses) >= int(data.get("total_count") or 0):
                break
        # Gitea's combined `state` covers only the requested page: fold every page here.
        details: list[str] = []
        found: set[str] = set()
        for status in statuses:
            value = str(status.get("status") or status.get("state") or "")
            details.append(f"status {status.get('context') or 'default'}: {value or 'unknown'}")
            # An unknown state is not a pass: count it as still running.
            found.add(STATUS_TO_CI.get(value, "pending"))
        if not statuses:
            return CiStatus(state="none", details=details)
        if "failure" in found:
            return CiStatus(state="failure", details=details)
        if "pending" in found:
            return CiStatus(state="pending", details=details)
        return CiStatus(state="success", details=details)


class ForgejoForge(GiteaForge):
    """A Forgejo (Codeberg among them): Gitea's API, checked against Forgejo's own document."""

    forge_name = "Forgejo"
