"""Replay on resume notices change (issue 14, item 4; B21).

A flow run that runs again (as `sdlc resume` makes it: forced to Scheduled, then
executed by Prefect's engine in this process) replays its finished calls; a call
whose parameters changed since it was recorded stops the run with a message that
says what changed and how to go on, and so does a run recorded with the keys of
an older sdlc-flows. Real Prefect server, real result storage; every task body
writes a line to a file, so the file counts what really ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import Flow, flow, task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.states import State

from flows.replay import ReplayMismatch, ReplayOutdated, call_digest, refused_resume, replayed

pytestmark = pytest.mark.usefixtures("prefect_api")


class Note:
    """Where the task bodies of one test write what they ran."""

    path: Path | None = None

    @classmethod
    def lines(cls) -> list[str]:
        assert cls.path is not None
        return cls.path.read_text().splitlines() if cls.path.exists() else []


@task(name="replay-test-record")
def _record(text: str) -> str:
    assert Note.path is not None
    with Note.path.open("a") as out:
        out.write(text + "\n")
    if text.endswith("!"):
        raise RuntimeError(f"{text} failed")
    return f"recorded {text}"


record = replayed(_record)


def _old_replay_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The cache key sdlc-flows wrote before replay keys had a version (flows/replay.py until issue 14)."""
    flow_context = FlowRunContext.get()
    run = context.task_run
    if flow_context is None or flow_context.flow_run is None or run.flow_run_id is None:
        return None
    counters: dict[str, Any] = flow_context.task_run_dynamic_keys
    call_slot = f"sdlc-replay:call:{run.id}"
    if call_slot not in counters:
        count_slot = f"sdlc-replay:count:{run.task_key}"
        counters[count_slot] = int(counters.get(count_slot, -1)) + 1
        counters[call_slot] = counters[count_slot]
    return f"replay-{run.flow_run_id}-{run.task_key}-{counters[call_slot]}"


old_record = _record.with_options(cache_key_fn=_old_replay_key, persist_result=True)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    Note.path = tmp_path / "ran.txt"
    return Note.path


def first_run(pipeline: Flow[..., Any]) -> tuple[UUID, State[Any]]:
    """A new flow run of ``pipeline``, executed here the way entrypoints/runner.py executes it."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(pipeline, name=f"replay-{uuid.uuid4().hex[:8]}")
    return flow_run.id, run_flow(pipeline, flow_run=flow_run, return_type="state")


def run_again(pipeline: Flow[..., Any], flow_run_id: UUID) -> State[Any]:
    """The same flow run executed again, as `sdlc resume` does after a crash or a resume."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(name="Resuming"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(pipeline, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")


def cut_off(notes: Path) -> None:
    """The first execution stops after its recorded calls, as if its process had died."""
    marker = notes.with_suffix(".cut")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("cut off")


@flow(name="replay-test")
def two_calls() -> list[str]:
    results = [record("analysis"), record.with_options(retries=1)("development")]
    assert Note.path is not None
    cut_off(Note.path)
    results.append(record("review"))
    return results


@flow(name="replay-test")
def two_calls_changed() -> list[str]:
    """The same flow after a code change: its second call now passes another text."""
    results = [record("analysis"), record("design")]
    results.append(record("review"))
    return results


@flow(name="replay-test")
def two_calls_before_v2() -> list[str]:
    results = [old_record("analysis"), old_record("development")]
    assert Note.path is not None
    cut_off(Note.path)
    return results


def test_a_rerun_replays_its_recorded_calls_without_running_them_again(notes: Path) -> None:
    run_id, state = first_run(two_calls)
    assert state.is_failed() and "cut off" in str(state.message)
    assert Note.lines() == ["analysis", "development"]

    state = run_again(two_calls, run_id)

    assert state.is_completed(), state.message
    assert state.result() == ["recorded analysis", "recorded development", "recorded review"]
    assert Note.lines() == ["analysis", "development", "review"]  # the first two were replayed


def test_a_changed_call_stops_the_rerun_and_says_what_changed(notes: Path) -> None:
    run_id, _ = first_run(two_calls)

    state = run_again(two_calls_changed, run_id)

    assert state.is_failed()
    with pytest.raises(ReplayMismatch) as refused:
        state.result()
    message = str(refused.value)
    assert "call 2 of task 'replay-test-record'" in message
    assert "changed: text" in message
    assert "start the work item again as a new run" in message
    assert refused_resume(state.message), state.message
    assert Note.lines() == ["analysis", "development"]  # "design" never ran, "development" was not replayed for it


def test_a_run_recorded_before_replay_keys_had_a_version_is_told_to_start_again(notes: Path) -> None:
    run_id, state = first_run(two_calls_before_v2)
    assert state.is_failed() and Note.lines() == ["analysis", "development"]

    assert_told_to_start_again(run_again(two_calls, run_id), "unversioned, without parameters")


def assert_told_to_start_again(state: State[Any], layout: str) -> None:
    """The rerun failed before anything ran again, with a message that says what to do."""
    assert state.is_failed()
    with pytest.raises(ReplayOutdated) as refused:
        state.result()
    assert "recorded by an older sdlc-flows" in str(refused.value)
    assert f"another layout ({layout})" in str(refused.value)
    assert "start the work item again as a new run" in str(refused.value)
    assert refused_resume(state.message), state.message
    assert Note.lines() == ["analysis", "development"]  # nothing ran again


def test_a_recorded_call_that_never_finished_may_run_with_new_parameters(notes: Path) -> None:
    """Nothing of a call that failed would be replayed, so its new parameters are no mismatch."""

    @flow(name="replay-test")
    def second_call_fails() -> None:
        record("analysis")
        record("development!")

    run_id, state = first_run(second_call_fails)
    assert state.is_failed() and Note.lines() == ["analysis", "development!"]

    state = run_again(two_calls_changed, run_id)

    assert state.is_completed(), state.message
    assert Note.lines() == ["analysis", "development!", "design", "review"]


def test_the_call_digest_is_the_same_in_another_process() -> None:
    """Not Python's hash(): sets of strings and dict order change between processes."""
    from sdlc.models import Feedback

    parameters = {"labels": {"b", "a", "c"}, "feedback": Feedback(source="review", summary="fix it"), "n": 3}
    script = (
        "from flows.replay import call_digest\n"
        "from sdlc.models import Feedback\n"
        "feedback = Feedback(source='review', summary='fix it')\n"
        "print(call_digest({'n': 3, 'feedback': feedback, 'labels': {'c', 'a', 'b'}})[0])\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert digests == {call_digest(parameters)[0]}
    assert call_digest(parameters, ignore=("n",))[0] != call_digest(parameters)[0]


def test_a_run_recorded_by_another_layout_of_the_pipeline_is_told_to_start_again(
    notes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys name their layout (flows/replay.VERSION): a run recorded by v2's tasks is not resumed by v3."""
    from flows import replay

    monkeypatch.setattr(replay, "VERSION", "v2")
    run_id, state = first_run(two_calls)
    assert state.is_failed() and Note.lines() == ["analysis", "development"]
    monkeypatch.setattr(replay, "VERSION", "v3")

    assert_told_to_start_again(run_again(two_calls, run_id), "v2")
