"""The `sdlc` command (B62): run a work item, demo, approve / reject / answer, status, server.

Input is validated before anything is created: a bad ID, branch, repository or
agent gets one line on stderr and exit 2. Prefect is imported only after the
Prefect API is settled (embedded server or PREFECT_API_URL), because it reads its
settings at import.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from entrypoints.approvals import resume_waiting_run
from entrypoints.server import ServerOfAnotherInstallation
from sdlc.graph import StageGraph
from sdlc.models import (
    AGENT_KINDS,
    AgentSpec,
    Continuation,
    ForgeSpec,
    TrackerSpec,
    WorkItemRequest,
    WorkItemState,
    validate_comment,
    validate_person,
    validate_work_item_id,
)
from sdlc.settings import (
    SdlcSettings,
    environment_value,
    export_environment,
    get_settings,
    login_name,
    settings_from_environment,
    settings_in_force,
)
from tasks.ledger_migrations import LedgerNewerThanCode

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"sdlc: error: {message}\n")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {message}" if where and where not in message else message


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="sdlc", description="Run AI coding agents through a software-delivery pipeline.")
    parser.add_argument("--data-dir", help="State directory (default .sdlc, or SDLC_DATA_DIR).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser("run", help="Take one work item to its end.")
    run.add_argument("--repo", required=True, help="Origin: a path (bare repository) or a git URL.")
    run.add_argument("--work-item", required=True, help="Work item ID, e.g. ET-12.")
    run.add_argument("--title", required=True)
    run.add_argument("--description", default="")
    run.add_argument("--branch", help="Default feature/<ID>-<slug of title>.")
    run.add_argument(
        "--agent",
        choices=AGENT_KINDS,
        default=None,
        help="Agent kind; unset: --agent-profile, else SDLC_AGENT_PROFILE, else agent_profile in .sdlc/config.yaml.",
    )
    run.add_argument("--agent-command", help="Any command under the B5 protocol (quoted like a shell would).")
    run.add_argument("--agent-profile", help="Name of a saved AgentProfile block.")
    run.add_argument("--agent-timeout", type=float, help="Seconds per agent run (default 1800).")
    run.add_argument("--scenario", help="Scenario file of the scripted agent (JSON or YAML).")
    run.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "none"),
        help="Confine the agents with bubblewrap: auto (default: where it works), bwrap (or fail), none.",
    )
    run.add_argument(
        "--forge",
        choices=("local", "gitea", "forgejo", "github", "gitlab"),
        default="local",
        help="Where the PR lives (default local).",
    )
    run.add_argument("--forge-block", help="GiteaCredentials / GitHubCredentials / GitLabCredentials block of --forge.")
    run.add_argument("--forge-repo", help="OWNER/NAME of the repository on --forge (GitLab: GROUP/SUBGROUP/NAME).")
    run.add_argument("--plane-block", help="PlaneCredentials block: keep this work item's Plane item in step (B50).")
    run.add_argument("--plane-ref", help="The Plane work item (ENG-42 or its UUID); default the work item ID.")
    run.add_argument("--budget-usd", type=float, help="Spend budget of the work item in dollars (B34).")
    run.add_argument("--auto-approve", action="store_true", help="Do not pause for approval of the analysis.")
    run.add_argument("--verbose", action="store_true", help="Show Prefect's own log lines too.")

    resume = commands.add_parser("resume", help="Go on with a work item whose run stopped (crash, closed terminal).")
    resume.add_argument("work_item")
    resume.add_argument("--verbose", action="store_true", help="Show Prefect's own log lines too.")

    retry = commands.add_parser("retry", help="Send a Blocked work item on from where it stopped, once it is fixed.")
    retry.add_argument("work_item")
    retry.add_argument("--stage", help="Go on at this stage instead (default: the one it stopped at).")
    retry.add_argument("--comment", default="", help="What was fixed, or what to do: the next agent reads it.")
    retry.add_argument("--by", default=login_name())
    retry.add_argument("--verbose", action="store_true", help="Show Prefect's own log lines too.")

    demo = commands.add_parser("demo", help="Run a sample work item through every stage.")
    demo.add_argument("--wait-approval", action="store_true", help="Wait for a person to approve.")
    demo.add_argument("--approve-after", type=float, default=3.0, help="Seconds before the demo approves itself.")
    demo.add_argument("--verbose", action="store_true")

    approve = commands.add_parser("approve", help="Approve a work item's analysis.")
    approve.add_argument("work_item")
    approve.add_argument("--by", default=login_name())
    approve.add_argument("--comment", default="")

    reject = commands.add_parser("reject", help="Send the analysis back to the analyst.")
    reject.add_argument("work_item")
    reject.add_argument("--by", default=login_name())
    reject.add_argument("--comment", required=True)

    answer = commands.add_parser("answer", help="Answer the analyst's questions.")
    answer.add_argument("work_item")
    answer.add_argument("--file", required=True, help="File with the answers ('-' for stdin).")
    answer.add_argument("--by", default=login_name())

    status = commands.add_parser("status", help="Work items, stages, PRs and agent runs.")
    status.add_argument("work_item", nargs="?")
    status.add_argument("--json", action="store_true")

    webhooks = commands.add_parser("webhooks", help="The webhook receiver (Gitea, GitHub, Plane).")
    webhooks.add_argument("action", choices=("serve",))
    webhooks.add_argument("--host", default="127.0.0.1")
    webhooks.add_argument("--port", type=int, default=8787)
    webhooks.add_argument("--settings-block", default="sdlc-webhooks", help="Name of the WebhookSettings block.")

    telegram = commands.add_parser("telegram", help="Approvals from Telegram without a public address (getUpdates).")
    telegram.add_argument("action", choices=("poll",))
    telegram.add_argument(
        "--block", help="TelegramNotification block (default: the one sdlc-telegram/NAME in SDLC_NOTIFY_BLOCKS)."
    )
    telegram.add_argument("--once", action="store_true", help="Apply what is waiting, then exit.")
    telegram.add_argument(
        "--timeout", type=int, help="Long-poll seconds of one getUpdates call (default 50; 0 with --once)."
    )

    worker = commands.add_parser("worker", help="Run the work pool's flow runs in this process (a long-lived runner).")
    worker.add_argument("--pool", default="sdlc-process", help="Work pool to serve (default sdlc-process).")
    worker.add_argument("--limit", type=int, default=50, help="Flow runs at once (default 50).")
    worker.add_argument("--query-seconds", type=float, default=1.0, help="How often to look for due runs.")

    server = commands.add_parser("server", help="The embedded Prefect server.")
    server.add_argument("action", choices=("start", "stop", "status"))

    graph = commands.add_parser("graph", help="The stage graph: print the one in force, or check a file.")
    graph_commands = graph.add_subparsers(dest="graph_command", required=True, parser_class=OneLineParser)
    graph_commands.add_parser("dump", help="Print the graph in force (SDLC_GRAPH_FILE, else built in) as YAML.")
    check = graph_commands.add_parser("check", help="Check a graph file: exit 0, or exit 2 naming every problem.")
    check.add_argument("file", help="A stage graph YAML file.")
    check.add_argument("--repo", help="Also find the roles' prompts on this repository's default branch.")
    return parser


# --- run -------------------------------------------------------------------


def request_from_args(args: argparse.Namespace) -> WorkItemRequest:
    """Validate everything the user gave; raises UsageError before anything is created."""
    if args.agent_command is not None and args.agent not in (None, "custom"):
        raise UsageError("give either --agent or --agent-command, not both")
    agent_fields: dict[str, Any] = {"kind": args.agent}
    if args.agent_command is not None:  # an empty one is refused, not taken for the scripted agent
        import shlex

        try:
            agent_fields.update(kind="custom", command=shlex.split(args.agent_command))
        except ValueError as exc:
            raise UsageError(f"--agent-command: {exc}") from None
    elif args.agent == "custom":
        raise UsageError("--agent custom needs --agent-command")
    if args.agent_timeout is not None:
        agent_fields["timeout_seconds"] = args.agent_timeout
    if args.agent_profile:
        agent_fields["profile_block"] = args.agent_profile
    if args.scenario:
        if args.agent != "scripted":
            raise UsageError("--scenario is a file of the scripted agent: name it with --agent scripted")
        scenario = Path(args.scenario).expanduser()
        if not scenario.is_file():
            raise UsageError(f"scenario file {args.scenario} does not exist")
        agent_fields["scenario_file"] = str(scenario.resolve())
    if args.sandbox:
        agent_fields["sandbox"] = args.sandbox
        if args.sandbox == "bwrap":
            from tasks.sandbox import sandbox_problem

            problem = sandbox_problem()
            if problem is not None:
                raise UsageError(f"--sandbox bwrap cannot work here: {problem}")
    if args.plane_ref and not args.plane_block:
        raise UsageError("--plane-ref needs --plane-block")
    if args.forge == "local" and (args.forge_block or args.forge_repo):
        raise UsageError("--forge-block and --forge-repo need --forge gitea, forgejo, github or gitlab")
    # The name is the last part; GitLab's owner is the group path before it (group/subgroup).
    owner, _, name = (
        (args.forge_repo or "").rpartition("/") if args.forge == "gitlab" else (args.forge_repo or "").partition("/")
    )
    try:
        forge = ForgeSpec(kind=args.forge, credentials_block=args.forge_block, owner=owner or None, name=name or None)
        tracker = TrackerSpec(credentials_block=args.plane_block, ref=args.plane_ref) if args.plane_block else None
        return WorkItemRequest(
            work_item=args.work_item,
            title=args.title,
            description=args.description,
            repo=args.repo,
            branch=args.branch,
            agent=AgentSpec(**agent_fields),
            forge=forge,
            tracker=tracker,
            budget_usd=args.budget_usd,
            auto_approve=args.auto_approve,
        )
    except ValidationError as exc:
        raise UsageError(_first_error(exc)) from None


def with_named_agent(request: WorkItemRequest) -> WorkItemRequest:
    """The request with its agent named (B: no fake agent unless asked); UsageError when none is."""
    from tasks.failures import SdlcError
    from tasks.taskfile import named_agent

    try:
        return request.model_copy(update={"agent": named_agent(request)})
    except ValidationError as exc:
        raise UsageError(f".sdlc/config.yaml of {request.repo}: {_first_error(exc)}") from None
    except (SdlcError, ValueError) as exc:  # AgentNotNamed, origin or its config cannot be read
        raise UsageError(str(exc)) from None


def _quiet_prefect_console() -> None:
    """Leave the terminal to sdlc's progress lines; the run logs still reach the server."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.ERROR)


class ProgressPrinter(threading.Thread):
    """Prints one line per event: a stage transition, an agent starting or ending, a pause."""

    def __init__(self, work_item: str) -> None:
        super().__init__(daemon=True, name="progress")
        self.work_item = work_item
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.seen: set[tuple[Any, ...]] = set()

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    def once(self, key: tuple[Any, ...], text: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.say(text)

    def run(self) -> None:
        from tasks.ledger import Ledger

        ledger = Ledger.from_settings()
        while not self.stopping.wait(0.3):
            self.poll(ledger)

    def poll(self, ledger: Any) -> None:
        from tasks.notify import flow_run_url

        wi = self.work_item
        row = ledger.get_work_item(wi)
        if row is None:
            return
        if row.flow_run_id:
            self.once(("link", row.flow_run_id), f"{wi}: watch the run at {flow_run_url(row.flow_run_id)}")
        transitions = ledger.transitions(wi)
        runs = ledger.agent_runs(wi)
        progress = (len(transitions), len(runs))
        for t in transitions:
            arrow = f"{t.from_stage} -> {t.to_stage}" if t.from_stage else f"starts at {t.to_stage}"
            self.once(("transition", t.id), f"{wi} {arrow}: {t.reason}")
        for run in runs:
            self.once(("start", run.id), f"{wi} {run.stage}: {run.role} attempt {run.attempt} running")
            if run.ended_at is not None:
                outcome = run.error or f"exited {run.exit_code}"
                self.once(
                    ("end", run.id),
                    f"{wi} {run.stage}: {run.role} attempt {run.attempt} {outcome} after {run.duration_seconds:.1f} s",
                )
        if row.state == WorkItemState.waiting_approval.value:
            self.once(
                ("approval", progress),
                f"{wi} is waiting for approval of the analysis: approve in the UI or run `sdlc approve {wi}`"
                f" (or `sdlc reject {wi} --comment TEXT`)",
            )
        elif row.state == WorkItemState.waiting_usage_limit.value:
            self.once(("usage", row.reason), f"{wi} {row.stage}: {row.reason}")
        elif row.state == WorkItemState.needs_input.value:
            self.once(
                ("answers", progress),
                f"{wi} needs input: the analyst asked questions; answer in the UI or run `sdlc answer {wi} --file ANSWERS.md`",
            )


def execute(
    request: WorkItemRequest | None,
    work_item: str,
    settings: SdlcSettings,
    *,
    verbose: bool,
    retry: Continuation | None = None,
) -> int:
    """Start (or, without a request, resume) the work item's run and drive it to its end."""
    from entrypoints.server import ensure_prefect_api

    ensure_prefect_api(settings)
    from entrypoints import runner
    from tasks.ledger import Ledger

    if not verbose:
        _quiet_prefect_console()
    progress = ProgressPrinter(work_item)
    try:
        run_id = runner.unfinished_run(work_item) if _ledger_exists(settings) else None
        if run_id is not None:
            runner.take_over(run_id, work_item)
            progress.say(f"{work_item} has an unfinished run; going on with it (finished stages are not redone)")
        elif request is None:
            raise UsageError(f"{work_item} has no unfinished run to resume")
        else:
            run_id = runner.start_run(request, retry)
        progress.start()
        runner.drive(run_id, work_item)
    except runner.RunnerError as exc:
        print(f"sdlc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.stopping.set()
        if progress.is_alive():
            progress.join(timeout=2)
    ledger = Ledger.from_settings()
    progress.poll(ledger)
    row = ledger.get_work_item(work_item)
    if row is not None and row.state == WorkItemState.done.value:
        pr = f" PR #{row.pr_number} merged ({row.pr_url})." if row.pr_number else ""
        progress.say(f"{work_item} done.{pr}")
        return EXIT_OK
    reason = row.reason if row is not None else "the pipeline did not start"
    state = row.state if row is not None else "failed"
    print(f"sdlc: {work_item} {state}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def graph_in_force() -> StageGraph:
    """The stage graph this process runs (SDLC_GRAPH_FILE, else built in); a bad file is a UsageError."""
    from sdlc.config import current_graph
    from sdlc.graph import GraphFileError

    try:
        return current_graph()
    except GraphFileError as exc:
        raise UsageError(str(exc)) from None


def _report_problems(file: str, problems: list[str]) -> int:
    print(f"sdlc: error: {file} has {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_USAGE


def command_graph(args: argparse.Namespace) -> int:
    from sdlc.graph import GraphFileError, dump_graph, load_graph

    if args.graph_command == "dump":
        sys.stdout.write(dump_graph(graph_in_force()))
        return EXIT_OK
    try:
        graph = load_graph(Path(args.file))
    except GraphFileError as exc:  # a graph that does not load cannot be checked further
        return _report_problems(args.file, exc.problems)
    if args.repo:
        from sdlc.models import validate_repo

        try:
            validate_repo(args.repo)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    from tasks.graph_check import check_stage_graph

    problems = check_stage_graph(graph, args.repo)
    if problems:
        return _report_problems(args.file, problems)
    roles = ", ".join(dict.fromkeys(s.role for s in graph.stages))
    print(f"{args.file}: ok ({len(graph.stages)} stages from {graph.start}; roles {roles})")
    return EXIT_OK


def command_run(args: argparse.Namespace) -> int:
    graph_in_force()  # a stage graph file that cannot run is refused before anything is created
    request = with_named_agent(request_from_args(args))
    return execute(request, request.work_item, get_settings(), verbose=args.verbose)


def command_resume(args: argparse.Namespace) -> int:
    row = _known_work_item(args.work_item)
    if row.state == WorkItemState.blocked.value:
        raise UsageError(
            f"{args.work_item} is blocked: once it is fixed, send it on with `sdlc retry {args.work_item}`"
        )
    return execute(None, args.work_item, get_settings(), verbose=args.verbose)


def command_retry(args: argparse.Namespace) -> int:
    from entrypoints.retrying import NotRetryable, continuation_for, retry_point
    from entrypoints.server import ensure_prefect_api

    _known_work_item(args.work_item)
    settings = get_settings()
    try:
        point = retry_point(args.work_item, stage=args.stage, comment=args.comment, by=args.by)
    except NotRetryable as exc:  # before any server starts
        raise UsageError(str(exc)) from None
    ensure_prefect_api(settings)
    request, retry = continuation_for(args.work_item, point, comment=args.comment, by=args.by, source="cli")
    return execute(request, args.work_item, settings, verbose=args.verbose, retry=retry)


# --- people in the loop ------------------------------------------------------


def _known_work_item(work_item: str) -> Any:
    from tasks.ledger import Ledger

    try:
        validate_work_item_id(work_item)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not _ledger_exists(get_settings()):
        raise UsageError(f"unknown work item {work_item}")
    row = Ledger.from_settings().get_work_item(work_item)
    if row is None:
        raise UsageError(f"unknown work item {work_item}")
    return row


def command_approve(args: argparse.Namespace, approve: bool) -> int:
    try:
        validate_work_item_id(args.work_item)
        validate_comment(args.comment, "--comment")
        validate_person(args.by, "--by")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    row = _known_work_item(args.work_item)
    resume_waiting_run(
        args.work_item,
        WorkItemState.waiting_approval,
        {"approve": approve, "approver": args.by, "comment": args.comment},
    )
    print(f"{args.work_item} {'approved' if approve else 'rejected'} by {args.by}")
    _hint_when_nobody_drives(row)
    return EXIT_OK


def _hint_when_nobody_drives(row: Any) -> None:
    """After an answer: say so when the run belongs to `sdlc run` and no such process is left to go on."""
    from entrypoints import runner

    if row.flow_run_id and runner.waits_for_a_driver(row.id, row.flow_run_id):
        print(f"no `sdlc run` is waiting for {row.id} any more: run `sdlc resume {row.id}` to go on")


def command_answer(args: argparse.Namespace) -> int:
    row = _known_work_item(args.work_item)
    if args.file == "-":
        answers = sys.stdin.read()
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"answers file {args.file} does not exist")
        answers = path.read_text(encoding="utf-8")
    if not answers.strip():
        raise UsageError("the answers are empty")
    resume_waiting_run(args.work_item, WorkItemState.needs_input, {"answers": answers, "answered_by": args.by})
    print(f"{args.work_item} answered by {args.by}")
    _hint_when_nobody_drives(row)
    return EXIT_OK


# --- status ------------------------------------------------------------------


def _ledger_exists(settings: SdlcSettings) -> bool:
    return settings.ledger_url is not None or settings.ledger_path.exists()


def status_report(work_item: str | None) -> list[dict[str, Any]]:
    from sdlc.work_item_page import work_item_report
    from tasks.ledger import Ledger

    if not _ledger_exists(get_settings()):
        return []
    ledger = Ledger.from_settings()
    rows = [ledger.get_work_item(work_item)] if work_item else ledger.list_work_items()
    return [
        work_item_report(row, ledger.transitions(row.id), ledger.agent_runs(row.id)) for row in rows if row is not None
    ]


def _prefect_api_answers(settings: SdlcSettings) -> bool:
    """Whether this installation's Prefect server is up (status never starts one)."""
    from entrypoints.server import ServerError, ensure_prefect_api

    try:
        ensure_prefect_api(settings, start=False)
    except ServerOfAnotherInstallation:
        raise  # said, not hidden: status would show another installation's runs and breakers
    except ServerError:
        return False
    return True


def with_links(report: list[dict[str, Any]], api_answers: bool) -> list[dict[str, Any]]:
    """Each work item with where to watch it: its pipeline run, its PR, and its pages in the Prefect UI
    (``work-item-<id>``, the documents published for approval, the gates' reports; issue 17)."""
    import httpx

    from sdlc.config import current_graph
    from tasks.artifacts import page_kinds, published_pages
    from tasks.notify import flow_run_url

    pages: dict[str, dict[str, str | None]] | None = None
    if api_answers:
        kinds = page_kinds(stage.name for stage in current_graph().stages)
        try:
            pages = published_pages([item["work_item"] for item in report], kinds)
        except httpx.HTTPError:  # PREFECT_API_URL names a server that does not answer
            pages = None
    return [
        {
            **item,
            "links": {
                "run": flow_run_url(item["flow_run_id"]),
                "pull_request": item["pull_request"]["url"] if item["pull_request"] else None,
                "pages": None if pages is None else pages.get(item["work_item"], {}),
            },
        }
        for item in report
    ]


def breaker_lines(settings: SdlcSettings, api_answers: bool) -> list[str]:
    """One line per provider breaker, when a Prefect server answers (B32)."""
    from datetime import datetime

    if not api_answers:
        return []
    import httpx

    from tasks.breaker import breaker_states

    try:
        states = breaker_states(settings.breaker_scope)
    except httpx.HTTPError as exc:  # PREFECT_API_URL names a server that does not answer: say so, go on
        return [f"breakers unknown: the Prefect API does not answer ({type(exc).__name__})"]
    now = datetime.now(UTC)
    return [f"breaker {name}: {state.describe(now)}" for name, state in sorted(states.items())]


def _print_links(links: dict[str, Any]) -> None:
    """Where to watch one work item: its run, its PR, each of its pages (or why they are unknown)."""
    print(f"    run: {links['run'] or 'no link (no Prefect UI address known)'}")
    if links["pull_request"]:
        print(f"    PR: {links['pull_request']}")
    if links["pages"] is None:
        print("    pages unknown: the Prefect API does not answer")
        return
    for key, url in links["pages"].items():
        print(f"    page {key}: {url or 'no link (no Prefect UI address known)'}")


def command_status(args: argparse.Namespace) -> int:
    if args.work_item:
        _known_work_item(args.work_item)
    settings = get_settings()
    api_answers = _prefect_api_answers(settings)
    report = with_links(status_report(args.work_item), api_answers)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    if not report:
        print("no work items yet")
    for item in report:
        pr = f"PR #{item['pull_request']['number']}" if item["pull_request"] else "no PR"
        # A work item registered but not yet at a stage (its run stopped before the first step) has none.
        print(f"{item['work_item']}  {item['state'] or '-':<16} stage {item['stage'] or '-':<13} {pr}  {item['title']}")
        if item["reason"]:
            print(f"    {item['reason']}")
        usage = item["usage"]
        if usage["cost_usd"] or usage["input_tokens"] or usage["budget_usd"] or usage["runs_without_cost"]:
            budget = f" of ${usage['budget_usd']:.4f}" if usage["budget_usd"] else ""
            unreported, runs = usage["runs_without_cost"], len(item["agent_runs"])
            incomplete = f" (incomplete: {unreported} of {runs} agent runs reported no cost)" if unreported else ""
            print(
                f"    spent ${usage['cost_usd']:.4f}{budget}{incomplete}, "
                f"{usage['input_tokens']} input / {usage['output_tokens']} output tokens"
            )
        for move in item["transitions"]:
            arrow = f"{move['from']} -> {move['to']}" if move["from"] else f"starts at {move['to']}"
            print(f"    {arrow}: {move['reason']}")
        for run in item["agent_runs"]:
            duration = "-" if run["duration_seconds"] is None else f"{run['duration_seconds']:.1f} s"
            failure = f"  {run['failure_kind']}: {run['failure_reason']}" if run["failure_kind"] else ""
            print(f"    {run['role']:<10} attempt {run['attempt']}  exit {run['exit_code']}  {duration}{failure}")
        unconfined = sorted(
            {run["sandbox"] for run in item["agent_runs"] if (run["sandbox"] or "").startswith("unconfined")}
        )
        for why in unconfined:
            print(f"    warning: agents ran {why}")
        if args.work_item:
            _print_links(item["links"])
    for line in breaker_lines(settings, api_answers):
        print(line)
    return EXIT_OK


# --- server and demo ---------------------------------------------------------


def command_worker(args: argparse.Namespace) -> int:
    import logging

    from entrypoints.server import ensure_prefect_api

    if args.limit < 1 or args.query_seconds <= 0:
        raise UsageError("--limit must be at least 1 and --query-seconds above 0")
    ensure_prefect_api(get_settings())
    from entrypoints.worker import InProcessWorker

    # Prefect has configured logging by now; the worker's own lines go to stdout beside its runs' logs.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | sdlc worker - %(message)s"))
    worker_logger = logging.getLogger("entrypoints.worker")
    worker_logger.addHandler(handler)
    worker_logger.setLevel(logging.INFO)
    worker_logger.propagate = False
    worker = InProcessWorker(args.pool, limit=args.limit, query_seconds=args.query_seconds, settings=get_settings())
    try:
        worker.serve()
    except KeyboardInterrupt:
        worker.stopping.set()
    return EXIT_OK


def command_server(args: argparse.Namespace) -> int:
    from entrypoints import server

    settings = get_settings()
    if args.action == "start":
        print(f"Prefect API at {server.ensure_prefect_api(settings)}")
    elif args.action == "stop":
        print("stopped" if server.stop_server(settings) else "no embedded server was running")
    else:
        url = environment_value("PREFECT_API_URL") or server.api_url_for(settings.prefect_port)
        healthy = server.is_healthy(url)
        print(f"{url}: {'up' if healthy else 'down'}")
        return EXIT_OK if healthy else EXIT_FAILED
    return EXIT_OK


def command_telegram(args: argparse.Namespace) -> int:
    """`sdlc telegram poll`: the chat's /approve, /reject, /answer and /retry, fetched with getUpdates."""
    from entrypoints.telegram import BLOCK_NAME_PATTERN, POLL_TIMEOUT_SECONDS, poll

    routes = get_settings().notify_blocks
    named = [route.ref.partition("/")[2] for route in routes if route.ref.startswith("sdlc-telegram/")]
    if args.block is None and len(named) != 1:
        found = "none" if not named else "several"
        raise UsageError(f"give --block NAME: SDLC_NOTIFY_BLOCKS names {found} sdlc-telegram block")
    block_name = args.block if args.block is not None else named[0]
    if not BLOCK_NAME_PATTERN.fullmatch(block_name):
        raise UsageError(f"--block {block_name[:60]!r} is not a block name")
    timeout = args.timeout if args.timeout is not None else 0 if args.once else POLL_TIMEOUT_SECONDS
    if not 0 <= timeout <= 600:
        raise UsageError("--timeout must be 0 to 600 seconds")
    from blocks import load_block
    from blocks.notifications import TelegramNotification
    from entrypoints.server import ensure_prefect_api

    ensure_prefect_api(get_settings())
    try:
        block = load_block(TelegramNotification, block_name)
    except ValueError as exc:  # the block does not exist, or is not a TelegramNotification
        raise UsageError(f"Telegram block {block_name!r}: {' '.join(str(exc).split())[:200]}") from None
    poll(block, block_name, once=args.once, timeout_seconds=timeout, say=lambda line: print(line, flush=True))
    return EXIT_OK


def command_webhooks(args: argparse.Namespace) -> int:
    from entrypoints.server import ensure_prefect_api

    ensure_prefect_api(get_settings())
    from entrypoints.webhooks import serve

    try:
        serve(host=args.host, port=args.port, settings_block=args.settings_block)
    except ValueError as exc:  # the block does not exist
        raise UsageError(f"webhook settings block {args.settings_block!r}: {exc}") from None
    return EXIT_OK


def _next_demo_id() -> str:
    ids = [item["work_item"] for item in status_report(None)]
    number = 1
    while f"DEMO-{number}" in ids:
        number += 1
    return f"DEMO-{number}"


def _approve_when_waiting(work_item: str, delay: float, say: Any) -> None:
    from tasks.ledger import Ledger

    ledger = Ledger.from_settings()
    while True:
        row = ledger.get_work_item(work_item)
        if row is not None and row.state == WorkItemState.waiting_approval.value:
            break
        if row is not None and row.state in (
            WorkItemState.done.value,
            WorkItemState.blocked.value,
            WorkItemState.failed.value,
        ):
            return
        time.sleep(0.3)
    say(f"demo: approving {work_item} in {delay:g} s (run `sdlc demo --wait-approval` to do it yourself)")
    time.sleep(delay)
    resume_waiting_run(
        work_item, WorkItemState.waiting_approval, {"approve": True, "approver": "demo", "comment": "looks good"}
    )


def command_demo(args: argparse.Namespace) -> int:
    from demo.sample import create_sample_repo
    from entrypoints.server import ensure_prefect_api

    settings = get_settings()
    ensure_prefect_api(settings)
    origin = create_sample_repo(settings.root / "demo")
    scenario = settings.root / "demo" / "scenario.json"
    scenario.write_text(json.dumps({"reviewer": {"request_changes": 1}}))
    work_item = _next_demo_id()
    request = WorkItemRequest(
        work_item=work_item,
        title="Greet people by name",
        description="The greeter should greet a person by the name it is given, and say hello to the world without one.",
        repo=str(origin),
        agent=AgentSpec(kind="scripted", scenario_file=str(scenario)),
    )
    print(f"demo: sample repository {origin}, work item {work_item}; the reviewer will ask for changes once")
    if not args.wait_approval:
        threading.Thread(target=_approve_when_waiting, args=(work_item, args.approve_after, print), daemon=True).start()
    return execute(request, work_item, settings, verbose=args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir:
        export_environment({"SDLC_DATA_DIR": args.data_dir})  # and to the server and workers it starts
    handlers = {
        "run": command_run,
        "resume": command_resume,
        "retry": command_retry,
        "demo": command_demo,
        "approve": lambda a: command_approve(a, True),
        "reject": lambda a: command_approve(a, False),
        "answer": command_answer,
        "status": command_status,
        "server": command_server,
        "worker": command_worker,
        "webhooks": command_webhooks,
        "telegram": command_telegram,
        "graph": command_graph,
    }
    try:
        settings = settings_from_environment()  # read once here, handed down to all the command does
    except ValidationError as exc:
        print(f"sdlc: error: invalid SDLC_* setting: {_first_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with settings_in_force(settings):
            return handlers[args.command](args)
    except UsageError as exc:
        print(f"sdlc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sdlc: interrupted", file=sys.stderr)
        return 130
    except ServerOfAnotherInstallation as exc:
        print(f"sdlc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerNewerThanCode as exc:
        print(f"sdlc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"sdlc: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
