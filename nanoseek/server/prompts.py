"""API request -> prompt and sampling parameters: the chat template (with the check that no message forges a
turn), options this server refuses, and tokenizing off the event loop."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from nanoseek import dsml
from nanoseek.engine.sampling import MIN_TOP_P, SamplingParams
from nanoseek.server.constraints import Constraint
from nanoseek.server.jobs import ServedEngine, ServerConfig
from nanoseek.server.reasoning import prompt_opens_reasoning
from nanoseek.server.schemas import MAX_PROMPTS, APIError, ChatCompletionRequest, CompletionRequest
from nanoseek.server.tools import (
    DSML_FORMATS,
    ToolFormat,
    detect_format,
    template_renders_tools,
    tool_description,
)
from nanoseek.server.tools import MARKERS as TOOL_MARKERS

JSON_HINT = "Reply with one valid JSON object and nothing else."


REASONING_MARKERS = ("<think>", "</think>")  # allowed in assistant content: the template drops the reasoning
_PROBE = "\ue000{}\ue000"  # private-use sentinels around probe messages


@functools.lru_cache(maxsize=8)
def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Text no message may contain, since it would forge a turn: every added token of the tokenizer, special or
    not (R1-Distill's tokenizer adds <｜User｜> and <｜Assistant｜> without marking them special, yet they encode
    as the role ids), and the tag-like markers the chat template writes around messages (found by rendering a
    probe conversation), in case a template's markers are not tokens at all."""
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        found = {t.content for t in hf.get_added_tokens_decoder().values() if t.content}
    else:
        from nanoseek.tokenizer import ADDED_TOKENS

        found = set(ADDED_TOKENS)
    return tuple(sorted(found | _template_markers(tokenizer), key=len, reverse=True))


def _template_markers(tokenizer: Any) -> set[str]:
    probes = [("system", "s"), ("user", "u"), ("assistant", "a"), ("user", "v")]
    for messages in (probes, probes[1:]):  # some templates refuse a system message
        try:
            text = tokenizer.apply_chat_template(
                [{"role": r, "content": _PROBE.format(c)} for r, c in messages], add_generation_prompt=True
            )
        except Exception:  # a template that cannot render the probe: its added tokens still apply
            continue
        between = re.sub("\ue000[a-z]\ue000", "\n", text)
        return set(re.findall(r"<[^<>\s]{1,64}>|\[/?[A-Z_]{2,16}\]", between))
    return set()


RESERVED_KWARGS = {
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "keep_reasoning",
    "bos_token",
    "eos_token",
    "pad_token",
    "thinking",
    "enable_thinking",
}  # set by the server, not by a client
TEMPLATE_KWARGS_THINKING = ("thinking", "enable_thinking")  # vLLM/SGLang's chat_template_kwargs switches


@dataclass
class ChatPrompt:
    """A chat request rendered for the engine, with what reading its output needs."""

    text: str
    thinking: bool  # reasoning is returned (False: the prompt closed the think block, all output is content)
    opened: bool  # the output starts inside a think block
    tool_format: ToolFormat | None = None  # parse tool calls (None: no tools, or tool_choice "none")
    prefill: str = ""  # output text the prompt already holds (a forced tool call's opening), parsed first
    max_calls: int | None = None  # 1 with parallel_tool_calls=false
    constraint: Constraint | None = None  # what constrained decoding must enforce (see constraints.py)


def resolve_thinking(body: ChatCompletionRequest) -> bool:
    """DeepSeek's `thinking` wins, then reasoning_effort "none", then chat_template_kwargs; default on."""
    if body.thinking is not None:
        return body.thinking.type == "enabled"
    if body.reasoning_effort == "none":
        return False
    for key in TEMPLATE_KWARGS_THINKING:
        value = (body.chat_template_kwargs or {}).get(key)
        if value is not None:
            if not isinstance(value, bool):
                raise APIError(400, f"chat_template_kwargs.{key} must be a boolean", param="chat_template_kwargs")
            return value
    return True


def _template_kwargs(body: ChatCompletionRequest, thinking: bool) -> dict[str, Any]:
    extra = dict(body.chat_template_kwargs or {})
    for key in extra:
        if key in RESERVED_KWARGS - set(TEMPLATE_KWARGS_THINKING):
            raise APIError(
                400, f"chat_template_kwargs may not set {key!r}", param="chat_template_kwargs", code="invalid_value"
            )
    return {**extra, "thinking": thinking, "enable_thinking": thinking}


def _check_text(text: str, markers: tuple[str, ...], param: str, allowed: tuple[str, ...] = ()) -> None:
    for marker in markers:
        if marker in text and marker not in allowed:
            raise APIError(
                400,
                f"{param} contains {marker!r}, which this model's tokenizer or chat template uses as a control "
                "marker; remove it (a message cannot start a new turn)",
                param=param,
                code="invalid_content",
            )


def _tool_turns(messages: list[Any]) -> set[int]:
    """Indices of the assistant messages in a user turn that called tools: DeepSeek's API keeps their
    reasoning_content in the context (api-docs.deepseek.com/guides/thinking_mode, "tool calls"); the reasoning of
    other turns is dropped."""
    keep, turn = set(), []
    for i, m in enumerate([*messages, None]):
        if m is None or m.role == "user":
            if any(messages[j].tool_calls for j in turn):
                keep.update(turn)
            turn = []
        elif m.role == "assistant":
            turn.append(i)
    return keep


def _messages(body: ChatCompletionRequest, markers: tuple[str, ...]) -> list[dict[str, Any]]:
    keep_reasoning = _tool_turns(body.messages)
    out = []
    for i, message in enumerate(body.messages):
        where = body.where(i)
        if message.content is None and not (message.role == "assistant"):
            raise APIError(
                400,
                f"{where}.content must not be null in a {message.role} message",
                param=f"{where}.content",
                code="invalid_content",
            )
        if message.prefix and (message.role != "assistant" or i != len(body.messages) - 1):
            raise APIError(
                400,
                "only the last message may have prefix: true, and it must be an assistant one",
                param=f"{where}.prefix",
            )
        if message.role == "tool" and (
            i == 0
            or body.messages[i - 1].role not in ("assistant", "tool")
            or (body.messages[i - 1].role == "assistant" and not body.messages[i - 1].tool_calls)
        ):
            raise APIError(
                400, f"{where}: a tool message must answer an assistant message's tool_calls", param=f"{where}.role"
            )
        if message.tool_calls and message.role != "assistant":
            raise APIError(400, f"{where}: only assistant messages carry tool_calls", param=f"{where}.tool_calls")
        text = message.text()
        _check_text(text, markers, f"{where}.content", REASONING_MARKERS if message.role == "assistant" else ())
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": text}
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            calls = []
            for j, call in enumerate(message.tool_calls):
                args = call.function.arguments
                args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
                _check_text(args, markers, f"{where}.tool_calls[{j}].function.arguments")
                calls.append(
                    {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": args}}
                )
            item["tool_calls"] = calls
        if message.reasoning_content is not None and (i in keep_reasoning or message.prefix):
            _check_text(message.reasoning_content, markers, f"{where}.reasoning_content")
            item["reasoning_content"] = message.reasoning_content
        out.append(item)
    return out


def _tools(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], str | None]:
    """(tool definitions to show the model, the forced tool's name, "" for any: required)."""
    choice = body.tool_choice
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tools must have distinct function names", param="tools")
    if choice is None or choice == "none" or choice == "auto":
        return ([] if choice == "none" else tools), None
    if not tools:
        raise APIError(400, "tool_choice requires tools", param="tool_choice")
    if choice == "required":
        return tools, ""
    if choice.function.name not in names:
        raise APIError(
            400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice.function"
        )
    return [t for t in tools if t["function"]["name"] == choice.function.name], choice.function.name


def close_think(prompt: str) -> str:
    """The prompt with an open think block closed (thinking disabled), as R1's format writes an empty one."""
    if prompt.endswith("<think>\n"):
        return prompt + "\n</think>\n\n"
    if prompt.endswith("<think>"):
        return prompt + "\n\n</think>\n\n"
    return prompt


def render_chat(tokenizer: Any, body: ChatCompletionRequest) -> ChatPrompt:
    if tokenizer is None:
        raise APIError(400, "this checkpoint has no tokenizer, so it cannot serve chat; use /v1/completions with ids")
    thinking = resolve_thinking(body)
    kwargs = _template_kwargs(body, thinking)
    tools, forced = _tools(body)
    markers = tuple(dict.fromkeys((*control_tokens(tokenizer), *TOOL_MARKERS)))
    _check_text(json.dumps(tools, ensure_ascii=False), markers, "tools")
    messages = _messages(body, markers)
    prefix = messages.pop() if body.messages[-1].prefix else None
    if prefix is not None and forced is not None:
        raise APIError(400, "a prefix message cannot be combined with a forced tool_choice", param="tool_choice")
    json_format = body.response_format if body.response_format and body.response_format.type != "text" else None
    if prefix is not None and json_format is not None:  # the grammar would start over in the middle of the text
        raise APIError(400, "a prefix message cannot be combined with a JSON response_format", param="response_format")
    dialect = dsml.detect(tokenizer)
    if dialect is not None:  # DeepSeek-V3.2/V4: the encoding is Python (nanoseek/dsml.py), not the chat template
        if dsml.DSML in json.dumps(messages, ensure_ascii=False):
            raise APIError(400, f"messages contain {dsml.DSML!r}, a control marker of this model", param="messages")
        fmt = DSML_FORMATS[dialect.name] if tools else None
        # thinking off (or a forced call, or a prefix without reasoning): rendered in "chat" mode, the think
        # block closed by the format itself
        thinking = thinking and forced is None and (prefix is None or prefix.get("reasoning_content") is not None)
        form = json_format.model_dump(exclude_none=True, by_alias=True) if json_format is not None else None
        try:
            text = dsml.encode(dialect, dsml.attach(messages, tools, form), thinking, body.reasoning_effort)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
    else:
        text, thinking, fmt = _render_template(tokenizer, messages, tools, json_format, kwargs, thinking, forced)
    prompt = ChatPrompt(text, thinking, prompt_opens_reasoning(text) and thinking, fmt)
    if body.parallel_tool_calls is False:
        prompt.max_calls = 1
    if forced is not None and fmt is not None:
        # The opening of the call is written into the prompt: the model goes on with the arguments, which
        # constrained decoding keeps valid against the function's schema, then the call's end.
        prompt.prefill = fmt.opening(forced or None)
        prompt.text += prompt.prefill
        prompt.constraint = Constraint("tool_call", tools=tools, tool_format=fmt.name, name=forced or None)
    elif json_format is not None:
        # a reasoning model thinks first (free text up to </think>), then writes the JSON, as deepseek-reasoner does
        spec = json_format.json_schema
        schema = (spec.schema_ or {}) if spec is not None else None
        strict = bool(spec is not None and spec.strict)
        prompt.constraint = Constraint(json_format.type, schema, strict=strict, reasoning=prompt.opened)
    if prefix is not None:
        _continue(prompt, prefix, "</think>" if dialect is not None else "\n</think>\n\n")
    return prompt


def _render_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    json_format: Any,
    kwargs: dict[str, Any],
    thinking: bool,
    forced: str | None,
) -> tuple[str, bool, ToolFormat | None]:
    """(prompt, thinking, tool format) with the checkpoint's chat template."""
    template = getattr(tokenizer, "chat_template", "") or ""
    fmt = detect_format(template) if tools else None
    if tools and not template_renders_tools(template):  # DeepSeek's templates leave the tool block to the caller
        messages.append({"role": "system", "content": tool_description(fmt, tools)})
    if json_format is not None and json_format.type == "json_object":
        messages.append({"role": "system", "content": JSON_HINT})  # the template joins every system message
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools or None, **kwargs)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    except TypeError:  # a tokenizer without tools/kwargs (a test stub)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if not thinking or forced is not None:
        text, thinking = close_think(text), False
    return text, thinking, fmt


def _continue(prompt: ChatPrompt, prefix: dict[str, Any], end_think: str) -> None:
    """Chat prefix completion: the output continues the last assistant message (its reasoning, when thinking)."""
    reasoning, content = prefix.get("reasoning_content"), prefix.get("content") or ""
    if prompt.opened and reasoning is not None:
        prompt.text += reasoning
        if content:
            prompt.text += end_think + content
            prompt.opened = False
        return
    if prompt.opened:
        prompt.text, prompt.opened, prompt.thinking = close_think(prompt.text), False, False
    prompt.text += content


def check_unsupported(body: Any) -> None:
    """Options this server does not implement are refused, never silently ignored; their neutral values (what
    clients send by default) are accepted."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise APIError(
                400,
                f"{name} is not supported by this server; send 0 or leave it out",
                param=name,
                code="unsupported_parameter",
            )
    for key in body.logit_bias or {}:
        if not key.isdigit():
            raise APIError(
                400,
                f"logit_bias keys must be token ids (integers as strings), got {key!r}",
                param="logit_bias",
                code="invalid_value",
            )
    if body.logit_bias:
        raise APIError(
            400, "logit_bias is not supported by this server", param="logit_bias", code="unsupported_parameter"
        )


def params_from_request(body: Any, max_tokens: int | None, config: ServerConfig, logprobs: bool) -> SamplingParams:
    """An OpenAI/Anthropic request body's sampling fields as the engine's SamplingParams (400 if invalid)."""
    if config.max_tokens_cap and max_tokens is not None:  # (without max_tokens: Server._cap, per prompt)
        max_tokens = min(max_tokens, config.max_tokens_cap)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    check_unsupported(body)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,  # below GREEDY_BELOW: greedy
            top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),  # top_p 0: the likeliest token
            top_k=body.top_k or 0,
            min_p=body.min_p or 0.0,
            seed=body.seed,
            stop=stop,
            n=body.n,
            logprobs=logprobs,
            ignore_eos=body.ignore_eos,
        )
    except ValueError as e:
        raise APIError(400, str(e)) from None


async def encode(engine: ServedEngine, prompts: list[str | list[int]]) -> list[list[int]]:
    """Token ids of every prompt, computed in a worker thread: tokenizing long or many prompts must not stall the
    event loop that serves everyone else."""

    def run() -> list[list[int]]:
        try:
            return [engine.encode(p) for p in prompts]
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None

    return await asyncio.to_thread(run)


def completion_prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be an empty list", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    if len(prompt) > MAX_PROMPTS:
        raise APIError(
            400,
            f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}; send them in several requests",
            param="prompt",
            code="too_many_prompts",
        )
    if any(isinstance(p, list) and not p for p in prompt):
        raise APIError(400, "token-id prompts must not be empty", param="prompt")
    return list(prompt)


def check_text_options(body: CompletionRequest) -> None:
    if body.suffix is not None and body.echo:
        raise APIError(400, "echo cannot be combined with suffix (fill-in-the-middle)", param="echo")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of must equal n here (every sample is returned)", param="best_of")
    if body.logprobs:
        raise APIError(400, "logprobs > 0 (top alternatives) is not supported; logprobs=0 gives the chosen tokens'")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not computed)", param="echo")


FIM_TOKENS = ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")  # DeepSeek-Coder/V2/V3's FIM tokens


def fim_prompts(tokenizer: Any, prompts: list[str | list[int]], suffix: str | None) -> list[str | list[int]]:
    """Fill in the middle: `<｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>` (prefix-suffix-middle, as
    DeepSeek-Coder's README and DeepSeek's /beta/completions use it); the output is the middle."""
    if suffix is None:
        return prompts
    if tokenizer is None or any(tokenizer.token_to_id(t) is None for t in FIM_TOKENS):
        raise APIError(
            400,
            "suffix (fill-in-the-middle) needs a tokenizer with the FIM tokens "
            f"{', '.join(FIM_TOKENS)}; this model's has none",
            param="suffix",
            code="unsupported_parameter",
        )
    if any(not isinstance(p, str) for p in prompts):
        raise APIError(400, "suffix needs text prompts, not token ids", param="prompt")
    begin, hole, end = FIM_TOKENS
    return [f"{begin}{p}{hole}{suffix}{end}" for p in prompts]


def prompt_text(engine: ServedEngine, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return engine.tokenizer.decode(prompt) if engine.tokenizer is not None else ""
