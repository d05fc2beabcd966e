"""A Gitea REST API test double: a real HTTP server over real bare git repositories.

``GiteaTestServer`` serves, on 127.0.0.1, the operations of Gitea 1.25.4 that
sdlc-flows uses, behaving as ``gitea-endpoints.md`` describes. Requests are
routed by Gitea's own Swagger document (:mod:`forge_servers.swagger_contract`),
and every departure from that document is recorded in
:attr:`GiteaTestServer.violations` (the request is still answered as Gitea would).

Each repository is a bare git repository on disk (:meth:`GiteaTestServer.create_repo`
returns its path, which is the clone URL the pipeline pushes to). Pull requests
see the branches pushed there, and a merge is a real ``git merge --no-ff`` made
in a temporary clone and pushed into the base branch.

Behaviour kept from real Gitea, because clients get it wrong:

* the PR list ignores ``head`` (and any unknown parameter) and lists every PR;
* ``GET pulls/{base}/{head}`` has no state filter: it may answer a closed PR;
* creating a PR while an open one exists for head/base is a 409; an unknown
  head branch is a 404;
* merging answers 405 ``PR already merged`` for a merged PR, 405 ``Please try
  again later`` when the PR does not merge cleanly, 404 for a closed PR;
* a commit without statuses has the combined state ``""`` and ``statuses: null``;
  a single status carries its state in ``status``;
* editing a PR (``PATCH pulls/{index}``: title, body, state, base) answers **201**, not 200;
* a PR's commits (``GET pulls/{index}/commits``) are those of head not in base,
  newest first (``git log`` order); once merged, those it brought (from its merge base).

Faults are injected per request with :meth:`GiteaTestServer.inject`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forge_servers.common import Fault, ForgeRequestHandler, RecordedRequest, ThreadedForgeServer, server_git
from forge_servers.swagger_contract import DEFAULT_DOCUMENT, Match, SwaggerContract

DEFAULT_TOKEN = "gitea-test-token"
BOT_USER = "sdlc-bot"
MAX_LIMIT = 50  # Gitea's default [api] MAX_RESPONSE_ITEMS
STATUS_STATES = ("pending", "success", "error", "failure", "warning", "skipped")
FAULT_MESSAGES = {
    429: "rate limit exceeded",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

_contract_lock = threading.Lock()
_contract: SwaggerContract | None = None


def shared_contract() -> SwaggerContract:
    """The Swagger document is parsed once per test session."""
    global _contract
    with _contract_lock:
        if _contract is None:
            _contract = SwaggerContract(DEFAULT_DOCUMENT)
        return _contract


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git(cwd: Path, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return server_git(cwd, *args, identity=("Gitea", "gitea@example.test"), check=check, stdin=stdin)


LOG_FORMAT = "%H%x00%P%x00%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B%x1e"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: a parent's CommitMeta carries no date


def _log(path: Path, revisions: str) -> list[dict[str, Any]]:
    """The commits of ``git log <revisions>`` (newest first): sha, parents, tree, author, committer, message."""
    out = git(path, "log", f"--format={LOG_FORMAT}", revisions, "--").stdout
    commits = []
    for entry in out.split("\x1e"):
        entry = entry.lstrip("\n")
        if not entry:
            continue
        sha, parents, tree, an, ae, ad, cn, ce, cd, message = entry.split("\x00", 9)
        commits.append(
            {
                "sha": sha,
                "parents": parents.split(),
                "tree": tree,
                "message": message,
                "author": {"name": an, "email": ae, "date": ad},
                "committer": {"name": cn, "email": ce, "date": cd},
            }
        )
    return commits


def _changes(path: Path, commit: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The files a commit changed against its first parent, and its line counts (Gitea's ``files``, ``stats``)."""
    parent = commit["parents"][0] if commit["parents"] else EMPTY_TREE
    names = git(path, "diff", "--no-renames", "--name-status", parent, commit["sha"], "--").stdout
    kinds = {"A": "added", "D": "deleted", "M": "modified"}
    files = [
        {"filename": name, "status": kinds.get(status[:1], "modified")}
        for status, name in (line.split("\t", 1) for line in names.splitlines() if "\t" in line)
    ]
    added = deleted = 0
    for line in git(path, "diff", "--no-renames", "--numstat", parent, commit["sha"], "--").stdout.splitlines():
        plus, minus, *_ = line.split("\t")
        added += int(plus) if plus.isdigit() else 0
        deleted += int(minus) if minus.isdigit() else 0
    return files, {"total": added + deleted, "additions": added, "deletions": deleted}


@dataclass
class Repo:
    owner: str
    name: str
    path: Path
    default_branch: str
    id: int
    pulls: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    next_index: int = 1  # issues and PRs share Gitea's index


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


Answer = tuple[int, Any, dict[str, str]]


class GiteaTestServer(ThreadedForgeServer):
    """A Gitea-like API on 127.0.0.1 (port 0); use as a context manager or call start()/close()."""

    name = "gitea"

    def __init__(self, root: Path | None = None, *, token: str = DEFAULT_TOKEN, check_responses: bool = True) -> None:
        super().__init__(root)
        self.token = token
        self.check_responses = check_responses
        self.contract = shared_contract()
        self.response_problems: list[str] = []  # answers of this server that depart from it
        self.repos: dict[tuple[str, str], Repo] = {}
        self._merge_lock = threading.Lock()
        self._ids = 0
        self._mergeable_cache: dict[tuple[str, str], bool] = {}

    @property
    def api_url(self) -> str:
        return f"{self.web_url}/api/v1"

    # -- test set-up ---------------------------------------------------------------

    def create_repo(self, owner: str, name: str, default_branch: str = "main") -> Path:
        """A bare repository ``owner/name`` whose default branch has one commit (README.md); returns its path."""
        path = self.root / "repositories" / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        git(self.root, "init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path))
        blob = git(path, "hash-object", "-w", "--stdin", stdin=f"# {name}\n").stdout.strip()
        tree = git(path, "mktree", stdin=f"100644 blob {blob}\tREADME.md\n").stdout.strip()
        commit = git(path, "commit-tree", tree, "-m", "Initial commit").stdout.strip()
        git(path, "update-ref", f"refs/heads/{default_branch}", commit)
        with self._lock:
            self.repos[(owner, name)] = Repo(owner, name, path, default_branch, self._next_id())
        return path

    def add_status(
        self, owner: str, repo: str, sha: str, state: str, context: str = "ci", description: str = ""
    ) -> None:
        """Record a commit status directly (tests may also POST .../statuses/{sha} through the API)."""
        record = self._repo(owner, repo)
        with self._lock:
            self._create_status(record, sha, {"state": state, "context": context, "description": description})

    def close_pull_request(self, owner: str, repo: str, number: int) -> None:
        """Close an open PR without merging it (as a person would in the web UI)."""
        with self._lock:
            pr = self._find_pull(self._repo(owner, repo), number)
            pr.update(state="closed", closed_at=_now(), updated_at=_now())

    def pull_requests(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """Every PR of the repository as the API shows it, oldest first."""
        record = self._repo(owner, repo)
        with self._lock:
            branches = self._branches(record)
            return [self._pull_json(record, pr, branches) for pr in record.pulls]

    def reset_log(self) -> None:
        super().reset_log()
        with self._lock:
            self.response_problems.clear()

    # -- state -----------------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _repo(self, owner: str, name: str) -> Repo:
        with self._lock:
            record = self.repos.get((owner, name))
        if record is None:
            raise ApiError(404, "The target couldn't be found.")
        return record

    def _resolve(self, record: Repo, ref: str) -> str | None:
        """The commit SHA of a branch, tag or (full or abbreviated) SHA, or None."""
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
            if candidate.startswith("-"):
                return None
            done = git(
                record.path,
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{candidate}^{{commit}}",
                check=False,
            )
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    def _branch_sha(self, record: Repo, branch: str) -> str | None:
        done = git(
            record.path,
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"refs/heads/{branch}^{{commit}}",
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def _branches(self, record: Repo) -> dict[str, str]:
        """Every branch of the bare repository and its commit, read with one git call."""
        listed = git(record.path, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/").stdout
        return {
            ref[len("refs/heads/") :]: sha for sha, ref in (line.split(" ", 1) for line in listed.splitlines() if line)
        }

    def _find_pull(self, record: Repo, number: int) -> dict[str, Any]:
        for pr in record.pulls:
            if pr["number"] == number:
                return pr
        raise ApiError(404, "The target couldn't be found.")

    def _user(self) -> dict[str, Any]:
        return {
            "id": 1,
            "login": BOT_USER,
            "username": BOT_USER,
            "full_name": "",
            "email": f"{BOT_USER}@example.test",
            "avatar_url": "",
            "html_url": f"{self.web_url}/{BOT_USER}",
        }

    def _repo_json(self, record: Repo) -> dict[str, Any]:
        full = f"{record.owner}/{record.name}"
        return {
            "id": record.id,
            "name": record.name,
            "full_name": full,
            "owner": {"id": 1, "login": record.owner, "username": record.owner},
            "default_branch": record.default_branch,
            "private": False,
            "fork": False,
            "empty": False,
            "archived": False,
            "html_url": f"{self.web_url}/{full}",
            "url": f"{self.api_url}/repos/{full}",
            "clone_url": str(record.path),
            "ssh_url": "",
            "has_pull_requests": True,
            "allow_merge_commits": True,
            "default_merge_style": "merge",
        }

    def _mergeable(self, record: Repo, base_sha: str | None, head_sha: str | None) -> bool:
        if not base_sha or not head_sha:
            return False
        key = (base_sha, head_sha)
        if key not in self._mergeable_cache:  # commits never change: one `git merge-tree` per pair
            done = git(record.path, "merge-tree", "--write-tree", "--no-messages", base_sha, head_sha, check=False)
            self._mergeable_cache[key] = done.returncode == 0
        return self._mergeable_cache[key]

    def _pull_json(self, record: Repo, pr: dict[str, Any], branches: dict[str, str] | None = None) -> dict[str, Any]:
        branches = self._branches(record) if branches is None else branches
        head_sha = pr["merged_head_sha"] or branches.get(pr["head"]) or pr["head_sha"]
        base_sha = branches.get(pr["base"])
        open_ = pr["state"] == "open"
        full = f"{record.owner}/{record.name}"
        branch = lambda ref, sha: {  # noqa: E731 - tiny local shape
            "label": ref,
            "ref": ref,
            "sha": sha or "",
            "repo_id": record.id,
            "repo": self._repo_json(record),
        }
        return {
            "id": pr["id"],
            "number": pr["number"],
            "url": f"{self.web_url}/{full}/pulls/{pr['number']}",
            "html_url": f"{self.web_url}/{full}/pulls/{pr['number']}",
            "diff_url": f"{self.web_url}/{full}/pulls/{pr['number']}.diff",
            "patch_url": f"{self.web_url}/{full}/pulls/{pr['number']}.patch",
            "title": pr["title"],
            "body": pr["body"],
            "state": pr["state"],
            "draft": False,
            "is_locked": False,
            "user": self._user(),
            "labels": [],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "requested_reviewers": None,
            "requested_reviewers_teams": None,
            "comments": 0,
            "review_comments": 0,
            "mergeable": open_ and self._mergeable(record, base_sha, head_sha),
            "merged": pr["merged"],
            "merged_at": pr["merged_at"],
            "merged_by": self._user() if pr["merged"] else None,
            "merge_commit_sha": pr["merge_commit_sha"],
            "merge_base": pr["merge_base"],
            "head": branch(pr["head"], head_sha),
            "base": branch(pr["base"], base_sha),
            "created_at": pr["created_at"],
            "updated_at": pr["updated_at"],
            "closed_at": pr["closed_at"],
            "due_date": None,
            "allow_maintainer_edit": False,
        }

    # -- operations ------------------------------------------------------------------

    def handle(self, match: Match, query: dict[str, list[str]], body: Any) -> Answer:
        operation = getattr(self, f"_op_{match.operation_id}", None)
        if operation is None:
            raise ApiError(404, f"{match.operation_id} is not implemented by GiteaTestServer")
        params = match.path_params
        record = self._repo(params["owner"], params["repo"])
        flat = {name: values[-1] for name, values in query.items()}
        return operation(record, params, flat, body if isinstance(body, dict) else {})

    @staticmethod
    def _page(items: list[Any], query: dict[str, str]) -> tuple[list[Any], dict[str, str]]:
        try:
            page = max(1, int(query.get("page") or 1))
            limit = int(query.get("limit") or MAX_LIMIT)
        except ValueError:
            raise ApiError(422, "page and limit must be integers") from None
        limit = MAX_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)
        start = (page - 1) * limit
        return items[start : start + limit], {"X-Total-Count": str(len(items))}

    def _op_repoGet(self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]) -> Answer:
        return 200, self._repo_json(record), {}

    def _op_repoListPullRequests(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        state = query.get("state") or "open"
        if state not in ("open", "closed", "all"):
            raise ApiError(422, f"invalid state {state!r}")
        with self._lock:
            pulls = [pr for pr in record.pulls if state == "all" or pr["state"] == state]
            if query.get("base_branch"):
                pulls = [pr for pr in pulls if pr["base"] == query["base_branch"]]
            # `head` and other unknown parameters are ignored, as by Gitea. Default order: newest first.
            pulls = sorted(pulls, key=lambda pr: pr["number"], reverse=query.get("sort") != "oldest")
            page, headers = self._page(pulls, query)
            branches = self._branches(record)
            return 200, [self._pull_json(record, pr, branches) for pr in page], headers

    def _op_repoGetPullRequestByBaseHead(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        head = params["head"]
        if ":" in head:  # owner:branch or owner/repo:branch
            owner_part, head = head.split(":", 1)
            if owner_part not in (record.owner, f"{record.owner}/{record.name}"):
                raise ApiError(404, "The target couldn't be found.")
        with self._lock:
            # No state filter and no ORDER BY: the first one stored, which may be closed or merged.
            for pr in record.pulls:
                if pr["head"] == head and pr["base"] == params["base"]:
                    return 200, self._pull_json(record, pr), {}
        raise ApiError(404, "The target couldn't be found.")

    def _op_repoGetPullRequest(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        with self._lock:
            return 200, self._pull_json(record, self._find_pull(record, int(params["index"]))), {}

    def _op_repoCreatePullRequest(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        head, base = str(body.get("head") or ""), str(body.get("base") or "")
        title = str(body.get("title") or "")
        if ":" in head:
            owner_part, head = head.split(":", 1)
            if owner_part != record.owner:
                raise ApiError(404, "The target couldn't be found.")
        if not title:
            raise ApiError(422, "[Title]: Required")
        with self._lock:
            branches = self._branches(record)
            head_sha, base_sha = branches.get(head), branches.get(base)
            if head_sha is None or base_sha is None:
                raise ApiError(404, f"branch {head if head_sha is None else base!r} does not exist")
            if head == base:
                raise ApiError(422, "Invalid PullRequest: There are no changes between the head and the base")
            for pr in record.pulls:
                if pr["state"] == "open" and pr["head"] == head and pr["base"] == base:
                    raise ApiError(
                        409,
                        f"pull request already exists for these targets [id: {pr['id']}, issue_id: {pr['id']}, "
                        f"head_repo_id: {record.id}, base_repo_id: {record.id}, head_branch: {head}, base_branch: {base}]",
                    )
            merge_base = git(record.path, "merge-base", base_sha, head_sha, check=False).stdout.strip()
            now = _now()
            pr = {
                "id": self._next_id(),
                "number": record.next_index,
                "title": title,
                "body": str(body.get("body") or ""),
                "head": head,
                "base": base,
                "head_sha": head_sha,
                "merged_head_sha": None,
                "state": "open",
                "merged": False,
                "merged_at": None,
                "merge_commit_sha": None,
                "merge_base": merge_base,
                "created_at": now,
                "updated_at": now,
                "closed_at": None,
            }
            record.next_index += 1
            record.pulls.append(pr)
            return 201, self._pull_json(record, pr, branches), {}

    def _op_repoEditPullRequest(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        """Edit a PR as Gitea's ``EditPullRequest`` does: an empty title is ignored, a given ``body``
        (even empty) replaces the text, ``state`` closes or reopens (412 once merged; 409 when reopening
        meets another open PR of the same head and base), ``base`` must be an existing branch. The other
        fields of ``EditPullRequestOption`` (assignees, labels, milestone, deadline) are accepted and ignored.
        Answers **201** with the PR."""
        with self._lock:
            pr = self._find_pull(record, int(params["index"]))
            branches = self._branches(record)
            changes: dict[str, Any] = {}
            if isinstance(body.get("title"), str) and body["title"].strip():
                changes["title"] = body["title"]
            if isinstance(body.get("body"), str):
                changes["body"] = body["body"]
            base = body.get("base")
            if isinstance(base, str) and base and base != pr["base"]:
                if pr["state"] != "open":
                    raise ApiError(422, "cannot change the base of a closed pull request")
                if base not in branches:
                    raise ApiError(404, f"branch {base!r} does not exist")
                changes["base"] = base
            state = body.get("state")
            if state is not None:
                if state not in ("open", "closed"):
                    raise ApiError(422, f"invalid state {state!r}")
                if pr["merged"]:
                    raise ApiError(412, "cannot change state of this pull request, it was already merged")
                if state != pr["state"]:
                    changes["state"] = state
                    changes["closed_at"] = _now() if state == "closed" else None
            if changes.get("state", pr["state"]) == "open":
                head, new_base = pr["head"], changes.get("base", pr["base"])
                for other in record.pulls:
                    if other is not pr and other["state"] == "open" and (other["head"], other["base"]) == (head, new_base):
                        raise ApiError(409, f"pull request already exists for these targets [id: {other['id']}]")
            if changes:
                pr.update(changes, updated_at=_now())
            return 201, self._pull_json(record, pr, branches), {}

    def _op_repoPullRequestIsMerged(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        with self._lock:
            pr = self._find_pull(record, int(params["index"]))
        return (204, None, {}) if pr["merged"] else (404, None, {})

    def _op_repoGetPullRequestCommits(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        """The PR's commits as Gitea lists them: ``base..head`` while it is open (head's commits not in the
        base branch), ``merge_base..head`` once merged (what it brought); newest first, as ``git log``."""
        with self._lock:
            pr = dict(self._find_pull(record, int(params["index"])))
            branches = self._branches(record)
        if pr["merged"]:
            head_sha, base = pr["merged_head_sha"], pr["merge_base"]
        else:
            head_sha, base = branches.get(pr["head"]) or pr["head_sha"], branches.get(pr["base"]) or pr["merge_base"]
        commits = _log(record.path, f"{base}..{head_sha}") if base and head_sha else []
        page, headers = self._page(commits, query)  # checks page and limit
        number, limit = max(1, int(query.get("page") or 1)), int(query.get("limit") or MAX_LIMIT)
        limit = MAX_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)
        size = len(commits)
        pages = -(-size // limit)
        headers.update(
            {
                "X-Total": str(size),
                "X-Page": str(number),
                "X-PerPage": str(limit),
                "X-PageCount": str(pages),
                "X-HasMore": str(number < pages).lower(),
            }
        )
        with_files = query.get("files", "true").lower() in ("true", "1", "t")
        with_verification = query.get("verification", "true").lower() in ("true", "1", "t")
        return 200, [self._commit_json(record, c, with_files, with_verification) for c in page], headers

    def _commit_json(
        self, record: Repo, commit: dict[str, Any], with_files: bool, with_verification: bool
    ) -> dict[str, Any]:
        """One ``Commit`` of the Swagger document (``author``/``committer`` are Gitea users: none here)."""
        full = f"{record.owner}/{record.name}"
        sha = commit["sha"]
        api = f"{self.api_url}/repos/{full}/git/commits"
        data: dict[str, Any] = {
            "sha": sha,
            "url": f"{api}/{sha}",
            "html_url": f"{self.web_url}/{full}/commit/{sha}",
            "created": commit["committer"]["date"],
            "author": None,
            "committer": None,
            "commit": {
                "url": f"{api}/{sha}",
                "message": commit["message"],
                "author": commit["author"],
                "committer": commit["committer"],
                "tree": {
                    "sha": commit["tree"],
                    "url": f"{self.api_url}/repos/{full}/git/trees/{commit['tree']}",
                    "created": commit["committer"]["date"],
                },
                "verification": {
                    "verified": False,
                    "reason": "gpg.error.not_signed_commit",
                    "signature": "",
                    "signer": None,
                    "payload": "",
                }
                if with_verification
                else None,
            },
            "parents": [
                {"sha": parent, "url": f"{api}/{parent}", "created": ZERO_TIME} for parent in commit["parents"]
            ],
        }
        if with_files:
            data["files"], data["stats"] = _changes(record.path, commit)
        return data

    def _op_repoMergePullRequest(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        style = body.get("Do")
        if style not in ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only", "manually-merged"):
            raise ApiError(422, "[Do]: Required")
        if style != "merge":
            raise ApiError(405, f"merge style {style!r} is not allowed by GiteaTestServer")
        if body.get("merge_when_checks_succeed"):
            raise ApiError(405, "auto-merge is not supported by GiteaTestServer")
        with self._merge_lock:  # one merge into a repository at a time, as Gitea's pull queue does
            with self._lock:
                pr = self._find_pull(record, int(params["index"]))
                if pr["merged"]:
                    raise ApiError(405, "PR already merged")
                if pr["state"] != "open":
                    raise ApiError(404, "The target couldn't be found.")
                head, base, number, title = pr["head"], pr["base"], pr["number"], pr["title"]
            base_sha, head_sha = self._branch_sha(record, base), self._branch_sha(record, head)
            if not self._mergeable(record, base_sha, head_sha):
                raise ApiError(405, "Please try again later")
            if body.get("head_commit_id") and body["head_commit_id"] != head_sha:
                raise ApiError(409, "head out of date")
            subject = str(
                body.get("MergeTitleField") or f"Merge pull request '{title}' (#{number}) from {head} into {base}"
            )
            message = str(body.get("MergeMessageField") or "")
            merge_base = git(record.path, "merge-base", base_sha or "", head_sha or "", check=False).stdout.strip()
            merge_sha = self._git_merge(record, base, head, subject + ("\n\n" + message if message else ""))
            with self._lock:
                now = _now()
                # Gitea recomputes merge_base whenever head or base moves: the one of the merge is kept.
                pr.update(
                    state="closed",
                    merged=True,
                    merged_at=now,
                    closed_at=now,
                    updated_at=now,
                    merge_commit_sha=merge_sha,
                    merged_head_sha=head_sha,
                    merge_base=merge_base or pr["merge_base"],
                )
            if body.get("delete_branch_after_merge"):
                git(record.path, "update-ref", "-d", f"refs/heads/{head}", head_sha or "", check=False)
        return 200, None, {}

    def _git_merge(self, record: Repo, base: str, head: str, message: str) -> str:
        """A real ``git merge --no-ff`` in a temporary clone, pushed into the bare repository's base branch."""
        scratch = Path(tempfile.mkdtemp(prefix="merge-", dir=self.root))
        try:
            work = scratch / "work"
            git(scratch, "clone", "--quiet", "--no-tags", "--branch", base, "--", str(record.path), str(work))
            merged = git(work, "merge", "--no-ff", "--no-edit", "-m", message, "--", f"origin/{head}", check=False)
            if merged.returncode != 0:
                raise ApiError(409, f"merge conflict: {merged.stdout.strip()[-300:]}")
            pushed = git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{base}", check=False)
            if pushed.returncode != 0:
                raise ApiError(409, f"push rejected: {pushed.stderr.strip()[-300:]}")
            return git(work, "rev-parse", "HEAD").stdout.strip()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _latest_statuses(self, record: Repo, sha: str) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for status in record.statuses.get(sha, []):
            latest[status["context"]] = status  # later ones replace earlier ones of the same context
        return sorted(latest.values(), key=lambda s: s["id"])

    def _op_repoGetCombinedStatusByRef(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        sha = self._resolve(record, params["ref"])
        if sha is None:
            raise ApiError(404, f"ref {params['ref']!r} not found")
        with self._lock:
            statuses = self._latest_statuses(record, sha)
            page, headers = self._page(statuses, query)
        full = f"{record.owner}/{record.name}"
        state = ""
        if page:  # Gitea combines only the statuses of the requested page
            states = {s["status"] for s in page}
            if states & {"error", "failure"}:
                state = "failure"
            elif states <= {"success", "warning", "skipped"}:
                state = "success"
            else:
                state = "pending"
        data = {
            "state": state,
            "sha": sha,
            "total_count": len(statuses),
            "statuses": page or None,
            "repository": self._repo_json(record),
            "commit_url": f"{self.api_url}/repos/{full}/git/commits/{sha}",
            "url": f"{self.api_url}/repos/{full}/commits/{sha}/status",
        }
        return 200, data, headers

    def _create_status(self, record: Repo, sha: str, body: dict[str, Any]) -> dict[str, Any]:
        state = body.get("state")
        if state not in STATUS_STATES:
            raise ApiError(400, f"invalid state {state!r}")
        full = self._resolve(record, sha)
        if full is None:
            raise ApiError(404, f"commit {sha!r} not found")
        now = _now()
        status = {
            "id": self._next_id(),
            "status": state,
            "context": str(body.get("context") or "default"),
            "description": str(body.get("description") or ""),
            "target_url": str(body.get("target_url") or ""),
            "url": f"{self.api_url}/repos/{record.owner}/{record.name}/statuses/{full}",
            "creator": self._user(),
            "created_at": now,
            "updated_at": now,
        }
        record.statuses.setdefault(full, []).append(status)
        return status

    def _op_repoCreateStatus(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        with self._lock:
            return 201, self._create_status(record, params["sha"], body), {}

    def _op_repoListStatuses(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> Answer:
        sha = self._resolve(record, params["sha"])
        if sha is None:
            raise ApiError(404, "commit not found")
        with self._lock:
            statuses = list(reversed(record.statuses.get(sha, [])))
            if query.get("state"):
                statuses = [s for s in statuses if s["status"] == query["state"]]
            page, headers = self._page(statuses, query)
        return 200, page, headers


class _Handler(ForgeRequestHandler):
    api: GiteaTestServer
    server_version = "GiteaTestServer/1.25.4"

    def _serve(self, method: str) -> None:
        api = self.api
        incoming = self._read_request(method)
        record, headers, raw_body, bad_json = incoming.record, incoming.headers, incoming.raw_body, incoming.bad_json
        raw_path, query, body = record.path, record.query, record.body
        match = api.contract.check_request(method, raw_path, query, raw_body, headers.get("content-type"))
        record.operation = match.operation_id
        if match.violations:
            with api._lock:
                api.violations.extend(match.violations)

        auth = headers.get("authorization", "")
        if auth not in (f"token {api.token}", f"Bearer {api.token}"):
            return self._answer(
                record,
                401,
                {
                    "message": "token is required" if not auth else "user does not exist",
                    "url": f"{api.web_url}/api/swagger",
                },
            )
        if match.operation is None:
            return self._answer(record, 404, {"message": "Not Found", "url": f"{api.web_url}/api/swagger"})
        if bad_json:
            return self._answer(record, 422, {"message": "invalid JSON body", "url": f"{api.web_url}/api/swagger"})

        relative = raw_path[len("/api/v1") :]
        fault = api._take_fault(method, relative)
        if fault is not None and not fault.after:
            if fault.timeout:
                time.sleep(fault.timeout)
            if fault.status is not None:
                return self._fault(record, fault)
        try:
            status, data, extra = api.handle(match, query, body)
        except ApiError as exc:
            status, data, extra = exc.status, {"message": exc.message, "url": f"{api.web_url}/api/swagger"}, {}
        if fault is not None and fault.after:  # the operation happened; its answer is lost
            if fault.timeout:
                time.sleep(fault.timeout)
            if fault.status is not None:
                return self._fault(record, fault)
        if api.check_responses and match.operation is not None:
            problems = api.contract.check_response(match.operation, status, data)
            if problems:
                with api._lock:
                    api.response_problems.extend(problems)
        return self._answer(record, status, data, extra)

    def _fault(self, record: RecordedRequest, fault: Fault) -> None:
        record.injected = True
        assert fault.status is not None
        message = fault.message or FAULT_MESSAGES.get(fault.status, "injected fault")
        self._answer(record, fault.status, {"message": message, "url": ""}, fault.headers)

    def _answer(self, record: RecordedRequest, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        record.status = status
        payload = b"" if data is None else json.dumps(data).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (an injected timeout)
            pass


GiteaTestServer.handler_class = _Handler
