"""The OpenAI-compatible HTTP server (DeepSeek API flavour) over one Engine, and the browser chat app at `/`.

Threads: uvicorn's event loop serves HTTP; the engine's thread runs generation steps and calls each request's
on_delta from there, which `Job` hands to the request's asyncio.Queue with loop.call_soon_threadsafe. The engine
is loaded in a background thread at startup, so /health answers 503 (not a refused connection) until it is ready.

The engine interface used here: tokenizer, encode(prompt), submit(ids, params, on_delta), num_waiting, running,
max_context, start(), stop() (tests substitute a scripted engine with the same interface).

Where this API differs from OpenAI's or DeepSeek's:
- response_format {"type": "json_object"} adds a system instruction to reply with one JSON object; the output is
  not constrained or validated ({"type": "text"} is the default; json_schema is refused).
- top_logprobs > 0 (and /v1/completions logprobs > 0) are refused: only the chosen tokens' logprobs exist.
- tools, logit_bias and non-zero frequency/presence penalties are refused (0 and {} are accepted); other unknown
  fields are ignored.
- messages must not contain the tokenizer's added tokens or the chat template's role markers (400): they would
  forge turns. Refused rather than stripped or escaped: the prompt reaches the engine as one string, so a marker
  cannot be kept as plain text, and silently changing a client's text is worse than telling it.
- model may be omitted (the served model); assistant messages may carry reasoning_content, which is dropped (as
  the chat template drops reasoning), where DeepSeek's API refuses it.
- extensions from vLLM: top_k, min_p, ignore_eos.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanoseek.engine.engine import Completion, StreamDelta
from nanoseek.engine.sampling import SamplingParams
from nanoseek.server.reasoning import ReasoningSplitter, prompt_opens_reasoning, reasoning_tokens
from nanoseek.server.schemas import (
    GENERATION_RESPONSES,
    MAX_PROMPTS,
    SSE,
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    TextCompletion,
    describe_validation_errors,
    error_body,
)
from nanoseek.server.security import APIKeys, Guard, RateLimiter, SameOrigin

log = logging.getLogger("nanoseek.server")
STATIC = Path(__file__).parent / "static"
JSON_HINT = "Reply with one valid JSON object and nothing else."
MIN_LOGPROB = -9999.0  # JSON has no -inf
# Sampling guards (the engine computes in float32): a temperature this small is greedy (as in vLLM; dividing
# logits by 1e-38 overflows), and a top_p below 1e-6 (which would round to 0 and drop every token) keeps only the
# most likely token, which is what any top_p below its probability means.
GREEDY_BELOW = 1e-5
MIN_TOP_P = 1e-6
# One sample without max_tokens must not hold a 128k context's whole cache; R1's long reasoning fits.
DEFAULT_MAX_TOKENS_CAP = 16384


@dataclass
class ServerConfig:
    model_name: str = "nanoseek"
    api_keys: list[str] = field(default_factory=list)
    max_waiting: int = 256  # queued requests beyond this get a 429
    rate_limit_rpm: int | None = None
    rate_limit_tpm: int | None = None
    max_body_bytes: int = 4 * 2**20
    # Upper bound on generated tokens per sample: requests asking more are clamped, requests without max_tokens
    # get this many (or the rest of the context, when shorter). None or 0: no bound but the context.
    max_tokens_cap: int | None = DEFAULT_MAX_TOKENS_CAP
    keepalive_seconds: float = 1.0  # SSE comment while a stream waits
    grace_seconds: float = 10.0  # on SIGTERM: how long running requests may finish before they are cancelled
    allowed_origins: list[str] = field(default_factory=list)  # browser origins besides the server's own ("*": any)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides localhost and IPs ("*": any)


# ---------------------------------------------------------------------------------------------------------------
# metrics


class Metrics:
    """Prometheus metrics in a registry of their own (one per app). Token events are observed on the engine
    thread as they happen; the gauges read the engine when scraped."""

    def __init__(self, server: Server):
        r = self.registry = CollectorRegistry()
        engine = lambda: server.engine
        Gauge("nanoseek_requests_running", "sequences being generated", registry=r).set_function(
            lambda: len(engine().running) if engine() else 0
        )
        Gauge("nanoseek_requests_waiting", "requests queued for the engine", registry=r).set_function(
            lambda: engine().num_waiting if engine() else 0
        )
        self.prompt_tokens = Counter("nanoseek_prompt_tokens", "prompt tokens processed", registry=r)
        self.generation_tokens = Counter("nanoseek_generation_tokens", "tokens generated", registry=r)
        self.cache_hit_tokens = Counter(
            "nanoseek_prefix_cache_hit_tokens", "prompt tokens served from the prefix cache", registry=r
        )
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ttft = Histogram(
            "nanoseek_time_to_first_token_seconds", "time to first token", buckets=buckets, registry=r
        )
        self.itl = Histogram(
            "nanoseek_inter_token_latency_seconds", "time between tokens of a sample", buckets=buckets, registry=r
        )
        self.latency = Histogram(
            "nanoseek_request_latency_seconds", "arrival to last token", buckets=buckets, registry=r
        )
        self.finished = Counter(
            "nanoseek_requests_finished", "finished samples by finish reason", ["finish_reason"], registry=r
        )

    def observe(self, job: Job, choice: int, delta: StreamDelta, now: float) -> None:
        if delta.token_ids or delta.text:
            last = job.last_token.get(choice)
            if choice // job.n not in job.first_token:
                job.first_token.add(choice // job.n)
                self.ttft.observe(now - job.arrival)
            elif last is not None:
                self.itl.observe(now - last)
            job.last_token[choice] = now
        c = delta.completion
        if c is not None:
            self.finished.labels(c.finish_reason).inc()
            self.generation_tokens.inc(len(c.token_ids))
            self.latency.observe(now - job.arrival)
            if c.index == 0:
                self.prompt_tokens.inc(c.prompt_tokens)
                self.cache_hit_tokens.inc(c.prompt_cache_hit_tokens)


# ---------------------------------------------------------------------------------------------------------------
# one API request in the engine

ENGINE_STOPPED = APIError(
    503, "the generation engine has stopped; see the server log", type="server_error", code="engine_stopped"
)

Event = tuple[int, StreamDelta, float | None]  # (choice index, delta, logprob of the delta's token if known)


class Job:
    """The engine requests of one API request (one per prompt, n samples each), bridged to the event loop."""

    def __init__(self, server: Server, engine: Any, prompts: list[list[int]], params: list[SamplingParams]):
        self.server, self.engine, self.n = server, engine, params[0].n
        self.want_logprobs = params[0].logprobs
        self.total = len(prompts) * self.n
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        # Deltas handed to the loop (counted on the engine thread) and taken from the queue (on the loop): equal
        # when none is in flight, i.e. scheduled with call_soon_threadsafe but not in the queue yet.
        self.sent = self.received = 0
        self.finals: dict[int, Completion] = {}
        self.arrival = time.perf_counter()
        self.first_token: set[int] = set()
        self.last_token: dict[int, float] = {}
        self.who, self.charged = "", 0
        self._callbacks = [partial(self._on_delta, i) for i in range(len(prompts))]
        self.requests: list[Any] = []
        try:
            for ids, p, callback in zip(prompts, params, self._callbacks):
                self.requests.append(engine.submit(ids, p, on_delta=callback))
        except Exception:
            self.cancel()
            raise

    def _on_delta(self, prompt_index: int, delta: StreamDelta) -> None:  # runs on the engine thread
        now = time.perf_counter()
        choice = prompt_index * self.n + delta.index
        logprob = None
        if self.want_logprobs and delta.token_ids and delta.completion is None:
            logprob = self._latest_logprob(self._callbacks[prompt_index], delta.index)
        self.server.metrics.observe(self, choice, delta, now)
        self.sent += 1  # before it is scheduled, so the loop never sees it delivered before it is counted
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (choice, delta, logprob))

    def _latest_logprob(self, callback: Any, index: int) -> float | None:
        """The logprob of the token a streaming delta carries (deltas only bring it with the final Completion)."""
        for seq in getattr(self.engine, "running", ()):
            if seq.request.on_delta is callback and seq.index == index and getattr(seq, "logprobs", None):
                return seq.logprobs[-1]
        return None

    async def events(self, tick: float) -> AsyncIterator[Event | None]:
        """Deltas as they arrive until every sample has finished; None after `tick` seconds without one."""
        while len(self.finals) < self.total:
            try:
                event = await asyncio.wait_for(self.queue.get(), tick)
            except TimeoutError:
                if self.server.engine_stopped():  # its thread died: nothing more will come
                    raise ENGINE_STOPPED from None
                for event in self._unreported():
                    self.finals[event[0]] = event[1].completion
                    yield event
                yield None
                continue
            self.received += 1
            if event[0] in self.finals:  # already reported as finished (cannot happen while deltas are counted)
                continue
            if event[1].completion is not None:
                self.finals[event[0]] = event[1].completion
            yield event

    def _unreported(self) -> list[Event]:
        """Samples the engine finished without a delta (requests cancelled while queued, siblings of a sample
        that ended before forking), once every delta the engine sent has been taken from the queue. The engine
        sends a request's last delta before it sets `done`, so `done` is read first: a delta still in flight at
        the tick (scheduled on the loop, not yet in the queue) is then always counted in `sent`, and waited for."""
        if not all(r.done.is_set() for r in self.requests) or self.sent != self.received:
            return []
        events = []
        for i, request in enumerate(self.requests):
            for j, c in enumerate(request.completions):
                if i * self.n + j not in self.finals and c is not None:
                    events.append((i * self.n + j, StreamDelta(j, "", [], c.finish_reason, c), None))
        return events

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()


# ---------------------------------------------------------------------------------------------------------------
# server state


class Server:
    def __init__(self, load_engine: Callable[[], Any], config: ServerConfig):
        self.load_engine, self.config = load_engine, config
        self.engine: Any = None
        self.load_error: str | None = None
        self.draining = self.closed = False
        self.jobs: set[Job] = set()
        self.limiter = RateLimiter(config.rate_limit_rpm, config.rate_limit_tpm)
        self.metrics = Metrics(self)
        self.created = int(time.time())

    def start_loading(self) -> None:
        threading.Thread(target=self._load, name="nanoseek-load", daemon=True).start()

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            engine = self.load_engine()
            if self.closed:
                return
            engine.start()
            self.engine = engine
            log.info("model %s loaded in %.1f s", self.config.model_name, time.perf_counter() - start)
        except Exception as e:
            log.exception("loading the model failed")
            self.load_error = f"{type(e).__name__}: {e}"

    def unavailable(self) -> str | None:
        """Why generation is refused right now (None: it is not)."""
        if self.draining or self.closed:
            return "the server is shutting down; retry on another instance or later"
        if self.load_error:  # the detail (paths, library messages) stays in the server log
            return "the model failed to load; see the server log"
        if self.engine is None:
            return "the model is still loading; retry in a few seconds"
        if self.engine_stopped():
            return ENGINE_STOPPED.message
        return None

    def engine_stopped(self) -> bool:
        thread = getattr(self.engine, "_thread", None)
        return thread is not None and not thread.is_alive()

    def ready(self) -> Any:
        reason = self.unavailable()
        if reason:
            raise APIError(503, reason, type="server_error", code="unavailable", headers={"Retry-After": "5"})
        return self.engine

    def check_model(self, name: str | None) -> str:
        if name is not None and name != self.config.model_name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.config.model_name}'",
                param="model",
                code="model_not_found",
            )
        return self.config.model_name

    def admit(self, request: Request, engine: Any, prompts: list[list[int]], params: SamplingParams) -> Job:
        """Backpressure (in sequences: prompts x n), rate limits, then the engine (whose ValueError is a request
        that cannot fit)."""
        sequences = len(prompts) * params.n
        limit = self.config.max_waiting
        if sequences > limit:
            raise APIError(
                400,
                f"this request asks for {sequences} sequences (prompts x n), more than this server queues at once "
                f"({limit}); send fewer prompts or a smaller n per request",
                param="prompt" if len(prompts) > 1 else "n",
                code="too_many_sequences",
            )
        waiting = self.waiting_sequences(engine)
        if waiting + sequences > limit:
            raise APIError(
                429,
                f"the server is busy ({waiting} sequences waiting); retry shortly",
                type="server_busy",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        per_prompt = [self._cap(engine, p, params) for p in prompts]
        room = [q.max_tokens or max(1, engine.max_context - len(p)) for p, q in zip(prompts, per_prompt)]
        cost = sum(len(p) + params.n * r for p, r in zip(prompts, room))
        who = getattr(request.state, "api_key", None) or (request.client.host if request.client else "anonymous")
        self._charge(who, cost)
        try:
            job = Job(self, engine, prompts, per_prompt)
        except ValueError as e:
            self.limiter.refund(who, cost)
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param="max_tokens" if "max_tokens" in str(e) else None, code=code) from None
        job.who, job.charged = who, cost
        self.jobs.add(job)
        return job

    def _cap(self, engine: Any, prompt: list[int], params: SamplingParams) -> SamplingParams:
        """A request without max_tokens may generate up to the cap, or to the end of the context when that is
        nearer (so a short context never turns a request without max_tokens into an error)."""
        cap = self.config.max_tokens_cap
        if params.max_tokens is not None or not cap or engine.max_context - len(prompt) <= cap:
            return params
        return dataclasses.replace(params, max_tokens=cap)

    def waiting_sequences(self, engine: Any) -> int:
        """Sequences of this server's requests the engine has not started: every engine request it holds that
        is neither running nor finished counts its n samples (the engine's num_waiting counts requests)."""
        running = {id(getattr(s, "request", s)) for s in list(getattr(engine, "running", ()))}
        return sum(
            r.params.n
            for job in list(self.jobs)
            for r in job.requests
            if id(r) not in running and not r.done.is_set() and not any(r.completions)
        )

    def _charge(self, who: str, cost: int) -> None:
        """Take one request and `cost` tokens from the caller's rate limits, or refuse with a 429."""
        wait = self.limiter.acquire(who, cost)
        if wait == math.inf:
            raise APIError(
                429,
                f"this request may use {cost} tokens (prompt + n x max_tokens), more than the limit of "
                f"{self.limiter.tpm} tokens per minute; lower max_tokens or n",
                type="tokens",
                code="rate_limit_exceeded",
            )
        if wait > 0:
            limits = ((self.limiter.rpm, "requests"), (self.limiter.tpm, "tokens"))
            described = ", ".join(f"{v} {unit} per minute" for v, unit in limits if v)
            raise APIError(
                429,
                f"rate limit reached ({described}); retry in {math.ceil(wait)} s",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    def release(self, job: Job) -> None:
        """The API request is over (answered, failed or abandoned): stop its generation, refund unused tokens."""
        job.cancel()
        if job in self.jobs:
            self.jobs.discard(job)
            used = sum(len(r.prompt) for r in job.requests if hasattr(r, "prompt"))
            used += sum(len(c.token_ids) for c in job.finals.values())
            self.limiter.refund(job.who, job.charged - used)

    def cancel_all(self) -> None:
        for job in list(self.jobs):
            job.cancel()

    def close(self) -> None:
        self.closed = True
        self.cancel_all()
        if self.engine is not None:
            self.engine.stop()


# ---------------------------------------------------------------------------------------------------------------
# request -> prompt and sampling parameters


REASONING_MARKERS = ("<think>", "</think>")  # allowed in assistant content: the template drops the reasoning
_PROBE = "\ue000{}\ue000"  # private-use sentinels around probe messages


@functools.lru_cache(maxsize=8)
def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Text no message may contain, since it would forge a turn: every added token of the tokenizer, special or
    not (R1-Distill's tokenizer adds <｜User｜> and <｜Assistant｜> without marking them special, yet they encode
    as the role ids), and the tag-like markers the chat template writes around messages (found by rendering a
    probe conversation), in case a template's markers are not tokens at all."""
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        found = {t.content for t in hf.get_added_tokens_decoder().values() if t.content}
    else:
        from nanoseek.tokenizer import ADDED_TOKENS

        found = set(ADDED_TOKENS)
    return tuple(sorted(found | _template_markers(tokenizer), key=len, reverse=True))


def _template_markers(tokenizer: Any) -> set[str]:
    probes = [("system", "s"), ("user", "u"), ("assistant", "a"), ("user", "v")]
    for messages in (probes, probes[1:]):  # some templates refuse a system message
        try:
            text = tokenizer.apply_chat_template(
                [{"role": r, "content": _PROBE.format(c)} for r, c in messages], add_generation_prompt=True
            )
        except Exception:  # a template that cannot render the probe: its added tokens still apply
            continue
        between = re.sub("\ue000[a-z]\ue000", "\n", text)
        return set(re.findall(r"<[^<>\s]{1,64}>|\[/?[A-Z_]{2,16}\]", between))
    return set()


def render_chat(tokenizer: Any, body: ChatCompletionRequest) -> str:
    if tokenizer is None:
        raise APIError(400, "this checkpoint has no tokenizer, so it cannot serve chat; use /v1/completions with ids")
    if body.tools:
        raise APIError(400, "tools (function calling) are not supported by this server", param="tools")
    markers = control_tokens(tokenizer)
    messages = []
    for i, message in enumerate(body.messages):
        if message.content is None and message.role != "assistant":
            raise APIError(
                400,
                f"messages[{i}].content must not be null in a {message.role} message",
                param=f"messages[{i}].content",
                code="invalid_content",
            )
        text = message.text()
        for marker in markers:
            if marker in text and not (message.role == "assistant" and marker in REASONING_MARKERS):
                raise APIError(
                    400,
                    f"messages[{i}].content contains {marker!r}, which this model's tokenizer or chat template "
                    "uses as a control marker; remove it (a message cannot start a new turn)",
                    param=f"messages[{i}].content",
                    code="invalid_content",
                )
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    if body.response_format is not None and body.response_format.type == "json_object":
        messages.append({"role": "system", "content": JSON_HINT})  # the template joins every system message
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None


def check_unsupported(body: Any) -> None:
    """Options this server does not implement are refused, never silently ignored; their neutral values (what
    clients send by default) are accepted."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise APIError(
                400,
                f"{name} is not supported by this server; send 0 or leave it out",
                param=name,
                code="unsupported_parameter",
            )
    for key in body.logit_bias or {}:
        if not key.isdigit():
            raise APIError(
                400,
                f"logit_bias keys must be token ids (integers as strings), got {key!r}",
                param="logit_bias",
                code="invalid_value",
            )
    if body.logit_bias:
        raise APIError(
            400, "logit_bias is not supported by this server", param="logit_bias", code="unsupported_parameter"
        )


def sampling_params(body: Any, max_tokens: int | None, config: ServerConfig, logprobs: bool) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    if config.max_tokens_cap and max_tokens is not None:  # (without max_tokens: Server._cap, per prompt)
        max_tokens = min(max_tokens, config.max_tokens_cap)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    check_unsupported(body)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),
            top_k=body.top_k or 0,
            min_p=body.min_p or 0.0,
            seed=body.seed,
            stop=stop,
            n=body.n,
            logprobs=logprobs,
            ignore_eos=body.ignore_eos,
        )
    except ValueError as e:
        raise APIError(400, str(e)) from None


async def encode(engine: Any, prompts: list[str | list[int]]) -> list[list[int]]:
    """Token ids of every prompt, computed in a worker thread: tokenizing long or many prompts must not stall the
    event loop that serves everyone else."""

    def run() -> list[list[int]]:
        try:
            return [engine.encode(p) for p in prompts]
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None

    return await asyncio.to_thread(run)


def completion_prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be an empty list", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    if len(prompt) > MAX_PROMPTS:
        raise APIError(
            400,
            f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}; send them in several requests",
            param="prompt",
            code="too_many_prompts",
        )
    if any(isinstance(p, list) and not p for p in prompt):
        raise APIError(400, "token-id prompts must not be empty", param="prompt")
    return list(prompt)


# ---------------------------------------------------------------------------------------------------------------
# responses


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


def _any_aborted(job: Job) -> bool:
    return any(c.finish_reason == "abort" for c in job.finals.values())


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
    return True


CLIENT_GONE = 499  # nginx's "client closed request": nobody reads this response


@dataclass
class ChatContext:
    id: str
    model: str
    created: int
    opened: bool  # the prompt opened a <think> block
    tokenizer: Any
    include_usage: bool
    logprobs: bool


def _end_think_id(tokenizer: Any) -> int | None:
    return tokenizer.token_to_id("</think>") if tokenizer is not None else None


def chat_response(job: Job, ctx: ChatContext) -> dict[str, Any]:
    choices, reasoning_total = [], 0
    for index in range(job.total):
        c = job.finals[index]
        splitter = ReasoningSplitter(ctx.opened)
        reasoning, content = splitter.split(c.text)
        reasoning_total += reasoning_tokens(c.token_ids, _end_think_id(ctx.tokenizer), splitter)
        reasoning_content = reasoning if splitter.reasoned else None
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning_content}
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": chat_logprobs(ctx.tokenizer, c.token_ids, c.logprobs) if ctx.logprobs else None,
                "finish_reason": c.finish_reason,
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
    """Deltas -> chat.completion.chunk events: a role chunk, reasoning_content, content, the finish reason."""

    def __init__(self, job: Job, ctx: ChatContext):
        self.job, self.ctx = job, ctx
        self.splitters = [ReasoningSplitter(ctx.opened) for _ in range(job.total)]
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
        splitter, c = self.splitters[index], delta.completion
        if self.logprobs is not None:
            self.logprobs.track(index, delta, logprob)
        reasoning, content = splitter.feed(delta.text)
        if c is not None:
            r, t = splitter.finish()
            reasoning, content = reasoning + r, content + t
            self.reasoning += reasoning_tokens(c.token_ids, _end_think_id(self.ctx.tokenizer), splitter)
        out = []
        if reasoning:
            out.append(self.chunk(index, {"content": None, "reasoning_content": reasoning}))
        if content:
            out.append(self.chunk(index, {"content": content, "reasoning_content": None}))
        if c is not None:
            out.append(self.chunk(index, {}, c.finish_reason))
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
            if delta.finish_reason == "abort":
                yield sse(ABORTED.body())
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


# ---------------------------------------------------------------------------------------------------------------
# the app


def create_app(load_engine: Callable[[], Any], config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app; `load_engine` runs in a background thread at startup."""
    config = config or ServerConfig()
    server = Server(load_engine, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start_loading()
        yield
        server.close()

    app = FastAPI(
        title="nanoseek",
        version="0.1.0",
        summary="OpenAI-compatible API (DeepSeek flavour)",
        lifespan=lifespan,
        strict_content_type=False,  # a body without Content-Type is read as JSON, as OpenAI's API does
    )
    app.state.server = server
    # outermost last: the Host/Origin check, CORS for configured origins (preflights carry no API key), then keys
    app.add_middleware(Guard, keys=APIKeys(config.api_keys), max_body_bytes=config.max_body_bytes)
    if config.allowed_origins:
        origins = ["*"] if "*" in config.allowed_origins else [o.rstrip("/") for o in config.allowed_origins]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(SameOrigin, allowed_origins=config.allowed_origins, allowed_hosts=config.allowed_hosts)
    _install_error_handlers(app)
    tick = config.keepalive_seconds

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**GENERATION_RESPONSES, 200: {"content": SSE}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        engine = server.ready()
        model = server.check_model(body.model)
        if body.top_logprobs:
            raise APIError(
                400, "top_logprobs > 0 is not supported; logprobs=true gives the chosen tokens'", param="top_logprobs"
            )
        prompt = await asyncio.to_thread(render_chat, engine.tokenizer, body)  # scans and renders long texts
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = sampling_params(body, max_tokens, config, bool(body.logprobs))
        job = server.admit(request, engine, await encode(engine, [prompt]), params)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        ctx = ChatContext(
            f"chatcmpl-{uuid.uuid4().hex}",
            model,
            int(time.time()),
            prompt_opens_reasoning(prompt),
            engine.tokenizer,
            include_usage,
            bool(body.logprobs),
        )
        if body.stream:
            return EventStream(stream_events(server, job, ChatStream(job, ctx), tick), partial(server.release, job))
        try:
            if not await collect(job, request, tick):
                return Response(status_code=CLIENT_GONE)
            return JSONResponse(chat_response(job, ctx))
        finally:
            server.release(job)

    @app.post(
        "/v1/completions",
        response_model=TextCompletion,
        responses={**GENERATION_RESPONSES, 200: {"content": SSE}},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        engine = server.ready()
        model = server.check_model(body.model)
        _check_text_options(body)
        prompts = completion_prompts(body.prompt)
        params = sampling_params(body, body.max_tokens, config, body.logprobs is not None)
        ids = await encode(engine, prompts)
        job = server.admit(request, engine, ids, params)
        echo = [_prompt_text(engine, p) if body.echo else "" for p in prompts]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        ctx = TextContext(
            f"cmpl-{uuid.uuid4().hex}",
            model,
            int(time.time()),
            engine.tokenizer,
            include_usage,
            body.logprobs is not None,
            echo,
        )
        if body.stream:
            return EventStream(stream_events(server, job, TextStream(job, ctx), tick), partial(server.release, job))
        try:
            if not await collect(job, request, tick):
                return Response(status_code=CLIENT_GONE)
            return JSONResponse(text_response(job, ctx))
        finally:
            server.release(job)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{model}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
    async def model_info(model: str) -> dict[str, Any]:
        server.check_model(model)
        return _model_card(server)

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        reason = server.unavailable()
        if reason:
            return JSONResponse(error_body(reason, type="server_error", code="unavailable"), status_code=503)
        return JSONResponse({"status": "ok", "model": config.model_name})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _check_text_options(body: CompletionRequest) -> None:
    if body.suffix:
        raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of must equal n here (every sample is returned)", param="best_of")
    if body.logprobs:
        raise APIError(400, "logprobs > 0 (top alternatives) is not supported; logprobs=0 gives the chosen tokens'")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not computed)", param="echo")


def _prompt_text(engine: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return engine.tokenizer.decode(prompt) if engine.tokenizer is not None else ""


def _model_card(server: Server) -> dict[str, Any]:
    engine = server.engine
    return {
        "id": server.config.model_name,
        "object": "model",
        "created": server.created,
        "owned_by": "nanoseek",
        "max_model_len": getattr(engine, "max_context", None) if engine is not None else None,
    }


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; a bad request is never a 5xx."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(list(e.errors()))
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        method, path = request.method, request.url.path
        if e.status_code == 404:
            message = f"Invalid URL ({method} {path})"
        elif e.status_code == 405:
            message = f"{method} is not allowed on {path} (allowed: {(e.headers or {}).get('Allow', '?')})"
        else:
            message = str(e.detail)
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, type=kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        body = error_body(f"internal server error ({type(e).__name__}); see the server log", type="server_error")
        return JSONResponse(body, status_code=500)


# ---------------------------------------------------------------------------------------------------------------
# `nanoseek serve`


def serve_main(args: Any) -> int:
    from nanoseek.checkpoint import resolve_model_path
    from nanoseek.engine.commands import load_engine
    from nanoseek.server.security import LOOPBACK_HOSTS, load_keys

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = load_keys(args.api_key, args.api_key_file)
    for name, value in (("--max-waiting", args.max_waiting), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    if args.max_tokens_cap is not None and args.max_tokens_cap < 0:
        raise ValueError("--max-tokens-cap must be at least 0 (0: no cap)")
    path = resolve_model_path(args.model)  # fail now, not in the loading thread, when it is not a checkpoint
    args.model = str(path)
    config = ServerConfig(
        model_name=args.model_name or path.name,
        api_keys=keys,
        max_waiting=args.max_waiting,
        rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_tpm=args.rate_limit_tpm,
        max_body_bytes=args.max_body_bytes,
        max_tokens_cap=args.max_tokens_cap or None,
        grace_seconds=args.grace_seconds,
        allowed_origins=list(args.allow_origin),
        allowed_hosts=[args.host, *args.allow_host],
    )
    if args.host not in LOOPBACK_HOSTS and not keys:
        log.warning("serving on %s without API keys: anyone who can reach it can use it (set --api-key)", args.host)
    app = create_app(partial(load_engine, args), config)
    uv_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    DrainingServer(uv_config, app.state.server).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on SIGTERM/SIGINT: new requests get 503 while running ones may finish
    for `grace_seconds`; then they are cancelled and uvicorn shuts down (which stops the engine). A second signal
    exits at once."""

    def __init__(self, config: uvicorn.Config, state: Server):
        super().__init__(config)
        self.state = state
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.drain_until is None:
            log.info("draining: refusing new requests, %d running", len(self.state.jobs))
            self.state.draining = True
            self.drain_until = time.monotonic() + self.state.config.grace_seconds
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        state = self.state
        draining = self.drain_until is not None and not self.should_exit
        if draining and (not state.jobs or time.monotonic() >= self.drain_until):
            if state.jobs:
                log.info("grace period over: cancelling %d requests", len(state.jobs))
            state.cancel_all()
            self.should_exit = True
        return await super().on_tick(counter)
