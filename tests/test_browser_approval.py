"""A person approves the analysis in the Prefect UI (issue 6 item 4, B20/B21).

`sdlc run` waits for approval with its flow run suspended. Debian's Chromium,
driven by Playwright, opens that run in the UI of the session's Prefect server,
fills in the form Prefect builds from `ApprovalDecision` (approve, approver,
comment) and submits it; the pipeline goes on and finishes, and the ledger says
who approved. The browser may talk to that server only: every request is
recorded, any that goes elsewhere is blocked, and the test then fails.

Screenshots (form filled in, after submitting, and on failure) stay under the
test's tmp_path; their paths are printed. Needs `/usr/bin/chromium` (Debian's
`chromium` package) and `playwright` in the venv; Playwright never downloads a
browser here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest

from demo.sample import create_sample_repo
from test_cli import finish, start_run, status, wait_for_state, wait_for_suspension

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = Path("/usr/bin/chromium")
# This machine's rules for a headless Chromium: no sandbox, no GPU, none of its own traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TITLE = "Approve in the browser"
APPROVER = "Dana Browser"
COMMENT = "Approved from the Prefect UI form"
STEP_TIMEOUT_MS = 20_000


class OffMachineRequest(AssertionError):
    """The UI tried to reach a host that is not this machine."""


@dataclass(frozen=True)
class UiVariant:
    """One of the two UIs Prefect 3.8.8 serves, and how a person reaches its resume form there."""

    work_item: str
    path: str
    open_form: Callable[[Any], None]
    submit_button: str


def _open_v1_form(page: Any) -> None:
    # V1's run page has a "Resume" button in its header while the run is paused or suspended.
    page.get_by_role("button", name="Resume", exact=True).click()


UIS = {
    # The page every link of the pipeline points at: PREFECT_UI_URL + /runs/flow-run/<id>.
    # sdlc's server also makes it the default (PREFECT_SERVER_UI_V2_ENABLED=false): Prefect 3.8.8's
    # V2 UI calls Amplitude (sr-client-cfg.amplitude.com) even with analytics off.
    "v1": UiVariant("UI-61", "/runs/flow-run/{id}", _open_v1_form, "Submit"),
}


@dataclass
class NetworkLog:
    """Every request the browser's pages made; those not for the Prefect server were blocked."""

    allowed_origin: str
    seen: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return True
        origin = f"{parts.scheme}://{parts.netloc}"
        return origin in (self.allowed_origin, self.allowed_origin.replace("http", "ws", 1))

    def route(self, route: Any) -> None:
        if self.allows(route.request.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def route_socket(self, socket: Any) -> None:
        self.seen.append(socket.url)
        if self.allows(socket.url):
            socket.connect_to_server()
        else:
            self.blocked.append(socket.url)
            socket.close()

    def check(self) -> None:
        elsewhere = sorted(set(self.blocked))
        if not elsewhere:
            return
        listing = "\n  ".join(elsewhere)
        if any(not _is_loopback(urlsplit(url).hostname or "") for url in elsewhere):
            raise OffMachineRequest(f"the UI tried to leave this machine (blocked):\n  {listing}")
        raise AssertionError(f"the UI called another local server than {self.allowed_origin} (blocked):\n  {listing}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _field(dialog: Any, label: str, role: str) -> Any:
    """The form control labelled `label` (the label reads e.g. "Approver (Optional)").

    V2 ties label and control (`for`/`id`), so the accessible name finds it. V1's
    labels point at ids that no control has; there it is the control of that
    role inside the nearest element that holds the label and a control.
    """
    from playwright.sync_api import expect

    name = re.compile(rf"^\s*{re.escape(label)}\b(?![\w-])")
    label_element = dialog.locator("label").filter(has_text=name)
    expect(label_element, f"the resume form has no single field labelled {label!r}").to_have_count(1)
    by_label = dialog.get_by_label(name).and_(dialog.get_by_role(role))
    if by_label.count() == 1:
        return by_label
    holder = label_element.locator(f"xpath=ancestor::*[.//*[@role='{role}'] or .//textarea or .//input][1]")
    control = holder.get_by_role(role)
    expect(control, f"no single {role} belongs to the label {label!r} in the resume form").to_have_count(1)
    return control


def _server_origin(api_url: str) -> str:
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


def _ui_settings(origin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{origin}/ui-settings", timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


@contextmanager
def _running(run: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The `sdlc run` process, ended if the test leaves before it has."""
    try:
        yield run
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def _watched_browser(playwright: Any, profile: Path, network: NetworkLog) -> Any:
    """Chromium with a new, empty profile, whose every request passes ``network``'s routes."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        service_workers="block",  # so that every request passes the routes below
        viewport={"width": 1400, "height": 1000},
    )
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.on("request", lambda request: network.seen.append(request.url))
    context.route("**/*", network.route)
    context.route_web_socket(re.compile(".*"), network.route_socket)
    return context


def _read_work_item_page(url: str, network: NetworkLog, shot: Path, work_item: str) -> None:
    """The work item's page as a person opens it from `sdlc status`: its history rendered as tables."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        context = _watched_browser(playwright, shot.parent / "chromium-profile-page", network)
        try:
            page = context.new_page()
            page.goto(url)
            expect(page.get_by_text(f"{work_item}: {TITLE}").first, "the page has no title").to_be_visible()
            for heading in ("Timeline", "Agent runs", "Documents"):
                expect(page.get_by_role("heading", name=heading), f"the page has no {heading}").to_be_visible()
            # Markdown tables, rendered: the deployer's run is a row of cells.
            expect(page.get_by_role("cell", name="deployer").first, "the agent runs are not a table").to_be_visible()
            expect(page.get_by_role("cell", name=f"approved by {APPROVER}"), "the timeline lacks the approval").to_be_visible()
            page.screenshot(path=shot, full_page=True)
            print(f"the work item's page: {shot}")
        finally:
            context.close()


def _approve_in_browser(
    variant: UiVariant, url: str, flow_run_id: str, network: NetworkLog, shots: dict[str, Path], lap: Callable[[str], None]
) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_TIMEOUT_MS)
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        context = _watched_browser(playwright, shots["filled"].parent / "chromium-profile", network)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            try:
                page.goto(url)
                expect(page.get_by_text("Suspended", exact=True).first, "the run page does not say Suspended").to_be_visible()
                lap("page shown")
                variant.open_form(page)
                dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
                expect(dialog, "the resume form did not open").to_be_visible()
                expect(dialog, "the form does not show the input's description").to_contain_text(
                    f"Approve the analysis of {variant.work_item}: {TITLE}"
                )
                # What is approved is one link away: the analysis, published as the run's artifact (issue 17).
                expect(dialog, "the form does not quote the acceptance criteria").to_contain_text("Acceptance criteria")
                link = re.search(r"https?://[^\s)\]]+/artifacts/artifact/[0-9a-f-]{36}", dialog.inner_text())
                if link is None:  # rendered markdown: the address is the link's href
                    link = re.search(
                        r"https?://[^\s\"]+/artifacts/artifact/[0-9a-f-]{36}", dialog.inner_html()
                    )
                assert link is not None, f"no link to the analysis in the form: {dialog.inner_text()}"
                reading = context.new_page()
                reading.goto(link.group(0))
                expect(
                    reading.get_by_text("The new behaviour is available from the code under").first,
                    "the analysis artifact does not show the requirements",
                ).to_be_visible()
                reading.screenshot(path=shots["analysis"], full_page=True)
                print(f"the analysis being approved: {shots['analysis']}")
                reading.close()
                lap("analysis read")
                approve = _field(dialog, "Approve", "switch")
                expect(approve, "approve should be on by default (ApprovalDecision.approve=True)").to_be_checked()
                approver = _field(dialog, "Approver", "textbox")
                comment = _field(dialog, "Comment", "textbox")
                approver.fill(APPROVER)
                comment.fill(COMMENT)
                expect(approver).to_have_value(APPROVER)
                expect(comment).to_have_value(COMMENT)
                page.screenshot(path=shots["filled"])
                print(f"form filled in: {shots['filled']}")
                lap("form filled")

                resume_url = f"{_server_origin(url)}/api/flow_runs/{flow_run_id}/resume"
                with page.expect_response(lambda r: r.url == resume_url and r.request.method == "POST") as answer:
                    dialog.get_by_role("button", name=variant.submit_button, exact=True).click()
                response = answer.value
                sent = response.request.post_data_json or {}
                assert response.ok, f"POST {resume_url} answered {response.status}: {response.text()}"
                assert sent.get("run_input") == {"approve": True, "approver": APPROVER, "comment": COMMENT}, (
                    f"the form sent {sent}"
                )
                expect(dialog, "the resume form stayed open after submitting").to_be_hidden()
                # V1 shows this toast twice.
                expect(page.get_by_text("Flow run resumed").first, "the UI did not confirm the resume").to_be_visible()
                page.screenshot(path=shots["submitted"])
                print(f"after submitting: {shots['submitted']}")
                lap("submitted")
            except (AssertionError, PlaywrightError) as failure:
                try:
                    page.screenshot(path=shots["failure"], full_page=True)
                    where = f"screenshot: {shots['failure']}"
                except PlaywrightError as no_shot:
                    where = f"no screenshot ({no_shot})"
                print(where)
                raise AssertionError(
                    f"{url}: {failure}\n{where}\nconsole errors: {console_errors}\nblocked requests: {network.blocked}"
                ) from failure
        finally:
            context.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ui", ["v1"])
def test_approve_in_the_prefect_ui_resumes_and_finishes_the_pipeline(
    ui: str, tmp_path: Path, cli_env: dict[str, str], data_dir: Path, prefect_api: str
) -> None:
    from tasks.ledger import Ledger

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`)"
    started = time.monotonic()
    timings: list[str] = []

    def lap(name: str) -> None:
        timings.append(f"{name} {time.monotonic() - started:.1f}s")

    origin = _server_origin(prefect_api)
    settings = _ui_settings(origin)
    assert settings["api_url"] == prefect_api, (
        f"the UI served at {origin} would call the API at {settings['api_url']}, not its own server: "
        "`prefect server start --port N` does not point its UI at port N unless PREFECT_UI_API_URL "
        "is set (entrypoints/server.py start_server)"
    )
    assert ui in settings["available_uis"], f"the server does not serve the {ui} UI: {settings}"

    variant = UIS[ui]
    repo = create_sample_repo(tmp_path / "repos")
    with _running(start_run(cli_env, "--repo", str(repo), "--work-item", variant.work_item, "--title", TITLE, "--agent", "scripted")) as run:
        wait_for_state(data_dir, variant.work_item, "waiting_approval", run)
        flow_run_id = Ledger.from_settings().get_work_item(variant.work_item).flow_run_id
        assert flow_run_id, f"{variant.work_item} has no flow run in the ledger"
        wait_for_suspension(flow_run_id)
        lap("suspended")

        network = NetworkLog(allowed_origin=origin)
        shots = {name: tmp_path / f"browser-approval-{ui}-{name}.png" for name in ("analysis", "filled", "submitted", "failure")}
        url = origin + variant.path.format(id=flow_run_id)
        _approve_in_browser(variant, url, flow_run_id, network, shots, lap)

        code, out, err = finish(run, timeout=90)
        lap("sdlc run exited")
    assert code == 0, f"sdlc run exited {code} after the approval in the UI:\n{out}\n{err}"
    assert f"{variant.work_item} done." in out, out
    item = status(cli_env, variant.work_item)
    assert item["state"] == "done", item
    reasons = [t["reason"] for t in item["transitions"]]
    assert f"approved by {APPROVER}" in reasons, f"no transition reads 'approved by {APPROVER}': {reasons}"
    assert any(u.startswith(f"{origin}/api/flow_runs/{flow_run_id}") for u in network.seen), (
        "the browser never asked the server for the run"
    )
    # Its page, from the link `sdlc status` gives (issue 17): the whole story, once done.
    page_url = item["links"]["pages"][f"work-item-{variant.work_item.lower()}"]
    _read_work_item_page(page_url, network, tmp_path / f"browser-work-item-page-{ui}.png", variant.work_item)
    lap("page read")
    print(f"{ui}: {len(network.seen)} requests, {len(network.blocked)} blocked; {', '.join(timings)}")
    network.check()
