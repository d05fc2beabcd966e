"""The webhook receiver (B61): signed forge and tracker deliveries become Prefect events.

Checks run in this order, and a delivery that fails one starts nothing:
size (over 1 MiB: 413), signature (missing or wrong: 401; GitLab sends its secret token
itself, compared in constant time), JSON and shape (422), delivery id seen before (200,
marked duplicate; GitLab's is its ``Idempotency-Key``). An issue given the trigger label
becomes the event ``sdlc.work-item.requested`` (the deployment trigger in
``prefect.yaml`` turns it into a pipeline run); an ``/approve`` or ``/reject``
comment by an allowed user resumes that work item's paused pipeline (on GitLab also
``/answer`` and ``/retry``).
Everything in a delivery is data: it is validated like CLI input and never reaches a shell.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from blocks import load_block
from blocks.webhooks import WebhookSettings
from sdlc.models import AgentSpec, ForgeSpec, TrackerSpec, WorkItemRequest, WorkItemState, validate_comment
from sdlc.retry import RetryKnobs

MAX_BODY_BYTES = 1024 * 1024
ANSWERS_MAX_LENGTH = 65536  # flows/inputs.py: AnalystAnswers.answers
Source = Literal["gitea", "forgejo", "github", "gitlab", "plane"]


class SourceSpec(BaseModel):
    signature_header: str
    signature_prefix: str
    event_header: str
    delivery_header: str
    secret_field: str
    # hmac: the header is the HMAC-SHA256 of the body; token: the header is the secret itself (GitLab).
    scheme: Literal["hmac", "token"] = "hmac"


SOURCES: dict[str, SourceSpec] = {
    "gitea": SourceSpec(
        signature_header="x-gitea-signature",
        signature_prefix="",
        event_header="x-gitea-event",
        delivery_header="x-gitea-delivery",
        secret_field="gitea_secret",
    ),
    # Forgejo sends Gitea's headers too (tests/test_forgejo_contract.py); its own name the forge it is.
    "forgejo": SourceSpec(
        signature_header="x-forgejo-signature",
        signature_prefix="",
        event_header="x-forgejo-event",
        delivery_header="x-forgejo-delivery",
        secret_field="forgejo_secret",
    ),
    "github": SourceSpec(
        signature_header="x-hub-signature-256",
        signature_prefix="sha256=",
        event_header="x-github-event",
        delivery_header="x-github-delivery",
        secret_field="github_secret",
    ),
    # GitLab sends the secret token as it is (not an HMAC); Idempotency-Key (17.4+) stays the same
    # across retries and resends of one delivery (X-Gitlab-Webhook-UUID is new on every request).
    "gitlab": SourceSpec(
        signature_header="x-gitlab-token",
        signature_prefix="",
        event_header="x-gitlab-event",
        delivery_header="idempotency-key",
        secret_field="gitlab_secret",
        scheme="token",
    ),
    "plane": SourceSpec(
        signature_header="x-plane-signature",
        signature_prefix="",
        event_header="x-plane-event",
        delivery_header="x-plane-delivery",
        secret_field="plane_secret",
    ),
}


def signature_for(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(spec: SourceSpec, secret: str | None, body: bytes, headers: Mapping[str, str]) -> bool:
    """HMAC-SHA256 of the raw body (or the secret itself, GitLab's token), compared in constant time;
    no secret configured means no."""
    if not secret:
        return False
    sent = headers.get(spec.signature_header, "")
    expected = secret if spec.scheme == "token" else spec.signature_prefix + signature_for(secret, body)
    return hmac.compare_digest(sent.encode(), expected.encode())


def delivery_id(spec: SourceSpec, headers: Mapping[str, str], event: str, body: bytes) -> str:
    """The delivery's id; a GitLab older than 17.4 sends none that stays the same on a resend, so
    its event and body stand for it (the contract's advice)."""
    sent = headers.get(spec.delivery_header, "")
    if sent or spec.scheme != "token":
        return sent
    return "sha256:" + hashlib.sha256(event.encode() + b"\n" + body).hexdigest()


# --- payloads (the fields sdlc reads; everything else is ignored) ----------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ForgeUser(_Loose):
    login: str = Field(max_length=200)


class ForgeLabel(_Loose):
    name: str = Field(max_length=200)


class ForgeIssue(_Loose):
    number: int = Field(ge=1)
    title: str
    body: str | None = ""
    labels: list[ForgeLabel] | None = None


class ForgeRepository(_Loose):
    full_name: str = Field(max_length=300)
    name: str = Field(max_length=200)
    clone_url: str = Field(max_length=2000)


class ForgeComment(_Loose):
    body: str = Field(max_length=65536)
    user: ForgeUser


class IssuesPayload(_Loose):
    action: str
    issue: ForgeIssue
    repository: ForgeRepository
    label: ForgeLabel | None = None


class IssueCommentPayload(_Loose):
    action: str
    issue: ForgeIssue
    comment: ForgeComment
    repository: ForgeRepository


class GitLabUser(_Loose):
    username: str = Field(max_length=200)


class GitLabLabel(_Loose):
    """A label in a webhook: its name is ``title`` (the REST API gives plain names)."""

    title: str = Field(max_length=200)


class GitLabProject(_Loose):
    path_with_namespace: str = Field(max_length=300)
    git_http_url: str = Field(max_length=2000)


class GitLabIssueAttributes(_Loose):
    iid: int = Field(ge=1, description="The issue's number in its project (not the global id).")
    title: str
    description: str | None = ""
    action: str | None = None
    labels: list[GitLabLabel] | None = None


class GitLabLabelChange(_Loose):
    previous: list[GitLabLabel] = Field(default_factory=list)
    current: list[GitLabLabel] = Field(default_factory=list)


class GitLabChanges(_Loose):
    labels: GitLabLabelChange | None = None


class GitLabIssueHook(_Loose):
    """An Issue Hook: an issue opened, edited (a label change is an ``update``), closed or reopened."""

    user: GitLabUser
    project: GitLabProject
    object_attributes: GitLabIssueAttributes
    labels: list[GitLabLabel] | None = None
    changes: GitLabChanges | None = None


class GitLabNoteAttributes(_Loose):
    note: str = Field(max_length=ANSWERS_MAX_LENGTH + 100)
    noteable_type: str = Field(max_length=50)
    action: str | None = None  # missing before GitLab 16.11: a creation
    system: bool | None = False


class GitLabNoteIssue(_Loose):
    iid: int = Field(ge=1)


class GitLabNoteHook(_Loose):
    """A Note Hook: a comment created or edited; ``user`` is its author."""

    user: GitLabUser
    project: GitLabProject
    object_attributes: GitLabNoteAttributes
    issue: GitLabNoteIssue | None = None


class PlaneCommentData(_Loose):
    """A Plane `issue_comment` delivery's `data`: the comment, its author (a user UUID) and its work item."""

    id: str = Field(max_length=100)
    comment_html: str = Field(default="", max_length=262144)
    actor: str = Field(max_length=100)
    issue: str = Field(max_length=100)


class PlaneCommentPayload(_Loose):
    event: str
    action: str
    data: PlaneCommentData


class Decision(BaseModel):
    """What a delivery asks for, after validation."""

    kind: Literal["request", "approve", "reject", "answer", "retry", "ignore"]
    reason: str = ""
    request: WorkItemRequest | None = None
    work_item: str | None = None
    tracker_item: str | None = Field(
        default=None, description="The tracker's own id when the delivery names no work item."
    )
    by: str | None = None
    comment: str = ""
    repository: str | None = Field(default=None, description="owner/name of the delivering repository.")


PLANE_COMMANDS: dict[str, Literal["approve", "reject", "answer"]] = {
    "/approve": "approve",
    "/reject": "reject",
    "/answer": "answer",
}
GITLAB_COMMANDS: dict[str, Literal["approve", "reject", "answer", "retry"]] = {**PLANE_COMMANDS, "/retry": "retry"}


def work_item_id(repository: ForgeRepository, number: int, settings: WebhookSettings) -> str:
    """`<KEY>-<issue number>`; KEY from the settings or the repository's name."""
    key = settings.project_keys.get(repository.full_name)
    if not key:
        key = re.sub(r"[^A-Z0-9]", "", repository.name.upper())[:10] or "WI"
        if not key[0].isalpha():
            key = f"R{key}"[:10]
    return f"{key}-{number}"


def gitlab_repository(project: GitLabProject) -> ForgeRepository:
    """A GitLab project as the other forges name a repository: its full path (groups nest) and its path."""
    return ForgeRepository(
        full_name=project.path_with_namespace,
        name=project.path_with_namespace.rsplit("/", 1)[-1],
        clone_url=project.git_http_url,
    )


def forge_of(source: str, repository: ForgeRepository, settings: WebhookSettings) -> ForgeSpec:
    """The delivering forge, when the settings name its credentials; else the local forge."""
    block = getattr(settings, f"{source}_credentials_block", None)
    if not block:
        return ForgeSpec()
    # GitLab's owner is the whole group path before the name (group/subgroup/name).
    split = repository.full_name.rpartition if source == "gitlab" else repository.full_name.partition
    owner, _, name = split("/")
    return ForgeSpec(kind=source, credentials_block=block, owner=owner, name=name)  # type: ignore[arg-type]


def _requested(
    source: str, repository: ForgeRepository, number: int, title: str, body: str | None, settings: WebhookSettings
) -> Decision:
    """A labelled issue's work item, run with what the settings say for its repository."""
    defaults = settings.run_defaults(repository.full_name)
    request = WorkItemRequest(
        work_item=work_item_id(repository, number, settings),
        title=title,
        description=body or "",
        repo=repository.clone_url,
        forge=forge_of(source, repository, settings),
        agent=AgentSpec(
            profile_block=defaults.agent_profile,
            **defaults.model_dump(include=set(RetryKnobs.model_fields)),
        ),
        budget_usd=defaults.budget_usd,
        tracker=tracker_of(source, repository, number, defaults.plane_block, settings),
    )
    return Decision(kind="request", request=request, work_item=request.work_item, repository=repository.full_name)


def tracker_of(
    source: str, repository: ForgeRepository, number: int, plane_block: str | None, settings: WebhookSettings
) -> TrackerSpec | None:
    """Who hears of the work item: the Plane block the settings name, else the GitLab issue it came from
    (notes through the GitLab credentials), else nobody."""
    if plane_block:
        return TrackerSpec(credentials_block=plane_block)
    if source == "gitlab" and settings.gitlab_credentials_block:
        return TrackerSpec(
            kind="gitlab", credentials_block=settings.gitlab_credentials_block, ref=f"{repository.full_name}#{number}"
        )
    return None


def interpret(source: str, event: str, payload: dict[str, Any], settings: WebhookSettings) -> Decision:
    """Turn a verified delivery into a decision; raises ValidationError/ValueError on bad data."""
    if source in ("gitea", "forgejo", "github") and event == "issues":
        data = IssuesPayload.model_validate(payload)
        labelled = data.action in ("labeled", "label_updated") and (
            (data.label is not None and data.label.name == settings.trigger_label)
            or (data.label is None and any(label.name == settings.trigger_label for label in data.issue.labels or []))
        )
        if not labelled:
            return Decision(kind="ignore", reason=f"issues/{data.action} without the label {settings.trigger_label!r}")
        return _requested(source, data.repository, data.issue.number, data.issue.title, data.issue.body, settings)
    if source == "gitlab" and event in ("Issue Hook", "Confidential Issue Hook"):
        hook = GitLabIssueHook.model_validate(payload)
        attributes = hook.object_attributes
        current = {label.title for label in (attributes.labels or hook.labels or [])}
        changed = hook.changes.labels if hook.changes is not None else None
        newly = settings.trigger_label in current and (
            attributes.action == "open"
            or (changed is not None and settings.trigger_label not in {label.title for label in changed.previous})
        )
        if not newly:
            return Decision(
                kind="ignore", reason=f"issue {attributes.action} without the label {settings.trigger_label!r} given"
            )
        repository = gitlab_repository(hook.project)
        return _requested(source, repository, attributes.iid, attributes.title, attributes.description, settings)
    if source == "gitlab" and event in ("Note Hook", "Confidential Note Hook"):
        note = GitLabNoteHook.model_validate(payload)
        text = note.object_attributes.note.strip()
        command = text.split(maxsplit=1)[0].lower() if text else ""
        if (
            note.object_attributes.noteable_type != "Issue"
            or note.issue is None
            or note.object_attributes.system
            or (note.object_attributes.action or "create") != "create"
            or command not in GITLAB_COMMANDS
        ):
            return Decision(kind="ignore", reason="a note without /approve, /reject, /answer or /retry on an issue")
        by = note.user.username
        if by not in settings.approvers:
            return Decision(kind="ignore", reason=f"{by} is not an allowed approver")
        kind = GITLAB_COMMANDS[command]
        rest = text[len(command) :].strip()
        if kind == "answer":
            if len(rest) > ANSWERS_MAX_LENGTH:
                raise ValueError(
                    f"the answers are {len(rest)} characters long; at most {ANSWERS_MAX_LENGTH} are allowed"
                )
        else:
            validate_comment(rest)
        work_item = work_item_id(gitlab_repository(note.project), note.issue.iid, settings)
        return Decision(kind=kind, work_item=work_item, by=by, comment=rest)
    if source in ("gitea", "forgejo", "github") and event == "issue_comment":
        data_c = IssueCommentPayload.model_validate(payload)
        text = data_c.comment.body.strip()
        command = text.split(maxsplit=1)[0] if text else ""
        if data_c.action != "created" or command not in ("/approve", "/reject"):
            return Decision(kind="ignore", reason="a comment without /approve or /reject")
        by = data_c.comment.user.login
        if by not in settings.approvers:
            return Decision(kind="ignore", reason=f"{by} is not an allowed approver")
        rest = validate_comment(text[len(command) :].strip())
        return Decision(
            kind="approve" if command == "/approve" else "reject",
            work_item=work_item_id(data_c.repository, data_c.issue.number, settings),
            by=by,
            comment=rest,
        )
    if source == "plane" and event == "issue_comment":
        from tasks.plane import html_to_text

        data_p = PlaneCommentPayload.model_validate(payload)
        text = html_to_text(data_p.data.comment_html).strip()
        command = text.split(maxsplit=1)[0].lower() if text else ""
        if data_p.action not in ("created", "create") or command not in PLANE_COMMANDS:
            return Decision(kind="ignore", reason="a comment without /approve, /reject or /answer")
        kind = PLANE_COMMANDS[command]
        rest = text[len(command) :].strip()
        if kind == "answer":
            if len(rest) > ANSWERS_MAX_LENGTH:
                raise ValueError(
                    f"the answers are {len(rest)} characters long; at most {ANSWERS_MAX_LENGTH} are allowed"
                )
        else:
            validate_comment(rest)
        # Who may decide is the tracker block's list, checked when the work item is known (act).
        return Decision(kind=kind, tracker_item=data_p.data.issue, by=data_p.data.actor, comment=rest)
    return Decision(kind="ignore", reason=f"{source} event {event!r} starts nothing")


# --- the OpenAPI document (documentation only: the handler reads the raw body and headers itself) ---


class DeliveryAnswer(BaseModel):
    """The receiver's answer to a verified delivery."""

    delivery: str = Field(description="The delivery id from the source's delivery header.")
    accepted: bool | None = Field(default=None, description="True: event emitted or run resumed; False: see reason.")
    event: str | None = Field(default=None, description="The Prefect event emitted, e.g. sdlc.work-item.requested.")
    work_item: str | None = None
    reason: str | None = Field(default=None, description="Why a decision could not be applied (409).")
    ignored: str | None = Field(default=None, description="Why the delivery starts nothing (202).")
    duplicate: bool | None = Field(default=None, description="The delivery id was seen before (200).")


class Problem(BaseModel):
    """A refused delivery."""

    detail: str | list[dict[str, Any]] = Field(
        description="What is wrong; a list only for an unknown source in the path (FastAPI's own validation)."
    )


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined (the payload models are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


SIGNATURE_PATTERNS = {
    "gitea": "^[0-9a-f]{64}$",
    "forgejo": "^[0-9a-f]{64}$",
    "github": "^sha256=[0-9a-f]{64}$",
    "gitlab": "^.{1,}$",
    "plane": "^[0-9a-f]{64}$",
}


def delivery_openapi() -> dict[str, Any]:
    """Headers and body of POST /webhooks/{source}, for the OpenAPI document."""
    parameters: list[dict[str, Any]] = []
    for source, spec in SOURCES.items():
        parameters += [
            {
                "name": spec.signature_header,
                "in": "header",
                "required": False,
                "description": (
                    f"{source}: the secret token itself; missing or wrong answers 401."
                    if spec.scheme == "token"
                    else f"{source}: hex HMAC-SHA256 of the raw body with the {source} secret"
                    + (f" (prefixed {spec.signature_prefix!r})" if spec.signature_prefix else "")
                    + "; missing or wrong answers 401."
                ),
                "schema": {"type": "string", "pattern": SIGNATURE_PATTERNS[source]},
            },
            {
                "name": spec.event_header,
                "in": "header",
                "required": False,
                "description": f"{source}: the event, e.g. issues or issue_comment; required with a {source} delivery.",
                "schema": {"type": "string", "examples": ["issues", "issue_comment"]},
            },
            {
                "name": spec.delivery_header,
                "in": "header",
                "required": False,
                "description": f"{source}: the delivery id; one seen before answers 200 duplicate.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        ]
    body = {
        "anyOf": [
            inline_schema(model)
            for model in (IssuesPayload, IssueCommentPayload, GitLabIssueHook, GitLabNoteHook, PlaneCommentPayload)
        ],
        "description": "An issues or issue_comment delivery of Gitea or GitHub, a GitLab Issue Hook or Note "
        "Hook, or a Plane issue_comment; other fields are ignored; at most 1 MiB.",
    }
    return {
        "parameters": parameters,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
    }


DELIVERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": DeliveryAnswer, "description": "A delivery id seen before: nothing starts again."},
    202: {"model": DeliveryAnswer, "description": "Accepted (event emitted or run resumed), or verified and ignored."},
    401: {"model": Problem, "description": "Missing or wrong signature, or no secret configured for the source."},
    409: {
        "model": DeliveryAnswer,
        "description": "A verified decision that cannot be applied, e.g. the work item is not waiting.",
    },
    413: {"model": Problem, "description": "The delivery is over 1 MiB."},
    422: {
        "model": Problem,
        "description": "Malformed JSON, invalid values, missing event or delivery header, unknown source.",
    },
}


def _plane_decision_target(decision: Decision) -> tuple[str | None, str]:
    """The work item a Plane comment decides, when its author is one of the tracker block's approvers."""
    from blocks.plane import PlaneCredentials
    from tasks.ledger import Ledger

    link = Ledger.from_settings().work_item_of_tracker_item("plane", decision.tracker_item or "")
    if link is None:
        return None, "no work item is linked to this Plane work item"
    approvers = load_block(PlaneCredentials, link.credentials_block).approvers
    if decision.by not in approvers:
        return None, f"{decision.by} is not an approver in the {link.credentials_block} block"
    return link.work_item_id, ""


def with_named_agent(decision: Decision) -> Decision | str:
    """A labelled issue's decision with its agent named (the block's, else SDLC_AGENT_PROFILE, else the
    repository's .sdlc/config.yaml), or why it cannot start: the receiver never starts a fake agent."""
    from tasks.taskfile import AgentNotNamed, named_agent

    if decision.kind != "request" or decision.request is None:
        return decision
    request = decision.request
    try:
        agent = named_agent(request)
    except AgentNotNamed:
        return (
            f"no agent for {decision.repository}: set agent_profile in the WebhookSettings block (defaults,"
            f" or repositories[{decision.repository!r}]), SDLC_AGENT_PROFILE, or agent_profile in the"
            " repository's .sdlc/config.yaml"
        )
    except Exception as exc:  # noqa: BLE001 - origin unreachable or its config invalid: say so, start nothing
        return f"cannot tell which agent {request.work_item} would run: {' '.join(str(exc).split())[:300]}"
    return decision.model_copy(update={"request": request.model_copy(update={"agent": agent})})


def emit_work_item_event(name: str, work_item: str, payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(
        event=name,
        resource={"prefect.resource.id": f"sdlc.work-item.{work_item}", "prefect.resource.name": work_item},
        payload=payload,
    )


def act(decision: Decision, source: str, delivery: str) -> dict[str, Any]:
    """Emit the event or resume the run the decision names."""
    from entrypoints.approvals import resume_waiting_run

    if decision.kind == "request":
        assert decision.request is not None
        request = decision.request
        emit_work_item_event(
            "sdlc.work-item.requested",
            request.work_item,
            {
                "work_item": request.work_item,
                "title": request.title,
                "description": request.description,
                "repo": request.repo,
                # Flat, so that the deployment trigger can template each one (prefect.yaml).
                "forge_kind": request.forge.kind,
                "forge_credentials_block": request.forge.credentials_block or "",
                "forge_owner": request.forge.owner or "",
                "forge_name": request.forge.name or "",
                # What it runs with (WebhookSettings), whole: the trigger passes them on as they are.
                "agent": request.agent.model_dump(mode="json", exclude_defaults=True),
                "budget_usd": request.budget_usd,
                "tracker": request.tracker.model_dump(mode="json", exclude_defaults=True) if request.tracker else None,
                "source": source,
                "delivery": delivery,
            },
        )
        return {"accepted": True, "event": "sdlc.work-item.requested", "work_item": request.work_item}
    if decision.tracker_item is not None:
        work_item, refusal = _plane_decision_target(decision)
        if work_item is None:
            return {"accepted": False, "reason": refusal}
        decision = decision.model_copy(update={"work_item": work_item})
    assert decision.work_item is not None
    if decision.kind == "retry":
        return _retry(decision, source)
    approve = decision.kind == "approve"
    try:
        if decision.kind == "answer":
            if not decision.comment:
                return {"accepted": False, "reason": "/answer without answers"}
            resume_waiting_run(
                decision.work_item,
                WorkItemState.needs_input,
                {"answers": decision.comment, "answered_by": decision.by or source},
            )
            emit_work_item_event(
                "sdlc.work-item.answered",
                decision.work_item,
                {"work_item": decision.work_item, "by": decision.by, "source": source},
            )
            return {"accepted": True, "event": "sdlc.work-item.answered", "work_item": decision.work_item}
        resume_waiting_run(
            decision.work_item,
            WorkItemState.waiting_approval,
            {"approve": approve, "approver": decision.by or source, "comment": decision.comment},
        )
    except RuntimeError as exc:  # NotWaiting, or Prefect refused the input or the run did not pause
        return {"accepted": False, "reason": str(exc)}
    name = "sdlc.work-item.approved" if approve else "sdlc.work-item.rejected"
    emit_work_item_event(
        name, decision.work_item, {"work_item": decision.work_item, "by": decision.by, "source": source}
    )
    return {"accepted": True, "event": name, "work_item": decision.work_item}


def _retry(decision: Decision, source: str) -> dict[str, Any]:
    """A /retry: sends the Blocked work item on, as `sdlc retry` does, through the sdlc-pipeline deployment."""
    from entrypoints.retrying import retry_blocked

    assert decision.work_item is not None
    try:
        summary = retry_blocked(
            decision.work_item, stage=None, comment=decision.comment, by=decision.by or source, source=source
        )
    except (ValueError, RuntimeError) as exc:  # NotRetryable (a ValueError): the item is not Blocked
        return {"accepted": False, "reason": str(exc), "work_item": decision.work_item}
    return {"accepted": True, "work_item": decision.work_item, "summary": summary}


async def body_within_limit(request: Request) -> bytes | None:
    """The delivery's body, or None once it is over 1 MiB (declared or streamed): never read whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


def create_app(settings: WebhookSettings) -> FastAPI:
    """The FastAPI app: POST /webhooks/{gitea,forgejo,github,gitlab,plane,telegram}, GET /healthz."""
    from entrypoints.telegram import add_webhook_route
    from tasks.ledger import Ledger

    app = FastAPI(title="sdlc-flows webhooks", version="1")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_webhook_route(app, settings)  # before /webhooks/{source}, which would take "telegram" for a bad source

    @app.post(
        "/webhooks/{source}",
        summary="Receive a signed delivery from Gitea, Forgejo, GitHub, GitLab or Plane",
        description=__doc__,
        status_code=202,
        responses=DELIVERY_RESPONSES,
        openapi_extra=delivery_openapi(),
    )
    async def receive(source: Source, request: Request) -> JSONResponse:
        spec = SOURCES[source]
        body = await body_within_limit(request)
        if body is None:
            return JSONResponse({"detail": "delivery over 1 MiB"}, status_code=413)
        secret_value = getattr(settings, spec.secret_field)
        secret = secret_value.get_secret_value() if secret_value is not None else None
        if not signature_valid(spec, secret, body, request.headers):
            return JSONResponse({"detail": "missing or invalid signature"}, status_code=401)
        event = request.headers.get(spec.event_header, "")
        delivery = delivery_id(spec, request.headers, event, body)
        if not event or not delivery or len(delivery) > 200:
            return JSONResponse({"detail": f"missing {spec.event_header} or {spec.delivery_header}"}, status_code=422)
        try:
            try:
                payload = json.loads(body)
            except RecursionError:
                raise ValueError("the JSON is nested too deeply") from None
            if not isinstance(payload, dict):
                raise ValueError("the payload is not a JSON object")
            decision = interpret(source, event, payload, settings)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            return JSONResponse({"detail": f"{where}: {message}" if where else message}, status_code=422)
        except ValueError as exc:
            return JSONResponse({"detail": f"malformed delivery: {exc}"}, status_code=422)
        named = await run_in_threadpool(with_named_agent, decision)
        if isinstance(named, str):  # before the delivery is remembered: a redelivery after the fix starts it
            return JSONResponse({"detail": named}, status_code=422)
        decision = named
        ledger = Ledger.from_settings()
        if not await run_in_threadpool(ledger.remember_delivery, source, delivery, event):
            return JSONResponse({"duplicate": True, "delivery": delivery}, status_code=200)
        if decision.kind == "ignore":
            return JSONResponse({"ignored": decision.reason, "delivery": delivery}, status_code=202)
        result = await run_in_threadpool(act, decision, source, delivery)
        return JSONResponse({**result, "delivery": delivery}, status_code=202 if result.get("accepted") else 409)

    return app


def serve(*, host: str, port: int, settings_block: str) -> None:
    import uvicorn

    settings = load_block(WebhookSettings, settings_block)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
