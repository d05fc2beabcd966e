"""The pull request tells the story (issue 17, item 4): what sdlc-flows writes into a PR's body.

Pure functions, no I/O. :func:`render_story` turns a :class:`PullRequestStory` (the
work item, the documents the stages wrote, the verdicts, the spend, the run) into
markdown that ends with :data:`MARKER`; :func:`merge_body` puts that story above the
marker of the PR's current body and keeps, verbatim, whatever a person wrote below it.

Every value is data. A description may hold markdown, HTML, ``<!--``, an unclosed
code fence or the marker itself: values are neutralised so the marker appears once,
at the end of sdlc's part, and nothing a value holds can hide the story that follows
it. Sizes are bounded: GitHub refuses a body over 65 536 characters, so sdlc's part
stays under :data:`STORY_LIMIT`, and shrinks further when a person's notes are long;
the person's part is never cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, Field

MARKER = "<!-- sdlc-flows: everything above this line is written by sdlc-flows; write below it -->"
NOTES_HINT = "_Add your notes below this line; sdlc-flows keeps them._"
FOOTER = f"\n\n---\n\n{NOTES_HINT}\n\n"
# The footer as it may come back: a web editor turns line ends into CRLF, trims or adds blank lines.
FOOTER_RE = re.compile(r"[ \t\r\n]*---[ \t]*\r?\n[ \t\r\n]*" + re.escape(NOTES_HINT) + r"[ \t]*(?:\r?\n)?")

BODY_LIMIT = 65_536  # GitHub: "body is too long (maximum is 65536 characters)"
STORY_LIMIT = 60_000  # sdlc's part, marker and footer excluded
TITLE_LIMIT = 300
DESCRIPTION_LIMIT = 20_000
SUMMARY_LIMIT = 600
SUMMARY_PARAGRAPHS = 3
CRITERIA_LIMIT = 4_000
LINK_LIMIT = 2_000
VERDICT_LIMIT = 200
CUT_NOTE = "_… (cut to fit the pull request's size limit)_"

# The documents of a work item (docs/work-items/<ID>/), in the order of the stages that write them.
DOCUMENTS: dict[str, str] = {
    "02-brd.md": "Business requirements",
    "03-requirements.md": "Requirements",
    "04-acceptance-criteria.md": "Acceptance criteria",
    "05-test-plan.md": "Test plan",
    "11-architecture.md": "Architecture",
    "12-review.md": "Review",
    "13-test-report.md": "Test report",
}
ANALYSIS_DOCUMENTS = ("02-brd.md", "03-requirements.md")
CRITERIA_DOCUMENT = "04-acceptance-criteria.md"
ARCHITECTURE_DOCUMENT = "11-architecture.md"
REVIEW_DOCUMENT = "12-review.md"
TEST_REPORT_DOCUMENT = "13-test-report.md"


def document_path(work_item: str, name: str) -> str:
    """Where a work item's document lives on its branch, e.g. ``docs/work-items/ET-7/02-brd.md``."""
    return f"docs/work-items/{work_item}/{name}"


class PullRequestStory(BaseModel):
    """Everything the PR body tells; the caller reads the documents that exist on the branch."""

    work_item: str
    title: str
    description: str = ""
    documents: dict[str, str] = Field(default_factory=dict, description="File name (02-brd.md) -> its text.")
    document_links: dict[str, str] = Field(
        default_factory=dict, description="File name -> web URL on the forge, or the path on the branch."
    )
    review_verdict: str | None = None
    test_result: str | None = None
    spend_usd: float | None = None
    budget_usd: float | None = None
    run_url: str | None = None
    stage: str | None = None


# -- neutralising values -------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def neutralise(text: str) -> str:
    """A value safe inside sdlc's part: no HTML comment opens (so no marker), every code fence closed.

    ``<!--`` gets an invisible zero-width space after ``<``: it reads the same, in a code
    block too, but opens no comment that would hide the rest of the story.
    """
    text = _normalise(text).replace("<!--", "<\u200b!--")
    return _close_fences(text)


def _close_fences(text: str) -> str:
    """``text`` with a closing fence added when a fenced code block is left open (it would swallow the rest)."""
    open_fence: str | None = None
    for line in text.split("\n"):
        found = _FENCE_RE.match(line)
        if not found:
            continue
        fence, rest = found.group(1), found.group(2)
        if open_fence is None:
            if fence[0] == "`" and "`" in rest:
                continue  # not a fence: a backtick fence's info string has no backtick
            open_fence = fence
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not rest.strip():
            open_fence = None
    if open_fence is not None:
        text = text.rstrip("\n") + "\n" + open_fence
    return text


def _one_line(text: str, limit: int) -> str:
    line = " ".join(neutralise(text).split())
    return _clip(line, limit)


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _clip_block(text: str, limit: int) -> str:
    """A multi-line value cut to ``limit`` characters at a line end where possible, fences closed."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - len(CUT_NOTE) - 8)]
    newline = cut.rfind("\n")
    if newline > len(cut) // 2:
        cut = cut[:newline]
    return _close_fences(cut.rstrip()) + "\n\n" + CUT_NOTE


def _size(text: str) -> int:
    """Characters as GitHub may count them (UTF-16 code units): never less than ``len``."""
    return len(text.encode("utf-16-le")) // 2


def _link_target(url: str) -> str | None:
    """A link target safe in markdown: http(s) URLs and relative paths only, spaces and parentheses encoded."""
    url = url.strip()
    if not url or len(url) > LINK_LIMIT or any(ch in url for ch in "\n\r\t<>\"'`"):
        return None
    parts = urlsplit(url)
    if parts.scheme and parts.scheme.lower() not in ("http", "https"):
        return None
    if not parts.scheme and (url.startswith("//") or ":" in url.split("/", 1)[0]):
        return None
    return quote(url, safe="/:?#[]@!$&*+,;=%~-._")


def _text(value: str) -> str:
    """Markdown text that shows ``value`` as written (one line)."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", value)


# -- summaries -------------------------------------------------------------------------------------


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of the text's first section that has any (its title and headings dropped), fences kept whole."""
    lines = neutralise(text).split("\n")
    blocks: list[str] = []
    current: list[str] = []
    fence: str | None = None
    for line in lines:
        found = _FENCE_RE.match(line)
        if fence is not None:
            current.append(line)
            if found and found.group(1)[0] == fence[0] and len(found.group(1)) >= len(fence):
                fence = None
            continue
        if found:
            fence = found.group(1)
            current.append(line)
            continue
        heading = bool(re.match(r"^ {0,3}#{1,6}(\s|$)", line) or re.match(r"^ {0,3}(=+|-+)\s*$", line))
        if heading or not line.strip():
            if current:
                blocks.append("\n".join(current).strip("\n"))
                current = []
            if heading and any(block.strip() for block in blocks):
                break  # the first section with text is the summary: the next heading ends it
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return [block for block in blocks if block.strip()]


def summary(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """The first paragraph(s) of a document after its title, at most ``limit`` characters."""
    taken: list[str] = []
    used = 0
    for block in _paragraphs(text)[:SUMMARY_PARAGRAPHS]:
        if taken and used + len(block) + 2 > limit:
            break
        taken.append(block)
        used += len(block) + 2
    joined = "\n\n".join(taken)
    if len(joined) > limit:
        joined = _close_fences(_clip(joined, limit))
    return joined


def _without_title(text: str) -> str:
    lines = neutralise(text).strip("\n").split("\n")
    if lines and re.match(r"^ {0,3}#\s", lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip("\n")


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.split("\n"))


# -- rendering -------------------------------------------------------------------------------------


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _status_line(story: PullRequestStory) -> str:
    parts: list[str] = []
    if story.stage:
        parts.append(f"**Stage:** {_text(_one_line(story.stage, 60))}")
    if story.spend_usd is not None:
        spend = _money(story.spend_usd)
        if story.budget_usd is not None:
            spend += f" of {_money(story.budget_usd)} budget"
        parts.append(f"**Spend:** {spend}")
    if story.run_url:
        target = _link_target(story.run_url)
        parts.append(f"**Run:** [Prefect flow run]({target})" if target else "**Run:** (link withheld: not a web URL)")
    return " · ".join(parts)


def _section(heading: str, body: str) -> str:
    return f"### {heading}\n\n{body.strip()}"


def _documents_section(story: PullRequestStory, work_item: str) -> str:
    names = [name for name in DOCUMENTS if name in story.document_links or name in story.documents]
    names += sorted((set(story.document_links) | set(story.documents)) - set(DOCUMENTS))
    lines: list[str] = []
    for name in names[:50]:
        clean = _one_line(name, 100).replace("`", "")
        label = _text(DOCUMENTS.get(name, clean))
        target = _link_target(story.document_links.get(name, ""))
        if target:
            lines.append(f"- [{label}]({target}) (`{clean}`)")
        else:
            lines.append(f"- {label}: `{document_path(work_item, clean)}`")
    return "\n".join(lines)


def render_story(story: PullRequestStory) -> str:
    """The PR body sdlc-flows writes: markdown under clear headings, ending with :data:`MARKER` and the footer."""
    work_item = _one_line(story.work_item, 60)
    title = _one_line(story.title, TITLE_LIMIT)
    parts = [f"## {_text(work_item)}: {_text(title)}" if title else f"## {_text(work_item)}"]
    status = _status_line(story)
    if status:
        parts.append(status)

    description = neutralise(story.description).strip("\n")
    parts.append(
        _section(
            "Work item", _clip_block(description, DESCRIPTION_LIMIT) if description.strip() else "_No description._"
        )
    )

    docs = story.documents
    analysis = next((summary(docs[name]) for name in ANALYSIS_DOCUMENTS if docs.get(name, "").strip()), "")
    criteria = _without_title(docs.get(CRITERIA_DOCUMENT, ""))
    if analysis or criteria.strip():
        body = analysis or "_No summary yet._"
        if criteria.strip():
            body += "\n\n#### Acceptance criteria\n\n" + _quoted(_clip_block(criteria, CRITERIA_LIMIT))
        parts.append(_section("Analysis", body))

    architecture = summary(docs.get(ARCHITECTURE_DOCUMENT, ""))
    if architecture:
        parts.append(_section("Architecture", architecture))

    for heading, label, value, name in (
        ("Review", "Verdict", story.review_verdict, REVIEW_DOCUMENT),
        ("Tests", "Result", story.test_result, TEST_REPORT_DOCUMENT),
    ):
        text = summary(docs.get(name, ""))
        if value is None and not text:
            continue
        lines = [f"**{label}:** {_text(_one_line(value, VERDICT_LIMIT))}"] if value else []
        if text:
            lines.append(text)
        parts.append(_section(heading, "\n\n".join(lines)))

    documents = _documents_section(story, work_item.replace("`", ""))
    if documents:
        parts.append(_section("Documents", documents))

    story_text = _clip_block("\n\n".join(parts), STORY_LIMIT)
    return story_text + "\n\n" + MARKER + FOOTER


# -- merging with the current body ------------------------------------------------------------------


def notes_of(current: str | None, *, sdlc_texts: Iterable[str] = ()) -> str:
    """What a person wrote in ``current`` (kept verbatim): the text below the marker, else the whole body.

    A body without the marker is a person's text (a PR of an older sdlc-flows, or one whose
    marker was deleted), unless it is empty or exactly one of ``sdlc_texts`` (what sdlc-flows
    wrote before it wrote stories: the work item's description).
    """
    if current is None:
        return ""
    index = current.find(MARKER)
    if index < 0:
        plain = _normalise(current).strip()
        if not plain or any(plain == _normalise(text).strip() for text in sdlc_texts):
            return ""
        return current
    after = current[index + len(MARKER) :]
    footer = FOOTER_RE.match(after)
    if footer is not None:
        after = after[footer.end() :]
    after = after.lstrip("\r\n")
    return after if after.strip() else ""


def _sdlc_part(story_text: str) -> str:
    """The story above its marker, with any other marker (or comment opener) neutralised."""
    index = story_text.rfind(MARKER)
    part = story_text[:index] if index >= 0 else story_text
    return _close_fences(_normalise(part).replace("<!--", "<\u200b!--")).rstrip()


def merge_body(current: str | None, story_text: str, *, sdlc_texts: Iterable[str] = ()) -> str:
    """The new PR body: ``story_text`` above the marker, then what a person wrote in ``current``.

    Idempotent: ``merge_body(merge_body(c, s), s) == merge_body(c, s)``. sdlc's part is cut
    (never the person's) so the whole stays within :data:`BODY_LIMIT` where that is possible.
    """
    notes = notes_of(current, sdlc_texts=sdlc_texts)
    tail = "\n\n" + MARKER + FOOTER + notes
    part = _sdlc_part(story_text)
    room = min(STORY_LIMIT, BODY_LIMIT - _size(tail))
    if _size(part) > room:
        part = _fit(part, room)
    return (part + tail) if part else tail.lstrip("\n")


def _fit(part: str, room: int) -> str:
    """sdlc's part cut to ``room`` UTF-16 units, at a line end, fences closed, with a note; empty if no room."""
    if room < len(CUT_NOTE) + 200:
        return ""
    budget = room - len(CUT_NOTE) - 16
    cut = part.encode("utf-16-le")[: 2 * budget].decode("utf-16-le", errors="ignore")
    newline = cut.rfind("\n")
    if newline > len(cut) // 2:
        cut = cut[:newline]
    return _close_fences(cut.rstrip()) + "\n\n" + CUT_NOTE


def story_body(current: str | None, story: PullRequestStory) -> str:
    """The PR body for ``story`` given the current one: :func:`render_story` merged by :func:`merge_body`,
    treating the work item's bare description (the body sdlc-flows wrote before stories) as its own."""
    return merge_body(current, render_story(story), sdlc_texts=(story.description,))


def same_body(first: str | None, second: str | None) -> bool:
    """Whether two bodies say the same (a forge's web editor may turn line ends into CRLF)."""
    return _normalise(first or "").rstrip() == _normalise(second or "").rstrip()
