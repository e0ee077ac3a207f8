"""DeepSeek-V3.2's and V4's DSML chat format (nanoseek/dsml.py): golden prompts, the streaming parser, the server.

Sources of the golden data:
- V3.2: DeepSeek's `encoding/test_input.json` -> `encoding/test_output.txt` of huggingface.co/deepseek-ai/
  DeepSeek-V3.2 (encoder `encoding/encoding_dsv32.py`, test script `encoding/test_encoding_dsv32.py`: the tools go
  on messages[0], thinking_mode "thinking", drop_thinking True), read from the copy of those files in
  github.com/ai-dynamo/dynamo at commit ab84711406d9625ec863c973365a3a49ed7c253b (lib/llm/tests/data/deepseek-v3.2/).
- V4: `encoding/README.md` and `encoding/encoding_dsv4.py` of huggingface.co/deepseek-ai/DeepSeek-V4-Flash, read
  from the copies in github.com/vllm-project/vllm (vllm/tokenizers/deepseek_v4_encoding.py at commit
  591f7b5eab1ab5be7e9a893926ebaa486974fea6) and github.com/sgl-project/sglang
  (python/sglang/srt/entrypoints/openai/encoding_dsv4.py at commit 00370f2784265e663d500abcc6a59b13854840f5). V4's
  release has no input/output example pair, so its goldens are the README's examples plus renderings worked out
  by hand from the encoder's rules.
"""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from helpers import tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import ScriptedEngine, client, run_server, sse_data
from test_tools import run

from nanoseek import dsml
from nanoseek.server.prompts import ChatPrompt, render_chat
from nanoseek.server.schemas import ChatCompletionRequest
from nanoseek.server.tools import DSV4, DSV32, ToolCallParser, collect_calls

B, E, U, A = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"


def fn(name, description, properties, required):
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"arguments": json.dumps(args), "name": name}}


def weather(location, date, high, low, sky, humidity):
    return json.dumps(
        {"location": location, "date": date, "temperature_high": high, "temperature_low": low, "weather": sky,
         "humidity": humidity}
    )  # fmt: skip


# test_input.json
TOOLS = [
    fn(
        "get_datetime",
        "Get the current date and time",
        {"timezone": {"type": "string", "description": "The timezone, e.g. America/New_York, UTC"}},
        ["timezone"],
    ),
    fn(
        "get_weather",
        "Get the weather for a specific date and location",
        {
            "location": {"type": "string", "description": "The city name, e.g. New York, San Francisco"},
            "date": {"type": "string", "description": "The date in YYYY-MM-DD format"},
        },
        ["location", "date"],
    ),
]
SF, NY = "San Francisco", "New York"
ANSWER_1 = (
    "Based on the forecast, here's tomorrow's weather (January 16, 2024):\n\n**San Francisco**:\n- Weather: Partly "
    "cloudy\n- High: 65°F\n- Low: 55°F\n- Humidity: 70%\n\n**New York**:\n- Weather: Sunny\n- High: 28°F\n- Low: "
    "15°F\n- Humidity: 35%\n\nSan Francisco will be mild and partly cloudy, while New York will be cold but sunny. "
    "If you're in New York, dress warmly!"
)
ANSWER_2 = (
    "Here's the forecast for the day after tomorrow (January 17, 2024):\n\n**San Francisco**:\n- Weather: Light "
    "rain\n- High: 68°F\n- Low: 58°F\n- Humidity: 85%\n\n**New York**:\n- Weather: Cloudy\n- High: 32°F\n- Low: "
    "22°F\n- Humidity: 50%\n\nSan Francisco will have light rain with temperatures rising slightly, so bring an "
    "umbrella. New York will be a bit warmer but still cold and cloudy, so continue to bundle up."
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful Assistant."},
    {"role": "user", "content": "What's the weather tomorrow in San Francisco and New York?"},
    {
        "role": "assistant",
        "reasoning_content": "User is asking about tomorrow's weather. I need to first get the current date to "
        "calculate tomorrow's date.",
        "tool_calls": [call("call_xK9mN3pL2qR8vT5wY6hZ1aB4", "get_datetime", {"timezone": "America/New_York"})],
    },
    {
        "tool_call_id": "call_xK9mN3pL2qR8vT5wY6hZ1aB4",
        "role": "tool",
        "content": '{"current_date": "2024-01-15", "current_time": "14:30:00", "timezone": "America/New_York"}',
    },
    {
        "role": "assistant",
        "reasoning_content": "Now I know today is 2024-01-15, so tomorrow is 2024-01-16. Let me query the weather for "
        "San Francisco and New York.",
        "tool_calls": [
            call("call_bN7kR9mX3pQ2wL5vY8jZ4cD6", "get_weather", {"location": SF, "date": "2024-01-16"}),
            call("call_dP9mL7kX5rT4yN3wZ2hV8eF1", "get_weather", {"location": NY, "date": "2024-01-16"}),
        ],
    },
    {"tool_call_id": "call_bN7kR9mX3pQ2wL5vY8jZ4cD6", "role": "tool",
     "content": weather(SF, "2024-01-16", "65", "55", "partly cloudy", "70%")},
    {"tool_call_id": "call_dP9mL7kX5rT4yN3wZ2hV8eF1", "role": "tool",
     "content": weather(NY, "2024-01-16", "28", "15", "sunny", "35%")},
    {"role": "assistant", "reasoning_content": "Retrieved weather data for both cities. Now I'll format a nice "
     "response for the user.", "content": ANSWER_1},
    {"role": "user", "content": "Thanks! What about the day after tomorrow?"},
    {
        "role": "assistant",
        "reasoning_content": "User is now asking about the day after tomorrow, which is 2024-01-17. I can query "
        "directly since I already know today's date.",
        "tool_calls": [
            call("call_fR3nK8mV7pL4xT2yW9jB5gH3", "get_weather", {"location": SF, "date": "2024-01-17"}),
            call("call_hT5pN2kY9rV6zL3wX1mD7jK8", "get_weather", {"location": NY, "date": "2024-01-17"}),
        ],
    },
    {"tool_call_id": "call_fR3nK8mV7pL4xT2yW9jB5gH3", "role": "tool",
     "content": weather(SF, "2024-01-17", "68", "58", "light rain", "85%")},
    {"tool_call_id": "call_hT5pN2kY9rV6zL3wX1mD7jK8", "role": "tool",
     "content": weather(NY, "2024-01-17", "32", "22", "cloudy", "50%")},
    {"role": "assistant", "reasoning_content": "Got the weather data for the day after tomorrow. Let me format this "
     "for the user.", "content": ANSWER_2},
]  # fmt: skip

D = "｜DSML｜"
V32_TOOL_BLOCK = (
    "## Tools\n\nYou have access to a set of tools you can use to answer the user's question.\nYou can invoke "
    f'functions by writing a "<{D}function_calls>" block like the following as part of your reply to the user:\n'
    f'<{D}function_calls>\n<{D}invoke name="$FUNCTION_NAME">\n<{D}parameter name="$PARAMETER_NAME" '
    f'string="true|false">$PARAMETER_VALUE</{D}parameter>\n...\n</{D}invoke>\n<{D}invoke name="$FUNCTION_NAME2">\n'
    f"...\n</{D}invoke>\n</{D}function_calls>\n\nString and scalar parameters should be specified as is without "
    'any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set '
    'to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).\n\nIf '
    "the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking "
    f"block. Here is an example:\n\n<{D}function_calls>\n...\n</{D}function_calls>\n\n<function_results>\n...\n"
    "</function_results>\n\n<think>...thinking about results</think>\n\nHere are the functions available in "
    "JSONSchema format:\n<functions>\n"
)


def invoke(name, **params):
    lines = [f'<{D}parameter name="{k}" string="true">{v}</{D}parameter>' for k, v in params.items()]
    return f'<{D}invoke name="{name}">\n' + "\n".join(lines) + f"\n</{D}invoke>"


def block(*invokes):
    return f"\n\n<{D}function_calls>\n" + "\n".join(invokes) + f"\n</{D}function_calls>{E}"


def results(*contents):
    return "\n\n<function_results>" + "".join(f"\n<result>{c}</result>" for c in contents) + "\n</function_results>"


# test_output.txt
GOLDEN_V32 = (
    f"{B}You are a helpful Assistant.\n\n{V32_TOOL_BLOCK}"
    + "\n".join(json.dumps(t["function"]) for t in TOOLS)
    + f"\n</functions>\n{U}What's the weather tomorrow in San Francisco and New York?{A}</think>"
    + block(invoke("get_datetime", timezone="America/New_York"))
    + results(MESSAGES[3]["content"])
    + "\n\n</think>"
    + block(
        invoke("get_weather", location=SF, date="2024-01-16"), invoke("get_weather", location=NY, date="2024-01-16")
    )
    + results(MESSAGES[5]["content"], MESSAGES[6]["content"])
    + f"\n\n</think>{ANSWER_1}{E}{U}Thanks! What about the day after tomorrow?{A}<think>"
    + MESSAGES[9]["reasoning_content"]
    + "</think>"
    + block(
        invoke("get_weather", location=SF, date="2024-01-17"), invoke("get_weather", location=NY, date="2024-01-17")
    )
    + results(MESSAGES[10]["content"], MESSAGES[11]["content"])
    + f"\n\n<think>{MESSAGES[12]['reasoning_content']}</think>{ANSWER_2}{E}"
)


def test_golden_v32_official_example():
    messages = [dict(m) for m in MESSAGES]
    messages[0]["tools"] = TOOLS
    assert len(GOLDEN_V32) == 4930 - 1  # test_output.txt's characters, less the final newline the test strips
    assert dsml.encode_v32(messages, thinking=True) == GOLDEN_V32
    assert dsml.encode_v32(dsml.attach(MESSAGES, TOOLS), thinking=True) == GOLDEN_V32


def test_v32_chat_mode_developer_and_generation_prompts():
    # chat mode: every user turn and every tool result closes the think block, no reasoning is shown
    chat = dsml.encode_v32(MESSAGES[:4], thinking=False)
    assert (
        chat.endswith(results(MESSAGES[3]["content"]) + "\n\n</think>")
        and "<think>" not in chat.split("</functions>")[-1]
    )
    thinking = dsml.encode_v32(MESSAGES[:4], thinking=True)
    assert thinking.endswith("</function_results>\n\n<think>")
    assert thinking.count(MESSAGES[2]["reasoning_content"]) == 1  # the current turn's reasoning is kept
    assert dsml.encode_v32(MESSAGES[:2], thinking=True).endswith(f"{U}{MESSAGES[1]['content']}{A}<think>")
    # the developer role (DeepSeek's search agent) carries the tools inside the user turn
    dev = dsml.encode_v32([{"role": "developer", "content": "hi", "tools": TOOLS[:1]}], thinking=True)
    assert dev.startswith(f"{B}{U}\n\n## Tools\n\n") and dev.endswith(
        "</functions>\n\n\n# The user's message is: hi" + A + "<think>"
    )
    with pytest.raises(ValueError):
        dsml.encode_v32([MESSAGES[1], MESSAGES[3]], thinking=True)  # a result without a call


V4_README = "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜><think>"


def test_golden_v4_readme_and_rules():
    basic = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}]
    assert dsml.encode_v4(basic, thinking=True) == V4_README  # README "Quick Start"
    assert dsml.encode_v4(basic, thinking=False) == V4_README.replace("<think>", "</think>")
    turn = [*basic, {"role": "assistant", "reasoning_content": "Simple arithmetic.", "content": "2 + 2 = 4."},
            {"role": "user", "content": "And 3+3?"}]  # fmt: skip
    # without tools, earlier reasoning is dropped ("Interleaved Thinking Mode")
    assert dsml.encode_v4(turn, thinking=True) == (
        V4_README.replace("<think>", "</think>") + f"2 + 2 = 4.{E}{U}And 3+3?{A}<think>"
    )
    # the Max-effort prefix goes before everything but BOS, in thinking mode only
    maxed = dsml.encode_v4(basic, thinking=True, reasoning_effort="max")
    assert maxed == B + dsml.REASONING_EFFORT_MAX + V4_README[len(B) :]
    assert maxed.startswith(B + "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very")
    assert dsml.encode_v4(basic, thinking=False, reasoning_effort="max") == V4_README.replace("<think>", "</think>")
    # tools: V4's block, all reasoning kept, results as <tool_result> in a user turn, sorted by call order
    convo = [dict(m) for m in MESSAGES[:7]]
    convo[0]["tools"] = TOOLS
    convo[5], convo[6] = convo[6], convo[5]  # results out of order: sorted back by the calls' ids
    text = dsml.encode_v4(convo, thinking=True)
    head = "You are a helpful Assistant.\n\n## Tools\n\nYou have access to a set of tools to help answer the user's"
    assert text.startswith(B + head)
    assert (
        "### Available Tool Schemas\n\n"
        + "\n".join(json.dumps(t["function"]) for t in TOOLS)
        + (
            "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
            f"{U}What's the weather"
        )
        in text
    )
    calls = (
        invoke("get_weather", location=SF, date="2024-01-16")
        + "\n"
        + invoke("get_weather", location=NY, date="2024-01-16")
    )
    assert text.endswith(
        f"{A}<think>{MESSAGES[4]['reasoning_content']}</think>\n\n<{D}tool_calls>\n{calls}\n</{D}tool_calls>{E}"
        f"{U}<tool_result>{MESSAGES[5]['content']}</tool_result>\n\n<tool_result>{MESSAGES[6]['content']}"
        f"</tool_result>{A}<think>"
    )
    assert f"{A}<think>{MESSAGES[2]['reasoning_content']}</think>" in text  # first turn's reasoning too
    # the latest_reminder role
    reminder = [basic[1], {"role": "latest_reminder", "content": "2025-01-01"}]
    assert dsml.encode_v4(reminder, thinking=False) == f"{B}{U}What is 2+2?{A}</think><｜latest_reminder｜>2025-01-01"


def test_arguments_as_parameters():
    assert DSV32.calls([("f", '{"a": "x", "n": 3, "l": [1, "y"], "o": {"k": null}, "b": true}')]) == (
        f'<{D}function_calls>\n<{D}invoke name="f">\n<{D}parameter name="a" string="true">x</{D}parameter>\n'
        f'<{D}parameter name="n" string="false">3</{D}parameter>\n<{D}parameter name="l" string="false">[1, "y"]'
        f'</{D}parameter>\n<{D}parameter name="o" string="false">{{"k": null}}</{D}parameter>\n'
        f'<{D}parameter name="b" string="false">true</{D}parameter>\n</{D}invoke>\n</{D}function_calls>'
    )
    assert DSV4.calls([("g", "{}")]) == f'<{D}tool_calls>\n<{D}invoke name="g">\n\n</{D}invoke>\n</{D}tool_calls>'
    with pytest.raises(ValueError):
        DSV32.calls([("f", "not json")])
    assert DSV4.calls([("f", "not json")]).count('name="arguments" string="true">not json<') == 1


# ---------------------------------------------------------------------------------------------------------------
# the parser: the same result however the output is split


KEYS = st.text('ab "<>\n', min_size=1, max_size=3).filter(lambda k: '"' not in k and ">" not in k)
VALUES = st.one_of(
    st.text('xy <>/"\\\n', max_size=8),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)
OUTPUTS = st.tuples(
    st.sampled_from([DSV32, DSV4]),
    st.text("ab \n<>/", max_size=12),
    st.text("cd \n`<", max_size=12),
    st.lists(st.tuples(st.sampled_from(["get_weather", "f"]), st.dictionaries(KEYS, VALUES, max_size=3)), max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(OUTPUTS, st.data())
def test_parsing_is_the_same_for_every_chunking(output, data):
    fmt, reasoning, content, calls, cut = output
    text = f"{reasoning}</think>{content}"
    if calls:
        text += "\n\n" + fmt.calls([(name, json.dumps(args)) for name, args in calls])
    if cut:  # cut off anywhere (max_tokens)
        text = text[: data.draw(st.integers(0, len(text)))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    prompt = ChatPrompt("", thinking=True, opened=True, tool_format=fmt)
    whole = run(prompt, [text])
    assert run(prompt, pieces) == whole
    if not cut:
        assert whole[0] == reasoning.strip()
        assert whole[1] == (content.lstrip().rstrip("\n") if calls else content.lstrip())
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole[2]] == calls


def test_parser_reads_the_official_example_and_details():
    # the assistant turns of test_output.txt, as the model writes them after the prompt
    turns = [t for t in GOLDEN_V32.split(E) if t.endswith(f"</{D}function_calls>")]
    for i, turn in zip((2, 4, 9), turns, strict=True):
        out = turn[turn.rindex(f"\n\n<{D}function_calls>") :]
        _, content, calls = run(ChatPrompt("", thinking=False, opened=False, tool_format=DSV32), [out])
        expected = [{"type": "function", "function": c["function"]} for c in MESSAGES[i]["tool_calls"]]
        assert content == "" and calls == expected
    p = ToolCallParser(DSV32, max_calls=1)  # parallel_tool_calls=false: later calls are dropped
    content, calls = collect_calls(p.feed("hi\n\n" + DSV32.calls([("f", "{}"), ("g", "{}")]) + "trailing") + p.finish())
    assert content == "hi" and [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("f", "{}")]
    p = ToolCallParser(DSV4)  # a call cut off: what was written is returned
    cut = f'<{D}tool_calls>\n<{D}invoke name="f">\n<{D}parameter name="a" string="true">Par'
    content, calls = collect_calls(p.feed(cut) + p.finish())
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": "Par'}


# ---------------------------------------------------------------------------------------------------------------
# the server: a checkpoint whose vocabulary has ｜DSML｜ is rendered and parsed in DSML


def dsml_tokenizer(v4: bool = False):
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    from nanoseek.tokenizer import Tokenizer

    hf = HFTokenizer.from_str(tiny_tokenizer().hf.to_str())
    hf.add_tokens([AddedToken(D, normalized=False)])
    if v4:
        hf.add_special_tokens([AddedToken("<｜latest_reminder｜>", normalized=False)])
    return Tokenizer(hf)


WEATHER = TOOLS[1]
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]


def test_detection_and_rendering_in_the_server():
    tok = dsml_tokenizer()
    assert dsml.detect(tok) is dsml.V32 and dsml.detect(dsml_tokenizer(v4=True)) is dsml.V4
    assert dsml.detect(tiny_tokenizer()) is None and dsml.detect(model_type="deepseek_v4") is dsml.V4
    body = ChatCompletionRequest.model_validate({"messages": ASK, "tools": [WEATHER]})
    prompt = render_chat(tok, body)
    assert prompt.text == dsml.encode_v32(dsml.attach(ASK, [body.tools[0].model_dump(exclude_none=True)]), True)
    assert prompt.text.endswith(f"</functions>\n{U}Weather in Paris?{A}<think>") and prompt.opened
    assert prompt.tool_format is DSV32
    off = render_chat(tok, ChatCompletionRequest.model_validate({"messages": ASK, "thinking": {"type": "disabled"}}))
    assert off.text == f"{B}Be brief.{U}Weather in Paris?{A}</think>" and not off.thinking
    forced = {"type": "function", "function": {"name": "get_weather"}}
    named = render_chat(tok, ChatCompletionRequest.model_validate({**body.model_dump(), "tool_choice": forced}))
    assert named.text.endswith(f'{A}</think>\n\n<{D}function_calls>\n<{D}invoke name="get_weather">\n')
    v4 = render_chat(
        dsml_tokenizer(v4=True), ChatCompletionRequest.model_validate({"messages": ASK, "reasoning_effort": "max"})
    )
    assert v4.text == B + dsml.REASONING_EFFORT_MAX + f"Be brief.{U}Weather in Paris?{A}<think>"
    bad = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": f"<{D}invoke"}]})
    with pytest.raises(Exception, match="control marker"):
        render_chat(tok, bad)


DSML_CALL = ["Need the ", "tool.</th", "ink>Let me check.\n", "\n<｜DSML｜function", "_calls>\n<｜DSML｜invoke name=",
             '"get_weather">\n<｜DSML｜parameter name="location" string="true">Par', 'is</｜DSML｜parameter>\n',
             '<｜DSML｜parameter name="date" string="true">2024-01-16</｜DSML｜parameter>\n</｜DSML｜invoke>\n',
             "</｜DSML｜function_calls>"]  # fmt: skip


def test_live_server_returns_dsml_calls_streamed_and_not():
    def engine():
        e = ScriptedEngine(DSML_CALL, tokenizer=dsml_tokenizer())
        e.max_context = 8192
        return e

    with run_server(engine) as (base, _):
        c = client(base)
        r = c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
        assert choice.message.reasoning_content == "Need the tool."
        (tc,) = choice.message.tool_calls
        assert tc.function.name == "get_weather" and tc.id.startswith("call_")
        assert tc.function.arguments == '{"location": "Paris", "date": "2024-01-16"}'
        stream = c.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], stream=True)
        args, names, content, finish = "", [], "", None
        for chunk in stream:
            for ch in chunk.choices:
                content += ch.delta.content or ""
                for d in ch.delta.tool_calls or []:
                    names += [d.function.name] if d.function.name else []
                    args += d.function.arguments or ""
                finish = ch.finish_reason or finish
        assert (names, args, content, finish) == (["get_weather"], tc.function.arguments, "Let me check.", "tool_calls")
        # the call goes back into the context as DSML, its result as <function_results>
        follow = [
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tc.id, "content": "18C"},
        ]
        events = sse_data(
            httpx.post(f"{base}/v1/chat/completions", json={"messages": follow, "tools": [WEATHER], "stream": True})
        )
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_dsml_call_grammar_accepts_valid_calls_only():
    from nanoseek.engine.grammar import Constraint, GrammarCompiler

    tok = dsml_tokenizer()
    tool = fn("f", "d", {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}, "tag": {"enum": ["a"]}},
              ["city", "days"])  # fmt: skip
    compiler = GrammarCompiler(tok, tok.vocab_size, [tok.eos_id])

    def accepts(constraint, text):
        matcher = compiler.compile(constraint)
        for token in tok.encode(text, add_bos=False):
            if not matcher.matcher.consume_token(token):
                return False
        return matcher.done or matcher.matcher.is_accepting()

    named = Constraint("tool_call", tools=[tool], tool_format="dsv32", name="f")
    good = DSV32.calls([("f", '{"city": "Oslo <x>", "days": 2, "tag": "a"}')]).split('name="f">\n', 1)[1]
    assert accepts(named, good)
    assert accepts(named, DSV32.calls([("f", '{"city": "Oslo", "days": 3}')]).split('name="f">\n', 1)[1])
    assert not accepts(named, DSV32.calls([("f", '{"city": "Oslo", "days": 0}')]).split('name="f">\n', 1)[1])
    assert not accepts(named, DSV32.calls([("f", '{"days": 2}')]).split('name="f">\n', 1)[1])
    required = Constraint("tool_call", tools=[tool, WEATHER], tool_format="dsv4")
    assert accepts(required, DSV4.calls([("f", '{"city": "x", "days": 1}')]).split('name="', 1)[1])
