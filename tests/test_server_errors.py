"""A sequence the engine fails alone (finish_reason "error") reaches its client as a 500 or an error event, and
the requests beside it still get their normal answers."""

import json

import httpx2 as httpx
import pytest
from helpers import tiny_checkpoint
from server_harness import USER, assert_error, run_server, sse_data

from nanoseek.engine import Engine

POISON = 7  # max_tokens value that marks the request whose sequence fails


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))

    def load():
        engine = Engine.from_pretrained(str(checkpoint))
        add_token = engine._add_token

        def failing(seq, token, logprob):
            if seq.request.params.max_tokens == POISON and len(seq.generated) == 2:
                raise RuntimeError("this sequence's detokenizer broke")
            add_token(seq, token, logprob)

        engine._add_token = failing
        return engine

    with run_server(load) as (base, _):
        yield base


def _body(max_tokens, stream=False):
    return {"model": "tiny", "messages": USER, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "ignore_eos": True}  # fmt: skip


def test_a_failed_sequence_is_a_500_and_its_neighbours_finish(served):
    assert_error(httpx.post(f"{served}/v1/chat/completions", json=_body(POISON), timeout=60), 500, "generation_failed")
    ok = httpx.post(f"{served}/v1/chat/completions", json=_body(5), timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_a_failed_stream_ends_with_an_error_event_not_done(served):
    with httpx.stream("POST", f"{served}/v1/chat/completions", json=_body(POISON, True), timeout=60) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert "data: [DONE]" not in lines
    with httpx.stream("POST", f"{served}/v1/chat/completions", json=_body(POISON, True), timeout=60) as response:
        events = sse_data(response)
    assert events[-1]["error"]["code"] == "generation_failed"
    assert not any(c.get("finish_reason") == "error" for e in events for c in e.get("choices", []))


def test_prefix_cache_is_shared_only_between_requests_of_the_same_user(tmp_path):
    from nanoseek.engine import SamplingParams

    engine = Engine.from_pretrained(str(tiny_checkpoint(tmp_path)), block_size=4)
    prompt = list(range(5, 40))

    def hits(salt: bytes) -> int:
        params = SamplingParams(max_tokens=2, temperature=0, cache_salt=salt)
        return engine.generate([prompt], params)[0].prompt_cache_hit_tokens

    assert hits(b"alice") == 0
    assert hits(b"alice") > 0  # the same user reuses its cached prompt
    assert hits(b"bob") == 0  # another user never does
    assert hits(b"") == 0


def _stream_types(url: str, body: dict) -> list[dict]:
    """The JSON of every `data:` line of an SSE response."""
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_a_failed_responses_or_messages_stream_ends_with_an_error_event(served):
    """/v1/responses and Anthropic's /v1/messages: a failed sequence is an `error` event, never a completed response
    or message (and a 500 without streaming)."""
    ask = {"model": "tiny", "temperature": 0}
    responses = {**ask, "input": "hi", "max_output_tokens": POISON, "stream": True}
    events = _stream_types(f"{served}/v1/responses", responses)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "generation_failed"
    assert not any(e["type"] == "response.completed" for e in events)
    messages = {**ask, "messages": USER, "max_tokens": POISON, "stream": True}
    events = _stream_types(f"{served}/anthropic/v1/messages", messages)
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert not any(e["type"] == "message_stop" for e in events)
    for path, body in (("/v1/responses", responses), ("/anthropic/v1/messages", messages)):
        assert httpx.post(f"{served}{path}", json={**body, "stream": False}, timeout=60).status_code == 500
