"""Constrained decoding (nanoseek/engine/grammar.py) on a random-weights model, through the engine and through the
official openai SDK against a live server.

A random model writes noise: valid JSON, a schema-valid object or a well-formed tool call come out of it only
because the grammar masks its logits, so every test here fails with the mask switched off. The schemas bound their
strings, numbers and arrays (maxLength, minimum/maximum, maxItems, enums), so that every output ends within
max_tokens whatever the model prefers (an unbounded string of a random model runs for hundreds of tokens)."""

from __future__ import annotations

import json
import threading

import jsonschema_rs
import pytest
from helpers import tiny_checkpoint
from server_harness import client, run_server

from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.grammar import Constraint, lark_grammar
from nanoseek.server.tools import V3, V31, ToolCallParser, collect_calls

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "alerts": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "ok": {"type": "null"}},
            "required": ["lat", "ok"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "days", "unit", "alerts", "where"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["utc_offset"],
            "additionalProperties": False,
        },
    },
}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
USER = [{"role": "user", "content": "what is the weather?"}]
NO_THINKING = {"thinking": {"type": "disabled"}}
SETTINGS = [(0.0, 1), (0.7, 2), (1.0, 3), (1.5, 4)]  # (temperature, seed)


def valid(schema: dict, text: str) -> bool:
    try:
        return jsonschema_rs.is_valid(schema, json.loads(text))
    except ValueError:  # not JSON at all
        return False


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # a longer context than the tiny default: a random model reasons ~300 tokens before it happens to close </think>
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), max_position_embeddings=2048)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_pretrained(str(checkpoint))


@pytest.fixture(scope="module")
def served(checkpoint):
    with run_server(lambda: Engine.from_pretrained(str(checkpoint))) as (base, _):
        yield base


# ---------------------------------------------------------------------------------------------------------------
# the engine


def test_json_schema_outputs_validate_for_every_temperature_seed_and_sample(engine):
    params = [
        SamplingParams(max_tokens=200, temperature=t, seed=s, n=2, constraint=Constraint("json_schema", SCHEMA))
        for t, s in SETTINGS
    ]
    outputs = [c for group in engine.generate(["hello"] * len(params), params) for c in group]
    assert all(c.finish_reason == "stop" for c in outputs), [c.text for c in outputs]
    assert all(valid(SCHEMA, c.text) for c in outputs), [c.text for c in outputs]
    assert len({c.text for c in outputs}) > 2  # the samples differ: the mask constrains, it does not script


def test_constrained_and_unconstrained_rows_share_a_batch_and_a_speculating_engine(checkpoint):
    """Constrained sequences are sampled in the same batch as plain ones (whose tokens do not change) and do not
    speculate, even in an engine that drafts with MTP for the others."""
    engine = Engine.from_pretrained(str(checkpoint), speculative=True)
    prompts = ["hello", "the sum of", "what is", "add 2 and 3"]
    plain = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    alone = [c.token_ids for c in engine.generate(prompts[1::2], plain)]
    schema = SamplingParams(max_tokens=200, temperature=1.0, seed=5, constraint=Constraint("json_schema", SCHEMA))
    mixed = engine.generate(prompts, [schema, plain, schema, plain])
    assert all(valid(SCHEMA, c.text) and c.finish_reason == "stop" for c in mixed[::2]), [c.text for c in mixed]
    assert [c.token_ids for c in mixed[1::2]] == alone


@pytest.mark.parametrize("fmt", [V3, V31])
@pytest.mark.parametrize("name", ["get_weather", None])
def test_tool_call_grammar_writes_a_whole_valid_call_in_each_format(engine, fmt, name):
    """After the call's opening (which the server puts in the prompt), the grammar writes the arguments (for
    tool_choice required: first a name), the format's end markers, then EOS; the tool-call parser reads it back."""
    constraint = Constraint("tool_call", tools=[WEATHER, CLOCK], tool_format=fmt.name, name=name)
    prompt = "hello" + fmt.opening(name)
    params = [SamplingParams(max_tokens=200, temperature=t, seed=s, constraint=constraint) for t, s in SETTINGS]
    for completion in engine.generate([prompt] * len(params), params):
        assert completion.finish_reason == "stop", completion.text
        parser = ToolCallParser(fmt)
        content, calls = collect_calls(parser.feed(fmt.opening(name) + completion.text) + parser.finish())
        assert content == "" and len(calls) == 1, completion.text
        called = calls[0]["function"]
        assert called["name"] == (name or called["name"]) and called["name"] in PARAMS
        assert valid(PARAMS[called["name"]], called["arguments"]), completion.text


def test_grammars_use_the_tokenizers_marker_ids_and_bad_schemas_are_refused(engine):
    tools = [WEATHER]
    assert "<[" not in lark_grammar(Constraint("tool_call", tools=tools, tool_format="v3"), engine.tokenizer)
    assert "<[6]>" in lark_grammar(Constraint("json_object", reasoning=True), engine.tokenizer)  # </think>'s id
    with pytest.raises(ValueError, match="cannot enforce"):
        engine.submit("hi", SamplingParams(constraint=Constraint("json_schema", {"type": "nope"})))
    strict = Constraint("json_schema", {"type": "string", "format": "nope"}, strict=True)
    with pytest.raises(ValueError, match="format"):
        engine.submit("hi", SamplingParams(constraint=strict))
    engine.submit("hi", SamplingParams(max_tokens=1, constraint=Constraint("json_schema", strict.schema)))
    while engine.has_work():
        engine.step()


# ---------------------------------------------------------------------------------------------------------------
# the server, through the openai SDK


def test_response_format_json_schema_strict_always_validates(served):
    c = client(served)
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
    for temperature, seed in SETTINGS:
        r = c.chat.completions.create(
            model="tiny",
            messages=USER,
            response_format=response_format,
            temperature=temperature,
            seed=seed,
            max_tokens=200,
            extra_body=NO_THINKING,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop" and valid(SCHEMA, choice.message.content), choice.message.content


def test_a_reasoning_model_thinks_first_then_answers_in_the_schema(served):
    r = client(served).chat.completions.create(
        model="tiny",
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}},
        seed=7,
        max_tokens=1500,
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and valid(SCHEMA, message.content), message.content
    assert message.reasoning_content and "</think>" not in message.reasoning_content


def test_response_format_json_object_always_parses(served):
    c = client(served)
    outputs = []
    for temperature, seed in SETTINGS:
        r = c.chat.completions.create(
            model="tiny",
            messages=USER,
            response_format={"type": "json_object"},
            temperature=temperature,
            seed=seed,
            n=3,
            max_tokens=1000,
            extra_body=NO_THINKING,
        )
        outputs += [(ch.finish_reason, ch.message.content) for ch in r.choices]
    # a JSON object without a schema has unbounded strings: an output may still run out of tokens, but every one
    # that ends is one JSON object, and most end (about 85% over 32 seeds here)
    assert sum(reason == "stop" for reason, _ in outputs) >= len(outputs) // 2, outputs
    assert all(isinstance(json.loads(text), dict) for reason, text in outputs if reason == "stop"), outputs


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_always_validate_and_stream_the_same_arguments(served, tool_choice):
    c = client(served)
    for temperature, seed in SETTINGS:
        kwargs = dict(model="tiny", messages=USER, tools=[WEATHER, CLOCK], tool_choice=tool_choice, max_tokens=200)
        kwargs |= dict(temperature=temperature, seed=seed)
        r = c.chat.completions.create(**kwargs)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        if isinstance(tool_choice, dict):
            assert call.function.name == "get_time"
        assert valid(PARAMS[call.function.name], call.function.arguments), call.function.arguments
        names, args = [], ""
        for chunk in c.chat.completions.create(**kwargs, stream=True):
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                names += [delta_call.function.name] if delta_call.function.name else []
                args += delta_call.function.arguments or ""
        assert names == [call.function.name] and args == call.function.arguments


def test_constrained_and_plain_requests_served_together(served):
    """Concurrent requests share engine steps: the JSON ones validate, the plain ones are what they are alone."""
    c = client(served)
    plain = dict(model="tiny", messages=USER, temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
    alone = c.chat.completions.create(**plain).choices[0].message
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}
    results: dict[int, object] = {}

    def send(i: int) -> None:
        if i % 2:
            results[i] = c.chat.completions.create(**plain).choices[0].message
        else:
            extra = dict(response_format=schema, seed=i, max_tokens=200, extra_body=NO_THINKING)
            results[i] = c.chat.completions.create(model="tiny", messages=USER, **extra).choices[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(valid(SCHEMA, results[i].message.content) for i in range(0, 6, 2)), results
    assert all(results[i] == alone for i in range(1, 6, 2))


def test_unusable_schemas_are_400s(served):
    import httpx2 as httpx

    url = f"{served}/v1/chat/completions"
    for response_format in (
        {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "nope"}}},
        {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "string", "format": "x"}, "strict": True},
        },
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},  # a name is required, as OpenAI requires it
    ):
        r = httpx.post(url, json={"messages": USER, "max_tokens": 4, "response_format": response_format})
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
