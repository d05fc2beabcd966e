"""What people read in the Prefect UI before they decide (issue 17): a stage's documents as an artifact,
and the PR's story.

The person approving the analysis reads it on the pipeline run's page, through the link in
the Resume form, instead of finding the branch in git. Documents are read as the stage
committed them (``git show HEAD:...`` in the branch's worktree), never as files an agent
could still be changing, and kept whole up to a bound that no document reaches in practice.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

from git.exc import GitCommandError
from prefect import task
from pydantic import BaseModel, Field

from sdlc.graph import artifacts_dir
from sdlc.models import GateResult, PullRequestRef, ReportLink, WorkItemRequest, slugify
from sdlc.pr_body import (
    DOCUMENTS,
    REVIEW_DOCUMENT,
    TEST_REPORT_DOCUMENT,
    PullRequestStory,
    document_path,
    render_story,
)
from sdlc.retry import STEP_RETRY_DELAYS_SECONDS
from tasks.classify import read_tail
from tasks.failures import SdlcError, retried_on_transient
from tasks.git import git_env, repo_at, run_logger
from tasks.worktree import worktree_path

DOCUMENT_MAX_CHARS = 200_000
QUOTE_MAX_CHARS = 3_000
REPORT_LOG_LINES = 200
REPORT_LOG_CHARS = 20_000


class PublishedDocuments(BaseModel):
    """A stage's documents as published: the artifact's key, its page in the UI, and the texts."""

    key: str
    url: str | None = None
    documents: dict[str, str | None] = Field(default_factory=dict, description="File name -> text (None: missing).")

    def quote(self, name_part: str) -> str | None:
        """The first document whose name contains ``name_part``, as a markdown quote (bounded)."""
        for name, text in self.documents.items():
            if name_part in name and text:
                cut = text.strip()
                if len(cut) > QUOTE_MAX_CHARS:
                    cut = cut[:QUOTE_MAX_CHARS].rstrip() + "\n\n[... the rest is in the artifact]"
                return "\n".join(f"> {line}" if line else ">" for line in cut.splitlines())
        return None


def artifact_key(kind: str, work_item: str) -> str:
    """``<kind>-<work item>`` in the form Prefect accepts for a key (lower-case letters, digits, dashes)."""
    return f"{slugify(kind, 30)}-{slugify(work_item, 60)}"


def artifact_url(artifact_id: UUID | str) -> str | None:
    """The Prefect UI page that shows an artifact's content (the key's page lists its versions)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/artifacts/artifact/{artifact_id}" if base else None


PAGE = 200


def page_kinds(stages: Iterable[str]) -> list[str]:
    """The pages a work item may have, in the order people read them: its own page, each stage's
    documents as published for a person's decision, the analyst's questions, each gate's report."""
    stages = list(stages)
    return ["work-item", *stages, "questions", *(f"{stage}-report" for stage in stages)]


def published_pages(work_items: Iterable[str], kinds: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """Per work item, its pages published so far: key -> the latest version's UI page (None without a UI URL).

    One query for all of them, through the Prefect API (raises httpx errors when it does not answer).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    kinds = list(kinds)
    wanted = {artifact_key(kind, item): item for item in work_items for kind in kinds}
    if not wanted:
        return {}
    only_these = ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=list(wanted)))
    latest: dict[str, UUID] = {}
    with get_client(sync_client=True) as client:
        while True:  # in pages: the server answers at most PREFECT_API_DEFAULT_LIMIT (200) at a time
            found = client.read_latest_artifacts(artifact_filter=only_these, limit=PAGE, offset=len(latest))
            latest.update((collection.key, collection.latest_id) for collection in found)
            if len(found) < PAGE:
                break
    pages: dict[str, dict[str, str | None]] = {item: {} for item in wanted.values()}
    for key, item in wanted.items():  # in the kinds' order
        if key in latest:
            pages[item][key] = artifact_url(latest[key])
    return pages


def committed_documents(request: WorkItemRequest, names: list[str]) -> dict[str, str | None]:
    """The work item's documents as its branch's head holds them, in the order given."""
    repo = repo_at(worktree_path(request.repo, request.feature_branch))
    folder = artifacts_dir(request.work_item)
    documents: dict[str, str | None] = {}
    for name in names:
        try:
            text: str | None = repo.git.show(f"HEAD:{folder}/{name}", env=git_env(), strip_newline_in_stdout=False)
        except GitCommandError:
            text = None
        documents[name] = text[:DOCUMENT_MAX_CHARS] if text is not None else None
    return documents


def render_documents(heading: str, documents: dict[str, str | None]) -> str:
    """One markdown page: the heading, then each document under its name, whole."""
    parts = [f"# {heading}"]
    for name, text in documents.items():
        body = text.strip() if text else "_(not written)_"
        # A document's own headings go one level down, under its name.
        body = re.sub(r"(?m)^(#{1,5}) ", r"#\1 ", body)
        parts += [f"## {name}", body]
    return "\n\n".join(parts) + "\n"


@task(name="publish-documents", **retried_on_transient(STEP_RETRY_DELAYS_SECONDS))
def publish_documents(request: WorkItemRequest, kind: str, heading: str, names: list[str]) -> PublishedDocuments:
    """Publish the named documents of the work item as the markdown artifact ``<kind>-<id>``."""
    from prefect.artifacts import create_markdown_artifact

    documents = committed_documents(request, names)
    key = artifact_key(kind, request.work_item)
    artifact_id: Any = create_markdown_artifact(  # a UUID: called from a task, Prefect runs it synchronously
        markdown=render_documents(heading, documents),
        key=key,
        description=f"{heading} ({', '.join(names)})",
    )
    return PublishedDocuments(key=key, url=artifact_url(artifact_id), documents=documents)


# --- why a gate sent the work back (issue 17) -------------------------------------------------------

_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")


def printable(text: str) -> str:
    """``text`` without terminal escapes and control characters (a log's colours, a NUL no database keeps);
    line and tab breaks stay, a carriage return breaks the line, anything else shows as U+FFFD."""
    text = _TERMINAL_ESCAPES.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else "\ufffd" for ch in text)


def fenced(text: str, info: str = "text") -> str:
    """``text`` as a markdown code block that nothing in it can close or leave: its fence is
    longer than the longest run of backticks in the text (CommonMark closes a fence only with
    one at least as long)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def code_span(text: str) -> str:
    """``text`` as inline code on one line, whatever backticks it holds."""
    text = " ".join(printable(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def render_log_tail(path: str | Path, max_lines: int = REPORT_LOG_LINES, max_chars: int = REPORT_LOG_CHARS) -> str:
    """The end of a log as markdown: at most ``max_lines`` lines and ``max_chars`` characters of it,
    read with one seek from the end however large the log is, in a code block it cannot break out of."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"_(the log {code_span(str(path))} is not there)_"
    read = 2 * max_chars  # bytes: enough for max_chars characters of text that is mostly ASCII
    every = printable(read_tail(path, read)).splitlines()
    lines: list[str] = []
    used = 0
    for line in reversed(every[-max_lines:]):
        used += len(line) + 1
        if used > max_chars + 1:
            break
        lines.insert(0, line)
    if not lines and every:  # a last line longer than the bound: its end
        lines = [every[-1][-max_chars:]]
    whole = size <= read and lines == every
    what = f"The whole log {code_span(str(path))} ({size} bytes)"
    if not whole:
        what = f"The end of the log {code_span(str(path))} ({size} bytes; its last {len(lines)} line(s) here)"
    return f"{what}:\n\n{fenced(chr(10).join(lines))}"


def _shifted(markdown: str) -> str:
    """A document's own headings one level down, under the report's."""
    return re.sub(r"(?m)^(#{1,5}) ", r"#\1 ", markdown)


def _report_body(request: WorkItemRequest, gate: GateResult) -> str:
    """What the gate read: a document as the branch's head holds it, or the end of a log."""
    assert gate.artifact is not None
    name = PurePosixPath(gate.artifact).name
    if Path(gate.artifact).is_absolute():
        return f"## Log: {name}\n\n{render_log_tail(gate.artifact)}"
    repo = repo_at(worktree_path(request.repo, request.feature_branch))
    try:
        text: str | None = repo.git.show(f"HEAD:{gate.artifact}", env=git_env(), strip_newline_in_stdout=False)
    except GitCommandError:
        text = None
    if text is not None:
        return f"## {name}\n\n{_shifted(printable(text[:DOCUMENT_MAX_CHARS]).strip()) or '_(empty)_'}"
    what = f"_(not committed on {code_span(request.feature_branch)}; what the gate read of it:)_"
    return f"## {name}\n\n{what}\n\n{fenced(printable(gate.details) or '(nothing)')}"


def render_gate_report(work_item: str, stage: str, visit: int, gate: GateResult, body: str) -> str:
    """The page of a failed gate: which gate, its outcome and why, then what it read."""
    facts = [
        f"- **Outcome:** {code_span(gate.outcome)}",
        f"- **Why:** {code_span(gate.reason)}",
        f"- **Stage run:** {code_span(stage)}, visit {visit}",
    ]
    if gate.artifact:
        facts.append(f"- **The gate read:** {code_span(gate.artifact)}")
    return "\n\n".join([f"# The {stage} gate of {work_item}: {gate.outcome}", "\n".join(facts), body]) + "\n"


@task(name="publish-gate-report")
def publish_gate_report(request: WorkItemRequest, stage: str, visit: int, gate: GateResult) -> ReportLink | None:
    """Publish what a failed gate read (the review, the test report, the end of the tests' log) as the
    markdown artifact ``<stage>-report-<id>`` of the stage's run, so the run that sent the work back
    says why in the UI, and the next agent's run can name it. None when the gate read nothing.

    A report that cannot be published is a warning in the run's log; it never fails the stage.
    """
    if gate.artifact is None:
        return None
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(f"{stage}-report", request.work_item)
    try:
        markdown = render_gate_report(request.work_item, stage, visit, gate, _report_body(request, gate))
        artifact_id: Any = create_markdown_artifact(  # a UUID: called from a task, Prefect runs it synchronously
            markdown=markdown, key=key, description=f"Why the {stage} gate of {request.work_item} said {gate.outcome}"
        )
    except Exception as exc:  # noqa: BLE001 - the work goes on without its report, and the log says so
        run_logger(logging.getLogger("sdlc.artifacts")).warning(
            "the %s gate's report of %s was not published: %s", stage, request.work_item, exc
        )
        return None
    return ReportLink(key=key, url=artifact_url(artifact_id))


VERDICT_LINE = re.compile(r"(?mi)^\W*(?:verdict|result)\W*:\W*(\w+)")


def _verdict(text: str | None) -> str | None:
    found = VERDICT_LINE.search(text or "")
    return found.group(1).upper() if found else None


@task(name="tell-pull-request-story")
def tell_pull_request_story(
    request: WorkItemRequest, pull_request: PullRequestRef, stage: str, run_url: str | None
) -> bool:
    """Write the work item's story so far into its PR's body, above the line a person writes below
    (sdlc/pr_body.py): the documents committed on the branch, links to them on the forge, the review
    verdict and test result once there, the spend and the run. True when the body changed.

    A story that cannot be written is said in the run's log; it never stops the work item.
    """
    from tasks import forge
    from tasks.git import run_logger
    from tasks.ledger import Ledger

    try:
        documents = {name: text for name, text in committed_documents(request, list(DOCUMENTS)).items() if text}
        paths = {name: document_path(request.work_item, name) for name in documents}
        urls = forge.file_urls(request.repo, request.forge, request.feature_branch, paths.values())
        ledger = Ledger.from_settings()
        row = ledger.get_work_item(request.work_item)
        story = PullRequestStory(
            work_item=request.work_item,
            title=request.title,
            description=request.description,
            documents=documents,
            document_links={name: urls.get(path) or path for name, path in paths.items()},
            review_verdict=_verdict(documents.get(REVIEW_DOCUMENT)),
            test_result=_verdict(documents.get(TEST_REPORT_DOCUMENT)),
            spend_usd=sum(ledger.spend_by_stage(request.work_item).values()),
            budget_usd=row.budget_usd if row is not None else request.budget_usd,
            run_url=run_url,
            stage=f"{stage} passed",
        )
        return forge.update_pull_request_story.fn(
            request.repo, request.forge, pull_request.number, render_story(story), old_body=request.description
        )
    except (SdlcError, ValueError, GitCommandError) as exc:
        run_logger(logging.getLogger("sdlc.artifacts")).warning(
            "the story of PR #%s was not written: %s", pull_request.number, exc
        )
        return False
