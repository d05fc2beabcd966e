"""A fake OpenAI Chat Completions API on 127.0.0.1, for running real agent CLIs (Aider, through litellm) in tests.

Built on :mod:`fake_model_api`. ``POST /v1/chat/completions`` takes the next scripted
:class:`~fake_model_api.Reply` (or the ``default``/``responder`` one) and answers it as
OpenAI does:

* ``"stream": true``: server-sent ``chat.completion.chunk`` events (a role chunk, the
  text in pieces, tool calls with their arguments in pieces, a chunk with the
  ``finish_reason``; then, when ``stream_options.include_usage`` is set, a chunk with empty
  ``choices`` and the ``usage``), ended by ``data: [DONE]``;
* otherwise one ``chat.completion`` object with ``usage``;
* an error reply: its status with ``{"error": {"message", "type", "param", "code"}}`` and its
  headers (``retry-after`` on a 429).

``GET /v1/models`` (and ``/v1/models/<id>``) lists the models the fake has been asked for
plus :attr:`FakeOpenAIChat.models`. The routes answer with or without the ``/v1`` prefix
(clients differ in whether the base URL carries it). Every request is recorded::

    with FakeOpenAIChat() as api:
        api.script(RATE_LIMITED, Reply.message("done"))
        ...   # aider --openai-api-base {api.url}/v1 --model openai/gpt-4o-mini ...
        assert api.model_requests()[0]["body"]["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from fake_model_api import Exchange, FakeModelAPI, Reply, ToolCall, wait_for_reply

__all__ = [
    "INSUFFICIENT_QUOTA",
    "OVERLOADED",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "UNAUTHORIZED",
    "FakeOpenAIChat",
    "Reply",
    "ToolCall",
    "aider_cli_env",
    "seed_aider_model_cache",
]

_ids = itertools.count(1)

# The errors as api.openai.com words them (type, code, message), with the headers that matter.
RATE_LIMITED = Reply.error(
    429,
    "requests",
    "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 7s.",
    headers={"retry-after": "7", "x-ratelimit-reset-requests": "7s"},
    code="rate_limit_exceeded",
)
INSUFFICIENT_QUOTA = Reply.error(
    429,
    "insufficient_quota",
    "You exceeded your current quota, please check your plan and billing details. For more information "
    "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    code="insufficient_quota",
)
SERVER_ERROR = Reply.error(
    500, "server_error", "The server had an error while processing your request. Sorry about that!"
)
OVERLOADED = Reply.error(503, "server_error", "The engine is currently overloaded, please try again later.")
UNAUTHORIZED = Reply.error(
    401,
    "invalid_request_error",
    "Incorrect API key provided: sk-test-***ummy. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    code="invalid_api_key",
)


def _usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}


def _pieces(text: str, size: int = 24) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def completion(reply: Reply, model: str) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` object of a reply."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in reply.tool_calls]
    return {
        "id": f"chatcmpl-fake{next(_ids):06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _usage(reply),
        "system_fingerprint": "fp_fake",
    }


def chunks(reply: Reply, model: str, include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed reply, as OpenAI sends them."""
    base = {
        "id": f"chatcmpl-fake{next(_ids):06d}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if reply.text:
        out += [chunk({"content": piece}) for piece in _pieces(reply.text)]
    for index, call in enumerate(reply.tool_calls):
        whole = _tool_call(call)
        head = {**whole, "index": index, "function": {"name": call.name, "arguments": ""}}
        out.append(chunk({"tool_calls": [head]}))
        out += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in _pieces(whole["function"]["arguments"])
        ]
    out.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    if include_usage:
        out.append({**base, "choices": [], "usage": _usage(reply)})
    return out


def error_body(reply: Reply) -> dict[str, Any]:
    return {
        "error": {
            "message": reply.error_message or "error",
            "type": reply.error_type or "server_error",
            "param": None,
            "code": reply.error_code,
        }
    }


class FakeOpenAIChat(FakeModelAPI):
    """The fake Chat Completions server (see the module docstring)."""

    name = "fake-openai-chat"
    model_paths = ("/v1/chat/completions", "/chat/completions")
    models: tuple[str, ...] = ("gpt-4o-mini",)

    def answer(self, exchange: Exchange) -> bool:
        path = exchange.path.rstrip("/")
        if exchange.method == "POST" and path in self.model_paths:
            self._chat(exchange)
            return True
        if exchange.method == "GET" and (path in ("/v1/models", "/models")):
            exchange.json(200, {"object": "list", "data": [self._model(m) for m in self._known_models()]})
            return True
        if exchange.method == "GET" and path.startswith(("/v1/models/", "/models/")):
            exchange.json(200, self._model(path.split("/models/", 1)[1]))
            return True
        return False

    def not_found(self, exchange: Exchange) -> None:
        message = f"Invalid URL ({exchange.method} {exchange.path})"
        exchange.json(404, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})

    def _known_models(self) -> list[str]:
        asked = [r["body"].get("model") for r in self.model_requests() if isinstance(r["body"], dict)]
        return list(dict.fromkeys([*self.models, *(m for m in asked if isinstance(m, str))]))

    @staticmethod
    def _model(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1700000000, "owned_by": "fake"}

    def _chat(self, exchange: Exchange) -> None:
        body = exchange.body if isinstance(exchange.body, dict) else {}
        reply = self.next_reply(body)
        wait_for_reply(reply)
        if reply.is_error:
            exchange.json(reply.status, error_body(reply), headers=reply.headers)
            return
        model = str(body.get("model") or "gpt-4o-mini")
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events: list[tuple[str | None, Any]] = [(None, c) for c in chunks(reply, model, include_usage)]
            exchange.sse([*events, (None, "[DONE]")], headers=reply.headers)
        else:
            exchange.json(200, completion(reply, model), headers=reply.headers)


# -- what the real Aider CLI needs to talk to this fake and nothing else -----------------------

AIDER_VENV = Path(__file__).resolve().parents[1] / "tools" / "aider"
# litellm's own copy of its price list, in Aider's venv: what Aider would fetch from GitHub.
LITELLM_PRICES = next(
    iter(sorted(AIDER_VENV.glob("lib/python3*/site-packages/litellm/model_prices_and_context_window_backup.json"))),
    None,
)
AIDER_RETRY_SHIM = Path(__file__).resolve().parent / "fixtures" / "aider" / "shim"


def seed_aider_model_cache(home: Path) -> Path:
    """Aider fetches litellm's price list from raw.githubusercontent.com unless ``~/.aider/caches``
    holds a copy younger than a day: put litellm's bundled one there. Returns the caches folder."""
    caches = home / ".aider" / "caches"
    caches.mkdir(parents=True, exist_ok=True)
    assert LITELLM_PRICES is not None, f"litellm's price list is missing under {AIDER_VENV}: run `make install`"
    shutil.copyfile(LITELLM_PRICES, caches / "model_prices_and_context_window.json")
    return caches


def aider_cli_env(home: str, api_url: str, *, retry_timeout: float | None = None) -> dict[str, str]:
    """A private HOME, the fake's base URL and a dummy key; with ``retry_timeout``, Aider's own
    retry loop gives up once its next wait would pass that many seconds (the test-only shim in
    ``tests/fixtures/aider/shim``) instead of after about a minute."""
    env = {"HOME": home, "OPENAI_API_BASE": f"{api_url}/v1", "OPENAI_API_KEY": "sk-test-dummy"}
    if retry_timeout is not None:
        env.update(PYTHONPATH=str(AIDER_RETRY_SHIM), SDLC_TEST_AIDER_RETRY_TIMEOUT=str(retry_timeout))
    return env


