"""Which stage graph is in force: `SDLC_GRAPH_FILE` when set, else the built-in default."""

from __future__ import annotations

from sdlc.graph import StageGraph, load_graph, with_when_main_moves
from sdlc.settings import SdlcSettings, get_settings


def current_graph(settings: SdlcSettings | None = None) -> StageGraph:
    """The graph in force, with ``SDLC_WHEN_MAIN_MOVES`` applied."""
    settings = settings or get_settings()
    return with_when_main_moves(load_graph(settings.graph_file), settings.when_main_moves)
