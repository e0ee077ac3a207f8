"""What the server tests share: a scripted engine (the Engine interface the server uses, streaming fixed text), a
real uvicorn server on a free loopback port, and small helpers for the OpenAI shapes of answers and errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx2 as httpx
import openai
import uvicorn
from helpers import tiny_tokenizer

from nanoseek.engine.engine import Completion, StreamDelta
from nanoseek.server.app import ServerConfig, create_app

REASONING_SCRIPT = ["step ", "one\n", "</th", "ink>", "\n\nThe answer", " is 4."]

# ---------------------------------------------------------------------------------------------------------------
# a scripted engine: the Engine interface the server uses, streaming fixed text pieces


class ScriptedRequest:
    def __init__(self, prompt: list[int], params, on_delta):
        self.prompt, self.params, self.on_delta = prompt, params, on_delta
        self.completions: list[Completion | None] = [None] * params.n
        self.done = threading.Event()
        self.cancelled = False
        self.emitted = 0

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedEngine:
    """Streams `script` (text pieces, one per step of `delay` seconds) to every sample, `max_running` requests
    at a time; max_tokens counts pieces."""

    def __init__(self, script: list[str], delay: float = 0.02, max_running: int = 64, tokenizer=None):
        self.script, self.delay, self.max_running = script, delay, max_running
        self.tokenizer = tokenizer or tiny_tokenizer()
        self.max_context = 512
        self.running: list[ScriptedRequest] = []
        self.waiting: list[ScriptedRequest] = []
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def encode(self, prompt):
        if isinstance(prompt, list):
            return prompt
        return self.tokenizer.encode(prompt, add_bos=not prompt.startswith("<｜begin▁of▁sentence｜>"))

    def submit(self, prompt, params, on_delta=None) -> ScriptedRequest:
        ids = self.encode(prompt)
        if len(ids) + (params.max_tokens or 0) > self.max_context:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens exceeds the context length")
        request = ScriptedRequest(ids, params, on_delta)
        with self.lock:
            self.waiting.append(request)
        return request

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stopping:
            with self.lock:
                while self.waiting and len(self.running) < self.max_running:
                    self.running.append(self.waiting.pop(0))
                for request in [r for r in self.waiting if r.cancelled]:
                    self.waiting.remove(request)
                    self._finish(request, "abort")
                running = list(self.running)
            for request in running:
                self._step(request)
            time.sleep(self.delay)

    def _step(self, request: ScriptedRequest) -> None:
        limit = min(len(self.script), request.params.max_tokens or len(self.script))
        if request.cancelled or request.emitted >= limit:
            reason = "abort" if request.cancelled else ("stop" if limit == len(self.script) else "length")
            with self.lock:
                self.running.remove(request)
            self._finish(request, reason)
            return
        piece = self.script[request.emitted]
        request.emitted += 1
        for i in range(request.params.n):
            request.on_delta(StreamDelta(i, piece, self.tokenizer.encode(piece)[-1:]))

    def _finish(self, request: ScriptedRequest, reason: str) -> None:
        text = "".join(self.script[: request.emitted])
        ids = self.tokenizer.encode(text) if text else []
        for i in range(request.params.n):
            c = Completion(ids, text, reason, len(request.prompt), 0, i, [-0.5] * len(ids))
            request.completions[i] = c
            if reason != "abort" or request.emitted:
                request.on_delta(StreamDelta(i, "", [], reason, c))
        request.done.set()


# ---------------------------------------------------------------------------------------------------------------
# running a server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_server(load_engine: Callable, healthy: bool = True, **config) -> Iterator[tuple[str, object]]:
    """A uvicorn server in a thread on a free loopback port: yields (base URL, app)."""
    app = create_app(load_engine, ServerConfig(model_name="tiny", **config))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    if healthy:
        wait_healthy(base)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(15)


def wait_healthy(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{base} did not become healthy")


def client(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def sse_data(response: httpx.Response) -> list:
    """The parsed data events of a streamed response (without [DONE])."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


USER = [{"role": "user", "content": "what is the sum of 2 and 2?"}]
GREEDY = dict(temperature=0, max_tokens=12, extra_body={"ignore_eos": True})


class RecordingEngine(ScriptedEngine):
    """Records the sampling parameters of each request and whether it was tokenized on the event loop."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params: list = []
        self.encoded_on_loop: list[bool] = []

    def encode(self, prompt):
        import asyncio

        if isinstance(prompt, str):  # (submit passes the ids through encode again: a check, not tokenizing)
            try:
                asyncio.get_running_loop()
                self.encoded_on_loop.append(True)
            except RuntimeError:
                self.encoded_on_loop.append(False)
        return super().encode(prompt)

    def submit(self, prompt, params, on_delta=None):
        self.params.append(params)
        return super().submit(prompt, params, on_delta)
