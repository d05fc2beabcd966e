"""One page per work item (issue 17, item 2): the markdown artifact ``work-item-<id>``, kept current.

Every pipeline step (:func:`tasks.tracking.record_step`) and a run that ends failed
(:func:`tasks.tracking.record_failure`) publish the page again, from the ledger, after
their ledger writes: a new version of the same key, so the Prefect UI's Artifacts page
lists each work item once, at its latest. What the page says is rendered by
:mod:`sdlc.work_item_page`.

Cheap, since it runs at every step: three ledger reads, one ``git ls-tree`` in the
branch's worktree for the documents committed on it, and one artifact. The forge is
asked for the documents' web views only for documents it has not been asked about in
this process (never for the local forge, whose web view is the path), and a forge that
failed is left alone for :data:`FORGE_QUIET_SECONDS`, the paths shown meanwhile. The page never
fails a step: whatever goes wrong is a warning in the run's log, and the next step
publishes the page again.
"""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath
from typing import Any

from sdlc.graph import artifacts_dir
from sdlc.models import WorkItemRequest
from sdlc.pr_body import DOCUMENTS, document_path
from sdlc.retry import HttpRetry
from sdlc.work_item_page import page_description, render_work_item_page, work_item_report
from tasks.git import git_env, repo_at, run_logger
from tasks.ledger import Ledger

PAGE_KIND = "work-item"
MAX_DOCUMENT_NAMES = 30
# Web views of documents already asked of the forge in this process: (repo, forge, branch, path) -> URL.
_WEB_VIEWS: dict[tuple[str, str, str, str], str | None] = {}
_WEB_VIEWS_LIMIT = 2_000
# A forge that failed is not asked again for a while: each step would otherwise wait for its retries.
_FORGE_FAILED_AT: dict[tuple[str, str], float] = {}
FORGE_QUIET_SECONDS = 300.0
# One try per lookup: a page is republished at every step, so a link missing once is filled in later,
# and a step must not wait out HTTP backoff for it (a forge in an outage would cost ~7.5 s a step).
PAGE_LOOKUP_RETRY = HttpRetry(max_attempts=1)

logger = logging.getLogger("sdlc.work_item_page")


def page_key(work_item: str) -> str:
    """``work-item-<id>``, in the form Prefect accepts for an artifact key."""
    from tasks.artifacts import artifact_key

    return artifact_key(PAGE_KIND, work_item)


def committed_document_names(request: WorkItemRequest) -> list[str]:
    """The work item's documents committed on its branch, in stage order, then any other markdown file
    of its folder by name; empty when this machine has no worktree of the branch (a run resumed elsewhere)."""
    from tasks.worktree import worktree_path

    worktree = worktree_path(request.repo, request.feature_branch)
    if not (worktree / ".git").exists():
        return []
    folder = artifacts_dir(request.work_item)
    listed: str = repo_at(worktree).git.ls_tree("--name-only", "HEAD", "--", f"{folder}/", env=git_env())
    names = {PurePosixPath(line).name for line in listed.splitlines() if line.strip()}
    ordered = [name for name in DOCUMENTS if name in names]
    ordered += sorted(name for name in names - set(DOCUMENTS) if name.endswith(".md"))
    return ordered[:MAX_DOCUMENT_NAMES]


def document_links(request: WorkItemRequest, names: list[str]) -> dict[str, str | None]:
    """Each document's web view on the forge, else its path on the branch (the local forge; a forge that fails)."""
    paths = {name: document_path(request.work_item, name) for name in names}
    if request.forge.kind == "local" or not paths:
        return dict(paths)
    forge_key = request.forge.model_dump_json()

    def view_key(path: str) -> tuple[str, str, str, str]:
        return (request.repo, forge_key, request.feature_branch, path)

    missing = [path for path in paths.values() if view_key(path) not in _WEB_VIEWS]
    failed_at = _FORGE_FAILED_AT.get((request.repo, forge_key))
    if missing and (failed_at is None or time.monotonic() - failed_at > FORGE_QUIET_SECONDS):
        from tasks import forge

        try:
            found = forge.file_urls(
                request.repo, request.forge, request.feature_branch, missing, retry=PAGE_LOOKUP_RETRY
            )
        except Exception as exc:  # noqa: BLE001 - the page shows the paths instead
            _FORGE_FAILED_AT[(request.repo, forge_key)] = time.monotonic()
            run_logger(logger).warning("the documents of %s are not linked on the forge: %s", request.work_item, exc)
            return dict(paths)
        _FORGE_FAILED_AT.pop((request.repo, forge_key), None)
        if len(_WEB_VIEWS) > _WEB_VIEWS_LIMIT:
            _WEB_VIEWS.clear()
        _WEB_VIEWS.update({view_key(path): url for path, url in found.items()})
    return {name: _WEB_VIEWS.get(view_key(path)) or path for name, path in paths.items()}


def publish_work_item_page(
    request: WorkItemRequest, flow_run_id: str | None, *, ledger: Ledger | None = None
) -> str | None:
    """Publish the work item's page as the markdown artifact ``work-item-<id>``; its id, or None.

    Never raises: a page that cannot be published is a warning in the run's log.
    """
    from prefect.artifacts import create_markdown_artifact

    from tasks.notify import flow_run_url

    try:
        ledger = ledger or Ledger.from_settings()
        row = ledger.get_work_item(request.work_item)
        if row is None:
            return None
        report = work_item_report(row, ledger.transitions(row.id), ledger.agent_runs(row.id))
        try:
            documents = document_links(request, committed_document_names(request))
        except Exception as exc:  # noqa: BLE001 - the page goes out without its documents
            run_logger(logger).warning("the documents of %s are not on its page: %s", request.work_item, exc)
            documents = {}
        markdown = render_work_item_page(
            report, documents=documents, run_url=flow_run_url(flow_run_id or row.flow_run_id)
        )
        create: Any = create_markdown_artifact  # `_sync`: synchronous wherever it is called (a task, a hook)
        artifact_id = create(
            markdown=markdown, key=page_key(request.work_item), description=page_description(report), _sync=True
        )
    except Exception as exc:  # noqa: BLE001 - the page never fails the step (issue 17)
        run_logger(logger).warning("the page of %s was not published: %s", request.work_item, exc)
        return None
    return str(artifact_id)
