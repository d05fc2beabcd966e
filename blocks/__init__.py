"""The project's Prefect blocks, and :func:`load_block` to load any block from sync code."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from sdlc.sync import sync_result

B = TypeVar("B", bound=Block)


def load_block(block_type: type[B], name: str) -> B:
    """``block_type.load(name)``, typed as the block it returns in sync code.

    ``Block.load`` is ``@async_dispatch``-ed, so it is typed ``B | Coroutine[..., B]``;
    called from sync code, as everywhere here, it returns the block (sdlc/sync.py).
    ``Block`` itself loads a slug (``block-type/name``) as the class registered for it.
    """
    return sync_result(block_type.load(name))
