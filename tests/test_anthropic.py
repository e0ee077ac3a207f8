"""The Anthropic Messages API at /anthropic/v1/messages, driven by the official `anthropic` SDK against a live
server with a scripted engine (exact reasoning, text and tool-call output)."""

from __future__ import annotations

import anthropic
import httpx2 as httpx
import openai
import pytest
from server_harness import run_server
from test_tools import REASONED_CALL, scripted

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    with run_server(lambda: scripted(REASONED_CALL), api_keys=["sk-test"]) as (base, app):
        yield base, app


def sdk(base: str, key: str = "sk-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{base}/anthropic", api_key=key, max_retries=0, timeout=60)


def test_messages_with_thinking_text_and_tool_use(server):
    base, _ = server
    m = sdk(base).messages.create(model="tiny", max_tokens=400, messages=ASK, tools=[WEATHER])
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
    assert m.content[0].thinking == "Need the tool." and m.content[1].text == "Let me check."
    assert m.content[2].name == "get_weather" and m.content[2].input == {"city": "Paris"}
    assert m.stop_reason == "tool_use" and m.role == "assistant" and m.usage.output_tokens > 0


def test_stream_gives_the_same_message(server):
    base, _ = server
    with sdk(base).messages.stream(model="tiny", max_tokens=400, messages=ASK, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    assert final.content[0].thinking == "Need the tool." and final.content[1].text == "Let me check."


def test_tool_results_thinking_off_and_auth(server):
    base, _ = server
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "18C"}]},
    ]
    m = sdk(base).messages.create(
        model="tiny", max_tokens=400, messages=history, tools=[WEATHER], thinking={"type": "disabled"}
    )
    assert m.content[0].type == "text" and m.content[0].text.startswith("Need the tool.")
    # the bearer header works as well as x-api-key; a wrong key is a 401 in Anthropic's shape
    r = httpx.post(
        f"{base}/anthropic/v1/messages",
        json={"max_tokens": 8, "messages": ASK},
        headers={"Authorization": "Bearer sk-test"},
    )
    assert r.status_code == 200, r.text
    for path in ("/beta/completions", "/beta/chat/completions"):  # DeepSeek's beta paths need the key too
        assert httpx.post(f"{base}{path}", json={"prompt": "x", "messages": ASK}).status_code == 401
    with pytest.raises(anthropic.AuthenticationError) as e:
        sdk(base, key="wrong").messages.create(model="tiny", max_tokens=8, messages=ASK)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"


def test_errors_have_anthropic_shape(server):
    base, _ = server
    with pytest.raises(anthropic.BadRequestError) as e:
        sdk(base).messages.create(
            model="tiny", max_tokens=8, messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]
        )
    assert e.value.body["error"]["type"] == "invalid_request_error" and "image" in e.value.body["error"]["message"]
    r = httpx.post(f"{base}/anthropic/v1/messages", json={"messages": ASK}, headers={"x-api-key": "sk-test"})
    assert r.status_code == 400 and r.json()["type"] == "error" and "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as e:
        sdk(base).messages.create(model="other", max_tokens=8, messages=ASK)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_errors_name_the_clients_message_not_the_chat_message_it_became(server):
    """With a system prompt (the chat layer's messages[0]) the client's messages[0] is the chat's messages[1]: an
    error must name the one the client sent."""
    base, _ = server
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "18C"}]}]
    body = {"model": "tiny", "max_tokens": 8, "system": "Be brief.", "messages": orphan}
    r = httpx.post(f"{base}/anthropic/v1/messages", json=body, headers={"x-api-key": "sk-test"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("messages[0]: a tool message"), r.text


def test_the_servers_root_as_base_url_reaches_the_same_endpoint(server):
    """Clients given the server's root (the SDK's base_url, Claude Code's ANTHROPIC_BASE_URL) post to Anthropic's own
    /v1/messages: the same messages, and errors in Anthropic's shape there too (not the OpenAI routes' shape)."""
    base, _ = server
    at_root = anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0, timeout=60)
    m = at_root.messages.create(model="tiny", max_tokens=400, messages=ASK, tools=[WEATHER])
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"] and m.stop_reason == "tool_use"
    r = httpx.post(f"{base}/v1/messages", json={"messages": ASK}, headers={"x-api-key": "sk-test"})
    assert r.status_code == 400 and r.json()["type"] == "error" and "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model="tiny", max_tokens=8, messages=ASK
        )
    assert e.value.body["error"]["type"] == "authentication_error"
    # the OpenAI routes beside it keep their own shape
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": []}, headers={"x-api-key": "sk-test"})
    assert r.status_code == 400 and "type" not in r.json() and "message" in r.json()["error"], r.text


def test_count_tokens_is_the_prompt_a_message_would_read(server):
    """/v1/messages/count_tokens (both paths, through the SDK): the input_tokens a create() with the same request
    reports, more for a longer conversation, and 404 in Anthropic's shape for another model."""
    base, _ = server
    client, at_root = sdk(base), anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0, timeout=60)
    created = client.messages.create(model="tiny", max_tokens=50, messages=ASK, tools=[WEATHER])
    counted = [c.messages.count_tokens(model="tiny", messages=ASK, tools=[WEATHER]) for c in (client, at_root)]
    assert [c.input_tokens for c in counted] == [created.usage.input_tokens] * 2 and created.usage.input_tokens > 5
    longer = [*ASK, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And tomorrow?"}]
    more = at_root.messages.count_tokens(model="tiny", messages=longer, tools=[WEATHER]).input_tokens
    assert more > counted[0].input_tokens
    with pytest.raises(anthropic.NotFoundError) as e:
        at_root.messages.count_tokens(model="other", messages=ASK)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_model_aliases_answer_under_the_id_the_client_sent():
    """`serve --model-alias`: DeepSeek's ids or an agent's own model names reach the model, responses name the id
    sent, /v1/models lists them; an unknown id is a 404 that says how to add it; "*" answers to any id."""
    with run_server(lambda: scripted(REASONED_CALL), model_aliases=["deepseek-chat", "deepseek-reasoner"]) as (base, _):
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        assert c.chat.completions.create(model="deepseek-chat", messages=ASK).model == "deepseek-chat"
        assert c.models.retrieve("deepseek-reasoner").id == "deepseek-reasoner"
        assert [m.id for m in c.models.list()] == ["tiny", "deepseek-chat", "deepseek-reasoner"]
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="gpt-9", messages=ASK)
        assert "deepseek-chat" in e.value.message and "--model-alias" in e.value.message
    with run_server(lambda: scripted(REASONED_CALL), model_aliases=["*"]) as (base, _):
        m = sdk(base).messages.create(model="claude-haiku-4-5", max_tokens=400, messages=ASK)
        assert m.model == "claude-haiku-4-5" and m.content[1].text.startswith("Let me check.")
        assert [m.id for m in openai.OpenAI(base_url=f"{base}/v1", api_key="x").models.list()] == ["tiny"]
