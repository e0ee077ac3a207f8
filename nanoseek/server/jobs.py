"""The bridge between API requests and the engine: admission (backpressure in sequences, rate limits, the
max_tokens cap), one `Job` per API request, and the server's state and metrics.

Threads: uvicorn's event loop serves HTTP; the engine's thread runs generation steps and calls each request's
on_delta from there, which `Job` hands to the request's asyncio.Queue with loop.call_soon_threadsafe. The engine
is loaded in a background thread at startup, so /health answers 503 (not a refused connection) until it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nanoseek.engine.engine import Completion, StreamDelta
from nanoseek.engine.sampling import SamplingParams
from nanoseek.server.schemas import APIError
from nanoseek.server.security import RateLimiter

log = logging.getLogger("nanoseek.server")
# One sample without max_tokens must not hold a 128k context's whole cache; R1's long reasoning fits.
DEFAULT_MAX_TOKENS_CAP = 16384


@dataclass
class ServerConfig:
    model_name: str = "nanoseek"
    model_aliases: list[str] = field(default_factory=list)  # more ids clients may send ("*": any)
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


class ServedEngine(Protocol):
    """The engine as the server uses it: nanoseek.Engine (tests substitute a scripted engine)."""

    tokenizer: Any
    max_context: int
    num_waiting: int  # requests not started
    running: list  # sequences being generated (each with .request)

    def encode(self, prompt: str | list[int]) -> list[int]: ...
    def submit(self, prompt: list[int], params: SamplingParams, on_delta: Callable[[StreamDelta], None]) -> Any: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


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

    def __init__(self, server: Server, engine: ServedEngine, prompts: list[list[int]], params: list[SamplingParams]):
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
        logprob = delta.logprob if self.want_logprobs else None
        self.server.metrics.observe(self, choice, delta, now)
        self.sent += 1  # before it is scheduled, so the loop never sees it delivered before it is counted
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (choice, delta, logprob))

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
    def __init__(self, load_engine: Callable[[], ServedEngine], config: ServerConfig):
        self.load_engine, self.config = load_engine, config
        self.engine: ServedEngine | None = None
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

    def ready(self) -> ServedEngine:
        reason = self.unavailable()
        if reason:
            raise APIError(503, reason, type="server_error", code="unavailable", headers={"Retry-After": "5"})
        return self.engine

    def check_model(self, name: str | None) -> str:
        """The id a response names: the one the client sent (the model's own or an alias), else the model's."""
        c = self.config
        if name is None or name == c.model_name or name in c.model_aliases or "*" in c.model_aliases:
            return name or c.model_name
        aliases = f" (or {', '.join(c.model_aliases)})" if c.model_aliases else ""
        raise APIError(
            404,
            f"the model '{name}' does not exist; this server serves '{c.model_name}'{aliases}; "
            "`nanoseek serve --model-alias NAME` adds ids it answers to",
            param="model",
            code="model_not_found",
        )

    def admit(self, request: Request, engine: ServedEngine, prompts: list[list[int]], params: SamplingParams) -> Job:
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

    def _cap(self, engine: ServedEngine, prompt: list[int], params: SamplingParams) -> SamplingParams:
        """A request without max_tokens may generate up to the cap, or to the end of the context when that is
        nearer (so a short context never turns a request without max_tokens into an error)."""
        cap = self.config.max_tokens_cap
        if params.max_tokens is not None or not cap or engine.max_context - len(prompt) <= cap:
            return params
        return dataclasses.replace(params, max_tokens=cap)

    def waiting_sequences(self, engine: ServedEngine) -> int:
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
