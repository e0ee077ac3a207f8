"""Anthropic's Messages API at /anthropic/v1/messages, as DeepSeek serves it (its `/anthropic` base URL), so
Anthropic-SDK clients work against nanoseek; also at Anthropic's own /v1/messages, for clients given the server's root.

A request becomes the equivalent chat completion request (system, text, thinking and tool_use blocks of
assistant turns, tool_result blocks as tool messages; a final assistant message is a prefill, i.e. a prefix
completion), so prompts, tool calls and the thinking switch work exactly as on /v1/chat/completions. The
answer is re-shaped into content blocks: thinking, text, tool_use. Errors on these routes have Anthropic's shape
(security.py rewrites them), and `x-api-key` is accepted besides `Authorization: Bearer`.

Differences: `thinking` is on by default (DeepSeek's default, where Anthropic's is off) and its budget_tokens is
not enforced; `stop_reason` is "end_turn" also when a stop sequence ended the text (the engine does not say which);
images and documents are refused; thinking blocks carry an empty signature.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nanoseek.server.jobs import Job
from nanoseek.server.prompts import ChatPrompt
from nanoseek.server.responses import ChatOutput
from nanoseek.server.schemas import APIError, ChatCompletionRequest, adapted_chat_request
from nanoseek.server.security import anthropic_error
from nanoseek.server.tools import collect_calls


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    """/v1/messages/count_tokens: a Messages request without max_tokens (what the prompt would cost)."""

    max_tokens: int = Field(1, ge=1)


def _text(blocks: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    parts = []
    for i, block in enumerate(blocks):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise APIError(400, f"{where}[{i}]: only text blocks are supported here", param=where)
        parts.append(block["text"])
    return "".join(parts)


def _messages(body: MessagesRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The chat messages, and the field each came from (a user message's tool results become tool messages)."""
    out: list[dict[str, Any]] = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system, "system")})
    origins = ["system"] * len(out)
    for i, message in enumerate(body.messages):
        where = f"messages[{i}].content"
        blocks = [{"type": "text", "text": message.content}] if isinstance(message.content, str) else message.content
        text, reasoning, calls, results = "", None, [], []
        for j, block in enumerate(blocks):
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                text += block["text"]
            elif kind == "thinking" and message.role == "assistant":
                reasoning = (reasoning or "") + str(block.get("thinking", ""))
            elif kind == "redacted_thinking" and message.role == "assistant":
                continue
            elif kind == "tool_use" and message.role == "assistant":
                if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                    raise APIError(400, f"{where}[{j}]: a tool_use block needs a name and an input object", param=where)
                arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block["name"], "arguments": arguments},
                    }
                )
            elif kind == "tool_result" and message.role == "user":
                content = block.get("content", "")
                result = _text(content, f"{where}[{j}].content") if content else ""
                results.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id"),
                        "content": ("Error: " if block.get("is_error") else "") + result,
                    }
                )
            else:
                raise APIError(
                    400, f"{where}[{j}]: unsupported content block {kind!r} in a {message.role} message", param=where
                )
        out.extend(results)
        if message.role == "user" and (text or not results):
            out.append({"role": "user", "content": text})
        elif message.role == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": text or None, "reasoning_content": reasoning}
            if calls:
                item["tool_calls"] = calls
            out.append(item)
        origins += [f"messages[{i}]"] * (len(out) - len(origins))
    if out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
        out[-1]["prefix"] = True  # Anthropic's prefill: the answer continues the last assistant message
    return out, origins


def _tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    if not choice:
        return None, None
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if kind == "tool":
        mapped = {"type": "function", "function": {"name": choice.get("name")}}
    if mapped is None:
        raise APIError(400, f"tool_choice.type must be auto, any, tool or none, got {kind!r}", param="tool_choice")
    return mapped, parallel


def chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    """The equivalent /v1/chat/completions request."""
    choice, parallel = _tool_choice(body.tool_choice)
    tools = []
    for t in body.tools or []:
        if t.get("type") not in (None, "custom"):
            raise APIError(400, f"server tools ({t.get('type')}) are not supported; define custom tools", param="tools")
        function = {"name": t.get("name"), "description": t.get("description"), "parameters": t.get("input_schema")}
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    thinking = (body.thinking or {}).get("type")
    if thinking not in (None, "enabled", "disabled", "adaptive"):
        raise APIError(400, "thinking.type must be enabled or disabled", param="thinking")
    messages, origins = _messages(body)
    request = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences or None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "tools": tools or None,
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
        "thinking": {"type": "disabled" if thinking == "disabled" else "enabled"},
        "user_id": (body.metadata or {}).get("user_id"),
    }
    return adapted_chat_request(request, origins)


# ---------------------------------------------------------------------------------------------------------------
# responses


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}  # not an object: kept as written


def _stop_reason(finish: str, called: bool) -> str:
    if finish == "length":
        return "max_tokens"
    return "tool_use" if called else "end_turn"


def _usage(job: Job) -> dict[str, int]:
    c = job.finals.get(0)
    prompt, hit = (c.prompt_tokens, c.prompt_cache_hit_tokens) if c is not None else (0, 0)
    output = len(c.token_ids) if c is not None else 0
    return {
        "input_tokens": prompt - hit,
        "output_tokens": output,
        "cache_read_input_tokens": hit,
        "cache_creation_input_tokens": 0,
    }


def message_response(job: Job, prompt: ChatPrompt, model: str, message_id: str) -> dict[str, Any]:
    c = job.finals[0]
    output = ChatOutput(prompt)
    reasoning, events = output.read(c.text)
    text, calls = collect_calls(events)
    blocks: list[dict[str, Any]] = []
    if output.splitter.reasoned:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text:
        blocks.append({"type": "text", "text": text})
    for call in calls:
        f = call["function"]
        blocks.append({"type": "tool_use", "id": _tool_id(), "name": f["name"], "input": _input(f["arguments"])})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": _stop_reason(c.finish_reason, bool(calls)),
        "stop_sequence": None,
        "usage": _usage(job),
    }


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


class MessageStream:
    """Deltas -> Anthropic's stream: message_start, per block content_block_start/_delta/_stop (thinking_delta,
    text_delta, input_json_delta), message_delta (stop_reason, usage), message_stop."""

    def __init__(self, job: Job, prompt: ChatPrompt, model: str, message_id: str):
        self.job, self.model, self.id = job, model, message_id
        self.output = ChatOutput(prompt)
        self.block: str | None = None  # the open block's type
        self.index = -1
        self.called = False

    def start(self) -> list[str]:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [event("message_start", {"message": message})]

    def keepalive(self) -> str:
        return event("ping", {})

    def error(self, e: APIError) -> str:
        return event("error", {"error": anthropic_error(e.status, e.message)["error"]})

    def _open(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self._close()
        self.block, self.index = kind, self.index + 1
        return [*out, event("content_block_start", {"index": self.index, "content_block": block})]

    def _close(self) -> list[str]:
        if self.block is None:
            return []
        self.block = None
        return [event("content_block_stop", {"index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> str:
        return event("content_block_delta", {"index": self.index, "delta": delta})

    def on_text(self, text: str, final: bool) -> list[str]:
        reasoning, events = self.output.read(text, final)
        out = []
        if reasoning:
            if self.block != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        for e in events:
            if e[0] == "content":
                if self.block != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": e[1]}))
            elif e[0] == "name":
                self.called = True
                out += self._open("tool_use", {"type": "tool_use", "id": _tool_id(), "name": e[2], "input": {}})
            else:
                out.append(self._delta({"type": "input_json_delta", "partial_json": e[2]}))
        return out

    def finish(self, finish_reason: str) -> list[str]:
        usage = _usage(self.job)
        delta = {"stop_reason": _stop_reason(finish_reason, self.called), "stop_sequence": None}
        return [*self._close(), event("message_delta", {"delta": delta, "usage": usage}), event("message_stop", {})]
