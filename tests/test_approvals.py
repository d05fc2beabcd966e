"""Answering a paused run from another process (entrypoints/approvals.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from uuid import UUID

from demo.sample import create_sample_repo
from sdlc.models import WorkItemRequest, WorkItemState


def test_an_answer_between_pause_and_form_waits_for_the_form_then_resumes(
    prefect_api: str, data_dir: Path, tmp_path: Path
) -> None:
    """Prefect sets Paused before it saves the input form's schema: an /approve arriving
    in between used to be refused with "Run input schema not found" (seen on CI)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Paused, Running

    from entrypoints.approvals import resume_waiting_run
    from flows.inputs import ApprovalDecision
    from tasks.ledger import Ledger

    @flow(name="approval-race")
    def paused_pipeline() -> None:
        """Never run: only its run's states are set here."""

    paused = Paused(timeout_seconds=600, reschedule=False, pause_key="approval-1")
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(paused_pipeline, state=Running())
        assert client.set_flow_run_state(run.id, paused, force=True).state.is_paused()

    ledger = Ledger.from_settings()
    ledger.upsert_work_item(
        WorkItemRequest(work_item="RACE-1", title="Race", repo=str(create_sample_repo(tmp_path / "repos"))),
        flow_run_id=str(run.id),
    )
    ledger.set_state("RACE-1", WorkItemState.waiting_approval)

    errors: list[BaseException] = []

    def approve() -> None:
        try:
            resume_waiting_run("RACE-1", WorkItemState.waiting_approval, {"approve": True, "approver": "alice"})
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            errors.append(error)

    answering = threading.Thread(target=approve)
    answering.start()
    try:
        # Paused, no form yet: the answer waits instead of failing.
        answering.join(timeout=2.0)
        assert answering.is_alive(), errors
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).state.is_paused()
        ApprovalDecision.with_initial_data().save(keyset, flow_run_id=run.id)
    finally:
        answering.join(timeout=30.0)
    assert not answering.is_alive()
    assert errors == []
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(str(run.id))).state
    assert state is not None and not state.is_paused()
    assert ApprovalDecision.load(keyset, flow_run_id=run.id).approver == "alice"
    assert ledger.get_work_item("RACE-1").state == WorkItemState.running.value
