"""Tool calls in DeepSeek's chat formats: which format a checkpoint speaks, the tool description its prompt needs,
and a streaming parser from model output to OpenAI `tool_calls`.

Formats (where each is specified):
- "v3" (DeepSeek-V3, V3-0324, R1, R1-0528, R1-Distill): the `chat_template` in each checkpoint's
  tokenizer_config.json on huggingface.co/deepseek-ai renders a call as
  `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>`, calls joined by "\\n"
  inside `<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>`, results as
  `<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>RESULT<｜tool▁output▁end｜>...<｜tool▁outputs▁end｜>`.
  nanoseek's own template (nanoseek/tokenizer.py) writes calls and results this way too.
- "v31" (DeepSeek-V3.1, V3.1-Terminus): huggingface.co/deepseek-ai/DeepSeek-V3.1 (model card, "ToolCall", and its
  tokenizer_config.json): `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`, calls chained without
  separators, each result `<｜tool▁output▁begin｜>RESULT<｜tool▁output▁end｜>`.
Neither official template renders the `tools` list: the V3.1 model card gives the tool description block that
goes after the system prompt (`{system}\\n\\n{tool_description}`); `tool_description` writes it (for "v3" with that
format's call shape) and the server appends it as a system message when a checkpoint's template ignores `tools`.
- "dsv32" / "dsv4" (DeepSeek-V3.2, V4): the DSML format (`<｜DSML｜function_calls>` / `<｜DSML｜tool_calls>` blocks
  of `<｜DSML｜invoke name=...>` with `<｜DSML｜parameter ...>`), which DeepSeek specifies as Python; nanoseek/dsml.py
  renders whole prompts in it (tool block included) and parses it. A checkpoint speaks it when its vocabulary has
  the `｜DSML｜` token (`dsml.detect`); the server then renders with nanoseek/dsml.py instead of the chat template.

The parser is streaming-invariant: `feed` holds back any text that could still turn out to be (part of) a marker
or of the junk around arguments (the ```json fence, whitespace), so the concatenated events equal those of the
whole text at once however it is split. Text before the calls is content; text after `<｜tool▁calls▁end｜>` is
dropped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from nanoseek import dsml

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
OUTPUTS_BEGIN, OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
OUTPUT_BEGIN, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
MARKERS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP, OUTPUTS_BEGIN, OUTPUTS_END, OUTPUT_BEGIN, OUTPUT_END)
FENCE = "```json"


@dataclass(frozen=True)
class ToolFormat:
    name: str  # "v3", "v31", "dsv32" or "dsv4"

    @property
    def dialect(self) -> dsml.Dialect | None:
        """The DSML dialect (V3.2, V4), None for the earlier formats."""
        return dsml.DIALECTS.get(self.name)

    def call(self, name: str, arguments: str) -> str:
        """One call as the model writes it."""
        if self.dialect is not None:
            return self.calls([(name, arguments)])
        if self.name == "v3":
            return f"{CALL_BEGIN}function{SEP}{name}\n{FENCE}\n{arguments}\n```{CALL_END}"
        return f"{CALL_BEGIN}{name}{SEP}{arguments}{CALL_END}"

    def calls(self, calls: list[tuple[str, str]]) -> str:
        if self.dialect is not None:
            return self.dialect.calls(calls)
        joiner = "\n" if self.name == "v3" else ""
        return CALLS_BEGIN + joiner.join(self.call(n, a) for n, a in calls) + CALLS_END

    def opening(self, name: str | None) -> str:
        """Output text that starts a call (of `name`, if given): what a forced tool_choice puts after the prompt."""
        if self.dialect is not None:
            return self.dialect.opening(name)
        if name is None:
            return CALLS_BEGIN + CALL_BEGIN + ("function" + SEP if self.name == "v3" else "")
        if self.name == "v3":
            return f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}{name}\n{FENCE}\n"
        return f"{CALLS_BEGIN}{CALL_BEGIN}{name}{SEP}"


V3, V31 = ToolFormat("v3"), ToolFormat("v31")
DSV32, DSV4 = ToolFormat("dsv32"), ToolFormat("dsv4")
DSML_FORMATS = {"dsv32": DSV32, "dsv4": DSV4}


def detect_format(template: str) -> ToolFormat:
    """The tool format a chat template writes: V3.1's puts the name before <｜tool▁sep｜>; V3/R1's (and nanoseek's,
    and a template without tool calls) the type."""
    if "['name'] + '<｜tool▁sep｜>'" in template or "name + '<｜tool▁sep｜>'" in template:
        return V31
    return V3


def template_renders_tools(template: str) -> bool:
    """Whether a chat template writes the `tools` list itself (nanoseek's does; DeepSeek's official ones do not)."""
    return "tools" in template.replace("tool_calls", "").replace("is_tool", "")


def tool_description(fmt: ToolFormat, tools: list[dict[str, Any]]) -> str:
    """The tool block of the system prompt, as DeepSeek-V3.1's model card specifies it (for "v3": the same text
    with V3's call shape)."""
    parts = ["## Tools\nYou have access to the following tools:\n"]
    for tool in tools:
        f = tool["function"]
        parameters = json.dumps(f.get("parameters") or {}, ensure_ascii=False)
        parts.append(f"\n### {f['name']}\nDescription: {f.get('description') or ''}\n\nParameters: {parameters}\n")
    if fmt.name == "v3":
        shape = f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}tool_call_name\n{FENCE}\ntool_call_arguments\n```{CALL_END}"
        chain = "- For multiple tool calls, chain them with a newline as separator"
    else:
        shape = f"{CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}"
        chain = "- For multiple tool calls, chain them directly without separators or spaces"
    parts.append(
        f"\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n{shape}{{additional_tool_calls}}{CALLS_END}"
        "\n\nWhere:\n- `tool_call_name` must be an exact match to one of the available tools\n"
        "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n" + chain
    )
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# parsing

Event = tuple  # ("content", text) | ("name", index, name) | ("args", index, text)


class ToolCallParser:
    """feed(text) -> events; finish() -> the events of what was held back. `max_calls` (1 for
    parallel_tool_calls=false) drops later calls. DSML formats are parsed by nanoseek/dsml.py's DSMLParser."""

    def __init__(self, fmt: ToolFormat, max_calls: int | None = None):
        self.fmt, self.max_calls = fmt, max_calls
        self.dsml = dsml.DSMLParser(fmt.dialect, max_calls) if fmt.dialect is not None else None
        self.state = "content"  # content, calls, header, args, after
        self.buf = ""
        self.calls = 0  # calls started
        self.sent = ""  # argument text sent for the current call

    def feed(self, text: str) -> list[Event]:
        if self.dsml is not None:
            return self.dsml.feed(text)
        self.buf += text
        out: list[Event] = []
        while True:
            before = (self.state, len(self.buf))
            getattr(self, "_" + self.state)(out, final=False)
            if (self.state, len(self.buf)) == before:
                return [e for e in out if self._keep(e)]

    def finish(self) -> list[Event]:
        if self.dsml is not None:
            return self.dsml.finish()
        out: list[Event] = []
        getattr(self, "_" + self.state)(out, final=True)
        self.buf, self.state = "", "after"
        return [e for e in out if self._keep(e)]

    def _keep(self, event: Event) -> bool:
        if event[0] == "content":
            return bool(event[1])
        return (self.max_calls is None or event[1] < self.max_calls) and (event[0] == "name" or bool(event[2]))

    def _content(self, out: list[Event], final: bool) -> None:
        at, marker = dsml.find_marker(self.buf, (CALLS_BEGIN, CALL_BEGIN))
        if at >= 0:
            out.append(("content", self.buf[:at]))
            self.buf = self.buf[at + len(marker) :]
            self.state = "calls" if marker == CALLS_BEGIN else "header"
            return
        keep = 0 if final else dsml.partial_marker(self.buf, (CALLS_BEGIN, CALL_BEGIN))
        out.append(("content", self.buf[: len(self.buf) - keep]))
        self.buf = self.buf[len(self.buf) - keep :]

    def _calls(self, out: list[Event], final: bool) -> None:
        at, marker = dsml.find_marker(self.buf, (CALL_BEGIN, CALLS_END))
        if at >= 0:
            self.buf = self.buf[at + len(marker) :]
            self.state = "header" if marker == CALL_BEGIN else "after"
        else:  # text between calls (V3's newline) is dropped
            keep = 0 if final else dsml.partial_marker(self.buf, (CALL_BEGIN, CALLS_END))
            self.buf = self.buf[len(self.buf) - keep :]

    def _header(self, out: list[Event], final: bool) -> None:
        end = self.buf.find(CALL_END)
        head = self.buf if end < 0 else self.buf[:end]
        sep = head.find(SEP)
        if self.fmt.name == "v3":
            newline = head.find("\n", sep + len(SEP)) if sep >= 0 else -1
            if newline >= 0:
                name, rest = head[sep + len(SEP) : newline], len(head[: newline + 1])
            elif sep >= 0 and (end >= 0 or final):
                name, rest = head[sep + len(SEP) :], len(head)
            else:
                return self._drop_unfinished(final)
        elif sep >= 0:
            name, rest = head[:sep], sep + len(SEP)
        elif end >= 0 or final:
            name, rest = head, len(head)
        else:
            return None
        out.append(("name", self.calls, name.strip()))
        self.buf, self.state, self.sent = self.buf[rest:], "args", ""

    def _drop_unfinished(self, final: bool) -> None:
        if final or CALL_END in self.buf:  # a call without a name: skipped
            end = self.buf.find(CALL_END)
            self.buf = "" if end < 0 else self.buf[end + len(CALL_END) :]
            self.state = "calls"

    def _args(self, out: list[Event], final: bool) -> None:
        end = self.buf.find(CALL_END)
        raw = self.buf if end < 0 else self.buf[:end]
        text = self._clean(raw, final=final or end >= 0)
        if text is not None and text.startswith(self.sent):
            out.append(("args", self.calls, text[len(self.sent) :]))
            self.sent = text
        if end >= 0:
            self.buf, self.state = self.buf[end + len(CALL_END) :], "calls"
            self.calls += 1
        elif final:
            self.calls += 1

    def _clean(self, raw: str, final: bool) -> str | None:
        """The arguments in `raw`, without the fence and surrounding whitespace; while streaming, without the
        tail that may still become junk (None: nothing is certain yet)."""
        text = raw.lstrip()
        if self.fmt.name == "v3":
            if not final and FENCE.startswith(text):
                return None
            if text.startswith(FENCE):
                text = text[len(FENCE) :].lstrip()
            elif text.startswith("```"):
                text = text[3:].lstrip()
        if not final:
            text = text[: len(text) - dsml.partial_marker(text, (CALL_END,))].rstrip()
            if self.fmt.name == "v3":  # up to three backticks may be the closing fence
                ticks = min(3, len(text) - len(text.rstrip("`")))
                text = text[: len(text) - ticks].rstrip()
            return text
        text = text.rstrip()
        if self.fmt.name == "v3" and text.endswith("```"):
            text = text[:-3].rstrip()
        return text

    def _after(self, out: list[Event], final: bool) -> None:
        self.buf = ""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def collect_calls(events: list[Event]) -> tuple[str, list[dict[str, Any]]]:
    """(content, OpenAI tool_calls) from a whole output's events."""
    content, calls = "", {}
    for event in events:
        if event[0] == "content":
            content += event[1]
        elif event[0] == "name":
            calls[event[1]] = {"id": new_call_id(), "type": "function", "function": {"name": event[2], "arguments": ""}}
        else:
            calls[event[1]]["function"]["arguments"] += event[2]
    return content, [calls[i] for i in sorted(calls)]
