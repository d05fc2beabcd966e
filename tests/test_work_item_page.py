"""One page per work item (issue 17, item 2): what sdlc.work_item_page renders, hostile values included.

The page is read the way the Prefect UI shows it: rendered to HTML by a CommonMark parser with
GitHub's tables (markdown-it-py), so a value that breaks a table, opens a tag or smuggles a
link would show in the HTML.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from markdown_it import MarkdownIt

from sdlc.work_item_page import (
    MAX_AGENT_RUNS,
    MAX_TRANSITIONS,
    page_description,
    plain,
    render_work_item_page,
    work_item_report,
)

START = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
BRD_URL = "https://forge.example/acme/shop/src/branch/feature/ET-7-greet/docs/work-items/ET-7/02-brd.md"
RUN_URL = "http://127.0.0.1:4200/runs/flow-run/1b6f"


def html_of(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def run(stage: str, role: str, attempt: int = 1, **fields: Any) -> SimpleNamespace:
    values: dict[str, Any] = dict(
        stage=stage, role=role, attempt=attempt, exit_code=0, duration_seconds=4.2, timed_out=False, error=None,
        failure_kind=None, failure_reason=None, cost_usd=None, input_tokens=None, output_tokens=None,
        num_turns=None, session_id=None, sandbox=None, log_path=f"/data/logs/ET-7/{role}-{attempt}.log",
    )
    values.update(fields)
    return SimpleNamespace(**values)


def move(minute: int, from_stage: str | None, to_stage: str, reason: str) -> SimpleNamespace:
    return SimpleNamespace(from_stage=from_stage, to_stage=to_stage, reason=reason, at=START + timedelta(minutes=minute))


def row(**fields: Any) -> SimpleNamespace:
    values: dict[str, Any] = dict(
        id="ET-7", title="Greet by name", repo="/srv/git/shop.git", branch="feature/ET-7-greet", stage="done",
        state="done", reason="merged PR #1", flow_run_id="1b6f", pr_number=1,
        pr_url="https://forge.example/acme/shop/pulls/1", budget_usd=5.0,
    )
    values.update(fields)
    return SimpleNamespace(**values)


def done_report(**fields: Any) -> dict[str, Any]:
    transitions = [
        move(0, None, "analysis", "started"),
        move(1, "analysis", "architecture", "analysis approved (auto-approve)"),
        move(2, "architecture", "development", "architecture passed"),
        move(3, "development", "review", "development passed"),
        move(4, "review", "development", "review requested changes: see 12-review.md"),
        move(5, "development", "review", "development passed"),
        move(6, "review", "testing", "review approved"),
        move(7, "testing", "deploy", "tests passed"),
        move(8, "deploy", "done", "merged PR #1"),
    ]
    runs = [
        run("analysis", "analyst", cost_usd=0.0125, input_tokens=1000, output_tokens=200),
        run("development", "developer", cost_usd=0.5, input_tokens=20_000, output_tokens=3_000, duration_seconds=95),
        run("review", "reviewer", cost_usd=0.1, input_tokens=4_000, output_tokens=500),
        run("development", "developer", 2, exit_code=1, failure_kind="transient", failure_reason="rate_limit",
            cost_usd=0.2, input_tokens=100, output_tokens=10),
    ]
    return work_item_report(row(**fields), transitions, runs)


def table_rows(html: str, heading: str) -> list[list[str]]:
    """The cells of each body row of the table under ``heading``, as text."""
    section = html.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", tr, re.S) for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_the_page_of_a_done_work_item_shows_state_spend_timeline_runs_and_documents() -> None:
    page = render_work_item_page(
        done_report(),
        documents={"02-brd.md": BRD_URL, "12-review.md": "docs/work-items/ET-7/12-review.md"},
        run_url=RUN_URL,
    )
    html = html_of(page)
    assert page.startswith("# ET-7: Greet by name\n")
    assert "**State:** done · **Stage:** done" in page
    assert '<a href="https://forge.example/acme/shop/pulls/1">#1</a>' in html
    assert f'<a href="{RUN_URL}">Prefect flow run</a>' in html
    assert "**Spend:** $0.8125 of $5.00 budget (16 %) · **Tokens:** 25,100 in / 3,710 out" in page
    timeline = table_rows(html, "Timeline")
    assert [(cells[1], cells[2]) for cells in timeline][:2] == [("start", "analysis"), ("analysis", "architecture")]
    assert timeline[4] == ["2025-05-01 10:04:00", "review", "development", "review requested changes: see 12-review.md"]
    assert timeline[-1][1:] == ["deploy", "done", "merged PR #1"]
    runs = table_rows(html, "Agent runs")
    assert [cells[:3] for cells in runs] == [
        ["analysis", "analyst", "1"], ["development", "developer", "1"], ["review", "reviewer", "1"],
        ["development", "developer", "2"],
    ]
    assert runs[1][3:8] == ["0", "1 min 35 s", "$0.5000", "20,000 / 3,000", "ok"]
    assert runs[3][3:9] == ["1", "4.2 s", "$0.2000", "100 / 10", "transient: rate_limit", "/data/logs/ET-7/developer-2.log"]
    # A forge's web view is a link; a path on the branch (the local forge) is named, not linked.
    assert f'<a href="{BRD_URL}">Business requirements</a> (02-brd.md)' in html
    assert "Review: docs/work-items/ET-7/12-review.md on branch feature/ET-7-greet" in html
    assert page_description(done_report()) == "ET-7: Greet by name — done"


def test_a_work_item_that_has_just_started_says_what_is_not_there_yet() -> None:
    report = work_item_report(
        row(stage="analysis", state="waiting_approval", reason="waiting for a person", pr_number=None, pr_url=None,
            budget_usd=None),
        [move(0, None, "analysis", "started")],
        [run("analysis", "analyst")],
    )
    page = render_work_item_page(report)
    assert "**State:** waiting\\_approval · **Stage:** analysis" in page
    assert "**Pull request:** none yet" in page and "Prefect flow run" not in page
    assert "**Spend:** not reported · **Tokens:** not reported" in page
    assert "_No document committed on the branch yet._" in page
    assert page_description(report) == "ET-7: Greet by name — waiting\\_approval at analysis"
    assert "No agent has run yet" in render_work_item_page(work_item_report(row(), [], []))


@pytest.mark.parametrize("budget", [None, 4.0])
def test_spend_says_which_runs_reported_no_cost(budget: float | None) -> None:
    report = work_item_report(
        row(budget_usd=budget), [], [run("analysis", "analyst", cost_usd=0.25), run("analysis", "analyst", 2)]
    )
    page = render_work_item_page(report)
    expected = "$0.2500" + (" of $4.00 budget (6 %)" if budget else "") + "; 1 of 2 runs reported no cost"
    assert f"**Spend:** {expected} · **Tokens:** not reported" in page


HOSTILE = (
    "a | b || c\n| --- |\nnew row <script>alert(1)</script> <img src=x onerror=alert(1)> <!-- hide "
    "[click](javascript:alert(1)) ![x](http://evil.example/x.png) `code` *em* _u_ # not a heading \\| ``` ~~~"
)


def test_hostile_values_stay_inside_their_cell_and_render_as_text() -> None:
    transitions = [move(0, None, "analysis", HOSTILE), move(1, "analysis", "review|x", HOSTILE * 50)]
    runs = [
        run("analysis", "analyst\n| x |", failure_kind="permanent", failure_reason=HOSTILE, exit_code=1,
            log_path="/logs/a|b\n<script>.log"),
        run("review", "reviewer", error=HOSTILE, exit_code=None, duration_seconds=None),
    ]
    report = work_item_report(
        row(title=HOSTILE, reason=HOSTILE * 100, branch="feature/x", pr_url="javascript:alert(1)", state="failed"),
        transitions,
        runs,
    )
    page = render_work_item_page(
        report, documents={"02-brd.md": "javascript:alert(1)", "x|y.md": "https://ok.example/x"}, run_url="data:x"
    )
    html = html_of(page)
    # Every table keeps its shape: four cells in each timeline row, nine in each agent run's.
    assert [len(cells) for cells in table_rows(html, "Timeline")] == [4, 4]
    assert [len(cells) for cells in table_rows(html, "Agent runs")] == [9, 9]
    assert table_rows(html, "Agent runs")[0][1] == "analyst | x |"
    # No tag, comment, image or script link from a value reaches the HTML; only http(s) URLs are links.
    assert "<script" not in html and "<img" not in html and "<!--" not in html
    assert "javascript:" not in re.sub(r">[^<]*<", "><", html)  # in text, never in an attribute
    assert re.findall(r'href="([^"]*)"', html) == ["https://ok.example/x"]
    assert "#1 (javascript:alert(1))" in page.replace("\\", "")
    # The page starts with its own heading, and has only its own headings.
    assert re.findall(r"<h(\d)>", html) == ["1", "2", "2", "2"]
    assert page.startswith("# ET-7: a \\| b \\|\\| c \\| --- \\| new row \\<script\\>")
    # Bounded: a reason a hundred times the hostile text stays a few hundred characters.
    why = next(line for line in page.splitlines() if line.startswith("**Why:**"))
    assert len(why) < 700 and why.endswith("…")
    assert all(len(line) < 2_000 for line in page.splitlines())
    assert "\n" not in page_description(report) and len(page_description(report)) < 1_000


def test_long_histories_show_their_latest_rows() -> None:
    transitions = [move(i, "development", "review", f"move {i}") for i in range(MAX_TRANSITIONS + 50)]
    runs = [run("development", "developer", i) for i in range(1, MAX_AGENT_RUNS + 31)]
    page = render_work_item_page(work_item_report(row(), transitions, runs))
    html = html_of(page)
    assert len(table_rows(html, "Timeline")) == MAX_TRANSITIONS
    assert table_rows(html, "Timeline")[-1][3] == f"move {MAX_TRANSITIONS + 49}"
    assert "50 earlier transitions not shown" in page and "30 earlier agent runs not shown" in page
    assert len(table_rows(html, "Agent runs")) == MAX_AGENT_RUNS


def test_plain_is_one_escaped_line() -> None:
    assert plain("a\r\nb\n\n|c|") == "a b \\|c\\|"
    assert plain(None) == ""
    assert plain("x" * 500, 10).endswith("…") and len(plain("x" * 500, 10)) == 10


# -- tasks.work_item_page: the documents' links, and a page that cannot be published ------------------


def forge_request(**fields: Any) -> Any:
    from sdlc.models import ForgeSpec, WorkItemRequest

    forge = ForgeSpec(kind="gitea", credentials_block="gitea", owner="acme", name="shop")
    return WorkItemRequest(work_item="ET-7", title="Greet", repo="https://forge.example/acme/shop.git", forge=forge, **fields)


def test_document_links_ask_the_forge_once_per_document_and_fall_back_to_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import forge, work_item_page

    asked: list[list[str]] = []

    def file_urls(repo: str, spec: Any, branch: str, paths: Any, retry: Any = None) -> dict[str, str | None]:
        assert retry is not None and retry.max_attempts == 1  # no backoff for a link
        asked.append(list(paths))
        return {path: f"https://forge.example/acme/shop/src/branch/{branch}/{path}" for path in paths}

    monkeypatch.setattr(work_item_page, "_WEB_VIEWS", {})
    monkeypatch.setattr(work_item_page, "_FORGE_FAILED_AT", {})
    monkeypatch.setattr(forge, "file_urls", file_urls)
    request = forge_request()
    links = work_item_page.document_links(request, ["02-brd.md"])
    assert links == {"02-brd.md": f"https://forge.example/acme/shop/src/branch/{request.branch}/docs/work-items/ET-7/02-brd.md"}
    links = work_item_page.document_links(request, ["02-brd.md", "11-architecture.md"])
    assert asked == [["docs/work-items/ET-7/02-brd.md"], ["docs/work-items/ET-7/11-architecture.md"]]
    assert all(url and url.startswith("https://") for url in links.values())

    # A forge that fails: the paths, and the forge is left alone for a while (each step would wait for it).
    def down(*args: Any, **kwargs: Any) -> Any:
        asked.append(["down"])
        raise ConnectionError("the forge is down")

    monkeypatch.setattr(forge, "file_urls", down)
    for _ in range(2):
        links = work_item_page.document_links(request, ["02-brd.md", "13-test-report.md"])
        assert links["13-test-report.md"] == "docs/work-items/ET-7/13-test-report.md"
    assert asked.count(["down"]) == 1
    # The local forge has no web view: the paths, and no forge is made (it would fetch the clone).
    local = forge_request().model_copy(update={"forge": forge_request().forge.model_copy(update={"kind": "local"})})
    assert work_item_page.document_links(local, ["02-brd.md"]) == {"02-brd.md": "docs/work-items/ET-7/02-brd.md"}
    assert asked.count(["down"]) == 1


def test_a_page_that_cannot_be_published_never_fails_the_step(data_dir: Any) -> None:
    from tasks.work_item_page import committed_document_names, publish_work_item_page

    class BrokenLedger:
        def get_work_item(self, work_item: str) -> Any:
            raise RuntimeError("the ledger is gone")

    request = forge_request()
    assert publish_work_item_page(request, None, ledger=BrokenLedger()) is None  # type: ignore[arg-type]
    assert committed_document_names(request) == []  # no worktree on this machine: no documents, no error
