"""Serve the pipeline and stage flows from this process (no work pool needed).

`python -m deployments.serve` registers both deployments and runs what is
triggered, which is the quickest way to use `prefect deployment run` locally.
"""

from __future__ import annotations

from prefect import serve

from flows.pipeline import sdlc_pipeline
from flows.stages import stage_flow
from sdlc.sync import sync_result


def main() -> None:
    serve(
        sync_result(sdlc_pipeline.to_deployment(name="sdlc-pipeline", tags=["sdlc"])),
        sync_result(stage_flow.to_deployment(name="sdlc-stage", tags=["sdlc"])),
    )


if __name__ == "__main__":
    main()
