"""A GitHub REST API test double: a real HTTP server over real bare git repositories.

``GitHubTestServer`` speaks the operations of ``tests/contracts/github-endpoints.md``
(routed and checked by :mod:`forge_servers.github_contract`) on 127.0.0.1. Each
repository is a bare git repository on disk: its path is the clone URL the
pipeline pushes to, pull requests see the branches pushed there, and a merge is a
real ``git merge --no-ff`` pushed into the base branch. A PR's commits
(``GET .../pulls/{n}/commits``) are those of its head not in its base, oldest first;
once merged, those the merge brought (head's commits not in the merge's first parent).

Faults are injected per request (:meth:`GitHubTestServer.inject`): a 5xx, a 429
or a rate-limit 403 with any headers, a slow answer, or a *lost response*
(``after=True``: the operation is done, then the error is answered). Every
request is logged in :attr:`GitHubTestServer.requests`; every departure from the
contract is logged in :attr:`GitHubTestServer.violations`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forge_servers.common import (
    Fault,
    ForgeRequestHandler,
    RecordedRequest,
    ThreadedForgeServer,
    seeded_bare_repository,
    server_git,
)
from forge_servers.github_contract import API_VERSIONS, Checked, check_request

DEFAULT_TOKEN = "test-token"
ACTIONS_APP_ID = 15368  # GitHub Actions' app id on github.com
SHA_RE = re.compile(r"[0-9a-f]{40}")
REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
FAULT_MESSAGES = {
    403: "API rate limit exceeded for user ID 1.",
    429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
    504: "We couldn't respond to your request in time.",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


IDENTITY = ("GitHub", "noreply@github.com")


def _git(cwd: Path, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return server_git(cwd, *args, identity=IDENTITY, check=check, stdin=stdin)


LOG_FORMAT = "%H%x00%P%x00%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B%x1e"
MAX_PULL_COMMITS = 250  # "Lists a maximum of 250 commits for a pull request"


def _utc(date: str) -> str:
    """git's strict ISO 8601 date as GitHub writes it: UTC, ``Z``."""
    return datetime.fromisoformat(date).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(path: Path, revisions: str) -> list[dict[str, Any]]:
    """The commits of ``git log --reverse <revisions>`` (oldest first): sha, parents, tree, people, message."""
    out = _git(path, "log", "--reverse", f"--format={LOG_FORMAT}", revisions, "--").stdout
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
                "message": message.rstrip("\n"),
                "author": {"name": an, "email": ae, "date": _utc(ad)},
                "committer": {"name": cn, "email": ce, "date": _utc(cd)},
            }
        )
    return commits


@dataclass
class Repo:
    owner: str
    name: str
    path: Path
    default_branch: str
    id: int
    pulls: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    check_runs: list[dict[str, Any]] = field(default_factory=list)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


Answer = tuple[int, Any, dict[str, str]]
Params = dict[str, str]
Body = dict[str, Any]


def _invalid(resource: str, field_name: str, code: str = "invalid") -> ApiError:
    return ApiError(422, "Validation Failed", [{"resource": resource, "field": field_name, "code": code}])


def _custom(message: str) -> ApiError:
    return ApiError(422, "Validation Failed", [{"resource": "PullRequest", "code": "custom", "message": message}])


class GitHubTestServer(ThreadedForgeServer):
    """GitHub's REST API on 127.0.0.1 over bare repositories under ``root``; a context manager."""

    name = "github"

    def __init__(self, root: Path | None = None, *, token: str = DEFAULT_TOKEN, path_prefix: str = "") -> None:
        super().__init__(root)
        self.token = token
        self.path_prefix = path_prefix.rstrip("/")
        self._repos: dict[tuple[str, str], Repo] = {}
        self._ids = 1000
        self._rate_remaining = 5000

    @property
    def api_url(self) -> str:
        """What ``GitHubCredentials.api_url`` is set to (``https://api.github.com`` in production)."""
        return self.web_url + self.path_prefix

    # -- test helpers --------------------------------------------------------------

    def create_repo(
        self, owner: str, name: str, default_branch: str = "main", files: dict[str, str] | None = None
    ) -> Path:
        """A bare repository whose default branch holds ``files`` (default: a README); returns its path."""
        files = {"README.md": f"# {name}\n"} if files is None else files
        path = seeded_bare_repository(self.root, self.root / owner / f"{name}.git", default_branch, files, IDENTITY)
        with self._lock:
            self._repos[(owner, name)] = Repo(owner, name, path, default_branch, self._next_id())
        return path

    def add_check_run(
        self,
        owner: str,
        repo: str,
        ref: str,
        name: str,
        *,
        status: str = "completed",
        conclusion: str | None = "success",
        app_id: int = ACTIONS_APP_ID,
    ) -> dict[str, Any]:
        """A check run on the commit ``ref`` points to (how GitHub Actions reports); returns it."""
        if status not in ("queued", "in_progress", "completed"):
            raise ValueError(f"check run status {status!r}")
        with self._lock:
            record = self._repo(owner, repo)
            sha = self._commit(record, ref)
            run_id = self._next_id()
            run = {
                "id": run_id,
                "name": name,
                "head_sha": sha,
                "status": status,
                "conclusion": conclusion if status == "completed" else None,
                "started_at": _now(),
                "completed_at": _now() if status == "completed" else None,
                "html_url": f"{self.web_url}/{owner}/{repo}/runs/{run_id}",
                "details_url": f"{self.web_url}/{owner}/{repo}/runs/{run_id}",
                "app": {"id": app_id, "slug": "github-actions" if app_id == ACTIONS_APP_ID else f"app-{app_id}"},
                "check_suite": {"id": run_id},
                "output": {"title": None, "summary": None},
            }
            record.check_runs.append(run)
            return dict(run)

    def add_status(
        self, owner: str, repo: str, ref: str, state: str, *, context: str = "default", description: str = ""
    ) -> dict[str, Any]:
        """A commit status, as ``POST /repos/{o}/{r}/statuses/{sha}`` would create it."""
        with self._lock:
            record = self._repo(owner, repo)
            fields = {"state": state, "context": context, "description": description}
            return self._create_status(record, self._commit(record, ref), fields)

    def pull_requests(self, owner: str, repo: str) -> list[dict[str, Any]]:
        """Every PR of the repository, as the API shows it."""
        with self._lock:
            record = self._repo(owner, repo)
            return [self._pull_json(record, pr) for pr in record.pulls]

    def _fault_headers(self, status: int | None, headers: dict[str, str]) -> dict[str, str]:
        """GitHub's rate-limit answers: a 403 says the limit is spent and when it resets."""
        extra = {key.lower(): value for key, value in headers.items()}
        if status == 403:
            extra.setdefault("x-ratelimit-remaining", "0")
            extra.setdefault("x-ratelimit-reset", str(int(time.time()) + 1))
        return extra

    # -- internals -----------------------------------------------------------------

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _repo(self, owner: str, name: str) -> Repo:
        record = self._repos.get((owner, name))
        if record is None:
            raise ApiError(404, "Not Found")
        return record

    def _branch_sha(self, record: Repo, branch: str) -> str | None:
        if not REF_RE.fullmatch(branch):
            return None
        done = _git(record.path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def _commit(self, record: Repo, ref: str) -> str:
        """The commit a SHA, branch or tag names; 422 like GitHub when there is none."""
        candidates = [f"{ref}^{{commit}}"] if SHA_RE.fullmatch(ref) else []
        if REF_RE.fullmatch(ref):
            candidates += [f"refs/heads/{ref}^{{commit}}", f"refs/tags/{ref}^{{commit}}"]
        for candidate in candidates:
            done = _git(record.path, "rev-parse", "--verify", "--quiet", candidate, check=False)
            if done.returncode == 0:
                return done.stdout.strip()
        raise ApiError(422, f"No commit found for SHA: {ref}")

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            self._rate_remaining = max(0, self._rate_remaining - 1)
            remaining = self._rate_remaining
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-used": str(5000 - remaining),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-resource": "core",
        }

    def handle(self, query: dict[str, list[str]], body: Any, checked: Checked) -> Answer:
        """Route one authenticated, contract-matched request."""
        assert checked.operation is not None
        handler: Callable[..., Answer] | None = getattr(self, f"_op_{checked.operation.name}", None)
        if handler is None:
            raise ApiError(404, f"{checked.operation.name} is not implemented by GitHubTestServer")
        params = dict(checked.params)
        with self._lock:
            record = self._repo(params.pop("owner"), params.pop("repo"))
            single = {key: values[-1] for key, values in query.items()}
            return handler(record, params, single, body if isinstance(body, dict) else {})

    # -- JSON shapes -------------------------------------------------------------

    def _repo_json(self, record: Repo) -> dict[str, Any]:
        return {
            "id": record.id,
            "name": record.name,
            "full_name": f"{record.owner}/{record.name}",
            "owner": {"login": record.owner, "type": "User"},
            "private": False,
            "default_branch": record.default_branch,
            "html_url": f"{self.web_url}/{record.owner}/{record.name}",
            "url": f"{self.api_url}/repos/{record.owner}/{record.name}",
            "clone_url": str(record.path),
        }

    def _mergeable(self, record: Repo, base_sha: str | None, head_sha: str | None) -> bool | None:
        if base_sha is None or head_sha is None:
            return False
        done = _git(record.path, "merge-tree", "--write-tree", "--quiet", base_sha, head_sha, check=False)
        return {0: True, 1: False}.get(done.returncode)

    def _pull_json(self, record: Repo, pr: dict[str, Any]) -> dict[str, Any]:
        is_open = pr["state"] == "open"
        head_sha = self._branch_sha(record, pr["head"]) if is_open else pr["head_sha"]
        base_sha = self._branch_sha(record, pr["base"])
        mergeable = self._mergeable(record, base_sha, head_sha) if is_open else None
        repo_json = self._repo_json(record)
        return {
            "id": pr["id"],
            "number": pr["number"],
            "url": f"{self.api_url}/repos/{record.owner}/{record.name}/pulls/{pr['number']}",
            "html_url": f"{self.web_url}/{record.owner}/{record.name}/pull/{pr['number']}",
            "state": pr["state"],
            "title": pr["title"],
            "body": pr["body"],
            "draft": pr["draft"],
            "user": {"login": record.owner},
            "created_at": pr["created_at"],
            "updated_at": pr["updated_at"],
            "closed_at": pr["merged_at"],
            "merged_at": pr["merged_at"],
            "merged": pr["merged"],
            # Like GitHub: for an open PR this is the test merge commit, not a merge.
            "merge_commit_sha": pr["merge_commit_sha"] or head_sha,
            "mergeable": mergeable,
            "mergeable_state": {True: "clean", False: "dirty", None: "unknown"}[mergeable],
            "head": {"label": f"{record.owner}:{pr['head']}", "ref": pr["head"], "sha": head_sha, "repo": repo_json},
            "base": {"label": f"{record.owner}:{pr['base']}", "ref": pr["base"], "sha": base_sha, "repo": repo_json},
        }

    @staticmethod
    def _page(items: list[Any], query: dict[str, str], default: int = 30) -> list[Any]:
        per_page = min(100, max(1, int(query.get("per_page", default))))
        page = max(1, int(query.get("page", 1)))
        return items[(page - 1) * per_page : page * per_page]

    def _find_pull(self, record: Repo, number: str) -> dict[str, Any]:
        for pr in record.pulls:
            if pr["number"] == int(number):
                return pr
        raise ApiError(404, "Not Found")

    # -- operations ------------------------------------------------------------------

    def _op_get_repo(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        return 200, self._repo_json(record), {}

    def _op_list_pulls(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        state = query.get("state", "open")
        pulls = [pr for pr in record.pulls if state == "all" or pr["state"] == state]
        if "head" in query:
            owner, _, ref = query["head"].partition(":")
            pulls = [pr for pr in pulls if owner == record.owner and pr["head"] == ref]
        if "base" in query:
            pulls = [pr for pr in pulls if pr["base"] == query["base"]]
        sort = query.get("sort", "created")
        key = "updated_at" if sort == "updated" else "id"
        direction = query.get("direction", "desc" if sort == "created" else "asc")
        pulls.sort(key=lambda pr: (pr[key], pr["id"]), reverse=direction == "desc")
        return 200, [self._pull_json(record, pr) for pr in self._page(pulls, query)], {}

    def _op_get_pull(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        return 200, self._pull_json(record, self._find_pull(record, params["pull_number"])), {}

    def _op_create_pull(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        head, base = body.get("head"), body.get("base")
        if not isinstance(head, str) or not isinstance(base, str):
            raise _invalid("PullRequest", "head" if not isinstance(head, str) else "base", "missing_field")
        if "issue" not in body and not body.get("title"):
            raise _invalid("PullRequest", "title", "missing_field")
        head_owner, colon, head_ref = head.partition(":")
        if not colon:
            head_owner, head_ref = record.owner, head
        head_sha = self._branch_sha(record, head_ref) if head_owner == record.owner else None
        if head_sha is None:
            raise _invalid("PullRequest", "head")
        base_sha = self._branch_sha(record, base)
        if base_sha is None:
            raise _invalid("PullRequest", "base")
        for pr in record.pulls:
            if pr["state"] == "open" and pr["head"] == head_ref and pr["base"] == base:
                raise _custom(f"A pull request already exists for {record.owner}:{head_ref}.")
        if _git(record.path, "merge-base", "--is-ancestor", head_sha, base_sha, check=False).returncode == 0:
            raise _custom(f"No commits between {base} and {head_ref}")
        pr = {
            "id": self._next_id(),
            "number": len(record.pulls) + 1,
            "state": "open",
            "title": body.get("title") or "",
            "body": body.get("body"),
            "draft": bool(body.get("draft", False)),
            "head": head_ref,
            "base": base,
            "head_sha": head_sha,
            "merged": False,
            "merged_at": None,
            "merge_commit_sha": None,
            "created_at": _now(),
            "updated_at": _now(),
        }
        record.pulls.append(pr)
        data = self._pull_json(record, pr)
        return 201, data, {"Location": data["url"]}

    def _op_update_pull(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        """``PATCH .../pulls/{n}``: title, body, state (open|closed), base; 200 with the PR. A merged PR's
        state cannot change, and reopening meets the one-open-PR-per-head-and-base rule (422, as on create)."""
        pr = self._find_pull(record, params["pull_number"])
        changes: dict[str, Any] = {}
        if "title" in body:
            if not isinstance(body["title"], str) or not body["title"]:
                raise _invalid("PullRequest", "title", "missing_field")
            changes["title"] = body["title"]
        if "body" in body:
            if body["body"] is not None and not isinstance(body["body"], str):
                raise _invalid("PullRequest", "body")
            changes["body"] = body["body"]
        if "base" in body:
            if not isinstance(body["base"], str) or self._branch_sha(record, body["base"]) is None:
                raise _invalid("PullRequest", "base")
            if body["base"] != pr["base"]:
                if pr["state"] != "open":
                    raise _custom("Cannot change the base branch of a closed pull request.")
                changes["base"] = body["base"]
        if "state" in body:
            if body["state"] not in ("open", "closed"):
                raise _invalid("PullRequest", "state")
            if body["state"] != pr["state"]:
                if pr["merged"]:
                    raise _custom("Cannot change the state of a merged pull request.")
                changes["state"] = body["state"]
                if body["state"] == "closed":
                    changes["head_sha"] = self._branch_sha(record, pr["head"]) or pr["head_sha"]
        if changes.get("state", pr["state"]) == "open":
            head, base = pr["head"], changes.get("base", pr["base"])
            for other in record.pulls:
                if other is not pr and other["state"] == "open" and (other["head"], other["base"]) == (head, base):
                    raise _custom(f"A pull request already exists for {record.owner}:{head}.")
        if changes:
            pr.update(changes, updated_at=_now())
        return 200, self._pull_json(record, pr), {}

    def _op_list_pull_commits(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        """``base..head`` while open; once merged, what the merge brought (``merge^1..head``); oldest first."""
        pr = self._find_pull(record, params["pull_number"])
        if pr["merged"]:
            base, head = f"{pr['merge_commit_sha']}^1", pr["head_sha"]
        else:
            head = (self._branch_sha(record, pr["head"]) if pr["state"] == "open" else None) or pr["head_sha"]
            base = self._branch_sha(record, pr["base"])
        commits = _log(record.path, f"{base}..{head}")[:MAX_PULL_COMMITS] if base else []
        return 200, [self._commit_json(record, commit) for commit in self._page(commits, query)], {}

    def _commit_json(self, record: Repo, commit: dict[str, Any]) -> dict[str, Any]:
        """One commit as GitHub lists it (``author``/``committer`` are GitHub users: none here)."""
        api = f"{self.api_url}/repos/{record.owner}/{record.name}"
        web = f"{self.web_url}/{record.owner}/{record.name}"
        sha = commit["sha"]
        return {
            "url": f"{api}/commits/{sha}",
            "sha": sha,
            "node_id": f"C_{sha[:20]}",
            "html_url": f"{web}/commit/{sha}",
            "comments_url": f"{api}/commits/{sha}/comments",
            "commit": {
                "url": f"{api}/git/commits/{sha}",
                "author": commit["author"],
                "committer": commit["committer"],
                "message": commit["message"],
                "tree": {"url": f"{api}/git/trees/{commit['tree']}", "sha": commit["tree"]},
                "comment_count": 0,
                "verification": {
                    "verified": False,
                    "reason": "unsigned",
                    "signature": None,
                    "payload": None,
                    "verified_at": None,
                },
            },
            "author": None,
            "committer": None,
            "parents": [
                {"url": f"{api}/commits/{parent}", "sha": parent, "html_url": f"{web}/commit/{parent}"}
                for parent in commit["parents"]
            ],
        }

    def _op_merge_pull(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        pr = self._find_pull(record, params["pull_number"])
        if pr["state"] != "open":
            raise ApiError(405, "Pull Request is not mergeable")
        method = body.get("merge_method", "merge")
        if method != "merge":
            raise ApiError(405, f"{method} merges are not supported by GitHubTestServer")
        head_sha = self._branch_sha(record, pr["head"])
        if head_sha is None:
            raise ApiError(405, "Pull Request is not mergeable")
        if "sha" in body and body["sha"] != head_sha:
            raise ApiError(409, "Head branch was modified. Review and try the merge again.")
        title = body.get("commit_title") or f"Merge pull request #{pr['number']} from {record.owner}/{pr['head']}"
        message = body.get("commit_message") if "commit_message" in body else pr["title"]
        scratch = Path(tempfile.mkdtemp(prefix=f"merge-{pr['number']}-", dir=self.root))
        try:
            work = scratch / "work"
            _git(scratch, "clone", "--quiet", "--branch", pr["base"], "--", str(record.path), str(work))
            merged = _git(work, "merge", "--no-ff", "-m", title, "-m", message or "", head_sha, check=False)
            if merged.returncode != 0:
                raise ApiError(405, "Pull Request is not mergeable")
            sha = _git(work, "rev-parse", "HEAD").stdout.strip()
            pushed = _git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{pr['base']}", check=False)
            if pushed.returncode != 0:
                raise ApiError(409, "Base branch was modified. Review and try the merge again.")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        pr.update(
            state="closed", merged=True, merged_at=_now(), updated_at=_now(), merge_commit_sha=sha, head_sha=head_sha
        )
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}, {}

    def _op_is_merged(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        pr = self._find_pull(record, params["pull_number"])
        if pr["merged"]:
            return 204, None, {}
        raise ApiError(404, "Not Found")

    def _latest_statuses(self, record: Repo, sha: str) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for status in reversed(record.statuses.get(sha, [])):
            latest.setdefault(status["context"], status)
        return list(latest.values())

    def _op_combined_status(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        sha = self._commit(record, params["ref"])
        latest = self._latest_statuses(record, sha)
        states = {status["state"] for status in latest}
        if states & {"error", "failure"}:
            state = "failure"
        elif not latest or "pending" in states:
            state = "pending"  # GitHub: pending when there are no statuses at all
        else:
            state = "success"
        return (
            200,
            {
                "state": state,
                "statuses": self._page(latest, query),
                "sha": sha,
                "total_count": len(latest),
                "repository": self._repo_json(record),
                "commit_url": f"{self.api_url}/repos/{record.owner}/{record.name}/commits/{sha}",
                "url": f"{self.api_url}/repos/{record.owner}/{record.name}/commits/{sha}/status",
            },
            {},
        )

    def _op_list_statuses(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        sha = self._commit(record, params["ref"])
        return 200, list(reversed(record.statuses.get(sha, [])))[:30], {}

    def _create_status(self, record: Repo, sha: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("state") not in ("error", "failure", "pending", "success"):
            raise _invalid("Status", "state", "custom")
        status = {
            "id": self._next_id(),
            "state": body["state"],
            "context": body.get("context") or "default",
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "created_at": _now(),
            "updated_at": _now(),
        }
        record.statuses.setdefault(sha, []).append(status)
        return dict(status)

    def _op_create_status(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        if not SHA_RE.fullmatch(params["sha"]):
            raise ApiError(422, f"No commit found for SHA: {params['sha']}")
        return 201, self._create_status(record, self._commit(record, params["sha"]), body), {}

    def _op_check_runs(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        sha = self._commit(record, params["ref"])
        runs = [run for run in record.check_runs if run["head_sha"] == sha]
        if query.get("filter", "latest") == "latest":
            latest: dict[str, dict[str, Any]] = {}
            for run in runs:
                latest[run["name"]] = run
            runs = list(latest.values())
        if "check_name" in query:
            runs = [run for run in runs if run["name"] == query["check_name"]]
        if "status" in query:
            runs = [run for run in runs if run["status"] == query["status"]]
        if "app_id" in query:
            runs = [run for run in runs if str(run["app"]["id"]) == query["app_id"]]
        runs.sort(key=lambda run: run["id"], reverse=True)
        return 200, {"total_count": len(runs), "check_runs": self._page(runs, query)}, {}

    def _op_create_comment(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        number = int(params["issue_number"])
        self._find_pull(record, str(number))
        if not isinstance(body.get("body"), str):
            raise _invalid("IssueComment", "body", "missing_field")
        comment_id = self._next_id()
        comment = {
            "id": comment_id,
            "body": body["body"],
            "user": {"login": record.owner},
            "html_url": f"{self.web_url}/{record.owner}/{record.name}/pull/{number}#issuecomment-{comment_id}",
            "created_at": _now(),
            "updated_at": _now(),
        }
        record.comments.setdefault(number, []).append(comment)
        return 201, comment, {}

    def _op_list_comments(self, record: Repo, params: Params, query: Params, body: Body) -> Answer:
        number = int(params["issue_number"])
        self._find_pull(record, str(number))
        return 200, self._page(record.comments.get(number, []), query), {}


class _Handler(ForgeRequestHandler):
    api: GitHubTestServer
    server_version = "GitHubTestServer/1"

    def _serve(self, method: str) -> None:
        api = self.api
        incoming = self._read_request(method, api.path_prefix)
        record, headers, bad_json = incoming.record, incoming.headers, incoming.bad_json
        raw_path, query, body = record.path, record.query, record.body
        checked = check_request(method, raw_path, query, body, headers)
        record.operation = checked.operation.name if checked.operation else None
        if checked.violations:
            with api._lock:
                api.violations.extend(checked.violations)

        if headers.get("authorization") != f"Bearer {api.token}":
            return self._answer(record, 401, {"message": "Bad credentials"})
        version = headers.get("x-github-api-version")
        if version is None:
            return self._answer(record, 400, {"message": "X-GitHub-Api-Version is required by GitHubTestServer"})
        if version not in API_VERSIONS:
            return self._answer(record, 400, {"message": f"API version '{version}' is not supported."})
        if bad_json:
            return self._answer(record, 400, {"message": "Problems parsing JSON"})
        if checked.operation is None:
            return self._answer(record, 404, {"message": "Not Found"})

        fault = api._take_fault(method, raw_path)
        if fault is not None and not fault.after:
            if fault.timeout:
                time.sleep(fault.timeout)
            return self._fault(record, fault)
        try:
            status, data, extra = api.handle(query, body, checked)
        except ApiError as exc:
            status, extra = exc.status, {}
            data = {"message": exc.message, "documentation_url": "https://docs.github.com/rest"}
            if exc.errors is not None:
                data["errors"] = exc.errors
        if fault is not None:  # after=True: the operation happened, its answer is lost
            if fault.timeout:
                time.sleep(fault.timeout)
            return self._fault(record, fault)
        return self._answer(record, status, data, extra)

    def _fault(self, record: RecordedRequest, fault: Fault) -> None:
        record.injected = True
        status = fault.status or 504
        message = fault.message or FAULT_MESSAGES.get(status, "Injected fault")
        self._answer(record, status, {"message": message}, fault.headers)

    def _answer(self, record: RecordedRequest, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        record.status = status
        payload = b"" if data is None else json.dumps(data).encode()
        try:
            self.send_response(status)
            headers = {
                **self.api._rate_headers(),
                "x-github-api-version-selected": self.headers.get("X-GitHub-Api-Version") or "2022-11-28",
                "x-github-request-id": uuid.uuid4().hex[:16].upper(),
                **(extra or {}),
            }
            for key, value in headers.items():
                self.send_header(key, value)
            if data is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


GitHubTestServer.handler_class = _Handler
