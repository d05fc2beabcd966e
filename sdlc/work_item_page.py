"""One page per work item (issue 17, item 2): what the markdown artifact ``work-item-<id>`` says.

Pure functions, no I/O. :func:`work_item_report` turns a work item's ledger rows into the
dict ``sdlc status --json`` prints; :func:`render_work_item_page` turns that dict (plus the
run's link and the documents on the branch) into the page the Prefect UI's Artifacts page
lists: state and stage, the spend against the budget, the pull request, a timeline of the
stages with the reason of each move, every agent run, and links to the documents.

Every value is data. A title, a reason or an agent's failure text may hold markdown, HTML,
``|`` or line ends: each is shown on one line, its markdown escaped (so a ``|`` cannot split
a table cell and ``<script>`` is text), and cut to a bound. Only http(s) URLs become links.
Long histories are cut to their latest rows, so the page stays small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sdlc.pr_body import DOCUMENTS, _clip, _link_target, _text, neutralise

TITLE_LIMIT = 200
REASON_LIMIT = 500
CELL_LIMIT = 300
LOG_PATH_LIMIT = 300
MAX_TRANSITIONS = 200
MAX_AGENT_RUNS = 200
MAX_DOCUMENTS = 30
DESCRIPTION_LIMIT = 400
NOT_REPORTED = "not reported"


def work_item_report(row: Any, transitions: Iterable[Any], runs: Iterable[Any]) -> dict[str, Any]:
    """A work item as ``sdlc status --json`` shows it: its ledger row (``WorkItemRecord``), its
    transitions (``StageTransitionRecord``) and agent runs (``AgentRunRecord``), oldest first."""
    runs = list(runs)
    return {
        "work_item": row.id,
        "title": row.title,
        "repo": row.repo,
        "branch": row.branch,
        "stage": row.stage,
        "state": row.state,
        "reason": row.reason,
        "flow_run_id": row.flow_run_id,
        "pull_request": {"number": row.pr_number, "url": row.pr_url} if row.pr_number else None,
        "transitions": [
            {"from": t.from_stage, "to": t.to_stage, "reason": t.reason, "at": t.at.isoformat()} for t in transitions
        ],
        "agent_runs": [
            {
                "stage": r.stage,
                "role": r.role,
                "attempt": r.attempt,
                "exit_code": r.exit_code,
                "duration_seconds": r.duration_seconds,
                "timed_out": r.timed_out,
                "error": r.error,
                "failure_kind": r.failure_kind,
                "failure_reason": r.failure_reason,
                "cost_usd": r.cost_usd,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "num_turns": r.num_turns,
                "session_id": r.session_id,
                "sandbox": r.sandbox,
                "log_path": r.log_path,
            }
            for r in runs
        ],
        "usage": {
            "budget_usd": row.budget_usd,
            "cost_usd": round(sum(r.cost_usd or 0 for r in runs), 6),
            "input_tokens": sum(r.input_tokens or 0 for r in runs),
            "output_tokens": sum(r.output_tokens or 0 for r in runs),
            # Runs whose CLI reported no cost (Codex, Gemini CLI, a custom command): the spend above is then
            # a lower bound, and the budget counts only what was reported.
            "runs_without_cost": sum(1 for r in runs if r.cost_usd is None),
        },
    }


# -- values as markdown ----------------------------------------------------------------------------


def plain(value: Any, limit: int = CELL_LIMIT) -> str:
    """``value`` as markdown text on one line, shown as written (escaped), at most ``limit`` characters.

    Fit for a table cell: line ends become spaces and ``|`` is escaped.
    """
    if value is None:
        return ""
    line = " ".join(neutralise(str(value)).split())
    return _text(_clip(line, limit))


def web_link(url: str | None) -> str | None:
    """``url`` as a markdown link target when it is an absolute http(s) URL, else None."""
    if not url:
        return None
    target = _link_target(url)
    if target is None or urlsplit(target).scheme.lower() not in ("http", "https"):
        return None
    return target


def _money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _when(at: Any) -> str:
    """``2025-01-02 10:11:12`` (UTC) from an ISO timestamp; the text itself (escaped) when it is not one."""
    try:
        moment = datetime.fromisoformat(str(at))
    except ValueError:
        return plain(at, 40)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: Any) -> str:
    value = _number(seconds)
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _count(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{int(number):,}"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell or " " for cell in cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row("---" for _ in header)]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _latest(items: list[Any], limit: int, what: str) -> tuple[list[Any], str | None]:
    """The latest ``limit`` items, and a note saying how many earlier ones the page leaves out."""
    if len(items) <= limit:
        return items, None
    return items[-limit:], f"_{len(items) - limit} earlier {what} not shown (`sdlc status --json` has them all)._"


# -- the page --------------------------------------------------------------------------------------


def _outcome(run: Mapping[str, Any]) -> str:
    if run.get("failure_kind"):
        reason = run.get("failure_reason")
        return plain(f"{run['failure_kind']}: {reason}" if reason else run["failure_kind"])
    if run.get("timed_out"):
        return "timed out"
    if run.get("error"):
        return plain(run["error"])
    exit_code = run.get("exit_code")
    if exit_code is None:
        return "running" if run.get("duration_seconds") is None else "—"
    return "ok" if exit_code == 0 else "failed"


def _status_lines(report: Mapping[str, Any], run_url: str | None) -> list[str]:
    lines = [f"**State:** {plain(report.get('state'), 40)} · **Stage:** {plain(report.get('stage') or '—', 60)}"]
    if report.get("reason"):
        lines.append(f"**Why:** {plain(report['reason'], REASON_LIMIT)}")
    where = [f"**Repository:** {plain(report.get('repo'), 200)}", f"**Branch:** {plain(report.get('branch'), 200)}"]
    lines.append(" · ".join(where))
    links: list[str] = []
    pull_request = report.get("pull_request")
    if pull_request and pull_request.get("number") is not None:
        label = f"#{int(pull_request['number'])}"
        target = web_link(pull_request.get("url"))
        shown = f"[{label}]({target})" if target else f"{label} ({plain(pull_request.get('url'), 200)})"
        links.append(f"**Pull request:** {shown}")
    else:
        links.append("**Pull request:** none yet")
    target = web_link(run_url)
    if target:
        links.append(f"**Run:** [Prefect flow run]({target})")
    lines.append(" · ".join(links))
    return lines


def _spend_line(report: Mapping[str, Any]) -> str:
    runs = report.get("agent_runs") or []
    budget = _number((report.get("usage") or {}).get("budget_usd"))
    costs = [c for c in (_number(run.get("cost_usd")) for run in runs) if c is not None]
    if costs:
        spend = _money(sum(costs))
        if budget is not None and budget > 0:
            share = 100 * sum(costs) / budget
            spend += f" of {_money(budget)} budget ({'<1' if 0 < share < 1 else f'{share:.0f}'} %)"
        if len(costs) < len(runs):
            spend += f"; {len(runs) - len(costs)} of {len(runs)} runs reported no cost"
    else:
        spend = NOT_REPORTED + (f" (budget {_money(budget)})" if budget is not None else "")
    tokens_in = [t for t in (_number(run.get("input_tokens")) for run in runs) if t is not None]
    tokens_out = [t for t in (_number(run.get("output_tokens")) for run in runs) if t is not None]
    if tokens_in or tokens_out:
        tokens = f"{int(sum(tokens_in)):,} in / {int(sum(tokens_out)):,} out"
    else:
        tokens = NOT_REPORTED
    return f"**Spend:** {spend} · **Tokens:** {tokens}"


def _timeline(report: Mapping[str, Any]) -> str:
    transitions, note = _latest(list(report.get("transitions") or []), MAX_TRANSITIONS, "transitions")
    if not transitions:
        return "_No stage yet._"
    rows = [
        [
            _when(move.get("at")),
            plain(move.get("from"), 60) if move.get("from") else "start",
            plain(move.get("to"), 60),
            plain(move.get("reason"), REASON_LIMIT),
        ]
        for move in transitions
    ]
    table = _table(["When (UTC)", "From", "To", "Reason"], rows)
    return f"{note}\n\n{table}" if note else table


def _agent_runs(report: Mapping[str, Any]) -> str:
    runs, note = _latest(list(report.get("agent_runs") or []), MAX_AGENT_RUNS, "agent runs")
    if not runs:
        return "_No agent has run yet._"
    rows = []
    for run in runs:
        cost = _number(run.get("cost_usd"))
        exit_code = run.get("exit_code")
        rows.append(
            [
                plain(run.get("stage"), 60),
                plain(run.get("role"), 60),
                _count(run.get("attempt")),
                "—" if exit_code is None else plain(exit_code, 12),
                _duration(run.get("duration_seconds")),
                "—" if cost is None else _money(cost),
                f"{_count(run.get('input_tokens'))} / {_count(run.get('output_tokens'))}",
                _outcome(run),
                plain(run.get("log_path"), LOG_PATH_LIMIT) or "—",
            ]
        )
    header = ["Stage", "Role", "Attempt", "Exit", "Duration", "Cost", "Tokens in / out", "Outcome", "Log"]
    table = _table(header, rows)
    return f"{note}\n\n{table}" if note else table


def _documents(documents: Mapping[str, str | None], branch: Any) -> str:
    if not documents:
        return "_No document committed on the branch yet._"
    lines = []
    for name, where in list(documents.items())[:MAX_DOCUMENTS]:
        label = plain(DOCUMENTS.get(name, name), 100)
        shown_name = plain(name, 100)
        target = web_link(where)
        if target:
            lines.append(f"- [{label}]({target}) ({shown_name})")
        else:
            on_branch = f" on branch {plain(branch, 200)}" if branch else ""
            lines.append(f"- {label}: {plain(where or name, 300)}{on_branch}")
    return "\n".join(lines)


def render_work_item_page(
    report: Mapping[str, Any], *, documents: Mapping[str, str | None] | None = None, run_url: str | None = None
) -> str:
    """The work item's page in markdown.

    ``report`` is :func:`work_item_report`'s dict; ``documents`` maps each document committed on
    the branch (``02-brd.md``) to its web view on the forge, or to its path on the branch where
    the forge has no web view; ``run_url`` is the pipeline run's page in the Prefect UI.
    """
    work_item = plain(report.get("work_item"), 60)
    title = plain(report.get("title"), TITLE_LIMIT)
    parts = [f"# {work_item}: {title}" if title else f"# {work_item}"]
    parts += [*_status_lines(report, run_url), _spend_line(report)]
    parts += ["## Timeline", _timeline(report)]
    parts += ["## Agent runs", _agent_runs(report)]
    parts += ["## Documents", _documents(documents or {}, report.get("branch"))]
    return "\n\n".join(parts) + "\n"


def page_description(report: Mapping[str, Any]) -> str:
    """The artifact's one-line description: ``ET-7: Greet by name — waiting_approval at analysis``."""
    state, stage = report.get("state"), report.get("stage")
    where = f"{state} at {stage}" if stage and stage != state else str(state)
    line = " ".join(neutralise(f"{report.get('work_item')}: {report.get('title')} — {where}").split())
    return _text(_clip(line, DESCRIPTION_LIMIT))
