"""Fuzzing the webhook receiver (B61): random deliveries never get a 5xx; unsigned ones start nothing.

The app runs in-process (httpx's ASGI transport) against this test's ledger and the
session's real Prefect server. Hypothesis draws sources, event names, headers and
bodies (raw bytes, arbitrary JSON, deliveries of the right shape with fuzzed
fields, deeply nested arrays); schemathesis drives the receiver from its own
OpenAPI document with the ``not_a_server_error`` check. Whether anything was
started is counted for real: the ``sdlc.work-item.*`` events the Prefect server
stored since the test began.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET

from blocks.webhooks import RunDefaults, WebhookSettings
from demo.sample import create_sample_repo
from entrypoints.webhooks import SOURCES, create_app, signature_for
from test_hostile_inputs import InProcessReceiver

SECRETS = {
    "gitea": "fuzz-gitea-secret", "forgejo": "fuzz-forgejo-secret", "github": "fuzz-github-secret",
    "gitlab": "fuzz-gitlab-token", "plane": "fuzz-plane-secret",
}


def signature(source: str, secret: str, body: bytes) -> str:
    """What ``source`` sends to prove the delivery: GitLab its token itself, the others an HMAC of the body."""
    spec = SOURCES[source]
    return secret if spec.scheme == "token" else spec.signature_prefix + signature_for(secret, body)
KEY = "FZ"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def webhook_settings() -> WebhookSettings:
    return WebhookSettings(
        gitea_secret=SECRETS["gitea"], forgejo_secret=SECRETS["forgejo"], github_secret=SECRETS["github"],
        gitlab_secret=SECRETS["gitlab"], plane_secret=SECRETS["plane"],
        approvers=["alice"], project_keys={"fuzz/app": KEY}, defaults=RunDefaults(agent_profile="scripted-agent"),
    )


@pytest.fixture
def receiver(prefect_api: str, data_dir: Path) -> Iterator[InProcessReceiver]:
    with InProcessReceiver(create_app(webhook_settings())) as running:
        yield running


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(create_sample_repo(tmp_path_factory.mktemp("fuzz-origin")))


def work_item_events(prefect_api: str, since: datetime) -> int:
    """How many sdlc.work-item.* events the Prefect server stored since ``since``."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    answer = httpx.post(
        f"{prefect_api}/events/filter",
        json={"filter": {"occurred": {"since": since.isoformat()}, "event": {"prefix": ["sdlc.work-item."]}}, "limit": 1},
    )
    answer.raise_for_status()
    return int(answer.json()["total"])


# --- strategies --------------------------------------------------------------------------------------

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
HEADER_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=30).filter(
    lambda name: name not in ("host", "content-length", "transfer-encoding", "connection")  # httpx's own
)
TEXT = st.text(max_size=300)  # any unicode, control characters, NUL and RTL overrides included
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=30,
)
LOOSE_INT = st.integers(min_value=-5, max_value=10**12) | st.just(10**40) | TEXT | st.none()


def repository(origin: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"full_name": st.sampled_from(["fuzz/app", "team/app", ""]) | TEXT,
         "name": st.sampled_from(["app", "-x", "9lives", ""]) | TEXT,
         "clone_url": st.sampled_from([origin, "--upload-pack=touch /tmp/fz", "ssh://-oProxyCommand=x/y", "x" * 300]) | TEXT}
    )


def issue() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"number": LOOSE_INT, "title": TEXT | st.just("$(touch /tmp/fz) `x`"), "body": TEXT | st.none(),
         "labels": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["sdlc", "bug"]) | TEXT}), max_size=3) | st.none()}
    )


def shaped(origin: str) -> st.SearchStrategy[dict[str, Any]]:
    """Deliveries of the shape sdlc reads, with every field fuzzed (some fields dropped or swapped for junk)."""
    action = st.sampled_from(["labeled", "label_updated", "created", "opened", "create"]) | TEXT
    comment_body = st.sampled_from(["/approve", "/reject", "/approve " + "y" * 20001]).flatmap(
        lambda command: st.builds(lambda rest: f"{command} {rest}", TEXT)
    ) | TEXT
    issues = st.fixed_dictionaries(
        {"action": action, "issue": issue(), "repository": repository(origin)},
        optional={"label": st.fixed_dictionaries({"name": st.just("sdlc") | TEXT}) | st.none()},
    )
    comments = st.fixed_dictionaries(
        {"action": action, "issue": issue(), "repository": repository(origin),
         "comment": st.fixed_dictionaries({"body": comment_body, "user": st.fixed_dictionaries({"login": st.just("alice") | TEXT})})}
    )
    plane = st.fixed_dictionaries(
        {"event": st.just("issue_comment") | TEXT, "action": action,
         "data": st.fixed_dictionaries(
             {"id": TEXT, "comment_html": comment_body.map(lambda text: f"<p>{text}</p>") | TEXT,
              "actor": TEXT, "issue": st.uuids().map(str) | TEXT})}
    )

    project = st.fixed_dictionaries({"path_with_namespace": st.just("fuzz/app") | TEXT, "git_http_url": st.just(origin) | TEXT})
    gitlab_label = st.fixed_dictionaries({"title": st.sampled_from(["sdlc", "bug"]) | TEXT})
    gitlab_issue = st.fixed_dictionaries(
        {"user": st.fixed_dictionaries({"username": st.just("alice") | TEXT}), "project": project,
         "object_attributes": st.fixed_dictionaries(
             {"iid": LOOSE_INT, "title": TEXT, "description": TEXT | st.none(), "action": action | st.just("update"),
              "labels": st.lists(gitlab_label, max_size=3) | st.none()}),
         "changes": st.fixed_dictionaries({"labels": st.fixed_dictionaries(
             {"previous": st.lists(gitlab_label, max_size=2), "current": st.lists(gitlab_label, max_size=2)})})}
    )
    gitlab_note = st.fixed_dictionaries(
        {"user": st.fixed_dictionaries({"username": st.just("alice") | TEXT}), "project": project,
         "object_attributes": st.fixed_dictionaries(
             {"note": comment_body | st.just("/answer " + "z" * 70000), "noteable_type": st.just("Issue") | TEXT,
              "action": st.just("create") | TEXT}),
         "issue": st.fixed_dictionaries({"iid": LOOSE_INT})}
    )

    def damaged(payload: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        keys = sorted(payload)
        return st.sampled_from([None, *keys]).flatmap(
            lambda key: st.just(payload) if key is None else JSON.map(lambda junk: {**payload, key: junk})
        )

    return (issues | comments | plane | gitlab_issue | gitlab_note).flatmap(damaged)


def bodies(origin: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2000),
        JSON.map(lambda value: json.dumps(value).encode()),
        shaped(origin).map(lambda value: json.dumps(value).encode()),
        st.integers(min_value=900, max_value=20000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(min_value=900, max_value=5000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
        st.just(b'{"issue": {"number": 1' + b"0" * 5000 + b"}}"),
    )


EVENTS = st.sampled_from(["issues", "issue_comment", "push", "ping", "Issue Hook", "Note Hook", ""]) | HEADER_TEXT


@st.composite
def deliveries(draw: st.DrawFn, origin: str, *, signed: bool) -> tuple[str, bytes, dict[str, str]]:
    source = draw(st.sampled_from(sorted(SOURCES)))
    spec = SOURCES[source]
    body = draw(bodies(origin))
    headers = draw(st.dictionaries(HEADER_NAME, HEADER_TEXT, max_size=4))
    headers[spec.event_header] = draw(EVENTS)
    headers[spec.delivery_header] = draw(st.uuids().map(str) | HEADER_TEXT | st.just("d" * 201))
    if signed:
        headers[spec.signature_header] = signature(source, SECRETS[source], body)
    else:
        other = draw(st.sampled_from(sorted(set(SOURCES) - {source})))
        headers[spec.signature_header] = draw(
            st.sampled_from([
                "",
                signature_for(SECRETS[source], body),  # GitHub's without its sha256= prefix, Gitea's and Plane's: see below
                signature(source, SECRETS[other], body),  # another source's secret
                spec.signature_prefix + signature_for(SECRETS[source], body + b" "),  # another body
                signature(source, "guess", body),
            ])
            | HEADER_TEXT
        )
        if source != "github" and headers[spec.signature_header] == signature_for(SECRETS[source], body):
            headers[spec.signature_header] = "sha256=" + headers[spec.signature_header]  # the wrong format for them
        if draw(st.booleans()):
            headers[SOURCES[other].signature_header] = signature(other, SECRETS[other], body)
    return source, body, headers


# --- property tests ------------------------------------------------------------------------------------


def test_unsigned_deliveries_always_get_401_and_start_nothing(
    receiver: InProcessReceiver, prefect_api: str, data_dir: Path, origin: str
) -> None:
    since = datetime.now(timezone.utc)
    seen: list[int] = []

    @FUZZ
    @given(delivery=deliveries(origin, signed=False))
    def unsigned(delivery: tuple[str, bytes, dict[str, str]]) -> None:
        source, body, headers = delivery
        answer = receiver.post(f"/webhooks/{source}", content=body, headers=headers)
        seen.append(answer.status_code)
        assert answer.status_code == 401, answer.text

    unsigned()
    assert len(seen) >= 100
    assert not data_dir.exists(), "an unsigned delivery reached the ledger"
    assert work_item_events(prefect_api, since) == 0
    # The count is real: one signed request is seen by the same query.
    body = json.dumps({
        "action": "label_updated", "repository": {"full_name": "fuzz/app", "name": "app", "clone_url": origin},
        "issue": {"number": 5, "title": "Counted", "labels": [{"name": "sdlc"}]},
    }).encode()
    spec = SOURCES["gitea"]
    answer = receiver.post("/webhooks/gitea", content=body, headers={
        spec.event_header: "issues", spec.delivery_header: str(uuid.uuid4()), spec.signature_header: signature_for(SECRETS["gitea"], body),
    })
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 15
    while work_item_events(prefect_api, since) != 1:
        assert time.monotonic() < deadline, "the signed delivery's event never arrived"
        time.sleep(0.3)


def test_signed_random_deliveries_never_get_a_server_error(receiver: InProcessReceiver, origin: str) -> None:
    statuses: list[int] = []

    @FUZZ
    @given(delivery=deliveries(origin, signed=True))
    def signed(delivery: tuple[str, bytes, dict[str, str]]) -> None:
        source, body, headers = delivery
        answer = receiver.post(f"/webhooks/{source}", content=body, headers=headers)
        statuses.append(answer.status_code)
        assert answer.status_code in (200, 202, 409, 422), answer.text
        assert isinstance(answer.json(), dict)

    signed()
    # Not only refusals: the fuzzer reached the ledger and the decisions too.
    assert {202, 422} <= set(statuses), sorted(set(statuses))


def test_any_path_and_method_never_gets_a_server_error(receiver: InProcessReceiver) -> None:
    @FUZZ
    @given(path=st.text(max_size=40), method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]), body=st.binary(max_size=200))
    def anywhere(path: str, method: str, body: bytes) -> None:
        url = "/webhooks/" + quote(path, safe="")
        answer = receiver.portal.call(functools.partial(receiver.client.request, method, url, content=body))
        assert answer.status_code < 500, answer.text

    anywhere()


def test_a_non_ascii_content_length_is_not_a_server_error(prefect_api: str, data_dir: Path) -> None:
    """Uvicorn refuses it before the app, but the app must not rely on that (it answered 500)."""
    import anyio

    app = create_app(webhook_settings())
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        scope = {
            "type": "http", "http_version": "1.1", "method": "POST", "path": "/webhooks/gitea", "raw_path": b"/webhooks/gitea",
            "root_path": "", "scheme": "http", "query_string": b"", "server": ("receiver", 80), "client": ("127.0.0.1", 1),
            "headers": [(b"content-length", "\u00b2".encode("latin-1"))],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    anyio.run(call)
    assert sent[0]["status"] == 401


# --- schemathesis: the receiver's own OpenAPI document -----------------------------------------------


# Loaded in-process at import (schemathesis.pytest.from_fixture needs pytest < 9); requests reach the
# ledger only at test time, under the test's data_dir.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(webhook_settings()))


def sign(case: Any) -> Any:
    """The same case, signed with its source's secret (when the path names a source and the body is JSON)."""
    source = case.path_parameters.get("source") if case.path_parameters else None
    if source not in SOURCES or case.body is NOT_SET:
        return None
    try:
        raw = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    except (TypeError, ValueError):
        return None
    spec = SOURCES[source]
    case.body = raw
    case.headers = {**(case.headers or {}), spec.signature_header: signature(source, SECRETS[source], raw)}
    return case


@schema.parametrize()
@settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case: Any, prefect_api: str, data_dir: Path) -> None:
    case.call_and_validate(checks=[not_a_server_error])
    signed = sign(case)
    if signed is not None:
        signed.call_and_validate(checks=[not_a_server_error])


def test_the_openapi_document_describes_the_deliveries() -> None:
    document = create_app(webhook_settings()).openapi()
    operation = document["paths"]["/webhooks/{source}"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["source"]["schema"]["enum"] == ["gitea", "forgejo", "github", "gitlab", "plane"]
    for spec in SOURCES.values():
        assert {spec.signature_header, spec.event_header, spec.delivery_header} <= set(parameters)
        assert parameters[spec.signature_header]["in"] == "header"
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert [variant["title"] for variant in body["anyOf"]] == [
        "IssuesPayload", "IssueCommentPayload", "GitLabIssueHook", "GitLabNoteHook", "PlaneCommentPayload"
    ]
    assert {"200", "202", "401", "409", "413", "422"} <= set(operation["responses"])
