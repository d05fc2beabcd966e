"""A fake OpenAI Responses API on 127.0.0.1 for running the real Codex CLI in tests (issue 18).

``POST /v1/responses`` takes the next scripted :class:`~fake_model_api.Reply` (or the
``default``/``responder`` one) and answers it as the real API streams it: server-sent
events ``response.created``, ``response.in_progress``, per output item
``response.output_item.added``, its deltas and ``response.output_item.done``, then
``response.completed`` with ``usage``. A tool call becomes the item the request declared
the tool as: a ``function_call`` (``arguments`` a JSON string), or a ``custom_tool_call``
for a freeform tool (``type: custom``; its raw text is ``arguments["input"]``), which is
how Codex 0.169 offers its code-mode ``exec`` tool to every model it knows. An error reply
is OpenAI's body ``{"error": {"message", "type", "param", "code"}}`` with the reply's
status and headers (``retry-after`` on a 429); :class:`OpenAIReply` adds more fields to
that body (``resets_at`` of a ChatGPT plan's usage limit) and cached/reasoning token
counts to ``usage``. ``GET /v1/models`` lists one model; any other path gets a 404.
Every request is recorded (:class:`~fake_model_api.FakeModelAPI`)::

    with FakeOpenAIResponses() as api:
        api.script(RATE_LIMITED)                  # 429 rate_limit_exceeded, retry-after: 7
        ...                                       # run codex, its provider's base_url f"{api.url}/v1"
        assert api.model_requests()[0]["body"]["stream"] is True

:func:`codex_config` and :func:`codex_cli_env` point the real Codex CLI at a running fake.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from fake_model_api import Exchange, FakeModelAPI, Reply, ToolCall, wait_for_reply

_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class OpenAIReply(Reply):
    """A :class:`Reply` with what only OpenAI's wire format has: more fields in an error body,
    and the cached and reasoning parts of the token counts."""

    error_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    cached_tokens: int = 0
    reasoning_tokens: int = 0


def usage_limit(resets_at: int | None, plan_type: str = "plus") -> OpenAIReply:
    """A ChatGPT plan's usage limit: 429 ``usage_limit_reached`` with its reset (epoch seconds), or none."""
    fields: dict[str, Any] = {"plan_type": plan_type}
    if resets_at is not None:
        fields["resets_at"] = resets_at
    reply = OpenAIReply.error(429, "usage_limit_reached", "The usage limit has been reached")
    return dataclasses.replace(reply, error_fields=fields)


# The errors of the real API (platform.openai.com/docs/guides/error-codes), as replies.
RATE_LIMITED = Reply.error(
    429,
    "requests",
    "Rate limit reached for gpt-6.1-sol in organization org-fake on requests per min (RPM): Limit 3, Used 3, "
    "Requested 1. Please try again in 7s.",
    headers={"retry-after": "7"},
    code="rate_limit_exceeded",
)
QUOTA_EXHAUSTED = Reply.error(
    429,
    "insufficient_quota",
    "You exceeded your current quota, please check your plan and billing details.",
    code="insufficient_quota",
)
SERVER_ERROR = Reply.error(500, "server_error", "The server had an error while processing your request.")
OVERLOADED = Reply.error(
    503, "server_error", "The engine is currently overloaded, please try again later.", code="server_is_overloaded"
)
UNAUTHORIZED = Reply.error(
    401,
    "invalid_request_error",
    "Incorrect API key provided: sk-test-*****ummy. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    code="invalid_api_key",
)


def error_body(reply: Reply) -> dict[str, Any]:
    """OpenAI's error body for an error reply."""
    extra = reply.error_fields if isinstance(reply, OpenAIReply) else {}
    return {
        "error": {
            "message": reply.error_message or "",
            "type": reply.error_type or "server_error",
            "param": None,
            "code": reply.error_code,
            **extra,
        }
    }


def declared_tools(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tools a request offers, by name: its ``tools`` and those of its ``additional_tools``
    input items (Codex's code mode), namespaces flattened."""
    found: dict[str, dict[str, Any]] = {}

    def walk(tools: Any) -> None:
        for tool in tools if isinstance(tools, list) else []:
            if not isinstance(tool, dict):
                continue
            if tool.get("type") == "namespace":
                walk(tool.get("tools"))
            elif isinstance(tool.get("name"), str):
                found[tool["name"]] = tool

    walk(body.get("tools"))
    items = body.get("input")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            walk(item.get("tools"))
    return found


def _message_item(text: str) -> dict[str, Any]:
    return {
        "id": f"msg_fake{next(_ids):06d}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call: ToolCall, tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if tools.get(call.name, {}).get("type") == "custom":
        return {
            "id": f"ctc_fake{next(_ids):06d}",
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": call.call_id,
            "name": call.name,
            "input": str(call.arguments.get("input", "")),
        }
    return {
        "id": f"fc_fake{next(_ids):06d}",
        "type": "function_call",
        "status": "completed",
        "call_id": call.call_id,
        "name": call.name,
        "arguments": json.dumps(call.arguments),
    }


def _usage(reply: Reply) -> dict[str, Any]:
    cached = reply.cached_tokens if isinstance(reply, OpenAIReply) else 0
    reasoning = reply.reasoning_tokens if isinstance(reply, OpenAIReply) else 0
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _response(reply: Reply, model: str, response_id: str, output: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The ``response`` object of the stream's events: in progress (``output`` None) or completed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "in_progress" if output is None else "completed",
        "model": model,
        "output": output or [],
        "usage": None if output is None else _usage(reply),
    }


def sse_events(
    reply: Reply, model: str, tools: dict[str, dict[str, Any]] | None = None
) -> list[tuple[str | None, Any]]:
    """The streamed events of a successful reply, as the Responses API sends them."""
    response_id = f"resp_fake{next(_ids):06d}"
    items: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        items.append(_message_item(reply.text))
    items.extend(_call_item(call, tools or {}) for call in reply.tool_calls)
    sequence = itertools.count(0)
    events: list[tuple[str | None, Any]] = []

    def event(name: str, **data: Any) -> None:
        events.append((name, {"type": name, "sequence_number": next(sequence), **data}))

    event("response.created", response=_response(reply, model, response_id, None))
    event("response.in_progress", response=_response(reply, model, response_id, None))
    for index, item in enumerate(items):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            text = item["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": []}
            event(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            event("response.content_part.added", **where, content_index=0, part=part)
            event("response.output_text.delta", **where, content_index=0, delta=text)
            event("response.output_text.done", **where, content_index=0, text=text)
            event("response.content_part.done", **where, content_index=0, part={**part, "text": text})
        elif item["type"] == "custom_tool_call":
            event("response.output_item.added", output_index=index, item={**item, "status": "in_progress", "input": ""})
            event("response.custom_tool_call_input.delta", **where, delta=item["input"])
            event("response.custom_tool_call_input.done", **where, input=item["input"])
        else:
            event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            event("response.function_call_arguments.done", **where, arguments=item["arguments"])
        event("response.output_item.done", output_index=index, item=item)
    event("response.completed", response=_response(reply, model, response_id, items))
    return events


class FakeOpenAIResponses(FakeModelAPI):
    """The fake Responses API; a context manager serving on ``url`` (a client's base URL is ``url + "/v1"``)."""

    name = "fake-openai-responses"
    model_paths = ("/v1/responses",)

    def answer(self, exchange: Exchange) -> bool:
        if exchange.method == "POST" and exchange.path == "/v1/responses":
            body = exchange.body if isinstance(exchange.body, dict) else {}
            reply = self.next_reply(body)
            wait_for_reply(reply)
            if reply.is_error:
                exchange.json(reply.status, error_body(reply), reply.headers)
            else:
                model = str(body.get("model") or "gpt-6.1-sol")
                exchange.sse(sse_events(reply, model, declared_tools(body)), reply.headers)
            return True
        if exchange.method == "GET" and exchange.path == "/v1/models":
            model = {"id": "gpt-6.1-sol", "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
            exchange.json(200, {"object": "list", "data": [model]})
            return True
        return False


# -- the real Codex CLI against the fake --------------------------------------------------

CODEX_API_KEY = "sk-test-dummy"


def codex_config(api_url: str, *, retries: int = 0, extra: str = "") -> str:
    """``~/.codex/config.toml`` for Codex 0.169 against the fake: a custom provider (``wire_api =
    "responses"``, HTTP only: no WebSocket as the built-in OpenAI provider tries first), its own
    retries ``retries`` (it honours ``retry-after`` when it retries), and nothing that reaches
    out on its own (the curated-plugin sync from github.com and chatgpt.com, the analytics to
    ab.chatgpt.com, the update check); ``extra`` TOML tables after it."""
    return (
        'model_provider = "fake"\n'
        "check_for_update_on_startup = false\n"
        "\n"
        "[model_providers.fake]\n"
        'name = "fake OpenAI Responses API"\n'
        f'base_url = "{api_url}/v1"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
        f"request_max_retries = {retries}\n"
        f"stream_max_retries = {retries}\n"
        "\n"
        "[analytics]\n"
        "enabled = false\n"
        "\n"
        "[features]\n"
        "plugins = false\n"
        f"{extra}"
    )


def codex_cli_env(home: str, api_url: str) -> dict[str, str]:
    """What the real Codex CLI needs beside its config: a private HOME (its ``~/.codex``), the key its
    provider names, and every other host behind a proxy that is the fake itself, so that a request
    meant for anywhere else is recorded (:func:`fake_model_api.foreign_requests`) and refused.

    ``OPENAI_BASE_URL`` is not read by Codex 0.169 (its provider's ``base_url`` decides); it names the
    fake's port to sdlc's sandbox, which opens only the loopback ports of ``*_BASE_URL`` variables."""
    return {
        "HOME": home,
        "OPENAI_API_KEY": CODEX_API_KEY,
        "OPENAI_BASE_URL": f"{api_url}/v1",
        "HTTPS_PROXY": api_url,
        "HTTP_PROXY": api_url,
        "ALL_PROXY": api_url,
        "https_proxy": api_url,
        "http_proxy": api_url,
        "all_proxy": api_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
