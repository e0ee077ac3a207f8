"""OpenAI's Responses API at /v1/responses, driven by the official `openai` SDK against a live server with a
scripted engine (exact reasoning, text and tool-call output)."""

from __future__ import annotations

from typing import ClassVar

import httpx2 as httpx
import openai
import pytest
from server_harness import ScriptedEngine, run_server
from test_tools import REASONED_CALL, scripted

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}


class Recording(ScriptedEngine):
    """Keeps the token ids of every prompt it is given."""

    prompts: ClassVar[list[list[int]]] = []

    def submit(self, prompt, params, on_delta=None):
        Recording.prompts.append(self.encode(prompt))
        return super().submit(prompt, params, on_delta)


@pytest.fixture(scope="module")
def server():
    with run_server(lambda: scripted(REASONED_CALL, Recording)) as (base, _):
        yield base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)


def _items(response) -> list[tuple]:
    """The output items without their ids."""
    out = []
    for item in response.output:
        if item.type == "reasoning":
            out.append(("reasoning", item.content[0].text))
        elif item.type == "message":
            out.append(("message", item.content[0].text))
        else:
            out.append(("function_call", item.name, item.arguments, item.call_id.startswith("call_")))
    return out


EXPECTED = [
    ("reasoning", "Need the tool."),
    ("message", "Let me check."),
    ("function_call", "get_weather", '{"city": "Paris"}', True),
]


def test_create_gives_reasoning_text_and_a_function_call(server):
    r = client(server).responses.create(model="tiny", input="Weather in Paris?", tools=[WEATHER])
    assert r.object == "response" and r.status == "completed" and _items(r) == EXPECTED
    assert r.output_text == "Let me check." and r.usage.output_tokens > 0
    assert r.usage.input_tokens == len(Recording.prompts[-1]) and r.usage.total_tokens > r.usage.input_tokens
    assert r.usage.output_tokens_details.reasoning_tokens > 0


def test_stream_assembles_into_the_same_response(server):
    with client(server).responses.stream(model="tiny", input="Weather in Paris?", tools=[WEATHER]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert _items(final) == EXPECTED and final.status == "completed" and final.usage.output_tokens > 0
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for kind in ("reasoning_text", "output_text", "function_call_arguments"):
        assert f"response.{kind}.delta" in kinds and f"response.{kind}.done" in kinds
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3


def test_input_items_render_the_prompt_of_the_equivalent_chat_messages(server):
    """instructions, developer text, an earlier turn's reasoning (dropped), function_call and function_call_output
    items: the engine is given exactly the prompt of the chat completion with the same conversation."""
    items = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
    ]
    client(server).responses.create(model="tiny", instructions="Be kind.", input=items, tools=[WEATHER])
    responses_prompt = Recording.prompts[-1]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    client(server).chat.completions.create(model="tiny", messages=messages, tools=[CHAT_WEATHER])
    assert Recording.prompts[-1] == responses_prompt


def test_max_output_tokens_and_reasoning_effort(server):
    r = client(server).responses.create(model="tiny", input="Weather in Paris?", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [i.type for i in r.output] == ["reasoning"] and r.output[0].status == "incomplete"
    with client(server).responses.stream(model="tiny", input="Weather in Paris?", max_output_tokens=2) as stream:
        last = list(stream)[-1]  # as OpenAI's: response.incomplete, not .completed (get_final_response refuses it)
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert [i.status for i in last.response.output] == ["incomplete"]
    with_thinking = Recording.prompts[-1]
    client(server).responses.create(model="tiny", input="Weather in Paris?", reasoning={"effort": "none"})
    assert Recording.prompts[-1] != with_thinking  # the prompt closes the think block


def test_what_is_not_supported_is_refused_with_what_to_do(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="tiny", input="hi", previous_response_id="resp_1")
    assert "whole conversation in input" in e.value.message and e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="tiny", input="hi", tools=[{"type": "web_search"}])
    assert "only function tools" in e.value.message
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="tiny", input=image)
    assert "input_image" in e.value.message
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="other", input="hi")
    r = httpx.post(f"{server}/v1/responses", json={"model": "tiny"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]


def test_tool_choice_and_text_format_map_onto_their_chat_fields():
    from nanoseek.server.responses_api import ResponsesRequest, chat_request

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = ResponsesRequest(
        input="hi",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        max_output_tokens=7,
        parallel_tool_calls=False,
    )
    chat = chat_request(body)
    assert (
        chat.tool_choice.function.name == "get_weather" and chat.tools[0].function.parameters == WEATHER["parameters"]
    )
    assert chat.response_format.type == "json_schema" and chat.response_format.json_schema.schema_ == schema
    assert chat.response_format.json_schema.strict and chat.max_tokens == 7 and chat.parallel_tool_calls is False
    assert chat_request(
        ResponsesRequest(input="hi", text={"format": {"type": "json_object"}})
    ).response_format.type == ("json_object")
    assert chat_request(ResponsesRequest(input="hi", text={"format": {"type": "text"}})).response_format is None


@pytest.mark.parametrize(
    "body",
    [
        {"input": [{"role": "user", "content": 5}]},
        {"input": [{"role": "user", "content": [5, {"type": "input_text"}]}]},
        {"input": [{"type": "function_call_output", "call_id": "c", "output": {"a": 1}}]},
        {"input": [{"type": "function_call", "arguments": "{}"}]},
        {"input": [{"role": "robot", "content": "hi"}]},
        {"input": [{"type": "web_search_call"}]},
        {"input": []},
        {"input": "hi", "text": {"format": "json"}},
        {"input": "hi", "text": {"format": {"type": "json_schema"}}},
        {"input": "hi", "reasoning": {"effort": 5}},
        {"input": "hi", "tool_choice": {"type": "function"}},
        {"input": "hi", "tool_choice": "sometimes"},
        {"input": "hi", "tools": [{"type": "function"}]},
        {"input": "hi", "max_output_tokens": 0},
        {"input": 7},
    ],
)
def test_malformed_requests_are_400s_never_500s(server, body):
    r = httpx.post(f"{server}/v1/responses", json={"model": "tiny", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


def test_errors_name_the_input_item_not_the_chat_message_it_became(server):
    """An error found while rendering the conversation names the client's own field: with instructions (a system
    message ahead of the input), input[1] is the chat layer's messages[2]."""
    orphan = [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c1", "output": "18C"}]
    r = httpx.post(f"{server}/v1/responses", json={"model": "tiny", "instructions": "Be brief.", "input": orphan})
    error = r.json()["error"]
    assert r.status_code == 400 and error["message"].startswith("input[1]: a tool message"), error
    assert error["param"] == "input[1].role"
