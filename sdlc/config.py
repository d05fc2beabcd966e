"""Which stage graph is in force: `SDLC_GRAPH_FILE` when set, else the built-in default."""

from __future__ import annotations

from sdlc.graph import StageGraph, load_graph
from sdlc.settings import SdlcSettings, get_settings


def current_graph(settings: SdlcSettings | None = None) -> StageGraph:
    return load_graph((settings or get_settings()).graph_file)
