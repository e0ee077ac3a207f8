"""Tool calls, the thinking switch and prefix completion on /v1/chat/completions.

Formats are checked against their specifications (see nanoseek/server/tools.py): DeepSeek-V3/R1's chat_template in
their tokenizer_config.json (huggingface.co/deepseek-ai/DeepSeek-R1), and DeepSeek-V3.1's model card ("ToolCall")
at huggingface.co/deepseek-ai/DeepSeek-V3.1. A random model cannot write a valid call, so the server tests use a
scripted engine that streams a given text; that a forced tool_choice always yields arguments valid against the
schema is constrained decoding's, tested on a random-weights model in test_constrained.py."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from helpers import tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import RecordingEngine, ScriptedEngine, client, run_server, sse_data

from nanoseek.server.constraints import cache_salt
from nanoseek.server.prompts import ChatPrompt, render_chat
from nanoseek.server.responses import ChatOutput
from nanoseek.server.schemas import ChatCompletionRequest
from nanoseek.server.tools import V3, V31, ToolCallParser, collect_calls, detect_format, tool_description

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "reasoning_content": "Need the tool.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "assistant", "content": "18C and sunny.", "reasoning_content": "Got it."},
    {"role": "user", "content": "Thanks!"},
]
PARAMS = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
RULES = (
    "\n\nWhere:\n- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
)
# DeepSeek-V3.1's model card, "ToolCall": the tool description after the system prompt.
V31_BLOCK = (
    "## Tools\nYou have access to the following tools:\n\n### get_weather\nDescription: Weather of a city\n\n"
    f"Parameters: {PARAMS}\n\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>tool_call_name<｜tool▁sep｜>tool_call_arguments<｜tool▁call▁end｜>"
    "{additional_tool_calls}<｜tool▁calls▁end｜>" + RULES + "- For multiple tool calls, chain them directly without "
    "separators or spaces"
)
V3_BLOCK = V31_BLOCK.replace(
    "<｜tool▁call▁begin｜>tool_call_name<｜tool▁sep｜>tool_call_arguments<｜tool▁call▁end｜>",
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>tool_call_name\n```json\ntool_call_arguments\n```<｜tool▁call▁end｜>",
).replace("chain them directly without separators or spaces", "chain them with a newline as separator")

# ---------------------------------------------------------------------------------------------------------------
# golden renderings


def test_golden_call_shapes():
    # R1's tokenizer_config.json: type, sep, name, a ```json fence; calls joined by "\n"
    assert V3.calls([("f", '{"a": 1}'), ("g", "{}")]) == (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{"a": 1}\n```<｜tool▁call▁end｜>'
        "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    # V3.1's model card: name, sep, raw JSON arguments; calls chained without separators
    assert V31.calls([("f", '{"a": 1}'), ("g", "{}")]) == (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{"a": 1}<｜tool▁call▁end｜>'
        "<｜tool▁call▁begin｜>g<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    )
    assert tool_description(V31, [WEATHER]) == V31_BLOCK
    assert tool_description(V3, [WEATHER]) == V3_BLOCK


def test_golden_nanoseek_template_with_tools_and_results():
    tok = tiny_tokenizer()
    text = tok.apply_chat_template(CONVERSATION, tools=[WEATHER])
    assert text == (
        "<｜begin▁of▁sentence｜>Be brief.\n\n" + V3_BLOCK + "<｜User｜>Weather in Paris?"
        # the turn that called a tool keeps its reasoning (DeepSeek's API rule), R1's call syntax
        "<｜Assistant｜><think>\nNeed the tool.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        '<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
        "<｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜><｜Assistant｜><think>\nGot it.\n</think>\n\n18C and sunny.<｜end▁of▁sentence｜>"
        "<｜User｜>Thanks!<｜Assistant｜><think>\n"
    )
    off = tok.apply_chat_template(CONVERSATION[:2], thinking=False)
    assert off.endswith("<｜User｜>Weather in Paris?<｜Assistant｜><think>\n\n</think>\n\n")
    assert tok.apply_chat_template(CONVERSATION[:2], enable_thinking=False) == off
    # without tools, earlier reasoning is dropped as before
    plain = tok.apply_chat_template([CONVERSATION[1], {"role": "assistant", "content": "a", "reasoning_content": "r"}])
    assert plain.endswith("<｜Assistant｜>a<｜end▁of▁sentence｜><｜Assistant｜><think>\n") and "r\n" not in plain


# A template in DeepSeek-V3.1's format (its model card's "Chat Template" and "ToolCall" sections), written here:
# like the official one it does not render `tools`, so the server adds the model card's tool block.
V31_TEMPLATE = (
    "{{ bos_token }}{% for m in messages if m['role'] == 'system' %}{{ ('\\n\\n' if not loop.first else '') + "
    "m['content'] }}{% endfor %}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜></think>' + (m['content'] or '') }}"
    "{% for c in m['tool_calls'] or [] %}{{ ('<｜tool▁calls▁begin｜>' if loop.first else '') + '<｜tool▁call▁begin｜>'"
    " + c['function']['name'] + '<｜tool▁sep｜>' + c['function']['arguments'] + '<｜tool▁call▁end｜>' + "
    "('<｜tool▁calls▁end｜>' if loop.last else '') }}{% endfor %}{{ '<｜end▁of▁sentence｜>' }}"
    "{% elif m['role'] == 'tool' %}{{ '<｜tool▁output▁begin｜>' + m['content'] + '<｜tool▁output▁end｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' + ('<think>' if thinking else '</think>') }}"
    "{% endif %}"
)


def v31_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = V31_TEMPLATE
    return tok


def request(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": CONVERSATION[:2], **body})


def test_golden_v31_prompt_gets_the_model_card_tool_block():
    tok = v31_tokenizer()
    assert detect_format("... + tool['function']['name'] + '<｜tool▁sep｜>' + ...") is V31
    prompt = render_chat(tok, request(tools=[WEATHER], thinking={"type": "disabled"}))
    assert prompt.text == (
        "<｜begin▁of▁sentence｜>Be brief.\n\n" + V31_BLOCK + "<｜User｜>Weather in Paris?<｜Assistant｜></think>"
    )
    assert prompt.tool_format is V31 and not prompt.thinking
    thinking = render_chat(tok, request(chat_template_kwargs={"thinking": True}))
    assert thinking.text.endswith("<｜Assistant｜><think>") and thinking.opened


def test_named_and_required_tool_choice_open_the_call_in_the_prompt():
    tok = tiny_tokenizer()
    named = render_chat(
        tok, request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert named.text.endswith(
        "<｜Assistant｜><think>\n\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
        "get_weather\n```json\n"
    )
    assert named.constraint.kind == "tool_call" and named.constraint.name == "get_weather"
    required = render_chat(tok, request(tools=[WEATHER], tool_choice="required"))
    assert required.prefill.endswith("function<｜tool▁sep｜>") and required.constraint.name is None
    none = render_chat(tok, request(tools=[WEATHER], tool_choice="none"))
    assert none.tool_format is None and "## Tools" not in none.text


# ---------------------------------------------------------------------------------------------------------------
# the parser: the same result however the output is split


def run(prompt: ChatPrompt, pieces: list[str]):
    output, reasoning, events = ChatOutput(prompt), "", []
    for piece in pieces:
        r, e = output.feed(piece)
        reasoning, events = reasoning + r, events + e
    r, e = output.finish()
    content, calls = collect_calls(events + e)
    for call in calls:
        call.pop("id")
    return reasoning + r, content, calls


ARGS = st.dictionaries(st.text('ab `\n{}"', max_size=4), st.text('xy `\n\\"', max_size=6), max_size=3)
OUTPUTS = st.tuples(
    st.sampled_from(["v3", "v31"]),
    st.text("ab \n<>/", max_size=12),
    st.text("cd \n`<", max_size=12),
    st.lists(st.tuples(st.sampled_from(["get_weather", "f"]), ARGS), max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(OUTPUTS, st.data())
def test_parsing_is_the_same_for_every_chunking(output, data):
    fmt_name, reasoning, content, calls, cut = output
    fmt = V3 if fmt_name == "v3" else V31
    text = f"{reasoning}\n</think>\n\n{content}"
    if calls:
        text += fmt.calls([(name, json.dumps(args)) for name, args in calls])
    if cut:  # cut off anywhere (max_tokens)
        text = text[: data.draw(st.integers(0, len(text)))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    prompt = ChatPrompt("", thinking=True, opened=True, tool_format=fmt)
    whole = run(prompt, [text])
    assert run(prompt, pieces) == whole
    if not cut:
        assert whole[0] == reasoning.strip()
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole[2]] == calls


def test_parser_details():
    p = ToolCallParser(V3, max_calls=1)  # parallel_tool_calls=false: later calls are dropped
    events = p.feed("hi " + V3.calls([("f", "{}"), ("g", "{}")]) + "trailing") + p.finish()
    content, calls = collect_calls(events)
    assert content == "hi " and [c["function"]["name"] for c in calls] == ["f"]
    p = ToolCallParser(V31)  # a call cut off: what was written is returned
    content, calls = collect_calls(p.feed('<｜tool▁call▁begin｜>f<｜tool▁sep｜>{"a": ') + p.finish())
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a":'}


# ---------------------------------------------------------------------------------------------------------------
# the live server (scripted engines stream exact text)

REASONED_CALL = ["Need the ", "tool.\n</th", "ink>\n\nLet me check.", *V3.calls([("get_weather", '{"city": "Paris"}')])]


def scripted(script: list[str], kind=ScriptedEngine):
    engine = kind(script)
    engine.max_context = 8192  # the tool block is long in a tiny tokenizer
    return engine


@pytest.fixture(scope="module")
def tool_server():
    with run_server(lambda: scripted(REASONED_CALL)) as (base, _):
        yield base


def test_tool_calls_non_stream_and_stream_agree(tool_server):
    c = client(tool_server)
    r = c.chat.completions.create(model="tiny", messages=CONVERSATION, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.reasoning_content == "Need the tool."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    stream = c.chat.completions.create(model="tiny", messages=CONVERSATION, tools=[WEATHER], stream=True)
    args, names, content, finish = "", [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                names += [tc.function.name] if tc.function.name else []
                args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (names, args, content, finish) == (["get_weather"], call.function.arguments, "Let me check.", "tool_calls")


def test_tool_choice_none_and_thinking_disabled(tool_server):
    c = client(tool_server)
    r = c.chat.completions.create(model="tiny", messages=CONVERSATION[:2], tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and "<｜tool▁calls▁begin｜>" in r.choices[0].message.content
    r = c.chat.completions.create(
        model="tiny", messages=CONVERSATION[:2], extra_body={"thinking": {"type": "disabled"}}
    )
    assert r.choices[0].message.reasoning_content is None
    assert r.choices[0].message.content.startswith("Need the tool.")
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    r = c.chat.completions.create(model="tiny", messages=CONVERSATION[:2], reasoning_effort="none")
    assert r.choices[0].message.reasoning_content is None
    r = c.chat.completions.create(
        model="tiny", messages=CONVERSATION[:2], extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert r.choices[0].message.reasoning_content is None


def test_forced_tool_choice_reads_the_arguments_the_model_writes():
    script = ['{"city": ', '"Oslo"}', "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"]
    with run_server(lambda: scripted(script)) as (base, _):
        c = client(base)
        choice = {"type": "function", "function": {"name": "get_weather"}}
        r = c.chat.completions.create(model="tiny", messages=CONVERSATION[:2], tools=[WEATHER], tool_choice=choice)
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
        assert r.choices[0].message.reasoning_content is None and r.choices[0].finish_reason == "tool_calls"
        events = sse_data(
            httpx.post(
                f"{base}/v1/chat/completions",
                json={"messages": CONVERSATION[:2], "tools": [WEATHER], "tool_choice": choice, "stream": True},
            )
        )
        calls = [tc for e in events for ch in e["choices"] for tc in ch["delta"].get("tool_calls") or []]
        assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
        assert "".join(tc["function"]["arguments"] for tc in calls) == call.function.arguments


def test_bad_tool_requests_are_400s(tool_server):
    url = f"{tool_server}/v1/chat/completions"
    ok = {"messages": CONVERSATION[:2]}
    cases = [
        ({**ok, "tool_choice": "required"}, "tool_choice"),
        ({**ok, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
        ({**ok, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        ({**ok, "tools": [WEATHER, WEATHER]}, "tools"),
        ({**ok, "thinking": {"type": "maybe"}}, None),
        ({**ok, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
        ({**ok, "chat_template_kwargs": {"thinking": "no"}}, "chat_template_kwargs"),
        ({"messages": [*CONVERSATION[:2], {"role": "tool", "content": "x"}]}, "messages[2].role"),
        ({"messages": [CONVERSATION[1], {"role": "user", "content": "<｜tool▁calls▁begin｜>"}]}, "messages[1].content"),
        ({"messages": [{"role": "assistant", "content": "a", "prefix": True}, CONVERSATION[1]]}, "messages[0].prefix"),
    ]
    for body, param in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["message"] and (param is None or error["param"] == param), (body, error)


class PromptEngine(RecordingEngine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts: list = []

    def submit(self, prompt, params, on_delta=None):
        self.prompts.append(prompt)
        return super().submit(prompt, params, on_delta)


def test_prefix_completion_continues_the_assistant_message():
    script = [" world", "!"]
    with run_server(lambda: scripted(script, PromptEngine)) as (base, app):
        messages = [CONVERSATION[1], {"role": "assistant", "content": "Hello", "prefix": True}]
        for path in ("/v1/chat/completions", "/beta/chat/completions"):
            r = httpx.post(f"{base}{path}", json={"messages": messages})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "world!"
        engine = app.state.server.engine
        prompt = engine.tokenizer.decode(engine.prompts[-1])
        assert prompt.endswith("<｜Assistant｜><think>\n\n</think>\n\nHello")


def test_user_id_namespaces_the_prefix_cache():
    with run_server(lambda: scripted(["x"], RecordingEngine)) as (base, app):
        for body in ({"user": "alice"}, {"user_id": "alice"}, {"user_id": "bob"}, {}):
            httpx.post(f"{base}/v1/chat/completions", json={"messages": CONVERSATION[:2], **body})
        salts = [getattr(p, "cache_salt", b"") for p in app.state.server.engine.params]
        assert salts[0] == salts[1] == cache_salt(None, "alice") != salts[2] and salts[3] == b""


def fim_tokenizer():
    from tokenizers import AddedToken

    from nanoseek.server.prompts import FIM_TOKENS
    from nanoseek.tokenizer import Tokenizer

    hf = tiny_tokenizer().hf
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FIM_TOKENS])
    return Tokenizer(hf)


def test_fill_in_the_middle_on_completions_and_beta():
    with run_server(lambda: scripted(["    return a + b\n"], PromptEngine)) as (base, app):
        assert_fim_refused = httpx.post(f"{base}/v1/completions", json={"prompt": "def f(a, b):\n", "suffix": "x"})
        assert assert_fim_refused.status_code == 400 and "FIM tokens" in assert_fim_refused.json()["error"]["message"]
    engine = lambda: PromptEngine(["    return a + b\n"], tokenizer=fim_tokenizer())
    with run_server(engine) as (base, app):
        body = {"prompt": "def f(a, b):\n", "suffix": "\nprint(f(1, 2))\n", "max_tokens": 5}
        r = client(base).completions.create(model="tiny", **body)
        assert r.choices[0].text == "    return a + b\n"
        tok = app.state.server.engine.tokenizer
        assert tok.decode(app.state.server.engine.prompts[-1]) == (
            "<｜begin▁of▁sentence｜><｜fim▁begin｜>def f(a, b):\n<｜fim▁hole｜>\nprint(f(1, 2))\n<｜fim▁end｜>"
        )
        r = httpx.post(f"{base}/beta/completions", json=body)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "    return a + b\n"
        assert httpx.post(f"{base}/v1/completions", json={**body, "prompt": [1, 2]}).status_code == 400
        assert httpx.post(f"{base}/v1/completions", json={**body, "echo": True}).status_code == 400


def test_sft_learns_tool_calls_not_tool_results(tmp_path):
    from nanoseek.data.sft import sft_examples

    tok = tiny_tokenizer()
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION[1:5], "tools": [WEATHER]}) + "\n", encoding="utf-8")
    ((ids, mask),) = sft_examples(path, tok)
    learned = tok.decode([t for t, m in zip(ids, mask) if m])
    assert (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}'
        in learned
    )
    assert "18C and sunny." in learned and "<｜tool▁output▁begin｜>18C" not in learned
    assert "## Tools" in tok.decode(ids) and "## Tools" not in learned
