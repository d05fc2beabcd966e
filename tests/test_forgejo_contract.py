"""`kind: forgejo` (Forgejo, Codeberg) runs the Gitea client: checked against Forgejo's own API document.

Forgejo's ``swagger.v1.json`` (Forgejo 15.0.3; tests/contracts/README-forgejo.md says
where it comes from) is set beside Gitea 1.25.4's, the document tasks/forge_gitea.py
was written for:

* every request the Gitea client sends (:data:`SENT`, as data: operation, path,
  query and body) must fit both documents; the one departure, Forgejo not declaring
  ``base_branch`` on the PR list, is asserted word for word;
* the parameters sent and the answer fields read (:attr:`Sent.reads`) are declared
  alike in both; where the documents differ (commit status states, documented error
  answers, query-string tokens), the test says exactly how;
* the client itself runs against the Gitea test double switched to Forgejo's
  document and, as Forgejo does, ignoring ``base_branch``;
* a webhook delivery built as Forgejo builds one (services/webhook/shared/payloader.go)
  is accepted by sdlc's Gitea route.

No network and no Prefect server: GiteaCredentials and the webhook settings are
Prefect blocks, but only built here, never saved or loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blocks.forge import GiteaCredentials
from forge_servers.gitea import DEFAULT_TOKEN, GiteaTestServer, Repo, git
from forge_servers.swagger_contract import DEFAULT_DOCUMENT, SwaggerContract
from tasks.forge_gitea import STATUS_TO_CI, ForgejoForge
from tasks.forge_http import HttpRetry

FORGEJO_DOCUMENT = Path(__file__).resolve().parent / "contracts" / "forgejo-swagger.v1.json"
GITEA = SwaggerContract(DEFAULT_DOCUMENT)
FORGEJO = SwaggerContract(FORGEJO_DOCUMENT)

OWNER, REPO = "acme", "widgets"
BASE = f"/api/v1/repos/{OWNER}/{REPO}"
BRANCH = "feature/ET-1-demo"
FAST_RETRY = HttpRetry(max_attempts=3, backoff_base_seconds=0.01, backoff_cap_seconds=0.05)

# What pull_request_ref, _is_ours and pull_request_body read from Gitea's PullRequest.
PR_FIELDS = (
    "number",
    "html_url",
    "url",
    "state",
    "merged",
    "merge_commit_sha",
    "title",
    "body",
    "head.ref",
    "head.repo_id",
    "head.repo.full_name",
    "base.ref",
    "base.repo_id",
)


@dataclass(frozen=True)
class Sent:
    """One request of the Gitea client (tasks/forge_gitea.py, tasks/forge_http.py), as it sends it."""

    operation_id: str
    method: str
    template: str  # under basePath
    path: str  # an example, raw (percent-encoded) as sent
    query: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    statuses: tuple[int, ...] = (200,)  # documented answers the client handles (its `expected`)
    reads: tuple[str, ...] = ()  # answer fields it reads, dotted; `[]` is each item of a list


SENT = (
    # default_branch(), web_url() (and so file_url())
    Sent("repoGet", "GET", "/repos/{owner}/{repo}", BASE, reads=("default_branch", "html_url")),
    # find_open_pull_request: page by page, filtered on head.ref and base.ref by the client
    Sent(
        "repoListPullRequests",
        "GET",
        "/repos/{owner}/{repo}/pulls",
        f"{BASE}/pulls",
        query={"state": "open", "base_branch": "main", "sort": "oldest", "page": "1", "limit": "50"},
        reads=tuple(f"[].{name}" for name in PR_FIELDS),
    ),
    # _create_pull_request: 409 when an open PR of head and base exists
    Sent(
        "repoCreatePullRequest",
        "POST",
        "/repos/{owner}/{repo}/pulls",
        f"{BASE}/pulls",
        body={"head": BRANCH, "base": "main", "title": "ET-1 Demo", "body": "The story"},
        statuses=(201, 409),
        reads=PR_FIELDS,
    ),
    # get_pull_request, pull_request_body
    Sent("repoGetPullRequest", "GET", "/repos/{owner}/{repo}/pulls/{index}", f"{BASE}/pulls/1", reads=PR_FIELDS),
    # update_pull_request_body: the client takes 200 too (GitHub's answer); Gitea and Forgejo document 201
    Sent(
        "repoEditPullRequest",
        "PATCH",
        "/repos/{owner}/{repo}/pulls/{index}",
        f"{BASE}/pulls/1",
        body={"body": "The story, updated"},
        statuses=(201,),
    ),
    # _send_merge: 405 for "PR already merged" and "Please try again later"
    Sent(
        "repoMergePullRequest",
        "POST",
        "/repos/{owner}/{repo}/pulls/{index}/merge",
        f"{BASE}/pulls/1/merge",
        body={
            "Do": "merge",
            "MergeTitleField": f"Merge pull request #1 from {BRANCH}",
            "MergeMessageField": "ET-1 Demo",
        },
        statuses=(200, 405),
    ),
    # ci_status: a branch's '/' is percent-encoded in the path (ref_segment)
    Sent(
        "repoGetCombinedStatusByRef",
        "GET",
        "/repos/{owner}/{repo}/commits/{ref}/status",
        f"{BASE}/commits/feature%2FET-1-demo/status",
        query={"page": "1", "limit": "50"},
        reads=("total_count", "statuses[].status", "statuses[].context"),
    ),
)
SENT_IDS = [sent.operation_id for sent in SENT]

# The one way a request of the Gitea client departs from Forgejo's document.
BASE_BRANCH_UNDECLARED = f"GET {BASE}/pulls (repoListPullRequests): query parameter 'base_branch' is not declared"
FORGEJO_DEPARTURES = {"repoListPullRequests": [BASE_BRANCH_UNDECLARED]}

# Documented answers of the same operations that only one of the two documents lists.
DOCUMENTED_ONLY_BY_GITEA = {"repoCreatePullRequest": {"403"}}
DOCUMENTED_ONLY_BY_FORGEJO = {
    "repoListPullRequests": {"400"},
    "repoCreatePullRequest": {"413"},
    "repoMergePullRequest": {"413"},
}

# Keys that only describe a schema; what is left says what a value may be.
DESCRIPTIVE = {"description", "title", "example", "x-go-name", "x-go-package", "x-go-enum-desc"}


# -- reading the documents ---------------------------------------------------------------------


def _resolve(contract: SwaggerContract, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$ref`` (to definitions or responses) followed."""
    while "$ref" in schema:
        kind, name = schema["$ref"].split("/")[-2:]
        schema = contract.document[kind][name]
        if kind == "responses":
            schema = schema.get("schema") or {}
    return schema


def _shape(contract: SwaggerContract, schema: dict[str, Any]) -> dict[str, Any]:
    """What a value may be (type, format, enum, items...), references resolved, descriptions dropped."""
    schema = _resolve(contract, schema)
    shape: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DESCRIPTIVE or key == "properties":
            continue
        shape[key] = _shape(contract, value) if key == "items" else value
    return shape


def _field(contract: SwaggerContract, schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """The schema of one answer field (``head.repo.full_name``, ``[].number``), or None if undeclared."""
    current: dict[str, Any] | None = schema
    for part in dotted.split("."):
        assert current is not None
        current = _resolve(contract, current)
        name, each = (part[:-2], True) if part.endswith("[]") else (part, False)
        if name:
            current = (current.get("properties") or {}).get(name)
            if current is None:
                return None
            current = _resolve(contract, current)
        if each:
            current = current.get("items")
            if current is None:
                return None
    assert current is not None
    return _resolve(contract, current)


def _operation(contract: SwaggerContract, sent: Sent) -> dict[str, Any]:
    return contract.document["paths"][sent.template][sent.method.lower()]


def _parameter(contract: SwaggerContract, sent: Sent, where: str, name: str) -> dict[str, Any] | None:
    for param in _operation(contract, sent).get("parameters", []):
        if param["in"] == where and param["name"] == name:
            return {key: value for key, value in param.items() if key not in DESCRIPTIVE}
    return None


def _body_schema(contract: SwaggerContract, sent: Sent) -> dict[str, Any]:
    (param,) = [p for p in _operation(contract, sent).get("parameters", []) if p["in"] == "body"]
    return _resolve(contract, param["schema"])


# -- the documents -----------------------------------------------------------------------------


def test_the_documents_are_gitea_1_25_4_and_forgejo_15_0_3() -> None:
    """The comparison says which releases it holds for (README-forgejo.md: where Forgejo's comes from)."""
    assert (GITEA.document["info"]["title"], GITEA.document["info"]["version"]) == ("Gitea API", "1.25.4")
    assert (FORGEJO.document["info"]["title"], FORGEJO.document["info"]["version"]) == (
        "Forgejo API",
        "15.0.3+gitea-1.22.0",
    )
    assert GITEA.base_path == FORGEJO.base_path == "/api/v1"
    # Rendered from the Go template: no placeholder is left.
    assert "{{" not in FORGEJO_DOCUMENT.read_text(encoding="utf-8")


# -- the requests sdlc sends -------------------------------------------------------------------


@pytest.mark.parametrize("sent", SENT, ids=SENT_IDS)
def test_every_request_fits_gitea(sent: Sent) -> None:
    """SENT is held to the document the client was written for, so the Forgejo checks below check what is sent."""
    body = json.dumps(sent.body).encode() if sent.body is not None else b""
    query = {name: [value] for name, value in sent.query.items()}
    match = GITEA.check_request(sent.method, sent.path, query, body, "application/json")
    assert match.operation is not None and match.violations == []
    assert (match.operation_id, match.operation.template) == (sent.operation_id, sent.template)


@pytest.mark.parametrize("sent", SENT, ids=SENT_IDS)
def test_every_request_fits_forgejo_but_the_pull_request_lists_base_branch(sent: Sent) -> None:
    """Forgejo has each operation at the same method and path; only ``base_branch`` is not declared (ignored)."""
    body = json.dumps(sent.body).encode() if sent.body is not None else b""
    query = {name: [value] for name, value in sent.query.items()}
    match = FORGEJO.check_request(sent.method, sent.path, query, body, "application/json")
    assert match.operation is not None
    assert (match.operation_id, match.operation.template) == (sent.operation_id, sent.template)
    assert match.violations == FORGEJO_DEPARTURES.get(sent.operation_id, [])


@pytest.mark.parametrize("sent", SENT, ids=SENT_IDS)
def test_parameters_and_body_fields_are_declared_alike(sent: Sent) -> None:
    """Same name, place, type, enum and bounds for every parameter and body field sdlc sends."""
    for name in re.findall(r"\{([^}]+)\}", sent.template):
        assert _parameter(GITEA, sent, "path", name) == _parameter(FORGEJO, sent, "path", name), name
    for name in sent.query:
        gitea = _parameter(GITEA, sent, "query", name)
        assert gitea is not None, name
        if name == "base_branch" and sent.operation_id == "repoListPullRequests":
            assert _parameter(FORGEJO, sent, "query", name) is None  # the difference: Forgejo does not filter
            continue
        assert _parameter(FORGEJO, sent, "query", name) == gitea, name
    if sent.body is None:
        return
    gitea_body, forgejo_body = _body_schema(GITEA, sent), _body_schema(FORGEJO, sent)
    assert set(gitea_body.get("required", [])) == set(forgejo_body.get("required", []))
    for name in sent.body:
        gitea_field = (gitea_body.get("properties") or {}).get(name)
        forgejo_field = (forgejo_body.get("properties") or {}).get(name)
        assert gitea_field is not None and forgejo_field is not None, name
        assert _shape(GITEA, gitea_field) == _shape(FORGEJO, forgejo_field), name


def test_merge_and_create_bodies_take_the_same_fields() -> None:
    """The client's merge keys (``Do``, ``MergeTitleField``, ``MergeMessageField``) are Go-style in both."""
    merge = next(sent for sent in SENT if sent.operation_id == "repoMergePullRequest")
    gitea, forgejo = _body_schema(GITEA, merge), _body_schema(FORGEJO, merge)
    assert set(gitea["properties"]) == set(forgejo["properties"])
    assert gitea["properties"]["Do"]["enum"] == forgejo["properties"]["Do"]["enum"]
    create = next(sent for sent in SENT if sent.operation_id == "repoCreatePullRequest")
    only_gitea = set(_body_schema(GITEA, create)["properties"]) - set(_body_schema(FORGEJO, create)["properties"])
    assert only_gitea == {"reviewers", "team_reviewers"}  # not sent by sdlc
    assert set(_body_schema(FORGEJO, create)["properties"]) <= set(_body_schema(GITEA, create)["properties"])


# -- the answers sdlc reads --------------------------------------------------------------------


@pytest.mark.parametrize("sent", SENT, ids=SENT_IDS)
def test_the_answers_sdlc_handles_are_documented_alike(sent: Sent) -> None:
    """Each status the client expects is documented by both with the same answer; the others differ as listed."""
    gitea = _operation(GITEA, sent)["responses"]
    forgejo = _operation(FORGEJO, sent)["responses"]
    for status in sent.statuses:
        assert str(status) in gitea and gitea[str(status)] == forgejo.get(str(status)), status
        assert GITEA.document["responses"].get(gitea[str(status)]["$ref"].rsplit("/", 1)[-1]) is not None
    assert set(gitea) - set(forgejo) == DOCUMENTED_ONLY_BY_GITEA.get(sent.operation_id, set())
    assert set(forgejo) - set(gitea) == DOCUMENTED_ONLY_BY_FORGEJO.get(sent.operation_id, set())
    # None of the differing answers is one the client handles: they fail with the forge's message.
    differing = DOCUMENTED_ONLY_BY_GITEA.get(sent.operation_id, set()) | DOCUMENTED_ONLY_BY_FORGEJO.get(
        sent.operation_id, set()
    )
    assert not differing & {str(status) for status in sent.statuses}
    for status in DOCUMENTED_ONLY_BY_FORGEJO.get(sent.operation_id, set()):
        # 413: the owner's quota is spent; 400: an unknown `poster` filter (not sent by sdlc).
        assert forgejo[status]["$ref"] == {"413": "#/responses/quotaExceeded", "400": "#/responses/error"}[status]


@pytest.mark.parametrize("sent", [sent for sent in SENT if sent.reads], ids=[s.operation_id for s in SENT if s.reads])
def test_the_fields_sdlc_reads_are_declared_alike(sent: Sent) -> None:
    """Every answer field the client reads exists in both documents with the same type."""
    success = str(next(status for status in sent.statuses if 200 <= status < 300))
    gitea = _operation(GITEA, sent)["responses"][success]
    forgejo = _operation(FORGEJO, sent)["responses"][success]
    for dotted in sent.reads:
        gitea_field, forgejo_field = _field(GITEA, gitea, dotted), _field(FORGEJO, forgejo, dotted)
        assert gitea_field is not None, f"{sent.operation_id}: Gitea does not declare {dotted}"
        assert forgejo_field is not None, f"{sent.operation_id}: Forgejo does not declare {dotted}"
        assert gitea_field.get("type") == forgejo_field.get("type"), dotted
        if dotted == "statuses[].status":
            continue  # the one field whose values differ: test_commit_status_states_differ_only_by_skipped
        assert _shape(GITEA, gitea_field) == _shape(FORGEJO, forgejo_field), dotted


def test_commit_status_states_differ_only_by_skipped() -> None:
    """Forgejo has no ``skipped`` state (its Actions report a skipped job as success); the gate knows every state."""
    gitea_states = set(_resolve(GITEA, GITEA.document["definitions"]["CommitStatus"]["properties"]["status"])["enum"])
    forgejo_state = _resolve(FORGEJO, FORGEJO.document["definitions"]["CommitStatus"]["properties"]["status"])
    assert forgejo_state.get("type") == "string" and "enum" not in forgejo_state  # no enum: named in prose only
    forgejo_states = set(re.findall(r'"([a-z]+)"', forgejo_state["description"]))
    assert forgejo_states == {"pending", "success", "error", "failure", "warning"}
    assert gitea_states - forgejo_states == {"skipped"}
    assert forgejo_states <= set(STATUS_TO_CI)
    combined = _resolve(FORGEJO, FORGEJO.document["definitions"]["CombinedStatus"]["properties"]["state"])
    assert combined == forgejo_state  # the combined state is the same type


def test_token_in_the_authorization_header_is_what_both_accept() -> None:
    """sdlc sends ``Authorization: token …``; Forgejo dropped Gitea's deprecated query-string tokens."""
    for contract in (GITEA, FORGEJO):
        scheme = contract.document["securityDefinitions"]["AuthorizationHeaderToken"]
        assert (scheme["in"], scheme["name"], scheme["type"]) == ("header", "Authorization", "apiKey")
    assert GITEA.global_query == {"token", "access_token", "sudo"}
    assert FORGEJO.global_query == {"sudo"}
    with GiteaCredentials(api_url="https://codeberg.org/api/v1", token="t0ken").get_client() as client:
        assert client.headers["authorization"] == "token t0ken"
        assert str(client.base_url) == "https://codeberg.org/api/v1/"  # httpx ends a base URL with /


# -- the client itself, against Forgejo's document ---------------------------------------------


class ForgejoLikeServer(GiteaTestServer):
    """The Gitea double with Forgejo's document as its contract, ignoring ``base_branch`` as Forgejo's
    ListPullRequests does (it reads state, sort, labels, milestone, poster, page and limit only)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.contract = FORGEJO

    def _op_repoListPullRequests(
        self, record: Repo, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        ignored = {name: value for name, value in query.items() if name != "base_branch"}
        return super()._op_repoListPullRequests(record, params, ignored, body)


def _push_branch(origin: Path, work: Path, branch: str, files: dict[str, str]) -> str:
    """Commit ``files`` on ``branch`` (from main) in a clone of ``origin`` and push it; the commit's SHA."""
    if not work.exists():
        git(work.parent, "clone", "--quiet", str(origin), str(work))
    git(work, "checkout", "--quiet", "-B", branch, "origin/main")
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", f"Work on {branch}")
    git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
    return git(work, "rev-parse", "HEAD").stdout.strip()


def test_the_gitea_client_runs_against_forgejos_document(tmp_path: Path) -> None:
    """Every operation of SENT, sent by the client the `forgejo` kind builds: only ``base_branch`` departs,
    and the client's own base check keeps a PR into another base from being taken."""
    with ForgejoLikeServer(tmp_path / "forgejo") as server:
        origin = server.create_repo(OWNER, REPO)
        work = tmp_path / "clone"
        _push_branch(origin, work, "develop", {"develop.txt": "develop\n"})
        sha = _push_branch(origin, work, BRANCH, {"docs/demo.md": "demo\n"})
        credentials = GiteaCredentials(api_url=server.api_url, token=DEFAULT_TOKEN, timeout_seconds=5)
        with ForgejoForge(
            credentials=credentials, owner=OWNER, repo=REPO, retry=FAST_RETRY, sleep=lambda _: None
        ) as forge:
            assert forge.forge_name == "Forgejo"
            assert forge.default_branch() == "main"
            assert forge.file_url(branch=BRANCH, path="docs/demo.md") == (
                f"{server.web_url}/{OWNER}/{REPO}/src/branch/{BRANCH}/docs/demo.md"
            )
            into_develop = forge.ensure_pull_request(
                branch=BRANCH, base="develop", title="ET-1 Demo", body="Story", work_item="ET-1"
            )
            # The list now answers the PR into develop too (base_branch ignored): it is not taken for main.
            into_main = forge.ensure_pull_request(
                branch=BRANCH, base="main", title="ET-1 Demo", body="Story", work_item="ET-1"
            )
            assert (into_develop.base, into_main.base) == ("develop", "main")
            assert into_main.number != into_develop.number
            assert (
                forge.ensure_pull_request(branch=BRANCH, base="main", title="ET-1 Demo", body="Story", work_item="ET-1")
                == into_main
            )
            assert forge.update_pull_request_body(number=into_main.number, body_of=lambda old: f"{old}, updated")
            assert forge.pull_request_body(number=into_main.number) == "Story, updated"
            assert forge.ci_status(BRANCH).state == "none"
            server.add_status(OWNER, REPO, sha, "pending", context="ci/build")
            assert forge.ci_status(BRANCH).state == "pending"
            server.add_status(OWNER, REPO, sha, "success", context="ci/build")
            server.add_status(OWNER, REPO, sha, "warning", context="ci/lint")
            assert forge.ci_status(BRANCH).state == "success"
            merged = forge.merge_pull_request(number=into_main.number)
            assert merged.state == "merged" and merged.merge_commit
            assert forge.merge_pull_request(number=into_main.number) == merged  # merged already: no second merge
        used = {request.operation for request in server.requests}
        lists = [request for request in server.requests if request.operation == "repoListPullRequests"]
        assert used == set(SENT_IDS)  # SENT names every operation the client sent, and nothing else
        assert lists and server.violations == [BASE_BRANCH_UNDECLARED] * len(lists)
        assert server.response_problems == []  # the double's answers fit Forgejo's document as well


# -- webhooks ----------------------------------------------------------------------------------


def forgejo_delivery_headers(secret: str, body: bytes, event: str, event_type: str, delivery: str) -> dict[str, str]:
    """The headers Forgejo 15.0.3 sends with a `forgejo` or `gitea` webhook (AddDefaultHeaders in
    services/webhook/shared/payloader.go), with names lowercased as HTTP servers hand them on."""
    sha256 = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    headers = {"content-type": "application/json"}
    for family in ("x-forgejo", "x-gitea", "x-gogs"):
        headers |= {
            f"{family}-delivery": delivery,
            f"{family}-event": event,
            f"{family}-event-type": event_type,
            f"{family}-signature": sha256,
        }
    return headers | {
        "x-hub-signature": f"sha1={sha1}",
        "x-hub-signature-256": f"sha256={sha256}",
        "x-github-delivery": delivery,
        "x-github-event": event,
        "x-github-event-type": event_type,
    }


@pytest.mark.parametrize("route", ["gitea", "forgejo"])
def test_a_forgejo_delivery_is_accepted_by_the_gitea_and_forgejo_routes(route: str) -> None:
    """sdlc's Gitea route reads X-Gitea-Signature/-Event/-Delivery, which Forgejo sends beside its X-Forgejo-* ones,
    and its Forgejo route the X-Forgejo-* ones, its work items then on `kind: forgejo` with the Forgejo block;
    a label change comes as `issues`/`label_updated` without `label`, a comment as `issue_comment`/`created`."""
    from blocks.webhooks import RunDefaults, WebhookSettings
    from entrypoints.webhooks import SOURCES, delivery_id, interpret, signature_valid

    secret = "forgejo-hook-secret"
    settings = WebhookSettings(
        **{f"{route}_secret": secret, f"{route}_credentials_block": "codeberg"},
        approvers=["alice"],
        defaults=RunDefaults(agent_profile="scripted-agent"),
    )
    spec = SOURCES[route]
    repository = {"full_name": "team/app", "name": "app", "clone_url": "https://codeberg.org/team/app.git"}
    issue = {"number": 7, "title": "Export as CSV", "body": "Finance needs it.", "labels": [{"id": 3, "name": "sdlc"}]}
    labelled = {
        "action": "label_updated",
        "number": 7,
        "issue": issue,
        "repository": repository,
        "sender": {"login": "bob"},
        "commit_id": "",
    }
    commented = {
        "action": "created",
        "issue": issue,
        "comment": {"body": "/approve looks right", "user": {"login": "alice"}},
        "repository": repository,
        "sender": {"login": "alice"},
        "is_pull": False,
    }
    for payload, event, event_type, kind in (
        (labelled, "issues", "issue_label", "request"),
        (commented, "issue_comment", "issue_comment", "approve"),
    ):
        body = json.dumps(payload, indent=2).encode()
        delivery = str(uuid.uuid4())
        headers = forgejo_delivery_headers(secret, body, event, event_type, delivery)
        assert {spec.signature_header, spec.event_header, spec.delivery_header} <= set(headers)
        assert signature_valid(spec, secret, body, headers)
        assert not signature_valid(spec, "another-secret", body, headers)
        assert delivery_id(spec, headers, headers[spec.event_header], body) == delivery
        decision = interpret(route, headers[spec.event_header], json.loads(body), settings)
        assert (decision.kind, decision.work_item) == (kind, "APP-7")
        if decision.request is not None:
            forge = decision.request.forge
            assert (forge.kind, forge.credentials_block, forge.owner, forge.name) == (route, "codeberg", "team", "app")
