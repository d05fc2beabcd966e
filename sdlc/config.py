"""Which stage graph is in force: `SDLC_GRAPH_FILE` when set, else the built-in default."""

from __future__ import annotations

import os
from pathlib import Path

from sdlc.graph import StageGraph, load_graph


def current_graph() -> StageGraph:
    path = os.environ.get("SDLC_GRAPH_FILE")
    return load_graph(Path(path) if path else None)
