"""OpenAI's Responses API at /v1/responses (what OpenAI's Agents SDK and Codex-style agents call), on the same
engine path as chat completions.

A request becomes the equivalent /v1/chat/completions request, as anthropic.py does for Messages: `instructions` is
the system message; `input` is a string or a list of items: messages (input_text / output_text parts; `developer`
is a system message), `function_call` items (an assistant turn's tool calls) and `function_call_output` items (tool
messages). Reasoning items sent back are dropped, as DeepSeek drops reasoning_content from earlier turns. Function
tools, `tool_choice`, `reasoning.effort` ("none" turns thinking off), `text.format` (json_object / json_schema,
enforced by constrained decoding) and `max_output_tokens` map onto their chat fields.

Output items: `reasoning` (its text as a reasoning_text part), `message` (one output_text part), `function_call`
(call_id, name, arguments). Streaming sends the typed events the OpenAI SDK assembles: response.created, per item
output_item.added / *.delta / *.done / output_item.done, then response.completed (or response.incomplete at
max_output_tokens).

Stateless by design: nothing is stored, so `previous_response_id` is refused with what to do instead (send the whole
conversation in `input`); `store` is accepted and answered as false.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nanoseek.server.jobs import Job
from nanoseek.server.prompts import ChatPrompt
from nanoseek.server.responses import ChatOutput, output_reasoning_tokens
from nanoseek.server.schemas import APIError, ChatCompletionRequest, adapted_chat_request
from nanoseek.server.tools import collect_calls, new_call_id


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------------------
# request -> chat request


def _part_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of text parts", param="input")
    parts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"{where}.content[{i}]: only text parts are supported here, not {kind}", param="input")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _messages(body: ResponsesRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The chat messages, and the input field each came from (errors about a message name that field)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    origins = ["instructions"] * len(out)
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    for i, item in enumerate(items):
        where, kind = "input" if isinstance(body.input, str) else f"input[{i}]", item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"{where}.role must be user, assistant, system or developer", param="input")
            role = "system" if role == "developer" else role
            out.append({"role": role, "content": _part_text(item.get("content", ""), where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or new_call_id(), "type": "function"}
            call["function"] = {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # one assistant turn's calls are consecutive items
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _part_text(output or [], where)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind != "reasoning":  # earlier reasoning is dropped, as DeepSeek drops reasoning_content
            raise APIError(400, f"{where}: items of type {kind!r} are not supported", param="input")
        origins += [where] * (len(out) - len(origins))
    return out, origins


def _tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    tools = []
    for i, t in enumerate(body.tools or []):
        if t.get("type") != "function":
            raise APIError(400, f"tools[{i}]: only function tools are supported, not {t.get('type')!r}", param="tools")
        function = {k: t.get(k) for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        tools.append({"type": "function", "function": function})
    return tools or None


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            message = 'tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}'
            raise APIError(400, message, param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise APIError(400, 'text.format must be an object such as {"type": "json_object"}', param="text")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": fmt.get("type")}


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The equivalent /v1/chat/completions request."""
    if body.previous_response_id is not None:
        raise APIError(
            400,
            "previous_response_id is not supported: this server stores no responses; send the whole conversation "
            "in input (earlier output items included)",
            param="previous_response_id",
        )
    messages, origins = _messages(body)
    request = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": _tools(body),
        "tool_choice": _tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "reasoning_effort": (body.reasoning or {}).get("effort"),
        "response_format": _response_format(body.text),
        "user": body.user,
    }
    return adapted_chat_request(request, origins)


# ---------------------------------------------------------------------------------------------------------------
# responses


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(job: Job, prompt: ChatPrompt, tokenizer: Any, splitter) -> dict[str, Any]:
    c = job.finals.get(0)
    prompt_tokens, hit, ids = (c.prompt_tokens, c.prompt_cache_hit_tokens, c.token_ids) if c else (0, 0, [])
    reasoning = output_reasoning_tokens(prompt, tokenizer, ids, splitter)
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": hit},
        "output_tokens": len(ids),
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt_tokens + len(ids),
    }


class ResponseContext:
    """What every event and the final object repeat: ids, the request's echoed settings."""

    def __init__(self, body: ResponsesRequest, prompt: ChatPrompt, model: str, tokenizer: Any):
        self.id, self.created, self.model = _id("resp"), int(time.time()), model
        self.prompt, self.tokenizer = prompt, tokenizer
        self.echo = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [],
            "text": body.text or {"format": {"type": "text"}},
            "reasoning": body.reasoning,
            "metadata": body.metadata or {},
            "store": False,
        }

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "error": None,
            "incomplete_details": incomplete,
            "usage": usage,
            **self.echo,
        }


def _status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def _finished(items: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    """The output items, the last one marked incomplete when max_output_tokens cut it off."""
    if status == "incomplete" and items:
        items[-1]["status"] = "incomplete"
    return items


def _reasoning_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": _id("rs"), "summary": [], "content": content, "status": status}


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": _id("msg"), "role": "assistant", "status": status, "content": content}


def _call_item(name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    item = {"type": "function_call", "id": _id("fc"), "call_id": new_call_id(), "name": name}
    return {**item, "arguments": arguments, "status": status}


def response_object(job: Job, ctx: ResponseContext) -> dict[str, Any]:
    c = job.finals[0]
    output = ChatOutput(ctx.prompt)
    reasoning, events = output.read(c.text)
    text, calls = collect_calls(events)
    items = [_reasoning_item(reasoning)] if output.splitter.reasoned else []
    items += [_message_item(text)] if text else []
    items += [_call_item(call["function"]["name"], call["function"]["arguments"]) for call in calls]
    usage = _usage(job, ctx.prompt, ctx.tokenizer, output.splitter)
    status = _status(c.finish_reason)
    return ctx.response(status, _finished(items, status), usage)


def event(kind: str, data: dict[str, Any], sequence: int) -> str:
    data = {"type": kind, "sequence_number": sequence, **data}
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class ResponseStream:
    """Deltas -> the Responses API's events. One output item is open at a time (reasoning, message or a function
    call); opening the next closes it with its *.done events, carrying the whole text."""

    def __init__(self, job: Job, ctx: ResponseContext):
        self.job, self.ctx = job, ctx
        self.output = ChatOutput(ctx.prompt)
        self.items: list[dict[str, Any]] = []  # every item so far, the open one last
        self.open: dict[str, Any] | None = None
        self.sequence = 0

    def _event(self, kind: str, data: dict[str, Any]) -> str:
        self.sequence += 1
        return event(kind, data, self.sequence - 1)

    def start(self) -> list[str]:
        response = self.ctx.response("in_progress", [], None)
        return [self._event(f"response.{kind}", {"response": response}) for kind in ("created", "in_progress")]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.open["id"], "output_index": len(self.items) - 1}

    def _part_event(self, kind: str, **fields: Any) -> str:
        """An event about the open item's one content part (a reasoning or message item's text)."""
        return self._event(kind, {**self._where(), "content_index": 0, **fields})

    def _open(self, item: dict[str, Any]) -> list[str]:
        out = self._close()
        self.open = item
        self.items.append(item)
        shown = {**item, "status": "in_progress"}
        if item["type"] == "message":
            shown["content"] = []
        out.append(self._event("response.output_item.added", {"output_index": len(self.items) - 1, "item": shown}))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._part_event("response.content_part.added", part=part))
        return out

    def _close(self) -> list[str]:
        item, out = self.open, []
        if item is None:
            return out
        where = self._where()
        if item["type"] == "reasoning":
            text = item["content"][0]["text"]
            out.append(self._part_event("response.reasoning_text.done", text=text))
        elif item["type"] == "message":
            part = item["content"][0]
            out.append(self._part_event("response.output_text.done", text=part["text"], logprobs=[]))
            out.append(self._part_event("response.content_part.done", part=part))
        else:
            args = {**where, "name": item["name"], "arguments": item["arguments"]}
            out.append(self._event("response.function_call_arguments.done", args))
        out.append(self._event("response.output_item.done", {"output_index": where["output_index"], "item": item}))
        self.open = None
        return out

    def on_text(self, text: str, final: bool) -> list[str]:
        reasoning, events = self.output.read(text, final)
        out = []
        if reasoning:
            if self.open is None or self.open["type"] != "reasoning":
                out += self._open(_reasoning_item(""))
            self.open["content"][0]["text"] += reasoning
            out.append(self._part_event("response.reasoning_text.delta", delta=reasoning))
        for e in events:
            if e[0] == "content":
                if self.open is None or self.open["type"] != "message":
                    out += self._open(_message_item(""))
                self.open["content"][0]["text"] += e[1]
                out.append(self._part_event("response.output_text.delta", delta=e[1], logprobs=[]))
            elif e[0] == "name":
                out += self._open(_call_item(e[2], ""))
            else:
                self.open["arguments"] += e[2]
                out.append(self._event("response.function_call_arguments.delta", {**self._where(), "delta": e[2]}))
        return out

    def finish(self, finish_reason: str) -> list[str]:
        status = _status(finish_reason)
        _finished(self.items, status)
        out = self._close()
        usage = _usage(self.job, self.ctx.prompt, self.ctx.tokenizer, self.output.splitter)
        response = self.ctx.response(status, self.items, usage)
        return [*out, self._event(f"response.{status}", {"response": response})]

    def keepalive(self) -> str:
        return ": keep-alive\n\n"

    def error(self, e: APIError) -> str:
        return self._event("error", {"code": e.code or "invalid_request_error", "message": e.message, "param": None})
