"""OpenCode's side of the fake model API (issue 18): its config and environment, and a guard.

OpenCode 1.18 ships the Anthropic provider (``@ai-sdk/anthropic``, bundled: nothing is
installed at run time), so the tests point it at ``fake_anthropic.py``: its
``ANTHROPIC_BASE_URL`` is the fake's ``/v1`` (OpenCode's provider appends ``/messages``;
Claude Code's variable leaves ``/v1`` out) and its key a dummy. Everything else OpenCode
would fetch is turned off (:func:`opencode_cli_env`), and what is left is caught:
``HTTP(S)_PROXY`` point at :class:`fake_model_api.ForeignHosts`, which records and refuses every request
meant for another host (``NO_PROXY`` keeps 127.0.0.1 direct)::

    with FakeAnthropic() as api, ForeignHosts() as guard:
        env = opencode_cli_env(home, api.url, proxy_url=guard.url, path=ripgrep_path(os.environ["PATH"]))
        ...                                            # run `opencode run ...` with env
        assert not guard.requests
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blocks.agent_profile import TOOLS_DIR, opencode_env

OPENCODE = TOOLS_DIR / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
OPENCODE_API_KEY = "sk-test-dummy"
# OpenCode runs ripgrep for its grep and glob tools: the one on PATH, else it downloads
# ripgrep from github.com into ~/.cache/opencode/bin. The tests lend it the ripgrep Codex
# ships (tools/, installed beside OpenCode by make install), alone in its folder.
RIPGREP_DIR = (
    TOOLS_DIR / "node_modules" / "@openai" / "codex-linux-x64" / "vendor" / "x86_64-unknown-linux-musl" / "codex-path"
)


def opencode_cli_env(
    home: str,
    api_url: str,
    *,
    proxy_url: str,
    path: str,
    timeout_ms: int = 30000,
    permission: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What the real OpenCode CLI needs to talk to the fake Anthropic API and nothing else: the
    profile's own :func:`blocks.agent_profile.opencode_env` (quiet, offline, an agent per role),
    a private HOME (OpenCode's data, cache, config and state go under ~/.local/share, ~/.cache,
    ~/.config and ~/.local/state), the fake's base URL and a dummy key, the provider's request
    timeout, and every other host behind ``proxy_url``. ``path`` must hold a ripgrep.
    ``permission`` changes the rules every role shares."""
    env = opencode_env()
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    config["provider"]["anthropic"]["options"]["timeout"] = timeout_ms
    config["permission"] = {**config["permission"], **(permission or {})}
    return {
        **env,
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "HOME": home,
        "PATH": path,
        "ANTHROPIC_BASE_URL": f"{api_url}/v1",
        "ANTHROPIC_API_KEY": OPENCODE_API_KEY,
        "HTTP_PROXY": proxy_url,
        "HTTPS_PROXY": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def ripgrep_path(base: str) -> str:
    """``base`` (a PATH) with the borrowed ripgrep's folder in front."""
    return f"{RIPGREP_DIR}:{base}" if base else str(RIPGREP_DIR)


def missing_files() -> list[Path]:
    """The pinned files these tests need and that are missing (``make install`` provides them)."""
    return [path for path in (OPENCODE, RIPGREP_DIR / "rg") if not path.exists()]
