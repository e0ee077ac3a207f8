"""The engine's records: what it returns (Completion; StreamDelta while streaming) and what it tracks (a
GenerationRequest, the SequenceState of each of its samples, each one's Work in a step)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nanoseek.engine.sampling import SamplingParams


@dataclass
class Completion:
    """One generated sample: the engine's only result type."""

    token_ids: list[int]  # generated ids (without the EOS / stop token that ended generation)
    text: str
    # "stop" (EOS, stop token or stop string), "length" (max_tokens or context), "abort" (cancelled, or the step
    # failed), "error" (this sample alone failed, e.g. its stream callback raised; the others went on)
    finish_reason: str
    prompt_tokens: int
    prompt_cache_hit_tokens: int
    index: int = 0  # which of the request's n samples
    logprobs: list[float] | None = None

    @property
    def prompt_cache_miss_tokens(self) -> int:
        return self.prompt_tokens - self.prompt_cache_hit_tokens


@dataclass
class StreamDelta:
    """New output of one sample since the last delta (what a streaming client receives)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    completion: Completion | None = None  # set on the last delta
    logprob: float | None = None  # of the token in token_ids, when the request asked for logprobs


class GenerationRequest:
    def __init__(
        self,
        request_id: int,
        prompt: list[int],
        params: SamplingParams,
        on_delta: Callable[[StreamDelta], None] | None = None,
    ):
        self.id, self.prompt, self.params, self.on_delta = request_id, prompt, params, on_delta
        self.completions: list[Completion | None] = [None] * params.n
        self.done = threading.Event()
        self.cancelled = False
        self.grammar = None  # the compiled constraint (a grammar.Matcher each sequence copies), if there is one
        self.arrival = time.perf_counter()

    def cancel(self) -> None:
        """Stop generating; the engine frees the request's cache at its next step."""
        self.cancelled = True

    def finished(self) -> bool:
        return all(c is not None for c in self.completions)


@dataclass
class SequenceState:
    request: GenerationRequest
    index: int
    tokens: list[int]  # prompt + generated; all but possibly the last have their latents in the cache
    generator: torch.Generator
    decoder: object | None
    num_cached: int = 0
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # prefix hashes of the registered full blocks
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text already streamed
    hit_tokens: int = 0
    finish_reason: str | None = None
    forked: bool = False  # n > 1: siblings are created once the prompt is processed
    speculate: bool = False  # draft with the MTP module and verify (n == 1 requests of an MTP model)
    draft: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None  # the draft distribution, when sampling (for the acceptance test)
    grammar: object | None = None  # a grammar.Matcher: where a constrained sequence stands in its grammar

    @property
    def salt(self) -> bytes:
        """Prefix-cache namespace: the request's own (one user's requests never reuse another's cached prompt,
        as DeepSeek isolates users), and blocks of speculating sequences also hold the MTP layer's entries."""
        return (b"mtp" if self.speculate else b"") + self.request.params.cache_salt


@dataclass
class Work:
    """What one sequence feeds to a step: its uncached tokens, then its draft tokens."""

    seq: SequenceState
    start: int  # position of the first fed token
    fed: list[int]
    draft: list[int]
    completes: bool  # reaches the end of the sequence's known tokens, so its logits decide new tokens
    row: int = 0  # first row of this work in the step's flat batch
    valid: int = 0  # fed rows that turned out part of the sequence (drafts past the first rejection are not)
