"""The GitHub REST operations of ``tests/contracts/github-endpoints.md``, as data.

The test server routes by this table and checks every request against it: an
operation the document does not list, a query parameter or body field it does
not list for that operation, a value outside the listed ones, or a missing
header is a *violation*. Real GitHub ignores unknown query parameters silently
(as Gitea ignores ``head``), so a client bug of that kind would otherwise pass
every test and fail only in production.

Path parameters in ``{}``; ``{ref}`` may contain ``/`` (a branch name), every
other parameter is one path segment. Value rules are regular expressions that
must match the whole value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote

PER_PAGE = r"[1-9][0-9]?|100"  # "per_page (max 100)"
PAGE = r"[1-9][0-9]*"
ANY = r".*"

API_VERSIONS = ("2022-11-28", "2026-03-10")
PINNED_API_VERSION = "2022-11-28"

# "Headers: Authorization: Bearer <token>, Accept: application/vnd.github+json, X-GitHub-Api-Version: 2022-11-28"
REQUIRED_HEADERS: Mapping[str, str] = {
    "authorization": r"Bearer \S+",
    "accept": r"application/vnd\.github\+json",
    "x-github-api-version": "|".join(re.escape(v) for v in API_VERSIONS),
}

_SEGMENT_RULES: Mapping[str, str] = {
    "owner": r"[A-Za-z0-9_.-]+",
    "repo": r"[A-Za-z0-9_.-]+",
    "pull_number": r"[0-9]+",
    "issue_number": r"[0-9]+",
    "comment_id": r"[0-9]+",
    "sha": r"[^/]+",
    "ref": r".+",
}


@dataclass(frozen=True)
class Operation:
    """One row of the table: method, path template, allowed query parameters and body fields."""

    name: str
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, str] = field(default_factory=dict)
    required_body: frozenset[str] = frozenset()
    note: str = ""

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT_RULES[m.group(1)]})", self.path)
        return re.compile(regex)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get_repo", "GET", "/repos/{owner}/{repo}",
        note="Not in the document's table: GitHub's 'Get a repository' (REST repos reference), "
        "used only to read default_branch.",
    ),
    Operation(
        "list_pulls", "GET", "/repos/{owner}/{repo}/pulls",
        query={
            "state": "open|closed|all",
            "head": r"[^:\s]+:\S+",  # user:ref-name or org:ref-name
            "base": r"\S+",
            "sort": "created|updated|popularity|long-running",
            "direction": "asc|desc",
            "per_page": PER_PAGE,
            "page": PAGE,
        },
    ),
    Operation("get_pull", "GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    Operation(
        "update_pull", "PATCH", "/repos/{owner}/{repo}/pulls/{pull_number}",
        body={"title": ANY, "body": ANY, "state": "open|closed", "base": ANY, "maintainer_can_modify": ANY},
        note="Not in the document's table: GitHub's 'Update a pull request' (REST pulls reference): "
        "body {title, body, state: open|closed, base, maintainer_can_modify}, all optional; 200 with the PR; "
        "403, 422. Used to keep the PR's body telling the story (issue 17).",
    ),
    Operation(
        "list_pull_commits", "GET", "/repos/{owner}/{repo}/pulls/{pull_number}/commits",
        query={"per_page": PER_PAGE, "page": PAGE},
        note="Not in the document's table: GitHub's 'List commits on a pull request' (REST pulls reference): "
        "per_page (max 100) and page; at most 250 commits, oldest first. Used by tests to read a PR's history.",
    ),
    Operation(
        "create_pull", "POST", "/repos/{owner}/{repo}/pulls",
        body={
            "title": ANY, "head": ANY, "base": ANY, "body": ANY, "draft": ANY,
            "maintainer_can_modify": ANY, "head_repo": ANY, "issue": ANY,
        },
        required_body=frozenset({"head", "base"}),
    ),
    Operation(
        "merge_pull", "PUT", "/repos/{owner}/{repo}/pulls/{pull_number}/merge",
        body={"commit_title": ANY, "commit_message": ANY, "sha": ANY, "merge_method": "merge|squash|rebase"},
    ),
    Operation("is_merged", "GET", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    Operation(
        "combined_status", "GET", "/repos/{owner}/{repo}/commits/{ref}/status",
        query={"per_page": PER_PAGE, "page": PAGE},
    ),
    Operation("list_statuses", "GET", "/repos/{owner}/{repo}/commits/{ref}/statuses"),
    Operation(
        "create_status", "POST", "/repos/{owner}/{repo}/statuses/{sha}",
        body={"state": "error|failure|pending|success", "target_url": ANY, "description": ANY, "context": ANY},
        required_body=frozenset({"state"}),
    ),
    Operation(
        "check_runs", "GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs",
        query={
            "check_name": ANY,
            "status": "queued|in_progress|completed",
            "filter": "latest|all",
            "app_id": r"[0-9]+",
            "per_page": PER_PAGE,
            "page": PAGE,
        },
    ),
    Operation("check_suites", "GET", "/repos/{owner}/{repo}/commits/{ref}/check-suites"),
    Operation(
        "workflow_runs", "GET", "/repos/{owner}/{repo}/actions/runs",
        query={
            "branch": ANY, "event": ANY, "status": ANY, "actor": ANY, "head_sha": ANY, "created": ANY,
            "per_page": PER_PAGE, "page": PAGE,
        },
    ),
    Operation(
        "create_comment", "POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        body={"body": ANY}, required_body=frozenset({"body"}),
    ),
    Operation(
        "list_comments", "GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        query={"since": ANY, "per_page": PER_PAGE, "page": PAGE},
    ),
    Operation("issue_reactions", "GET", "/repos/{owner}/{repo}/issues/{issue_number}/reactions"),
    Operation("comment_reactions", "GET", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
)


@dataclass
class Checked:
    """The outcome of checking one request: the operation (if any), its path parameters, violations."""

    operation: Operation | None
    params: dict[str, str]
    violations: list[str]


def match_operation(method: str, raw_path: str) -> tuple[Operation | None, dict[str, str]]:
    """The operation of ``method raw_path`` (path still percent-encoded) and its decoded path parameters."""
    for operation in OPERATIONS:
        if operation.method != method.upper():
            continue
        found = operation.pattern.fullmatch(raw_path)
        if found:
            return operation, {key: unquote(value) for key, value in found.groupdict().items()}
    return None, {}


def check_request(
    method: str,
    raw_path: str,
    query: Mapping[str, list[str]],
    body: Any,
    headers: Mapping[str, str],
) -> Checked:
    """Check one request against the table; ``headers`` keys are lower case."""
    where = f"{method.upper()} {raw_path}"
    violations: list[str] = []
    for name, rule in REQUIRED_HEADERS.items():
        value = headers.get(name)
        if value is None:
            violations.append(f"{where}: header {name} is missing")
        elif not re.fullmatch(rule, value):
            shown = "Bearer ***" if name == "authorization" and value.startswith("Bearer ") else value[:60]
            violations.append(f"{where}: header {name}={shown!r} is not {rule!r}")
    operation, params = match_operation(method, raw_path)
    if operation is None:
        violations.append(f"{where}: not an operation of github-endpoints.md")
        return Checked(None, {}, violations)
    for key, values in query.items():
        if key not in operation.query:
            violations.append(f"{where}: query parameter {key!r} is not listed for {operation.name}")
            continue
        if len(values) != 1:
            violations.append(f"{where}: query parameter {key!r} given {len(values)} times")
        for value in values:
            if not re.fullmatch(operation.query[key], value):
                violations.append(f"{where}: {key}={value!r} is not {operation.query[key]!r}")
    if body is not None and not operation.body and not operation.required_body:
        violations.append(f"{where}: {operation.name} takes no body")
    elif body is not None or operation.required_body:
        if not isinstance(body, dict):
            violations.append(f"{where}: body must be a JSON object")
        else:
            for key, value in body.items():
                if key not in operation.body:
                    violations.append(f"{where}: body field {key!r} is not listed for {operation.name}")
                elif operation.body[key] != ANY and not (
                    isinstance(value, str) and re.fullmatch(operation.body[key], value)
                ):
                    violations.append(f"{where}: body {key}={value!r} is not {operation.body[key]!r}")
            for key in sorted(operation.required_body - body.keys()):
                violations.append(f"{where}: required body field {key!r} is missing")
    return Checked(operation, params, violations)
