"""A gate that sends work back explains itself (issue 17): what it read becomes a report, and the
next agent is told where the report is.

The report of a log is its end, bounded however large the log is, in a code block that nothing
in the log can close: checked here by parsing the markdown as CommonMark does, with hostile logs.
The whole way through a pipeline (the review's artifact, the developer's table naming it) is in
tests/test_pipeline.py.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from sdlc import router
from sdlc.graph import DEFAULT_GRAPH
from sdlc.models import Feedback, GateResult, ReportLink, StageInput, WorkItemRequest
from tasks.artifacts import (
    REPORT_LOG_CHARS,
    REPORT_LOG_LINES,
    code_span,
    fenced,
    publish_gate_report,
    render_gate_report,
    render_log_tail,
)

LINK = ReportLink(key="review-report-et-7", url="http://127.0.0.1:4200/artifacts/artifact/0000")

HOSTILE = [
    "```",
    "`````````` closes nothing",
    "~~~",
    "    ```",
    "</pre><script>alert(1)</script>",
    "# not a heading",
    "[a link](javascript:alert(1))",
    "colour \x1b[31mred\x1b[0m and a NUL \x00 and a bell \x07",
    "progress 10%\rprogress 100%",
    "```` trailing",
]


def blocks(markdown: str) -> list[str]:
    """The code blocks of ``markdown`` as a CommonMark parser finds them, and nothing else of it that is code."""
    return [
        token.content for token in MarkdownIt("commonmark").parse(markdown) if token.type in ("fence", "code_block")
    ]


def test_a_fenced_text_is_one_code_block_whatever_backticks_it_holds() -> None:
    text = "\n".join(line for line in HOSTILE if line.isprintable())
    markdown = "before\n\n" + fenced(text) + "\n\n# after"
    (block,) = blocks(markdown)
    assert block == text + "\n"
    assert "after" in MarkdownIt("commonmark").render(markdown).split("</code></pre>")[-1]
    assert code_span("a ``b`` c") == "```a ``b`` c```"
    assert MarkdownIt("commonmark").renderInline(code_span("`x` <b>")) == "<code>`x` &lt;b&gt;</code>"


def test_a_hostile_log_stays_inside_its_code_block(tmp_path: Path) -> None:
    log = tmp_path / "tests-development-1.log"
    log.write_bytes("\n".join(HOSTILE).encode() + b"\n\xff\xfe not utf-8\n")
    markdown = render_log_tail(log)
    assert markdown.startswith(f"The whole log `{log}`")
    (block,) = blocks(markdown)
    # Every line is there, as text; terminal escapes and control characters are not.
    for line in ("```", "`````````` closes nothing", "</pre><script>alert(1)</script>", "# not a heading"):
        assert line + "\n" in block
    assert "colour red and a NUL \ufffd and a bell \ufffd" in block
    assert "progress 10%\nprogress 100%" in block
    assert "\x1b" not in markdown and "\x00" not in markdown and "\r" not in markdown


def test_a_huge_log_is_cut_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "tests.log"
    with log.open("w") as out:
        for number in range(200_000):  # about 5 MB
            out.write(f"line {number} ``` {'x' * 10}\n")
        out.write("the last line\n")
    markdown = render_log_tail(log)
    assert markdown.startswith(f"The end of the log `{log}` ({log.stat().st_size} bytes; its last")
    (block,) = blocks(markdown)
    lines = block.splitlines()
    assert len(lines) == REPORT_LOG_LINES and len(block) <= REPORT_LOG_CHARS + 1
    assert lines[-1] == "the last line" and lines[-2] == "line 199999 ``` xxxxxxxxxx"


def test_a_log_of_long_lines_is_cut_by_characters_and_one_endless_line_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_text("".join(f"{n:04d}" + "y" * 996 + "\n" for n in range(100)))
    (block,) = blocks(render_log_tail(log))
    assert len(block) <= REPORT_LOG_CHARS + 1 and block.splitlines()[-1].startswith("0099")
    assert block.splitlines()[0].startswith("0081")  # whole lines only: 19 of 1001 characters fit

    log.write_text("z" * 3_000_000 + "`" * 50 + "END")
    (block,) = blocks(render_log_tail(log))
    assert block == "z" * (REPORT_LOG_CHARS - 53) + "`" * 50 + "END\n"


def test_a_missing_log_is_said() -> None:
    assert "is not there" in render_log_tail("/nonexistent/sdlc/tests.log")


def test_the_report_says_which_gate_its_outcome_and_why() -> None:
    gate = GateResult(
        outcome="request_changes",
        passed=False,
        reason="12-review.md: request_changes",
        artifact="docs/work-items/ET-7/12-review.md",
    )
    page = render_gate_report("ET-7", "review", 2, gate, "## 12-review.md\n\nVerdict: REQUEST_CHANGES")
    assert page.startswith("# The review gate of ET-7: request_changes\n")
    assert "- **Why:** `12-review.md: request_changes`" in page and "`review`, visit 2" in page
    assert "- **The gate read:** `docs/work-items/ET-7/12-review.md`" in page


def _request(tmp_path: Path) -> WorkItemRequest:
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--bare", "-q", str(origin)], check=True)
    return WorkItemRequest(work_item="ET-7", title="Greet", description="", repo=str(origin))


def test_a_report_that_cannot_be_published_is_a_warning_not_a_failure(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = _request(tmp_path)  # no worktree: the committed review cannot be read
    gate = GateResult(outcome="request_changes", passed=False, reason="r", artifact="docs/work-items/ET-7/12-review.md")
    with caplog.at_level(logging.WARNING, logger="sdlc.artifacts"):
        assert publish_gate_report.fn(request, "review", 1, gate) is None
    assert "the review gate's report of ET-7 was not published" in caplog.text
    # A gate that read nothing has nothing to publish.
    assert publish_gate_report.fn(request, "review", 1, gate.model_copy(update={"artifact": None})) is None


def test_the_report_goes_with_the_feedback_into_the_next_task_file(tmp_path: Path) -> None:
    from tasks.taskfile import render_task

    gate = GateResult(
        outcome="request_changes",
        passed=False,
        reason="12-review.md: request_changes",
        details="Verdict: REQUEST_CHANGES",
        artifact="docs/work-items/ET-7/12-review.md",
        report=LINK,
    )
    decision = router.decide(
        DEFAULT_GRAPH, router.Progress(stage="review", visits={"review": 1}), router.StageFinished(gate=gate)
    )
    assert isinstance(decision.action, router.RunStage) and decision.action.stage == "development"
    (feedback,) = decision.action.feedback
    assert feedback.report == LINK
    stage_input = StageInput(request=_request(tmp_path), stage="development", visit=2, feedback=[feedback])
    text = render_task(stage_input, DEFAULT_GRAPH.stage("development"), attempt=2)
    assert f"### From review (see `docs/work-items/ET-7/12-review.md`) (report: {LINK.url})" in text
    # Without a UI address the key says where the report is; feedback without a report says nothing of one.
    unlinked = Feedback(source="review", summary="s", report=ReportLink(key="review-report-et-7"))
    assert "(report: review-report-et-7)" in render_task(
        stage_input.model_copy(update={"feedback": [unlinked]}), DEFAULT_GRAPH.stage("development"), attempt=2
    )
    assert "(report:" not in render_task(
        stage_input.model_copy(update={"feedback": [Feedback(source="tests", summary="s")]}),
        DEFAULT_GRAPH.stage("development"),
        attempt=2,
    )
    assert LINK.describe() == f"review-report-et-7 {LINK.url}" and ReportLink(key="k").describe() == "k"
