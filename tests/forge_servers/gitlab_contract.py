"""The GitLab REST API v4 operations of ``tests/contracts/gitlab-endpoints.md``, as data.

The test server routes by this table and checks every request against it: an
operation the document does not list, a query parameter or body field it does
not list for that operation, a value outside the listed ones, a token in the URL
or a missing token header is a *violation*. Real GitLab (Grape) drops undeclared
parameters silently, so a misspelt filter would otherwise pass every test and
list the wrong merge requests in production.

Some departures GitLab itself refuses, and the server answers them as GitLab does
(:attr:`Checked.errors`): a missing required parameter, a value outside a
declared set, a value of the wrong type, mutually exclusive parameters, or an
update without any field, all ``400 {"error": "..."}`` with Grape's wording.

Paths are relative to ``/api/v4``. ``{id}`` is one *raw* path segment, the numeric
project id or the URL-encoded full path (``group%2Fsub%2Fapp``): it is matched
before decoding, so an encoded ``/`` never splits it, and an unencoded one finds
no operation (GitLab answers 404). Write operations take their fields from the
JSON or form body *or* the query string (GitLab merges them); read operations take
no body. Value rules are regular expressions that must match the whole value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


@dataclass(frozen=True)
class Rule:
    """What a parameter may hold: ``regex`` is the contract; ``error`` is Grape's 400 for a value
    outside ``accepted`` (default: ``regex``), ``None`` when GitLab takes any value; ``array``:
    ``name[]=a&name[]=b`` in a query or form, a list in JSON."""

    regex: str
    error: str | None = None
    accepted: str | None = None
    array: bool = False

    def as_array(self) -> Rule:
        return Rule(self.regex, self.error, self.accepted, array=True)


def enum(*values: str) -> Rule:
    """A Grape ``values:`` list: anything else is ``400 <name> does not have a valid value``."""
    return Rule("|".join(re.escape(value) for value in values), "does not have a valid value")


ANY = Rule(r"(?s).*")
TEXT = ANY
INT = Rule(r"[0-9]+", "is invalid", accepted=r"-?[0-9]+")
FLOAT = Rule(r"[0-9]+(?:\.[0-9]+)?", "is invalid", accepted=r"-?[0-9]+(?:\.[0-9]*)?")
# Grape's Boolean coercion takes these too; the contract says true or false.
BOOL = Rule(r"true|false", "is invalid", accepted=r"(?i)true|false|1|0|t|f|yes|no|y|n|on|off")
PER_PAGE = Rule(r"[1-9][0-9]?|100", "is invalid", accepted=r"-?[0-9]+")  # §1: default 20, max 100 (more is cut)
PAGE = Rule(r"[1-9][0-9]*", "is invalid", accepted=r"-?[0-9]+")
SORT = enum("asc", "desc")
DATE = Rule(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9:.]+(?:Z|[+-][0-9:]+)?)?", "is invalid", accepted=r".+")
LABELS = Rule(r"(?s).*", array=True)  # a comma-separated string or a list of names
PAGINATION: Mapping[str, Rule] = {"page": PAGE, "per_page": PER_PAGE}

MR_STATES = ("opened", "closed", "locked", "merged", "all")
STATUS_STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
PIPELINE_STATUSES = (
    "created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending", "running",
    "success", "failed", "canceling", "canceled", "skipped", "manual", "scheduled",
)

# §0: "PRIVATE-TOKEN: <token>" or "Authorization: Bearer <token>"; one of them is required.
TOKEN_HEADERS: Mapping[str, str] = {"private-token": r"\S+", "authorization": r"Bearer \S+"}
# §0: "The query forms private_token= and access_token= also work, but ... don't use them."
TOKEN_QUERY = ("private_token", "access_token")
BODY_TYPES = ("application/json", "application/x-www-form-urlencoded")

_SEGMENT_RULES: Mapping[str, str] = {
    "id": r"[^/]+",
    "merge_request_iid": r"[0-9]+",
    "issue_iid": r"[0-9]+",
    "pipeline_id": r"[0-9]+",
    "sha": r"[^/]+",
}


@dataclass(frozen=True)
class Operation:
    """One row of the table: method, path template, allowed query parameters and body fields."""

    name: str
    method: str
    path: str
    query: Mapping[str, Rule] = field(default_factory=dict)
    body: Mapping[str, Rule] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()  # Grape mutually_exclusive
    at_least_one: tuple[str, ...] = ()  # Grape at_least_one_of
    note: str = ""

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT_RULES[m.group(1)]})", self.path)
        return re.compile(regex)

    @property
    def fields(self) -> Mapping[str, Rule]:
        """What the operation reads: its query parameters, and for a write its body fields too."""
        return {**self.query, **self.body}


MR_ORDER_BY = enum("created_at", "updated_at", "merged_at", "label_priority", "priority", "milestone_due",
                   "popularity", "title")
MR_UPDATE_FIELDS: Mapping[str, Rule] = {
    "title": TEXT, "description": TEXT, "target_branch": ANY, "state_event": enum("close", "reopen"),
    "remove_source_branch": BOOL, "squash": BOOL, "labels": LABELS, "add_labels": LABELS, "remove_labels": LABELS,
    "assignee_id": INT, "assignee_ids": INT.as_array(), "reviewer_ids": INT.as_array(), "milestone_id": INT,
    "discussion_locked": BOOL, "allow_collaboration": BOOL, "merge_after": ANY,
}
NOTE_FIELDS: Mapping[str, Rule] = {"body": TEXT, "internal": BOOL, "created_at": ANY}
NOTES_QUERY: Mapping[str, Rule] = {
    "sort": SORT, "order_by": enum("created_at", "updated_at"), **PAGINATION,
}

OPERATIONS: tuple[Operation, ...] = (
    Operation("get_version", "GET", "/version", note="§5/§7: check GET /version and degrade."),
    Operation(
        "get_project", "GET", "/projects/{id}",
        query={"statistics": BOOL, "license": BOOL, "with_custom_attributes": BOOL},
        note="§0: resolve the path to the numeric id once. Not in an endpoint table; GitLab's 'Get a single "
        "project' (doc/api/projects.md) with its three optional flags.",
    ),
    Operation(
        "list_merge_requests", "GET", "/projects/{id}/merge_requests",
        query={
            "state": enum(*MR_STATES),
            "source_branch": ANY,
            "target_branch": ANY,
            "source_project_id": INT,
            "iids": INT.as_array(),
            "order_by": MR_ORDER_BY,
            "sort": SORT,
            "draft": BOOL,
            "wip": enum("yes", "no"),
            "view": enum("simple"),
            "with_merge_status_recheck": BOOL,
            "scope": enum("created_by_me", "assigned_to_me", "reviews_for_me", "all"),
            "search": ANY,
            **PAGINATION,
        },
        exclusive=(("draft", "wip"),),
    ),
    Operation(
        "create_merge_request", "POST", "/projects/{id}/merge_requests",
        body={
            "source_branch": ANY, "target_branch": ANY, "title": TEXT, "description": TEXT,
            "remove_source_branch": BOOL, "squash": BOOL, "labels": LABELS,
            "assignee_id": INT, "assignee_ids": INT.as_array(), "reviewer_ids": INT.as_array(), "milestone_id": INT,
            "target_project_id": INT, "allow_collaboration": BOOL, "merge_after": ANY,
        },
        required=("source_branch", "target_branch", "title"),
    ),
    Operation(
        "get_merge_request", "GET", "/projects/{id}/merge_requests/{merge_request_iid}",
        query={"include_diverged_commits_count": BOOL, "include_rebase_in_progress": BOOL, "render_html": BOOL},
    ),
    Operation(
        "update_merge_request", "PUT", "/projects/{id}/merge_requests/{merge_request_iid}",
        body=MR_UPDATE_FIELDS,
        at_least_one=tuple(MR_UPDATE_FIELDS),
        note="Not in the document's tables: GitLab's 'Update MR' (doc/api/merge_requests.md): every field optional, "
        "at least one required; 200 with the MR; reopening next to an open MR of the same branches is a 409.",
    ),
    Operation(
        "merge_merge_request", "PUT", "/projects/{id}/merge_requests/{merge_request_iid}/merge",
        body={
            "sha": ANY, "should_remove_source_branch": BOOL, "squash": BOOL, "merge_commit_message": TEXT,
            "squash_commit_message": TEXT, "auto_merge": BOOL, "merge_when_pipeline_succeeds": BOOL,
        },
    ),
    Operation(
        "cancel_auto_merge", "POST",
        "/projects/{id}/merge_requests/{merge_request_iid}/cancel_merge_when_pipeline_succeeds",
        note="§3.4: 201 (also when already merged); 406 when the MR is closed.",
    ),
    Operation(
        "list_merge_request_pipelines", "GET", "/projects/{id}/merge_requests/{merge_request_iid}/pipelines",
        query=PAGINATION,
    ),
    Operation("list_merge_request_notes", "GET", "/projects/{id}/merge_requests/{merge_request_iid}/notes",
              query=NOTES_QUERY),
    Operation(
        "create_merge_request_note", "POST", "/projects/{id}/merge_requests/{merge_request_iid}/notes",
        body={**NOTE_FIELDS, "merge_request_diff_head_sha": ANY}, required=("body",),
    ),
    Operation(
        "list_commit_statuses", "GET", "/projects/{id}/repository/commits/{sha}/statuses",
        query={
            "ref": ANY, "stage": ANY, "name": ANY, "all": BOOL, "pipeline_id": INT,
            "order_by": enum("id", "pipeline_id"), "sort": SORT, **PAGINATION,
        },
    ),
    Operation(
        "create_commit_status", "POST", "/projects/{id}/statuses/{sha}",
        body={
            "state": enum(*STATUS_STATES), "name": ANY, "context": ANY, "ref": Rule(r"(?s).{0,255}"),
            "target_url": Rule(r"(?s).{0,255}"), "description": Rule(r"(?s).{0,255}"), "coverage": FLOAT,
            "pipeline_id": INT,
        },
        required=("state",),
    ),
    Operation(
        "list_pipelines", "GET", "/projects/{id}/pipelines",
        query={
            "sha": ANY, "ref": ANY, "status": enum(*PIPELINE_STATUSES),
            "source": enum("push", "web", "trigger", "schedule", "api", "external", "pipeline", "chat", "webide",
                           "merge_request_event", "external_pull_request_event", "parent_pipeline",
                           "ondemand_dast_scan", "ondemand_dast_validation", "security_orchestration_policy"),
            "scope": enum("running", "pending", "finished", "branches", "tags"),
            "name": ANY, "username": ANY, "updated_after": DATE, "updated_before": DATE,
            "created_after": DATE, "created_before": DATE, "yaml_errors": BOOL,
            "order_by": enum("id", "status", "ref", "updated_at", "user_id"), "sort": SORT, **PAGINATION,
        },
    ),
    Operation(
        "get_latest_pipeline", "GET", "/projects/{id}/pipelines/latest", query={"ref": ANY},
        note="§3.6: the latest pipeline of the ref's newest commit; 403 when that commit has none.",
    ),
    Operation("get_pipeline", "GET", "/projects/{id}/pipelines/{pipeline_id}"),
    Operation("get_issue", "GET", "/projects/{id}/issues/{issue_iid}"),
    Operation(
        "update_issue", "PUT", "/projects/{id}/issues/{issue_iid}",
        body={
            "add_labels": LABELS, "remove_labels": LABELS, "labels": LABELS, "title": TEXT, "description": TEXT,
            "state_event": enum("close", "reopen"),
        },
        at_least_one=("add_labels", "remove_labels", "labels", "title", "description", "state_event"),
        note="§3.8 names add_labels, remove_labels, labels; title, description and state_event are the other "
        "fields of GitLab's 'Edit an issue' (doc/api/issues.md) a bot may send.",
    ),
    Operation(
        "list_issue_notes", "GET", "/projects/{id}/issues/{issue_iid}/notes",
        query={**NOTES_QUERY, "activity_filter": enum("all_notes", "only_comments", "only_activity")},
    ),
    Operation(
        "create_issue_note", "POST", "/projects/{id}/issues/{issue_iid}/notes",
        body={**NOTE_FIELDS, "confidential": BOOL}, required=("body",),
    ),
)


@dataclass
class Checked:
    """The outcome of checking one request: the operation (if any), its decoded path parameters,
    violations of the contract, and the ``400 {"error": ...}`` GitLab itself would answer (``errors``)."""

    operation: Operation | None
    params: dict[str, str]
    violations: list[str]
    errors: list[str] = field(default_factory=list)


def match_operation(method: str, raw_path: str) -> tuple[Operation | None, dict[str, str]]:
    """The operation of ``method raw_path`` (path still percent-encoded) and its decoded path parameters."""
    for operation in OPERATIONS:
        if operation.method != method.upper():
            continue
        found = operation.pattern.fullmatch(raw_path)
        if found:
            return operation, {key: unquote(value) for key, value in found.groupdict().items()}
    return None, {}


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as it would read in a query string (``True`` is ``true``); None for objects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def gather(query: Mapping[str, list[str]], body: Any) -> dict[str, list[Any]]:
    """Every parameter as GitLab sees it, query then body: ``name[]`` keys are stored under ``name``."""
    merged: dict[str, list[Any]] = {}
    for key, values in query.items():
        merged.setdefault(key, []).extend(values)
    if isinstance(body, dict):
        for key, value in body.items():
            merged.setdefault(key, []).append(value)
    return merged


def check_request(
    method: str,
    raw_path: str,
    query: Mapping[str, list[str]],
    body: Any,
    headers: Mapping[str, str],
) -> Checked:
    """Check one request against the table; ``headers`` keys are lower case, ``body`` a dict or None."""
    where = f"{method.upper()} {raw_path}"
    violations: list[str] = []
    given = [name for name in TOKEN_HEADERS if name in headers]
    if not given:
        violations.append(f"{where}: neither PRIVATE-TOKEN nor Authorization: Bearer is sent")
    for name in given:
        if not re.fullmatch(TOKEN_HEADERS[name], headers[name]):
            shown = headers[name].split(" ", 1)[0] + " ***" if name == "authorization" else "***"
            violations.append(f"{where}: header {name}={shown!r} is not {TOKEN_HEADERS[name]!r}")
    for name in TOKEN_QUERY:
        if name in query:
            violations.append(f"{where}: token in the URL ({name}=); send the PRIVATE-TOKEN header")
    operation, params = match_operation(method, raw_path)
    if operation is None:
        violations.append(f"{where}: not an operation of gitlab-endpoints.md")
        return Checked(None, {}, violations)
    errors: list[str] = []
    if body is not None:
        if operation.method == "GET":
            violations.append(f"{where}: {operation.name} takes no body")
        elif not isinstance(body, dict):
            violations.append(f"{where}: body must be a JSON object")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in BODY_TYPES:
            violations.append(f"{where}: body sent as {content_type or 'no content type'!r}, not JSON or a form")
    rules = operation.fields if operation.method != "GET" else operation.query
    present: set[str] = set()
    for key, values in gather(query, body if isinstance(body, dict) else None).items():
        if key in TOKEN_QUERY:
            continue
        name = key[:-2] if key.endswith("[]") else key
        rule = rules.get(name)
        if rule is None:
            violations.append(f"{where}: parameter {key!r} is not listed for {operation.name}")
            continue
        present.add(name)
        if key.endswith("[]") and not rule.array:
            violations.append(f"{where}: {name!r} is not an array parameter")
        flat: list[Any] = []
        for value in values:
            if isinstance(value, list):
                if not rule.array:
                    violations.append(f"{where}: {name!r} is not an array parameter")
                flat.extend(value)
            else:
                flat.append(value)
        if len(values) > 1 and not (rule.array and key.endswith("[]")):
            violations.append(f"{where}: parameter {name!r} given {len(values)} times")
        for value in flat:
            if value is None:
                continue
            text = scalar_text(value)
            if text is None:
                violations.append(f"{where}: {name}={value!r} is not a scalar")
                errors.append(f"{name} is invalid")
                continue
            if not re.fullmatch(rule.regex, text):
                violations.append(f"{where}: {name}={text[:80]!r} is not {rule.regex!r}")
            if rule.error is not None and not re.fullmatch(rule.accepted or rule.regex, text):
                errors.append(f"{name} {rule.error}")
    missing = [name for name in operation.required if name not in present]
    for name in missing:
        violations.append(f"{where}: required parameter {name!r} is missing")
    errors.extend(f"{name} is missing" for name in missing)
    for group in operation.exclusive:
        if len(present.intersection(group)) > 1:
            violations.append(f"{where}: {', '.join(group)} are mutually exclusive")
            errors.append(f"{', '.join(group)} are mutually exclusive")
    if operation.at_least_one and not present.intersection(operation.at_least_one):
        violations.append(f"{where}: {operation.name} without any field")
        errors.append(f"{', '.join(operation.at_least_one)} are missing, at least one parameter must be provided")
    return Checked(operation, params, violations, list(dict.fromkeys(errors)))
