"""OpenAI response shaping: chat.completion and text_completion bodies, their streamed chunks (with
reasoning_content split off and chosen-token logprobs), usage, and the SSE body of both endpoints."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from nanoseek.engine.engine import StreamDelta
from nanoseek.server.jobs import Job, Server
from nanoseek.server.prompts import ChatPrompt
from nanoseek.server.reasoning import ReasoningSplitter, reasoning_tokens
from nanoseek.server.schemas import APIError, error_body
from nanoseek.server.tools import Event, ToolCallParser, collect_calls, new_call_id

log = logging.getLogger("nanoseek.server")
MIN_LOGPROB = -9999.0  # JSON has no -inf


def usage(job: Job, reasoning: int = 0) -> dict[str, Any]:
    firsts = [job.finals[i * job.n] for i in range(len(job.requests)) if i * job.n in job.finals]
    prompt = sum(c.prompt_tokens for c in firsts)
    hit = sum(c.prompt_cache_hit_tokens for c in firsts)
    completion = sum(len(c.token_ids) for c in job.finals.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": prompt - hit,
        "prompt_tokens_details": {"cached_tokens": hit},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def token_logprob(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    data = tokenizer.token_bytes(token_id) if tokenizer is not None else b""
    return {
        "token": data.decode("utf-8", errors="replace"),
        "logprob": max(float(logprob), MIN_LOGPROB),
        "bytes": list(data),
        "top_logprobs": [],
    }


def chat_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[float] | None) -> dict[str, Any]:
    return {"content": [token_logprob(tokenizer, t, lp) for t, lp in zip(token_ids, logprobs or [])]}


def _legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """/v1/completions' logprobs shape, for the text starting at character `offset`."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": None,
        "text_offset": offsets,
    }


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


ABORTED = APIError(
    503, "the request was cancelled because the server is shutting down", type="server_error", code="aborted"
)


# The engine ends a sequence with "error" when something failed for it alone (the rest of the batch goes on); the
# client gets a 500 for that request, never a completion that looks normal.
FAILED = APIError(
    500, "generation failed for this request; see the server log", type="server_error", code="generation_failed"
)


def stream_failure(finish_reason: str | None) -> APIError | None:
    """The error a stream ends with when its sequence was aborted or failed; None while it goes on. Every API's
    stream checks it, so a failed generation is never reported as a finished one."""
    return {"abort": ABORTED, "error": FAILED}.get(finish_reason)


def _any_aborted(job: Job) -> bool:
    return any(c.finish_reason == "abort" for c in job.finals.values())


def _any_failed(job: Job) -> bool:
    return any(c.finish_reason == "error" for c in job.finals.values())


async def collect(job: Job, request: Request, tick: float) -> bool:
    """Wait for every sample of a non-streaming request; False when the client left (the job is cancelled).
    Checked every `tick` seconds, also while tokens keep coming."""
    checked = time.monotonic()
    async for _ in job.events(tick):
        if time.monotonic() - checked >= tick:
            checked = time.monotonic()
            if await request.is_disconnected():
                job.cancel()
                return False
    if _any_aborted(job):
        raise ABORTED
    if _any_failed(job):
        raise FAILED
    return True


CLIENT_GONE = 499  # nginx's "client closed request": nobody reads this response


@dataclass
class ChatContext:
    id: str
    model: str
    created: int
    prompt: ChatPrompt  # how the prompt ends (an open think block, a forced call's opening) and the tool format
    tokenizer: Any
    include_usage: bool
    logprobs: bool


class ChatOutput:
    """One sample's text, chunk by chunk -> (reasoning, events: content and tool-call pieces, tools.py). Both
    stages hold back what the next chunk may change, so the result does not depend on how the text is split."""

    def __init__(self, prompt: ChatPrompt):
        self.splitter = ReasoningSplitter(prompt.opened, prompt.thinking)
        self.parser = ToolCallParser(prompt.tool_format, prompt.max_calls) if prompt.tool_format else None
        self.pending = prompt.prefill  # output the prompt already holds: read before the first chunk

    def feed(self, text: str) -> tuple[str, list[Event]]:
        text, self.pending = self.pending + text, ""
        reasoning, content = self.splitter.feed(text)
        return reasoning, self._events(content)

    def read(self, text: str, final: bool = True) -> tuple[str, list[Event]]:
        """feed(text), and finish() too when `text` is the last chunk (a whole output: final)."""
        reasoning, events = self.feed(text)
        if final:
            more_reasoning, more = self.finish()
            reasoning, events = reasoning + more_reasoning, events + more
        return reasoning, events

    def finish(self) -> tuple[str, list[Event]]:
        r1, events = self.feed("")
        r2, content = self.splitter.finish()
        events += self._events(content)
        if self.parser is not None:
            events += self.parser.finish()
        return r1 + r2, events

    def _events(self, content: str) -> list[Event]:
        if self.parser is None:
            return [("content", content)] if content else []
        return self.parser.feed(content)


def _end_think_id(tokenizer: Any) -> int | None:
    return tokenizer.token_to_id("</think>") if tokenizer is not None else None


def output_reasoning_tokens(
    prompt: ChatPrompt, tokenizer: Any, token_ids: list[int], splitter: ReasoningSplitter
) -> int:
    """A chat output's tokens spent reasoning (0 when the prompt turned thinking off)."""
    return reasoning_tokens(token_ids, _end_think_id(tokenizer), splitter) if prompt.thinking else 0


def _reasoning_tokens(ctx: ChatContext, c: Any, splitter: ReasoningSplitter) -> int:
    return output_reasoning_tokens(ctx.prompt, ctx.tokenizer, c.token_ids, splitter)


def _finish_reason(reason: str, called: bool) -> str:
    return "tool_calls" if called and reason == "stop" else reason


def chat_response(job: Job, ctx: ChatContext) -> dict[str, Any]:
    choices, reasoning_total = [], 0
    for index in range(job.total):
        c = job.finals[index]
        output = ChatOutput(ctx.prompt)
        reasoning, events = output.read(c.text)
        content, calls = collect_calls(events)
        reasoning_total += _reasoning_tokens(ctx, c, output.splitter)
        reasoning_content = reasoning if output.splitter.reasoned else None
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning_content}
        if calls:
            message["content"] = content or None
            message["tool_calls"] = calls
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": chat_logprobs(ctx.tokenizer, c.token_ids, c.logprobs) if ctx.logprobs else None,
                "finish_reason": _finish_reason(c.finish_reason, bool(calls)),
            }
        )
    head = {"id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model}
    return {**head, "choices": choices, "usage": usage(job, reasoning_total)}


class LogprobTracker:
    """Chosen-token logprobs while streaming: per delta where the engine has them, the rest (the last token, or
    all of them with an engine that cannot tell) from the final Completion."""

    def __init__(self, tokenizer: Any, total: int):
        self.tokenizer = tokenizer
        self.pending: list[list[dict]] = [[] for _ in range(total)]  # entries not sent yet
        self.streamed = [0] * total  # tokens whose entries came from deltas
        self.live = [True] * total

    def track(self, index: int, delta: StreamDelta, logprob: float | None) -> None:
        c = delta.completion
        if c is None:
            if delta.token_ids and logprob is not None and self.live[index]:
                self.pending[index].append(token_logprob(self.tokenizer, delta.token_ids[-1], logprob))
                self.streamed[index] += 1
            elif delta.token_ids:
                self.live[index] = False
            return
        done = self.streamed[index]
        for token_id, lp in zip(c.token_ids[done:], (c.logprobs or [])[done:]):
            self.pending[index].append(token_logprob(self.tokenizer, token_id, lp))

    def take(self, index: int) -> list[dict]:
        entries, self.pending[index] = self.pending[index], []
        return entries


class ChatStream:
    """Deltas -> chat.completion.chunk events: a role chunk, reasoning_content, content, tool_calls pieces (the
    name with a new id, then arguments), the finish reason."""

    def __init__(self, job: Job, ctx: ChatContext):
        self.job, self.ctx = job, ctx
        self.outputs = [ChatOutput(ctx.prompt) for _ in range(job.total)]
        self.called = [False] * job.total
        self.logprobs = LogprobTracker(ctx.tokenizer, job.total) if ctx.logprobs else None
        self.reasoning = 0

    def chunk(self, index: int, delta: dict, finish: str | None = None) -> str:
        logprobs = None
        if self.logprobs is not None and (self.logprobs.pending[index] or finish):
            logprobs = {"content": self.logprobs.take(index)}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse(_chunk_head(self.ctx, "chat.completion.chunk") | {"choices": [choice]})

    def first(self) -> list[str]:
        return [self.chunk(i, {"role": "assistant", "content": ""}) for i in range(self.job.total)]

    def on_event(self, index: int, delta: StreamDelta, logprob: float | None) -> list[str]:
        output, c = self.outputs[index], delta.completion
        if self.logprobs is not None:
            self.logprobs.track(index, delta, logprob)
        reasoning, events = output.read(delta.text, final=c is not None)
        if c is not None:
            self.reasoning += _reasoning_tokens(self.ctx, c, output.splitter)
        out = []
        if reasoning:
            out.append(self.chunk(index, {"content": None, "reasoning_content": reasoning}))
        content = ""
        for event in [*events, ("end",)]:
            if event[0] == "content":
                content += event[1]
                continue
            if content:
                out.append(self.chunk(index, {"content": content, "reasoning_content": None}))
                content = ""
            if event[0] == "name":
                self.called[index] = True
                call = {"index": event[1], "id": new_call_id(), "type": "function"}
                call["function"] = {"name": event[2], "arguments": ""}
                out.append(self.chunk(index, {"tool_calls": [call]}))
            elif event[0] == "args":
                out.append(
                    self.chunk(index, {"tool_calls": [{"index": event[1], "function": {"arguments": event[2]}}]})
                )
        if c is not None:
            out.append(self.chunk(index, {}, _finish_reason(c.finish_reason, self.called[index])))
        return out

    def usage_chunk(self) -> str:
        return sse(_chunk_head(self.ctx, "chat.completion.chunk", usage(self.job, self.reasoning)) | {"choices": []})


def _chunk_head(ctx: Any, kind: str, usage: dict | None = None) -> dict[str, Any]:
    head = {"id": ctx.id, "object": kind, "created": ctx.created, "model": ctx.model}
    if ctx.include_usage:  # OpenAI: every chunk has "usage", null until the last one
        head["usage"] = usage
    return head


@dataclass
class TextContext:
    id: str
    model: str
    created: int
    tokenizer: Any
    include_usage: bool
    logprobs: bool
    echo: list[str]  # per prompt: the prompt text when echo=true, else ""


class TextStream:
    """Deltas -> text_completion chunks."""

    def __init__(self, job: Job, ctx: TextContext):
        self.job, self.ctx = job, ctx
        self.logprobs = LogprobTracker(ctx.tokenizer, job.total) if ctx.logprobs else None
        self.offsets = [len(ctx.echo[i // job.n]) for i in range(job.total)]

    def chunk(self, index: int, text: str, finish: str | None = None) -> str:
        logprobs = None
        if self.logprobs is not None and (self.logprobs.pending[index] or finish):
            entries = self.logprobs.take(index)
            logprobs = _legacy_logprobs(entries, self.offsets[index])
            self.offsets[index] += sum(len(e["token"]) for e in entries)
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse(_chunk_head(self.ctx, "text_completion") | {"choices": [choice]})

    def first(self) -> list[str]:
        echo = [self.ctx.echo[i // self.job.n] for i in range(self.job.total)]
        return [self.chunk(i, text) for i, text in enumerate(echo) if text]

    def on_event(self, index: int, delta: StreamDelta, logprob: float | None) -> list[str]:
        if self.logprobs is not None:
            self.logprobs.track(index, delta, logprob)
        out = [self.chunk(index, delta.text)] if delta.text else []
        if delta.completion is not None:
            out.append(self.chunk(index, "", delta.completion.finish_reason))
        return out

    def usage_chunk(self) -> str:
        return sse(_chunk_head(self.ctx, "text_completion", usage(self.job)) | {"choices": []})


async def stream_items(server: Server, job: Job, stream: Any, tick: float) -> AsyncIterator[str]:
    """The SSE body of the Responses and Anthropic streams (responses_api.py, anthropic.py: text deltas assembled into
    output items or content blocks, then a finish). The stream gives its own opening events, keep-alive, and error
    event, sent when the request fails after the headers went out."""
    try:
        for line in stream.start():
            yield line
        async for item in job.events(tick):
            if item is None:
                yield stream.keepalive()
                continue
            _, delta, _ = item
            if (failure := stream_failure(delta.finish_reason)) is not None:
                yield stream.error(failure)
                return
            for line in stream.on_text(delta.text, delta.completion is not None):
                yield line
            if delta.completion is not None:
                for line in stream.finish(delta.completion.finish_reason):
                    yield line
    except APIError as e:
        yield stream.error(e)
    finally:
        server.release(job)


async def stream_events(server: Server, job: Job, render: ChatStream | TextStream, tick: float) -> AsyncIterator[str]:
    """The SSE body of both endpoints: keep-alive comments while nothing happens (the client sees the request is
    alive, and the server notices a client that left), an error event if the request is aborted."""
    try:
        for line in render.first():
            yield line
        async for event in job.events(tick):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            index, delta, logprob = event
            if (failure := stream_failure(delta.finish_reason)) is not None:
                yield sse(failure.body())
                return
            for line in render.on_event(index, delta, logprob):
                yield line
        if render.ctx.include_usage:
            yield render.usage_chunk()
        yield "data: [DONE]\n\n"
    except APIError as e:
        yield sse(e.body())
    except Exception as e:  # the headers are sent: the error can only go in the stream
        log.exception("streaming failed")
        yield sse(error_body(f"internal error ({type(e).__name__}); see the server log", type="server_error"))
    finally:
        server.release(job)


class EventStream(StreamingResponse):
    """An SSE response that always ends its job, also when the client left before the body started."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.on_close()


def text_response(job: Job, ctx: TextContext) -> dict[str, Any]:
    choices = []
    for index in range(job.total):
        c, echo = job.finals[index], ctx.echo[index // job.n]
        entries = [token_logprob(ctx.tokenizer, t, lp) for t, lp in zip(c.token_ids, c.logprobs or [])]
        logprobs = _legacy_logprobs(entries, len(echo)) if ctx.logprobs else None
        choices.append({"index": index, "text": echo + c.text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    head = {"id": ctx.id, "object": "text_completion", "created": ctx.created, "model": ctx.model}
    return {**head, "choices": choices, "usage": usage(job)}
