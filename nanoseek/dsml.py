"""DeepSeek-V3.2's and DeepSeek-V4's chat encoding (the DSML tool-call format): prompts and a streaming parser.

DeepSeek ships these encodings as Python, not as a Jinja chat template (the checkpoints' tokenizer_config.json has
none), so nanoseek renders them here, at the package level beside the tokenizer (the engine and training layers can
use it without the server). Specified by:
- V3.2: `encoding/encoding_dsv32.py` and its examples (`test_input.json` -> `test_output.txt`) in
  huggingface.co/deepseek-ai/DeepSeek-V3.2 (the Exp repo ships the same encoder without the blank lines the final
  release puts in the tool block);
- V4: `encoding/encoding_dsv4.py` and `encoding/README.md` in huggingface.co/deepseek-ai/DeepSeek-V4-Flash/-Pro.

The format, V3.2 (thinking_mode "thinking", the last user message's answer opens `<think>`)::

    {bos}{system}[\\n\\n{tool block}]<｜User｜>{user}<｜Assistant｜></think>{content}\\n\\n<｜DSML｜function_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls><｜end▁of▁sentence｜>\\n\\n<function_results>\\n<result>{result}</result>\\n</function_results>
    \\n\\n<think>...

A string argument is written as is (string="true"), any other value as JSON (string="false"). V4 names the block
`tool_calls`, words the tool block differently, has no tool role (results are `<tool_result>...</tool_result>`
inside a user turn, joined by blank lines, in the order of the calls), adds the `latest_reminder` role
(`<｜latest_reminder｜>`), keeps all reasoning when tools are defined, and with reasoning_effort "max" (thinking on)
prefixes the whole prompt with its "Reasoning Effort" paragraph. The internal "task" tokens (`<｜action｜>`...) and
the search-agent `developer` role are rendered as specified but the server does not use them.

Which checkpoints speak it (`detect`): a vocabulary with the `｜DSML｜` token (V3.2's and V4's tokenizers have it; no
earlier DeepSeek tokenizer does), V4 when it also has `<｜latest_reminder｜>`; or a config model_type `deepseek_v32`
/ `deepseek_v4`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
DSML = "｜DSML｜"
LATEST_REMINDER = "<｜latest_reminder｜>"
TASK_TOKENS = {t: f"<｜{t}｜>" for t in ("action", "query", "authority", "domain", "title", "read_url")}

_EXAMPLE = (
    '<{d}{block}>\n<{d}invoke name="${name}">\n'
    '<{d}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{d}parameter>\n...\n'
    '</{d}invoke>\n<{d}invoke name="${name}2">\n...\n</{d}invoke>\n</{d}{block}>'
)
V32_TOOLS = (
    "## Tools\n\nYou have access to a set of tools you can use to answer the user's question.\n"
    'You can invoke functions by writing a "<{d}function_calls>" block like the following as part of your reply to '
    "the user:\n" + _EXAMPLE.replace("{name}", "FUNCTION_NAME") + "\n\nString and scalar parameters should be "
    'specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" '
    'attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, '
    "arrays, objects).\n\nIf the thinking_mode is enabled, then after function results you should strongly consider "
    "outputting a thinking block. Here is an example:\n\n<{d}function_calls>\n...\n</{d}function_calls>\n\n"
    "<function_results>\n...\n</function_results>\n\n<think>...thinking about results</think>\n\n"
    "Here are the functions available in JSONSchema format:\n<functions>\n{schemas}\n</functions>\n"
)
V4_TOOLS = (
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
    'writing a "<{d}tool_calls>" block like the following:\n\n' + _EXAMPLE.replace("{name}", "TOOL_NAME") + "\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, '
    'arrays, objects), pass the value in JSON format and set `string="false"`.\n\nIf thinking_mode is enabled '
    "(triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls "
    "or final response.\n\nOtherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n{schemas}\n\nYou MUST strictly follow the above defined tool name and parameter "
    "schemas to invoke tool calls.\n"
)
RESPONSE_FORMAT = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}"
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very thorough in your thinking and "
    "comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against "
    "all potential paths, edge cases, and adversarial scenarios.\nExplicitly write out your entire deliberation "
    "process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure "
    "absolutely no assumption is left unchecked.\n\n"
)


@dataclass(frozen=True)
class Dialect:
    name: str  # "dsv32" or "dsv4"
    block: str  # the calls block's tag: "function_calls" (V3.2) or "tool_calls" (V4)

    @property
    def calls_begin(self) -> str:
        return f"<{DSML}{self.block}>"

    @property
    def calls_end(self) -> str:
        return f"</{DSML}{self.block}>"

    def tools_block(self, tools: list[dict[str, Any]]) -> str:
        schemas = "\n".join(_json(t.get("function", t)) for t in tools)
        template = V32_TOOLS if self.name == "dsv32" else V4_TOOLS
        return template.replace("{block}", self.block).replace("{d}", DSML).replace("{schemas}", schemas)

    def calls(self, calls: list[tuple[str, str | dict[str, Any]]]) -> str:
        """The calls block of an assistant turn (without the blank line before it)."""
        invokes = [f'<{DSML}invoke name="{name}">\n{self.parameters(args)}\n</{DSML}invoke>' for name, args in calls]
        return f"{self.calls_begin}\n" + "\n".join(invokes) + f"\n{self.calls_end}"

    def parameters(self, arguments: str | dict[str, Any]) -> str:
        """OpenAI arguments (a JSON object, or its text) as DSML parameters."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                if self.name == "dsv32":
                    raise ValueError(f"tool call arguments must be a JSON object, got {arguments!r}") from None
                arguments = {"arguments": arguments}  # V4's encoder keeps text that is not JSON
        if not isinstance(arguments, dict):
            raise ValueError("tool call arguments must be a JSON object")
        return "\n".join(
            f'<{DSML}parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
            f"{v if isinstance(v, str) else _json(v)}</{DSML}parameter>"
            for k, v in arguments.items()
        )

    def opening(self, name: str | None) -> str:
        """Output that starts a call (of `name`, if given), written into the prompt for a forced tool_choice."""
        head = f'\n\n{self.calls_begin}\n<{DSML}invoke name="'
        return head if name is None else f'{head}{name}">\n'


V32, V4 = Dialect("dsv32", "function_calls"), Dialect("dsv4", "tool_calls")
DIALECTS = {d.name: d for d in (V32, V4)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def detect(tokenizer: Any = None, model_type: str | None = None) -> Dialect | None:
    """The DSML dialect a checkpoint speaks (None: an earlier DeepSeek format, or not DeepSeek's)."""
    if model_type in ("deepseek_v32", "deepseek_v4"):
        return V32 if model_type == "deepseek_v32" else V4
    to_id = getattr(tokenizer, "token_to_id", None)
    if to_id is None or to_id(DSML) is None:
        return None
    return V4 if to_id(LATEST_REMINDER) is not None else V32


def _calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]


def _last_user(messages: list[dict[str, Any]]) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") in ("user", "developer")), default=-1)


def _system_extras(dialect: Dialect, message: dict[str, Any]) -> str:
    text = ""
    if message.get("tools"):
        text += "\n\n" + dialect.tools_block(message["tools"])
    if message.get("response_format"):
        text += "\n\n" + RESPONSE_FORMAT.format(schema=_json(message["response_format"]))
    return text


def _assistant(dialect: Dialect, message: dict[str, Any], thinking_part: bool) -> str:
    reasoning = (message.get("reasoning_content") or "") + END_THINK if thinking_part else ""
    calls = "\n\n" + dialect.calls(_calls(message)) if message.get("tool_calls") else ""
    return reasoning + (message.get("content") or "") + calls + EOS


# ---------------------------------------------------------------------------------------------------------------
# V3.2


def encode_v32(messages: list[dict[str, Any]], thinking: bool, bos: bool = True) -> str:
    """A conversation in V3.2's format, as encoding_dsv32.encode_messages(messages, "thinking" if thinking else
    "chat", drop_thinking=True) renders it. Tools and response_format ride on a system (or developer) message.
    Reasoning shows only in the assistant messages after the last user message (the tool calls of the current
    turn), so dropping earlier reasoning needs nothing more."""
    last_user = _last_user(messages)
    out = [BOS] if bos else []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        think = THINK if thinking and i == last_user else END_THINK
        if role == "system":
            out.append((content or "") + _system_extras(V32, m))
        elif role == "developer":
            if not content:
                raise ValueError(f"messages[{i}]: a developer message needs content")
            out.append(f"{USER}{_system_extras(V32, m)}\n\n# The user's message is: {content}{ASSISTANT}{think}")
        elif role == "user":
            out.append(f"{USER}{content}{ASSISTANT}{think}")
        elif role == "tool":
            start = i
            while start > 0 and messages[start - 1].get("role") == "tool":
                start -= 1
            calls = messages[start - 1].get("tool_calls") if start > 0 else None
            if messages[start - 1].get("role") != "assistant" or not calls or len(calls) < i - start + 1:
                raise ValueError(f"messages[{i}]: a tool result without a tool call to answer")
            out.append(("\n\n<function_results>" if i == start else "") + f"\n<result>{content}</result>")
            if i - start + 1 == len(calls):
                out.append("\n</function_results>\n\n" + (THINK if thinking and i >= last_user else END_THINK))
        elif role == "assistant":
            out.append(_assistant(V32, m, thinking and i > last_user))
        else:
            raise ValueError(f"messages[{i}]: unknown role {role!r}")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------------
# V4


def merge_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """V4 has no tool role: results become `tool_result` blocks of a user message (with a user message that follows
    them), sorted by the order of the calls they answer."""
    merged: list[dict[str, Any]] = []
    order: dict[str, int] = {}
    for m in messages:
        m = copy.deepcopy(m)
        role = m.get("role")
        open_user = merged and merged[-1].get("role") == "user" and "blocks" in merged[-1]
        if role == "assistant" and m.get("tool_calls"):
            order = {c.get("id") or "": k for k, c in enumerate(m["tool_calls"]) if c.get("id")}
        if role == "tool":
            block = {"type": "tool_result", "id": m.get("tool_call_id") or "", "content": m.get("content") or ""}
            if open_user:
                merged[-1]["blocks"].append(block)
            else:
                merged.append({"role": "user", "blocks": [block]})
        elif role == "user":
            block = {"type": "text", "content": m.get("content") or ""}
            if open_user and merged[-1].get("task") is None:
                merged[-1]["blocks"].append(block)
            else:
                merged.append({**m, "blocks": [block]})
        else:
            merged.append(m)
        if merged and "blocks" in merged[-1] and order:
            results = sorted((b for b in merged[-1]["blocks"] if b["type"] == "tool_result"),
                             key=lambda b: order.get(b["id"], 0))  # fmt: skip
            it = iter(results)
            merged[-1]["blocks"] = [next(it) if b["type"] == "tool_result" else b for b in merged[-1]["blocks"]]
    return merged


def encode_v4(
    messages: list[dict[str, Any]], thinking: bool, reasoning_effort: str | None = None, bos: bool = True
) -> str:
    """A conversation in V4's format, as encoding_dsv4.encode_messages(messages, "thinking" if thinking else
    "chat", drop_thinking=True, reasoning_effort=...) renders it: earlier turns' reasoning is dropped unless a
    message defines tools; reasoning_effort "max" (thinking on) prefixes the prompt."""
    msgs = merge_tool_results(messages)
    drop = not any(m.get("tools") for m in msgs)
    if thinking and drop:
        last = _last_user(msgs)
        kept = []
        for i, m in enumerate(msgs):
            if i >= last or m.get("role") in ("user", "system", "tool", "latest_reminder"):
                kept.append(m)
            elif m.get("role") == "assistant":
                kept.append({k: v for k, v in m.items() if k != "reasoning_content"})
        msgs = kept  # (earlier developer messages are dropped)
    last_user = _last_user(msgs)
    out = [BOS] if bos else []
    if thinking and reasoning_effort == "max" and msgs:
        out.append(REASONING_EFFORT_MAX)
    for i, m in enumerate(msgs):
        role, content = m.get("role"), m.get("content")
        if role == "system":
            out.append((content or "") + _system_extras(V4, m))
        elif role == "developer":
            if not content:
                raise ValueError(f"messages[{i}]: a developer message needs content")
            out.append(USER + content + _system_extras(V4, m))
        elif role == "user":
            blocks = m.get("blocks") or [{"type": "text", "content": content or ""}]
            parts = [
                b["content"] if b["type"] == "text" else f"<tool_result>{b['content']}</tool_result>" for b in blocks
            ]
            out.append(USER + "\n\n".join(parts))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + (content or ""))
        elif role == "assistant":
            after_task = i > 0 and msgs[i - 1].get("task") is not None
            out.append(_assistant(V4, m, thinking and not after_task and (not drop or i > last_user)))
        else:
            raise ValueError(f"messages[{i}]: unknown role {role!r}")
        if i + 1 < len(msgs) and msgs[i + 1].get("role") not in ("assistant", "latest_reminder"):
            continue
        think = THINK if thinking and (not drop or i >= last_user) else END_THINK
        task = m.get("task")
        if task is not None:
            if task not in TASK_TOKENS:
                raise ValueError(f"messages[{i}]: unknown task {task!r}")
            action = ASSISTANT + (THINK if thinking else END_THINK) + TASK_TOKENS[task]
            out.append(action if task == "action" else TASK_TOKENS[task])
        elif role in ("user", "developer"):
            out.append(ASSISTANT + think)
    return "".join(out)


def encode(
    dialect: Dialect, messages: list[dict[str, Any]], thinking: bool, reasoning_effort: str | None = None
) -> str:
    if dialect.name == "dsv32":
        return encode_v32(messages, thinking)
    return encode_v4(messages, thinking, reasoning_effort)


def attach(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, response_format: Any = None) -> list:
    """Tools (and a response_format) on the first system message, as DeepSeek's encoders take them; an empty
    system message is put first when there is none."""
    messages = [dict(m) for m in messages]
    if not tools and not response_format:
        return messages
    if not messages or messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": ""})
    if tools:
        messages[0]["tools"] = tools
    if response_format:
        messages[0]["response_format"] = response_format
    return messages


# ---------------------------------------------------------------------------------------------------------------
# parsing model output: content, then calls -> events ("content", text) | ("name", i, name) | ("args", i, text)


def partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of one of the markers."""
    best = 0
    for marker in markers:
        for k in range(min(len(text), len(marker) - 1), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def find_marker(text: str, markers: tuple[str, ...]) -> tuple[int, str]:
    """(position, marker) of the earliest marker in text; (-1, "") when none is there."""
    hits = [(text.find(m), m) for m in markers if m in text]
    return min(hits) if hits else (-1, "")


INVOKE, INVOKE_END = f"<{DSML}invoke", f"</{DSML}invoke>"
PARAM, PARAM_END = f"<{DSML}parameter", f"</{DSML}parameter>"


class DSMLParser:
    """feed(text) -> events; finish() -> the events of what was held back. Streaming-invariant: text that may
    still become (part of) a marker, and newlines that may be the blank line before the calls block, are held back,
    so the concatenated events do not depend on how the text is split. The arguments are built as DeepSeek's
    decoder builds them: `{"KEY": VALUE, ...}` in the order written, a string="true" value as a JSON string, any
    other value as written; they stream as they are written. Text after the calls block is dropped; a call cut off
    returns what was written of it."""

    def __init__(self, dialect: Dialect, max_calls: int | None = None):
        self.d, self.max_calls = dialect, max_calls
        self.state = "content"  # content, calls, invoke, params, param, value, after
        self.buf = ""
        self.calls = 0  # calls started
        self.count = 0  # parameters of the current call
        self.string = True  # the current value is a string (string="true")

    def feed(self, text: str) -> list[tuple]:
        self.buf += text
        out: list[tuple] = []
        while True:
            before = (self.state, len(self.buf))
            getattr(self, "_" + self.state)(out, final=False)
            if (self.state, len(self.buf)) == before:
                return [e for e in out if self._keep(e)]

    def finish(self) -> list[tuple]:
        out: list[tuple] = []
        getattr(self, "_" + self.state)(out, final=True)
        self.buf, self.state = "", "after"
        return [e for e in out if self._keep(e)]

    def _keep(self, event: tuple) -> bool:
        if event[0] == "content":
            return bool(event[1])
        return (self.max_calls is None or event[1] < self.max_calls) and (event[0] == "name" or bool(event[2]))

    def _content(self, out: list, final: bool) -> None:
        begin = self.d.calls_begin
        at = self.buf.find(begin)
        if at >= 0:
            out.append(("content", self.buf[:at].rstrip("\n")))  # the blank line before the block
            self.buf, self.state = self.buf[at + len(begin) :], "calls"
            return
        keep = 0 if final else partial_marker(self.buf, (begin,))
        text = self.buf[: len(self.buf) - keep]
        if not final:
            text = text.rstrip("\n")
        out.append(("content", text))
        self.buf = self.buf[len(text) :]

    def _calls(self, out: list, final: bool) -> None:
        at, marker = find_marker(self.buf, (INVOKE, self.d.calls_end))
        if at >= 0:
            self.buf = self.buf[at + len(marker) :]
            self.state = "invoke" if marker == INVOKE else "after"
        else:  # newlines between calls
            keep = 0 if final else partial_marker(self.buf, (INVOKE, self.d.calls_end))
            self.buf = self.buf[len(self.buf) - keep :]

    def _invoke(self, out: list, final: bool) -> None:
        """` name="NAME">` after <｜DSML｜invoke."""
        end = self.buf.find('">')
        if end < 0:
            if final and self.buf.strip():  # cut off in the name: a call without its name is dropped
                self.buf = ""
            return
        head = self.buf[:end].strip()
        name = head[len('name="') :] if head.startswith('name="') else head
        out.append(("name", self.calls, name))
        out.append(("args", self.calls, "{"))
        self.buf, self.state, self.count = self.buf[end + 2 :], "params", 0

    def _params(self, out: list, final: bool) -> None:
        at, marker = find_marker(self.buf, (PARAM, INVOKE_END))
        if at < 0:
            keep = 0 if final else partial_marker(self.buf, (PARAM, INVOKE_END))
            self.buf = self.buf[len(self.buf) - keep :]
            if final:
                self.calls += 1
            return
        self.buf = self.buf[at + len(marker) :]
        if marker == PARAM:
            self.state = "param"
        else:
            out.append(("args", self.calls, "}"))
            self.calls, self.state = self.calls + 1, "calls"

    def _param(self, out: list, final: bool) -> None:
        """` name="KEY" string="true|false">` after <｜DSML｜parameter."""
        end = self.buf.find(">")
        if end < 0:
            if final:
                self.calls += 1
            return
        head = self.buf[:end]
        name_at = head.find('name="')
        key = head[name_at + 6 : head.find('"', name_at + 6)] if name_at >= 0 else ""
        self.string = 'string="false"' not in head
        prefix = (", " if self.count else "") + _json(key) + ": " + ('"' if self.string else "")
        out.append(("args", self.calls, prefix))
        self.buf, self.state, self.count = self.buf[end + 1 :], "value", self.count + 1

    def _value(self, out: list, final: bool) -> None:
        end = self.buf.find(PARAM_END)
        raw = self.buf if end < 0 else self.buf[:end]
        if end < 0 and not final:
            raw = raw[: len(raw) - partial_marker(raw, (PARAM_END,))]
        out.append(("args", self.calls, _json(raw)[1:-1] if self.string else raw))
        if end >= 0:
            out.append(("args", self.calls, '"' if self.string else ""))
            self.buf, self.state = self.buf[end + len(PARAM_END) :], "params"
        else:
            self.buf = self.buf[len(raw) :]
            if final:
                self.calls += 1

    def _after(self, out: list, final: bool) -> None:
        self.buf = ""
