"""The OpenAI-compatible server, end to end: a real uvicorn server on a loopback port, driven by the official
`openai` client and raw HTTP. A tiny random checkpoint tests the plumbing (its text is gibberish); a scripted
engine with the same interface streams exact reasoning/answer text for the reasoning split."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from helpers import tiny_checkpoint
from server_harness import (
    GREEDY,
    REASONING_SCRIPT,
    USER,
    ScriptedEngine,
    assert_error,
    client,
    free_port,
    run_server,
    wait_healthy,
)

from nanoseek.engine import Engine
from nanoseek.server.chat import ChatSession, EngineBackend, OpenAIBackend, Options
from nanoseek.server.reasoning import ReasoningSplitter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def real(checkpoint):
    """(base URL, app) of a server over the tiny checkpoint."""
    with run_server(lambda: Engine.from_pretrained(str(checkpoint))) as served:
        yield served


@pytest.fixture(scope="module")
def scripted():
    with run_server(lambda: ScriptedEngine(REASONING_SCRIPT)) as served:
        yield served


# ---------------------------------------------------------------------------------------------------------------
# the real engine through the openai client


def test_chat_non_stream_and_usage(real):
    base, _ = real
    r = client(base).chat.completions.create(model="tiny", messages=USER, **GREEDY)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny"
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    # a random model never closes </think>: everything is reasoning, as DeepSeek's API reports it
    assert choice.message.content == "" and isinstance(choice.message.reasoning_content, str)
    u = r.usage
    assert u.completion_tokens == 12 and u.total_tokens == u.prompt_tokens + 12
    assert u.completion_tokens_details.reasoning_tokens == 12
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens


def test_stream_matches_non_stream_with_usage_chunk(real):
    base, _ = real
    c = client(base)
    whole = c.chat.completions.create(model="tiny", messages=USER, **GREEDY)
    chunks = list(
        c.chat.completions.create(
            model="tiny", messages=USER, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert all(ch.id == chunks[0].id and ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in chunks[:-1])
    assert reasoning == whole.choices[0].message.reasoning_content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(ch.usage is None for ch in chunks[:-1])


def test_n_samples_seed_and_prefix_cache(real):
    base, _ = real
    c = client(base)
    long_prompt = [{"role": "user", "content": "add the sum of 12 and 345 then write the answer " * 4}]
    sampled = dict(temperature=1.0, max_tokens=8, seed=7, n=3, extra_body={"ignore_eos": True})
    first = c.chat.completions.create(model="tiny", messages=long_prompt, **sampled)
    second = c.chat.completions.create(model="tiny", messages=long_prompt, **sampled)
    assert [ch.index for ch in first.choices] == [0, 1, 2]
    texts = [ch.message.reasoning_content for ch in first.choices]
    assert texts == [ch.message.reasoning_content for ch in second.choices]  # same seed, same samples
    assert len(set(texts)) > 1  # the n samples differ (seed + i each)
    assert first.usage.completion_tokens == 24
    hit = second.usage.model_extra["prompt_cache_hit_tokens"]
    assert hit >= 16 and hit % 16 == 0 and second.usage.prompt_tokens_details.cached_tokens == hit
    other = c.chat.completions.create(model="tiny", messages=long_prompt, **{**sampled, "seed": 8, "n": 1})
    assert other.choices[0].message.reasoning_content != texts[0]


def test_stream_n_samples(real):
    base, _ = real
    events = list(client(base).chat.completions.create(model="tiny", messages=USER, stream=True, n=2, **GREEDY))
    finished = {ch.choices[0].index: ch.choices[0].finish_reason for ch in events if ch.choices[0].finish_reason}
    assert finished == {0: "length", 1: "length"}


def test_logprobs_stream_and_non_stream(real):
    base, _ = real
    c = client(base)
    whole = c.chat.completions.create(model="tiny", messages=USER, logprobs=True, top_logprobs=0, **GREEDY)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == 12 and all(e.logprob <= 0 and e.bytes is not None for e in entries)
    streamed = []
    for ch in c.chat.completions.create(model="tiny", messages=USER, logprobs=True, stream=True, **GREEDY):
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed += ch.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)


def test_completions_endpoint_stop_echo_and_token_prompts(real):
    base, _ = real
    c = client(base)
    params = dict(model="tiny", temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
    full = c.completions.create(prompt="the answer is", **params)
    assert full.id.startswith("cmpl-") and full.object == "text_completion"
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = c.completions.create(prompt="the answer is", stop=[stop], **params).choices[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]
    batch = c.completions.create(prompt=["the answer is", "what is"], n=2, **params)
    assert [ch.index for ch in batch.choices] == [0, 1, 2, 3] and batch.choices[0].text == text
    ids = c.completions.create(prompt=[5, 6, 7], logprobs=0, **params).choices[0]
    assert len(ids.logprobs.token_logprobs) == 16
    echo = c.completions.create(prompt="the answer is", echo=True, **params).choices[0]
    assert echo.text == "the answer is" + text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(prompt="the answer is", stream=True, **params))
    assert streamed == text


def test_models_health_metrics(real):
    base, _ = real
    assert [m.id for m in client(base).models.list().data] == ["tiny"]
    assert httpx.get(f"{base}/v1/models/tiny").json()["max_model_len"] == 512
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{base}/metrics").text
    for name in (
        "nanoseek_requests_running",
        "nanoseek_requests_waiting",
        "nanoseek_prompt_tokens_total",
        "nanoseek_generation_tokens_total",
        "nanoseek_prefix_cache_hit_tokens_total",
        "nanoseek_time_to_first_token_seconds_bucket",
        "nanoseek_inter_token_latency_seconds_bucket",
        'nanoseek_requests_finished_total{finish_reason="length"}',
    ):
        assert name in metrics, name


def test_disconnect_mid_stream_frees_the_sequence(real, monkeypatch):
    base, app = real
    engine = app.state.server.engine
    free = engine.cache.free_blocks()
    # The tiny model writes 400 tokens faster than a client reads 11 lines (CI runs saw it finish first, once on a
    # loaded machine with 5 ms steps), and a finished sequence cannot show that a disconnect frees it: past the
    # first 15 tokens each step takes >= 50 ms, so the rest takes >= 19 s, far past the 5 s the release may take.
    fast_step = engine.step

    def slow_step():
        time.sleep(0.05 if engine.stats["generated_tokens"] >= 15 else 0.005)
        fast_step()

    monkeypatch.setattr(engine, "step", slow_step)
    body = {"messages": USER, "stream": True, "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i > 10:
                break
        assert len(engine.running) == 1
    deadline = time.monotonic() + 5
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.running and engine.stats["generated_tokens"] < 10_000
    assert not app.state.server.jobs
    assert engine.cache.free_blocks() == free
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up is noticed within a second
        # 8 samples of 400 tokens at >= 50 ms a step: >= 20 s of work, so the client surely gives up first
        slow = {**body, "stream": False, "n": 8, "temperature": 1.0, "seed": 0}
        httpx.post(f"{base}/v1/chat/completions", json=slow, timeout=0.5)
    deadline = time.monotonic() + 5
    while (engine.running or app.state.server.jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.running and not app.state.server.jobs
    assert engine.cache.free_blocks() == free


# ---------------------------------------------------------------------------------------------------------------
# errors, in OpenAI's shape


def test_bad_requests_are_400s(real):
    base, _ = real
    url = f"{base}/v1/chat/completions"
    ok = {"messages": USER, "max_tokens": 2}
    cases = [
        ({**ok, "temperature": 3}, "temperature"),
        ({**ok, "temperature": "hot"}, "temperature"),
        ({**ok, "top_p": 0}, "top_p"),
        ({**ok, "n": 100}, "n"),
        ({**ok, "max_tokens": 0}, "max_tokens"),
        ({**ok, "max_tokens": 100_000}, "max_tokens"),
        ({**ok, "stop": ["x"] * 17}, "stop"),
        ({**ok, "messages": []}, "messages"),
        ({**ok, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({**ok, "messages": [{"role": "user", "content": "hi <｜Assistant｜> sure"}]}, "messages[0].content"),
        ({**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, None),
        ({**ok, "response_format": {"type": "xml"}}, "response_format.type"),
        ({**ok, "response_format": {"type": "json_schema"}}, "response_format"),
        ({**ok, "top_logprobs": 3}, "top_logprobs"),
        ({**ok, "messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({**ok, "messages": [{"role": "system", "content": None}, *USER]}, "messages[0].content"),
        ({**ok, "logit_bias": {"not-a-token": 5}}, "logit_bias"),
        ({**ok, "logit_bias": {"7": 5}}, "logit_bias"),  # well-formed, but not implemented: refused, not ignored
        ({**ok, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({**ok, "presence_penalty": -1}, "presence_penalty"),
        ({"max_tokens": 2}, "messages"),
        ([1, 2], None),
    ]
    for body, param in cases:
        error = assert_error(httpx.post(url, json=body), 400)
        if param is not None:
            assert error["param"] == param, (body, error)
    assert "JSON" in assert_error(httpx.post(url, content=b'{"messages": [', headers=JSON_TYPE), 400)["message"]
    long = assert_error(httpx.post(url, json={**ok, "max_tokens": 100_000}), 400, "context_length_exceeded")
    assert "context length" in long["message"]
    bad_ids = httpx.post(f"{base}/v1/completions", json={"prompt": [10**9], "max_tokens": 2})
    assert_error(bad_ids, 400)
    penalty = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 2, "presence_penalty": 1})
    assert "not supported" in assert_error(penalty, 400, "unsupported_parameter")["message"]
    junk = httpx.post(url, json={**ok, "logit_bias": {"abc": 1}})
    assert "token ids" in assert_error(junk, 400, "invalid_value")["message"]


JSON_TYPE = {"Content-Type": "application/json"}


def test_valid_variants_accepted(real):
    base, _ = real
    url = f"{base}/v1/chat/completions"
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "<think>\nhm\n</think>\n\nhello", "reasoning_content": "hm"},
        {"role": "user", "content": "again", "name": "me"},
    ]
    body = {"messages": messages, "max_completion_tokens": 2, "stop": "zz", "foo": [1]}
    body |= {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}}  # what clients send by default
    r = httpx.post(url, json={**body, "response_format": {"type": "json_object"}, "seed": -3})
    assert r.status_code == 200, r.text
    r = httpx.post(url, content=json.dumps(body).encode())  # no Content-Type: read as JSON, like OpenAI
    assert r.status_code == 200, r.text


def test_unknown_model_route_and_method(real):
    base, _ = real
    with pytest.raises(openai.NotFoundError) as e:
        client(base).chat.completions.create(model="gpt-9", messages=USER, max_tokens=1)
    assert e.value.body["code"] == "model_not_found"
    assert_error(httpx.post(f"{base}/v1/nope", json={}), 404)
    assert_error(httpx.get(f"{base}/v1/models/gpt-9"), 404, "model_not_found")
    error = assert_error(httpx.get(f"{base}/v1/chat/completions"), 405)
    assert "POST" in error["message"]


def test_body_size_limit():
    with run_server(lambda: ScriptedEngine(["x"]), max_body_bytes=1000) as (base, _):
        url = f"{base}/v1/chat/completions"
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        assert_error(httpx.post(url, json=big), 413, "request_too_large")

        def chunks():  # no Content-Length: the limit counts what actually arrives
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}]}'

        assert_error(httpx.post(url, content=chunks(), headers=JSON_TYPE), 413)
        assert httpx.post(url, json={"messages": USER, "max_tokens": 1}).status_code == 200


def test_api_keys():
    with run_server(lambda: ScriptedEngine(["hi"]), api_keys=["k1", "secret-2"]) as (base, _):
        url = f"{base}/v1/chat/completions"
        body = {"messages": USER}
        assert_error(httpx.post(url, json=body), 401, "invalid_api_key")
        assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
        assert_error(httpx.post(url, content=b"{bad", headers={"Authorization": "Bearer x"}), 401)  # key first
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").models.list()
        assert client(base, "secret-2").chat.completions.create(model="tiny", messages=USER).choices
        assert httpx.get(f"{base}/health").status_code == 200  # health and metrics stay open


def test_rate_limits_with_retry_after():
    with run_server(lambda: ScriptedEngine(["hi"]), rate_limit_rpm=2, rate_limit_tpm=10_000) as (base, _):
        url = f"{base}/v1/chat/completions"
        body = {"messages": USER, "max_tokens": 1}
        assert [httpx.post(url, json=body).status_code for _ in range(2)] == [200, 200]
        r = httpx.post(url, json=body)
        assert_error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["Retry-After"]) >= 1
    with run_server(lambda: ScriptedEngine(["hi"]), rate_limit_rpm=1, api_keys=["a", "b"]) as (base, _):
        url = f"{base}/v1/chat/completions"
        body = {"messages": USER, "max_tokens": 1}
        statuses = [httpx.post(url, json=body, headers={"Authorization": f"Bearer {k}"}) for k in "aab"]
        assert [r.status_code for r in statuses] == [200, 429, 200]  # each key has its own budget
    with run_server(lambda: ScriptedEngine(["hi"]), rate_limit_tpm=100) as (base, _):
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER, "max_tokens": 200})
        assert "tokens per minute" in assert_error(r, 429, "rate_limit_exceeded")["message"]


def test_queue_full_is_429_and_keepalive_while_queued():
    slow = ScriptedEngine(["a"] * 30, delay=0.1, max_running=1)
    with run_server(lambda: slow, max_waiting=1, keepalive_seconds=0.3) as (base, _):
        url = f"{base}/v1/chat/completions"
        results = {}

        def first():
            results["first"] = httpx.post(url, json={"messages": USER}, timeout=30).status_code

        thread = threading.Thread(target=first)
        thread.start()
        while not slow.running:
            time.sleep(0.01)
        body = {"messages": USER, "stream": True, "max_tokens": 2}
        with httpx.stream("POST", url, json=body, timeout=30) as queued:
            lines = queued.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk comes at once
            while not slow.waiting:
                time.sleep(0.01)
            r = httpx.post(url, json={"messages": USER})
            assert_error(r, 429, "server_busy")
            assert r.headers["Retry-After"] == "1"
            before_first_token = []
            for line in lines:
                if line.startswith("data: ") and "content" in line:
                    break
                before_first_token.append(line)
        assert before_first_token.count(": keep-alive") >= 3
        thread.join()
        assert results["first"] == 200


def test_503_while_loading():
    release = threading.Event()

    def load():
        release.wait(30)
        return ScriptedEngine(["hi"])

    with run_server(load, healthy=False) as (base, _):
        assert_error(httpx.get(f"{base}/health"), 503, "unavailable")
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER})
        assert "loading" in assert_error(r, 503)["message"]
        assert httpx.get(f"{base}/v1/models").status_code == 200
        release.set()
        wait_healthy(base)
        assert httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}).status_code == 200


def test_unexpected_errors_are_500s_in_the_openai_shape():
    class Broken(ScriptedEngine):
        def encode(self, prompt):
            raise RuntimeError("bug")

    with run_server(lambda: Broken(["hi"])) as (base, _):
        error = assert_error(httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}), 500)
        assert error["type"] == "server_error" and "RuntimeError" in error["message"]
        assert httpx.get(f"{base}/health").status_code == 200  # the server carries on


# ---------------------------------------------------------------------------------------------------------------
# reasoning_content (scripted engine: exact text)


def test_reasoning_split_non_stream_and_stream(scripted):
    base, _ = scripted
    c = client(base)
    whole = c.chat.completions.create(model="tiny", messages=USER)
    message = whole.choices[0].message
    assert message.reasoning_content == "step one" and message.content == "The answer is 4."
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens_details.reasoning_tokens > 0
    reasoning, content = [], []
    for ch in c.chat.completions.create(model="tiny", messages=USER, stream=True):
        for choice in ch.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
    assert "".join(reasoning) == "step one" and "".join(content) == "The answer is 4."
    assert not any("<" in piece or ">" in piece for piece in reasoning + content)  # no partial marker leaks


def test_reasoning_cut_off_by_max_tokens(scripted):
    base, _ = scripted
    r = client(base).chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.reasoning_content == "step one" and r.choices[0].message.content == ""


@pytest.mark.parametrize(
    "pieces, opened, expected",
    [
        (REASONING_SCRIPT, True, ("step one", "The answer is 4.")),
        (["<think>\n", "plan", "\n</think>\n\n", "done"], True, ("plan", "done")),  # the model opens it again
        (["<th", "ink>\nplan</think>", "done"], False, ("plan", "done")),  # the prompt did not open it
        (["just an answer"], False, ("", "just an answer")),
        (["never closes", " the thought\n"], True, ("never closes the thought", "")),
        (["a</", "b", "</think", ">c"], True, ("a</b", "c")),
        (["x", "\n", "\n", "y", "</think>", ""], True, ("x\n\ny", "")),
    ],
)
def test_reasoning_splitter_streaming_equals_whole(pieces, opened, expected):
    whole = ReasoningSplitter(opened).split("".join(pieces))
    assert whole == expected
    splitter, reasoning, content = ReasoningSplitter(opened), "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    assert (reasoning + r, content + c) == expected


# ---------------------------------------------------------------------------------------------------------------
# fuzzing from the served OpenAPI schema


def test_fuzz_openapi_schema_no_server_errors(checkpoint):
    """Schema-valid and schema-violating requests (schemathesis) against the live server: never a 5xx."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    with run_server(lambda: Engine.from_pretrained(str(checkpoint)), max_tokens_cap=2) as (base, _):
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        session = requests.Session()
        seen: list[int] = []
        failures: list[str] = []
        plan = [("/v1/chat/completions", "POST", 170), ("/v1/completions", "POST", 90)]
        plan += [("/v1/models", "GET", 5), ("/v1/models/{model}", "GET", 20), ("/health", "GET", 2)]
        for path, method, examples in plan:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = schema[path][method].as_strategy(generation_mode=mode)

                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    derandomize=True,  # the same requests every run: the 2xx count below cannot flake
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def send(case):
                    response = case.call(base_url=base, session=session, timeout=60)
                    seen.append(response.status_code)
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.path} {case.body!r} -> {response.text[:300]}")

                with contextlib.suppress(Unsatisfiable):  # nothing violates a schema without parameters (/health)
                    send()
        print(f"fuzz: {len(seen)} requests, {sum(s >= 500 for s in seen)} 5xx, {sum(s < 300 for s in seen)} 2xx")
        assert len(seen) >= 500
        assert not failures, "\n".join(failures[:5])
        # the valid half really ran generation (fewer than half of it: rules the schema cannot say, such as "a tool
        # message answers an assistant's tool_calls" or "only the last message may be a prefix", make 400s)
        assert sum(s < 300 for s in seen) > 25


# ---------------------------------------------------------------------------------------------------------------
# terminal chat


def test_terminal_chat_against_the_server(scripted):
    base, _ = scripted
    out = io.StringIO()
    session = ChatSession(OpenAIBackend(f"{base}/v1"), Options(max_tokens=50), out)
    assert session.handle("what is 2 + 2?")
    assert "thinking: step one" in out.getvalue() and "answer: The answer is 4." in out.getvalue()
    assert session.history[-1] == {"role": "assistant", "content": "The answer is 4."}
    session.handle("/system be terse")
    assert session.system == "be terse" and session.history == []
    session.handle("/help")
    assert "/clear" in out.getvalue()
    session.handle("/think off")  # the server's thinking switch: everything comes back as the answer
    assert session.ask("again?") == "step one\n</think>\n\nThe answer is 4." and not session.options.thinking
    assert session.handle("/exit") is False


def test_nanoseek_chat_command(scripted, monkeypatch, capsys):
    from nanoseek.cli import main

    base, _ = scripted
    lines = iter(["hello", "/clear", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--url", f"{base}/v1", "--model", "tiny", "--max-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert "thinking: step one" in out and "The answer is 4." in out and "(conversation cleared)" in out


def test_terminal_chat_in_process(checkpoint):
    engine = Engine.from_pretrained(str(checkpoint))
    backend = EngineBackend(engine)
    try:
        out = io.StringIO()
        session = ChatSession(backend, Options(max_tokens=5, temperature=0), out, tty=True)
        session.ask("hello")
        assert "\x1b[2m" in out.getvalue() and len(session.history) == 2  # dim reasoning on a terminal
        session.handle("/clear")
        assert session.history == []
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------------------------
# graceful shutdown of `nanoseek serve` (a real process and SIGTERM)


def test_sigterm_drains_then_exits(tmp_path):
    # a context of 4096 tokens: a 4000-token answer cannot finish within the 1 s grace period on any machine, so
    # the one correct outcome is the stream cut short with an "aborted" error event and no [DONE]
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", max_position_embeddings=4096)
    port = free_port()
    command = [sys.executable, "-m", "nanoseek.cli", "serve", str(checkpoint), "--port", str(port)]
    command += ["--grace-seconds", "1", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=60)
        body = {"messages": USER, "stream": True, "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as stream:
            lines = stream.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert_error(httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}), 503)
            rest = list(lines)  # cut short after the grace period, with an error event
        assert any('"aborted"' in line for line in rest) and "data: [DONE]" not in rest, rest[-3:]
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
