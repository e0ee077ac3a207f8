"""API request -> prompt and sampling parameters: the chat template (with the check that no message forges a
turn), options this server refuses, and tokenizing off the event loop."""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

from nanoseek.engine.sampling import SamplingParams
from nanoseek.server.jobs import ServerConfig
from nanoseek.server.schemas import MAX_PROMPTS, APIError, ChatCompletionRequest, CompletionRequest

JSON_HINT = "Reply with one valid JSON object and nothing else."
# Sampling guards (the engine computes in float32): a temperature this small is greedy (as in vLLM; dividing
# logits by 1e-38 overflows), and a top_p below 1e-6 (which would round to 0 and drop every token) keeps only the
# most likely token, which is what any top_p below its probability means.
GREEDY_BELOW = 1e-5
MIN_TOP_P = 1e-6


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


def render_chat(tokenizer: Any, body: ChatCompletionRequest) -> str:
    if tokenizer is None:
        raise APIError(400, "this checkpoint has no tokenizer, so it cannot serve chat; use /v1/completions with ids")
    if body.tools:
        raise APIError(400, "tools (function calling) are not supported by this server", param="tools")
    markers = control_tokens(tokenizer)
    messages = []
    for i, message in enumerate(body.messages):
        if message.content is None and message.role != "assistant":
            raise APIError(
                400,
                f"messages[{i}].content must not be null in a {message.role} message",
                param=f"messages[{i}].content",
                code="invalid_content",
            )
        text = message.text()
        for marker in markers:
            if marker in text and not (message.role == "assistant" and marker in REASONING_MARKERS):
                raise APIError(
                    400,
                    f"messages[{i}].content contains {marker!r}, which this model's tokenizer or chat template "
                    "uses as a control marker; remove it (a message cannot start a new turn)",
                    param=f"messages[{i}].content",
                    code="invalid_content",
                )
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    if body.response_format is not None and body.response_format.type == "json_object":
        messages.append({"role": "system", "content": JSON_HINT})  # the template joins every system message
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None


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


def sampling_params(body: Any, max_tokens: int | None, config: ServerConfig, logprobs: bool) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    if config.max_tokens_cap and max_tokens is not None:  # (without max_tokens: Server._cap, per prompt)
        max_tokens = min(max_tokens, config.max_tokens_cap)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    check_unsupported(body)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),
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


async def encode(engine: Any, prompts: list[str | list[int]]) -> list[list[int]]:
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
    if body.suffix:
        raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of must equal n here (every sample is returned)", param="best_of")
    if body.logprobs:
        raise APIError(400, "logprobs > 0 (top alternatives) is not supported; logprobs=0 gives the chosen tokens'")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not computed)", param="echo")


def prompt_text(engine: Any, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return engine.tokenizer.decode(prompt) if engine.tokenizer is not None else ""
