"""The pull request tells the story (issue 17, item 4).

sdlc.pr_body renders the story and merges it above the marker of a PR's body,
keeping what a person wrote below it; the forges (local, Gitea, GitHub test
servers, each checked against its contract) read the body, write it back only
when it changed, and name a file's web view on a branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks.forge import GiteaCredentials, GitHubCredentials
from forge_servers.gitea import DEFAULT_TOKEN as GITEA_TOKEN
from forge_servers.gitea import GiteaTestServer
from forge_servers.gitea import git as server_git
from forge_servers.github import GitHubTestServer
from gitrepo import isolate, make_origin
from sdlc.models import ForgeSpec
from sdlc.pr_body import (
    BODY_LIMIT,
    DOCUMENTS,
    MARKER,
    NOTES_HINT,
    STORY_LIMIT,
    PullRequestStory,
    document_path,
    merge_body,
    notes_of,
    render_story,
    story_body,
    summary,
)
from tasks.failures import PermanentError
from tasks.forge import LocalForge, file_url, file_urls, update_pull_request_story
from tasks.forge_gitea import GiteaForge
from tasks.forge_github import GitHubForge
from tasks.forge_http import HttpRetry
from tasks.ledger import Ledger
from tasks.worktree import ensure_main_clone

OWNER, REPO = "acme", "shop"
WORK_ITEM = "ET-7"
BRANCH = "feature/ET-7-checkout"
GITHUB_TOKEN = "test-token"
FAST_RETRY = HttpRetry(max_attempts=4, backoff_base_seconds=0.01, backoff_cap_seconds=0.05)
DESCRIPTION = "Customers pay for their basket.\n\nThey get a receipt by mail."

BRD = """# Business requirements: checkout

## Summary

The shop needs a checkout so that customers can pay for what is in their basket.

It must work on phones.

## Scope

Payments by card only.
"""
CRITERIA = """# Acceptance criteria

- AC1: a customer with a basket can pay by card
- AC2: the customer gets a receipt by mail
"""
ARCHITECTURE = "# Architecture\n\nOne module, `checkout.py`, behind the basket service.\n\n## Details\n\nMore.\n"
REVIEW = "# Review\n\nVerdict: APPROVE\n\nClean and tested.\n"
TEST_REPORT = "# Test report\n\nResult: PASS\n\n12 tests, all green.\n"


def story(**changes: object) -> PullRequestStory:
    fields: dict[str, object] = {
        "work_item": WORK_ITEM,
        "title": "Checkout",
        "description": DESCRIPTION,
        "documents": {"02-brd.md": BRD, "04-acceptance-criteria.md": CRITERIA},
        "document_links": {
            "02-brd.md": f"docs/work-items/{WORK_ITEM}/02-brd.md",
            "04-acceptance-criteria.md": f"docs/work-items/{WORK_ITEM}/04-acceptance-criteria.md",
        },
        "spend_usd": 1.5,
        "budget_usd": 10.0,
        "run_url": "http://127.0.0.1:4200/runs/flow-run/0b1c",
        "stage": "architecture",
    }
    fields.update(changes)
    return PullRequestStory.model_validate(fields)


def later_story() -> PullRequestStory:
    """The story once review and testing passed: new sections."""
    documents = {
        "02-brd.md": BRD,
        "04-acceptance-criteria.md": CRITERIA,
        "11-architecture.md": ARCHITECTURE,
        "12-review.md": REVIEW,
        "13-test-report.md": TEST_REPORT,
    }
    return story(
        documents=documents,
        document_links={name: document_path(WORK_ITEM, name) for name in documents},
        review_verdict="APPROVE",
        test_result="PASS",
        spend_usd=4.25,
        stage="deploy",
    )


def split(body: str) -> tuple[str, str]:
    """sdlc's part and the rest, at the one marker."""
    assert body.count(MARKER) >= 1
    index = body.index(MARKER)
    return body[:index], body[index + len(MARKER) :]


# -- rendering -------------------------------------------------------------------------------------


def test_story_tells_work_item_analysis_links_spend_and_run() -> None:
    text = render_story(story())
    assert text.startswith("## ET-7: Checkout\n")
    for expected in (
        "### Work item",
        DESCRIPTION,
        "### Analysis",
        "The shop needs a checkout so that customers can pay for what is in their basket.",
        "It must work on phones.",
        "#### Acceptance criteria",
        "> - AC1: a customer with a basket can pay by card",
        "> - AC2: the customer gets a receipt by mail",
        "### Documents",
        f"[Business requirements](docs/work-items/{WORK_ITEM}/02-brd.md)",
        "**Spend:** $1.50 of $10.00 budget",
        "[Prefect flow run](http://127.0.0.1:4200/runs/flow-run/0b1c)",
        "**Stage:** architecture",
    ):
        assert expected in text
    # The summary is the first section with text: the BRD's scope is not in it.
    assert "Payments by card only" not in text
    # Review and tests do not exist yet: no sections for them.
    assert "### Review" not in text and "### Tests" not in text and "### Architecture" not in text
    assert text.rstrip().endswith(NOTES_HINT)
    assert text.count(MARKER) == 1


def test_later_story_has_architecture_review_and_tests() -> None:
    text = render_story(later_story())
    assert "### Architecture\n\nOne module, `checkout.py`, behind the basket service." in text
    assert "More." not in text
    assert "### Review\n\n**Verdict:** APPROVE" in text and "Clean and tested." in text
    assert "### Tests\n\n**Result:** PASS" in text and "12 tests, all green." in text
    for name in later_story().documents:
        assert f"[{DOCUMENTS[name]}]({document_path(WORK_ITEM, name)})" in text
    assert "Requirements" not in text and "Test plan" not in text  # not written: not listed


def test_missing_documents_and_values() -> None:
    text = render_story(PullRequestStory(work_item="ET-9", title="", description=""))
    assert text.startswith("## ET-9\n")
    assert "_No description._" in text
    for heading in ("### Analysis", "### Architecture", "### Review", "### Tests", "### Documents", "**Spend:**"):
        assert heading not in text
    # A verdict known before its document is read still shows; a document without a link shows its path.
    text = render_story(story(review_verdict="REQUEST_CHANGES", document_links={}))
    assert "**Verdict:** REQUEST\\_CHANGES" in text
    assert f"- Business requirements: `docs/work-items/{WORK_ITEM}/02-brd.md`" in text


def test_links_are_only_web_urls_or_paths() -> None:
    text = render_story(
        story(
            run_url="javascript:alert(1)",
            document_links={
                "02-brd.md": "javascript:alert(document.cookie)",
                "04-acceptance-criteria.md": "https://forge.example/acme/shop/blob/x/a (b).md",
            },
        )
    )
    assert "javascript:" not in text
    assert "(link withheld: not a web URL)" in text
    assert f"- Business requirements: `docs/work-items/{WORK_ITEM}/02-brd.md`" in text
    assert "[Acceptance criteria](https://forge.example/acme/shop/blob/x/a%20%28b%29.md)" in text


def test_summary_is_bounded_and_skips_the_title() -> None:
    assert summary("# Title\n\nFirst.\n\nSecond.\n") == "First.\n\nSecond."
    assert summary("") == ""
    long = summary("# T\n\n" + "word " * 1000)
    assert len(long) <= 600 and long.endswith("…")
    fenced = summary("# T\n\n```python\n" + "x = 1\n" * 500)
    assert len(fenced) <= 700 and fenced.rstrip().endswith("```")


# -- merging -------------------------------------------------------------------------------------------


def test_merge_into_no_body_and_idempotent() -> None:
    text = render_story(story())
    body = merge_body(None, text)
    assert body == text
    assert merge_body(body, text) == body
    assert merge_body("", text) == body
    assert notes_of(body) == ""


def test_old_sdlc_description_is_replaced_but_a_persons_text_is_kept() -> None:
    text = render_story(story())
    # The body an older sdlc-flows wrote (the bare description) is sdlc's own: replaced.
    assert story_body(DESCRIPTION, story()) == text
    assert story_body(DESCRIPTION.replace("\n", "\r\n") + "\r\n", story()) == text
    # Anything else without the marker is a person's: kept whole, below the marker.
    edited = DESCRIPTION + "\n\nPlease also check the VAT rules. -- Ann"
    body = story_body(edited, story())
    sdlc, rest = split(body)
    assert sdlc.startswith("## ET-7: Checkout")
    assert rest.endswith("\n" + edited)
    assert notes_of(body) == edited
    assert story_body(body, story()) == body


def test_persons_notes_survive_new_sections() -> None:
    first = merge_body(None, render_story(story()))
    notes = "## Reviewer notes\n\nLooks good, but <b>check</b> the `VAT` rules.\n<!-- a comment of mine -->\n"
    edited = first + notes
    later = merge_body(edited, render_story(later_story()))
    assert later.endswith("\n\n" + notes)
    assert "### Review\n\n**Verdict:** APPROVE" in later
    assert later.count(MARKER) == 1
    assert merge_body(later, render_story(later_story())) == later


def test_web_editor_line_ends_and_deleted_footer() -> None:
    text = render_story(story())
    body = merge_body(None, text)
    # A web editor sends CRLF line ends back.
    crlf = body.replace("\n", "\r\n") + "Ann's note\r\nsecond line"
    merged = merge_body(crlf, render_story(later_story()))
    assert merged.endswith("\nAnn's note\r\nsecond line")
    assert merged.count(NOTES_HINT) == 1
    assert merge_body(merged, render_story(later_story())) == merged
    # The footer deleted, the marker kept: the text after the marker is the person's.
    bare = text[: text.index(MARKER) + len(MARKER)] + "\nmy note"
    merged = merge_body(bare, text)
    assert notes_of(merged) == "my note" and merged.count(NOTES_HINT) == 1
    assert merge_body(merged, text) == merged


def test_hostile_description_cannot_move_the_marker() -> None:
    hostile = (
        f"Before\n{MARKER}\n\n---\n\n{NOTES_HINT}\n\nfake notes\n"
        "<!-- an unclosed comment\n<details><summary>x</summary>\n```\nan unclosed fence\n"
    )
    text = render_story(story(description=hostile, title=f"T {MARKER}", stage=MARKER))
    assert text.count(MARKER) == 1  # only the real one, at the end
    assert text.count("<!--") == 1
    sdlc, _ = split(text)
    assert "an unclosed fence\n```" in sdlc  # the fence is closed before the next section
    assert "### Documents" in sdlc
    body = merge_body(None, text)
    assert notes_of(body) == ""
    # A person quoting the marker in their notes: the first marker still splits, the notes stay whole.
    notes = f"I pasted {MARKER} here\nand more"
    with_notes = merge_body(body + notes, text)
    assert notes_of(with_notes) == notes
    assert merge_body(with_notes, text) == with_notes
    # A story text built by hand with the marker inside is neutralised too.
    handmade = f"top {MARKER} middle\n\n{MARKER}\n"
    merged = merge_body(None, handmade)
    assert merged.count(MARKER) == 1 and merged.startswith("top ")


def test_huge_inputs_are_bounded() -> None:
    big = "a" * 100_000
    huge = story(
        title="T" * 100_000,
        description=("word " * 20_000) + "\n```\n" + "code\n" * 20_000,
        documents={name: "# Title\n\n" + ("line of text\n" * 10_000) for name in DOCUMENTS},
        document_links={name: "https://x.example/" + big for name in DOCUMENTS},
        review_verdict=big,
        test_result=big,
        stage=big,
    )
    text = render_story(huge)
    assert len(text) < STORY_LIMIT + 500
    body = merge_body(None, text)
    assert len(body) <= BODY_LIMIT
    assert body.count(MARKER) == 1
    assert merge_body(body, text) == body
    # Long notes of a person: kept whole, sdlc's part cut to fit.
    notes = "n" * 50_000
    merged = merge_body(body + notes, text)
    assert merged.endswith("\n" + notes) and len(merged) <= BODY_LIMIT
    assert "cut to fit" in merged
    assert merge_body(merged, text) == merged
    # Notes too long for anything else: kept, sdlc's part gives way entirely.
    notes = "m" * 65_500
    merged = merge_body(body + notes, text)
    assert merged.startswith(MARKER) and merged.endswith("\n" + notes)
    assert merge_body(merged, text) == merged


def test_size_counts_characters_outside_the_basic_plane() -> None:
    emoji = story(description="🙂" * 40_000)  # 80 000 UTF-16 units, 40 000 code points
    body = merge_body("x" * 30_000, render_story(emoji))
    assert len(body.encode("utf-16-le")) // 2 <= BODY_LIMIT
    assert body.endswith("\n" + "x" * 30_000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    description=st.lists(st.sampled_from([*"ab <!->`~#\n\r_*", MARKER]), max_size=60).map("".join),
    notes=st.lists(st.sampled_from([*"xy <!->`~#\n\r", MARKER, NOTES_HINT, "---"]), max_size=40).map("".join),
)
def test_merge_properties(description: str, notes: str) -> None:
    text = render_story(story(description=description))
    assert text.count(MARKER) == 1
    first = merge_body(None, text)
    edited = first + notes
    merged = merge_body(edited, text)
    assert merge_body(merged, text) == merged
    assert merged.count(MARKER) >= 1
    assert merged.startswith(text[: text.index(MARKER)])
    kept = notes_of(edited)
    assert notes_of(merged) == kept
    if kept:
        assert merged.endswith(kept)


# -- forges --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


def push_branch(origin: Path, tmp_path: Path, branch: str = BRANCH) -> None:
    """Another clone commits a file on ``branch`` and pushes it to the bare repository."""
    work = tmp_path / "dev"
    server_git(tmp_path, "clone", "--quiet", str(origin), str(work))
    server_git(work, "checkout", "--quiet", "-B", branch)
    (work / "checkout.py").write_text("checkout = True\n", encoding="utf-8")
    server_git(work, "add", "--all")
    server_git(work, "commit", "--quiet", "-m", f"work on {branch}")
    server_git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")


@pytest.fixture
def gitea(tmp_path: Path) -> Iterator[GiteaTestServer]:
    with GiteaTestServer(tmp_path / "gitea") as server:
        yield server
        assert server.violations == [], "requests not defined by Gitea's swagger.v1.json"
        assert server.response_problems == [], "GiteaTestServer answered outside the document"


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubTestServer]:
    with GitHubTestServer(tmp_path / "github", token=GITHUB_TOKEN) as server:
        yield server
        assert server.violations == [], "requests outside github-endpoints.md:\n" + "\n".join(server.violations)


def gitea_forge(server: GiteaTestServer) -> GiteaForge:
    credentials = GiteaCredentials(api_url=server.api_url, token=GITEA_TOKEN, timeout_seconds=5)
    return GiteaForge(credentials=credentials, owner=OWNER, repo=REPO, retry=FAST_RETRY, sleep=lambda _: None)


def github_forge(server: GitHubTestServer) -> GitHubForge:
    credentials = GitHubCredentials(api_url=server.api_url, token=GITHUB_TOKEN, timeout_seconds=5)
    return GitHubForge(credentials=credentials, owner=OWNER, repo=REPO, retry=FAST_RETRY, sleep=lambda _: None)


def gitea_person(server: GiteaTestServer) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, headers={"Authorization": f"token {GITEA_TOKEN}"})


def github_person(server: GitHubTestServer) -> httpx.Client:
    headers = {
        "Authorization": f"Bearer {GITHUB_TOKEN}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    return httpx.Client(base_url=server.api_url, headers=headers)


def patches(server: GiteaTestServer | GitHubTestServer) -> list[int | None]:
    return [r.status for r in server.requests if r.method == "PATCH"]


def tell_the_story(
    forge: GiteaForge | GitHubForge,
    server: GiteaTestServer | GitHubTestServer,
    person: httpx.Client,
    created: int,
) -> None:
    """The whole life of a PR body: opened with the description, the story, a person's note, more story."""
    pr = forge.ensure_pull_request(
        branch=BRANCH, base="main", title="ET-7: Checkout", body=DESCRIPTION, work_item=WORK_ITEM
    )
    path = f"/repos/{OWNER}/{REPO}/pulls/{pr.number}"

    def body_now() -> str:
        return str(person.get(path).json()["body"])

    assert forge.update_pull_request_body(number=pr.number, body_of=lambda current: story_body(current, story()))
    first = body_now()
    assert first == render_story(story())  # the bare description was sdlc's own: replaced
    assert patches(server) == [created]

    # Nothing new: read, not written.
    assert not forge.update_pull_request_body(number=pr.number, body_of=lambda current: story_body(current, story()))
    assert patches(server) == [created]

    # A person adds a note below the marker, through the API (as the web UI does, with CRLF).
    note = "Ann: please check the VAT rules.\r\n\r\n- [ ] VAT\r\n"
    edited = person.patch(path, json={"body": first.replace("\n", "\r\n") + note})
    assert edited.status_code == created
    assert patches(server) == [created, created]
    # Same text, CRLF line ends: nothing to write.
    assert not forge.update_pull_request_body(number=pr.number, body_of=lambda current: story_body(current, story()))
    assert patches(server) == [created, created]

    # Review and testing passed: new sections, the note kept.
    assert forge.update_pull_request_body(number=pr.number, body_of=lambda current: story_body(current, later_story()))
    later = body_now()
    assert later.endswith("\n" + note)
    assert "### Review\n\n**Verdict:** APPROVE" in later and "### Tests\n\n**Result:** PASS" in later
    assert later.count(MARKER) == 1
    assert not forge.update_pull_request_body(
        number=pr.number, body_of=lambda current: story_body(current, later_story())
    )
    assert patches(server) == [created, created, created]


def test_gitea_keeps_the_story_and_the_persons_note(gitea: GiteaTestServer, tmp_path: Path) -> None:
    push_branch(gitea.create_repo(OWNER, REPO), tmp_path)
    with gitea_forge(gitea) as forge, gitea_person(gitea) as person:
        tell_the_story(forge, gitea, person, created=201)
    edits = [r for r in gitea.requests if r.method == "PATCH"]
    assert {r.operation for r in edits} == {"repoEditPullRequest"}


def test_github_keeps_the_story_and_the_persons_note(github: GitHubTestServer, tmp_path: Path) -> None:
    push_branch(github.create_repo(OWNER, REPO), tmp_path)
    with github_forge(github) as forge, github_person(github) as person:
        tell_the_story(forge, github, person, created=200)
    edits = [r for r in github.requests if r.method == "PATCH"]
    assert {r.operation for r in edits} == {"update_pull"}


def test_gitea_edit_retries_a_lost_answer_and_refuses_an_unknown_pr(gitea: GiteaTestServer, tmp_path: Path) -> None:
    push_branch(gitea.create_repo(OWNER, REPO), tmp_path)
    with gitea_forge(gitea) as forge:
        pr = forge.ensure_pull_request(branch=BRANCH, base="main", title="ET-7: Checkout", body="", work_item=WORK_ITEM)
        gitea.inject("PATCH", rf"/pulls/{pr.number}$", status=502, after=True)  # written, answer lost
        assert forge.update_pull_request_body(number=pr.number, body_of=lambda current: story_body(current, story()))
        assert patches(gitea) == [502, 201]
        assert gitea.pull_requests(OWNER, REPO)[0]["body"] == render_story(story())
        with pytest.raises(PermanentError):
            forge.update_pull_request_body(number=99, body_of=lambda current: "x")


def test_github_edit_retries_and_edits_title_and_state(github: GitHubTestServer, tmp_path: Path) -> None:
    push_branch(github.create_repo(OWNER, REPO), tmp_path)
    with github_forge(github) as forge, github_person(github) as person:
        pr = forge.ensure_pull_request(branch=BRANCH, base="main", title="ET-7: Checkout", body="", work_item=WORK_ITEM)
        github.inject("PATCH", rf"/pulls/{pr.number}$", status=500)
        assert forge.update_pull_request_body(number=pr.number, body_of=lambda current: "story")
        assert patches(github) == [500, 200]
        path = f"/repos/{OWNER}/{REPO}/pulls/{pr.number}"
        answer = person.patch(path, json={"title": "New title", "state": "closed"})
        assert answer.status_code == 200
        assert (answer.json()["title"], answer.json()["state"], answer.json()["body"]) == (
            "New title",
            "closed",
            "story",
        )
        assert person.patch(path, json={"state": "open"}).json()["state"] == "open"
        assert person.patch(path, json={"base": "no-such-branch"}).status_code == 422


def test_gitea_edit_title_and_state(gitea: GiteaTestServer, tmp_path: Path) -> None:
    push_branch(gitea.create_repo(OWNER, REPO), tmp_path)
    with gitea_forge(gitea) as forge, gitea_person(gitea) as person:
        pr = forge.ensure_pull_request(
            branch=BRANCH, base="main", title="ET-7: Checkout", body="b", work_item=WORK_ITEM
        )
        path = f"/repos/{OWNER}/{REPO}/pulls/{pr.number}"
        answer = person.patch(path, json={"title": "New title", "state": "closed"})
        assert answer.status_code == 201
        assert (answer.json()["title"], answer.json()["state"], answer.json()["body"]) == ("New title", "closed", "b")
        assert forge.get_pull_request(number=pr.number).state == "closed"
        assert person.patch(path, json={"state": "open", "body": ""}).json()["body"] == ""
        assert forge.merge_pull_request(number=pr.number).state == "merged"
        assert person.patch(path, json={"state": "closed"}).status_code == 412
        # The body of a merged PR can still be told.
        assert forge.update_pull_request_body(number=pr.number, body_of=lambda current: "after the merge")
        assert gitea.pull_requests(OWNER, REPO)[0]["body"] == "after the merge"


def test_file_urls_on_each_forge(gitea: GiteaTestServer, github: GitHubTestServer, tmp_path: Path) -> None:
    gitea.create_repo(OWNER, REPO)
    github.create_repo(OWNER, REPO)
    path = document_path(WORK_ITEM, "02-brd.md")
    with gitea_forge(gitea) as forge:
        assert forge.file_url(branch=BRANCH, path=path) == (
            f"{gitea.web_url}/{OWNER}/{REPO}/src/branch/{BRANCH}/{path}"
        )
        assert forge.file_url(branch=BRANCH, path="docs/a_b.md").endswith("/docs/a_b.md")
        with pytest.raises(ValueError):
            forge.file_url(branch=BRANCH, path="../etc/passwd")
    assert [r.operation for r in gitea.requests] == ["repoGet"]  # the repository is read once
    with github_forge(github) as forge:
        assert forge.file_url(branch=BRANCH, path=path) == f"{github.web_url}/{OWNER}/{REPO}/blob/{BRANCH}/{path}"
        with pytest.raises(ValueError):
            forge.file_url(branch=BRANCH, path="/absolute")


# -- the local forge and the task ------------------------------------------------------------------------


def test_local_forge_keeps_the_story_and_the_note(tmp_path: Path) -> None:
    origin = str(make_origin(tmp_path))
    ledger = Ledger.from_settings()
    forge = LocalForge(repo=origin, clone=ensure_main_clone(origin), ledger=ledger)
    pr = forge.ensure_pull_request(
        branch=BRANCH, base="main", title="ET-7: Checkout", body=DESCRIPTION, work_item=WORK_ITEM
    )
    spec = ForgeSpec()

    assert update_pull_request_story.fn(origin, spec, pr.number, render_story(story()), old_body=DESCRIPTION)
    record = ledger.get_pull_request(origin, pr.number)
    assert record is not None and record.body == render_story(story())
    assert not update_pull_request_story.fn(origin, spec, pr.number, render_story(story()), old_body=DESCRIPTION)

    # A person's note below the marker (there is no web UI: straight into the ledger).
    assert ledger.update_pull_request_body(origin, pr.number, lambda body: body + "note of Ann\n")
    assert update_pull_request_story.fn(origin, spec, pr.number, render_story(later_story()), old_body=DESCRIPTION)
    record = ledger.get_pull_request(origin, pr.number)
    assert record is not None and record.body.endswith("\nnote of Ann\n")
    assert "**Verdict:** APPROVE" in record.body

    with pytest.raises(PermanentError):
        forge.update_pull_request_body(number=42, body_of=lambda current: "x")

    path = document_path(WORK_ITEM, "02-brd.md")
    assert forge.file_url(branch=BRANCH, path=path) == path
    assert file_url(origin, spec, BRANCH, path) == path
    assert file_urls(origin, spec, BRANCH, [path, "docs/x.md"]) == {path: path, "docs/x.md": "docs/x.md"}
