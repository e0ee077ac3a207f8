"""The generation engine: continuous batching over the paged cache, for every model family. Every consumer uses
it (server, chat, evaluation, GRPO rollouts, teacher traces).

One step = one forward pass over a flat batch of new tokens from many sequences. Prefill and decode are the same
operation: a sequence contributes its uncached tokens (a prompt chunk, or the one token it sampled last), and if
that reaches its end, the step's logits give its next token. New requests join between steps; finished ones leave
at once and free their cache blocks.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable

import torch

from nanoseek.engine.cache import CacheFull, PagedLatentCache, Segment
from nanoseek.engine.cache_v4 import V4Cache
from nanoseek.engine.grammar import GrammarCompiler, mask_logits
from nanoseek.engine.records import Completion, GenerationRequest, SequenceState, StreamDelta, Work
from nanoseek.engine.sampling import SamplingParams, make_generator, sample, undecodable_ids
from nanoseek.engine.speculative import propose, verify
from nanoseek.engine.step import build_decode_step
from nanoseek.model import DeepseekV3ForCausalLM

# The default cache's memory cap. Released models declare 128k+ contexts: four of them would need 64 GB of cache
# for an 8B Llama; 2 GiB holds 16k tokens of it (74k of the 1.5B Qwen, 30k of DeepSeek-V3's latents).
DEFAULT_CACHE_BYTES = 2 * 1024**3


class Engine:
    """Batched generation for one model. `generate()` for batches; `submit()` + a background loop for servers."""

    def __init__(
        self,
        model: DeepseekV3ForCausalLM,
        tokenizer: object | None = None,
        *,
        max_running: int = 64,
        max_step_tokens: int = 512,
        cache_tokens: int | None = None,
        block_size: int = 16,
        cache_dtype: torch.dtype | None = None,
        max_context: int | None = None,
        speculative: bool = False,
        decode_step: str = "eager",
    ):
        """decode_step: "compiled" runs decode steps as one compiled static graph (step.py; about a minute to compile
        per batch bucket the first time), "static" the same graph uncompiled (tests), "eager" the ordinary path."""
        if speculative and model.config.num_nextn_predict_layers == 0:
            raise ValueError("speculative decoding drafts with the MTP module, and this model has none")
        self.speculative = speculative
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.device = next(model.parameters()).device
        self.max_running, self.max_step_tokens = max_running, max_step_tokens
        self.max_context = max_context or config.max_position_embeddings
        cache_dtype = cache_dtype or next(model.parameters()).dtype
        if config.is_v4:  # windows, compressed entries and compressor rows: engine/cache_v4.py
            self.cache = V4Cache.for_engine(config, self, cache_tokens, block_size, cache_dtype, decode_step)
        else:
            if cache_tokens is None:  # four full contexts, at least 16k tokens, at most DEFAULT_CACHE_BYTES
                per_token = config.cache_spec.bytes_per_token(cache_dtype.itemsize)
                cache_tokens = max(16 * 1024, min(4 * self.max_context, DEFAULT_CACHE_BYTES // per_token))
            num_blocks = -(-cache_tokens // block_size) + 1
            self.cache = PagedLatentCache.for_model(config, num_blocks, block_size, cache_dtype, self.device)
        self.eos_ids = _as_list(config.eos_token_id)
        # ids the model can emit but its tokenizer cannot decode (DeepSeek-V3 and Qwen2.5 pad the embedding past
        # the tokenizer): their logits are masked for every choice (sampled, greedy, drafted), so none is ever made
        self.undecodable = undecodable_ids(tokenizer, config.vocab_size, self.device)
        self.grammars = GrammarCompiler(tokenizer, config.vocab_size, self.eos_ids)  # constrained decoding
        self.fast, self.decode_step = build_decode_step(
            decode_step, model, self.cache, self.undecodable, self.speculative
        )
        self.waiting: list[GenerationRequest] = []
        self.running: list[SequenceState] = []
        self._ids = itertools.count()
        self._inbox: queue.Queue[GenerationRequest] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self.stats = {
            "steps": 0,
            "prompt_tokens": 0,
            "cache_hit_tokens": 0,
            "generated_tokens": 0,
            "preempted": 0,
            "drafted": 0,
            "accepted": 0,
            "static_steps": 0,
        }

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: torch.dtype | None = None,
        device: str | None = None,
        quantize: str | None = None,
        **kwargs,
    ) -> Engine:
        """Load a checkpoint directory (or hub id) with its tokenizer. quantize="int8": see engine/quant.py."""
        from nanoseek.checkpoint import from_pretrained, resolve_model_path
        from nanoseek.runtime import resolve_device

        path = str(resolve_model_path(path))
        model = from_pretrained(path, dtype=dtype, device=None if device is None else resolve_device(device))
        if quantize == "int8":
            from nanoseek.engine.quant import quantize_int8

            quantize_int8(model)
        elif quantize is not None:
            raise ValueError(f"unknown quantize={quantize!r}; choose int8 or leave it unset")
        return cls(model, _load_tokenizer(path), **kwargs)

    # ---- requests ----
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass prompts as lists of token ids")
            bos = self.tokenizer.bos_id  # None: this model has no BOS (Qwen2.5)
            return self.tokenizer.encode(prompt, add_bos=bos is not None and not prompt.startswith(self._bos_text()))
        if not prompt or not all(isinstance(t, int) and 0 <= t < self.model.config.vocab_size for t in prompt):
            raise ValueError(
                f"a token-id prompt must be a non-empty list of ids in [0, {self.model.config.vocab_size})"
            )
        return list(prompt)

    def _bos_text(self) -> str:
        return self.tokenizer.id_to_token(self.tokenizer.bos_id) or "\0none"

    def validate(self, prompt: list[int], params: SamplingParams) -> None:
        """Refuse what can never finish, before any work: prompts longer than the context or the cache."""
        limit = min(self.max_context, self.cache.capacity_tokens)
        if len(prompt) >= limit:
            raise ValueError(f"the prompt has {len(prompt)} tokens; this model's context allows at most {limit - 1}")
        if params.max_tokens is not None and len(prompt) + params.max_tokens > limit:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"length ({limit}); lower max_tokens or shorten the prompt"
            )

    def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        on_delta: Callable[[StreamDelta], None] | None = None,
    ) -> GenerationRequest:
        """Queue a request (thread-safe). With a background loop running it starts at the next step."""
        params = params or SamplingParams()
        ids = self.encode(prompt)
        self.validate(ids, params)
        # compiled here, so a schema the grammar cannot take is the caller's ValueError, before any work
        grammar = self.grammars.compile(params.constraint) if params.constraint is not None else None
        request = GenerationRequest(next(self._ids), ids, params, on_delta)
        request.grammar = grammar
        self._inbox.put(request)
        self._wake.set()
        return request

    def generate(
        self,
        prompts: Iterable[str | list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
        progress: bool = False,
    ) -> list[Completion | list[Completion]]:
        """Generate for every prompt; one Completion each (a list of n when params.n > 1)."""
        prompts = list(prompts)
        if isinstance(params, list):
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
            param_list = params
        else:
            param_list = [params or SamplingParams()] * len(prompts)
        requests = [self.submit(p, sp) for p, sp in zip(prompts, param_list)]
        if self._thread is None:
            bar = _progress(len(requests)) if progress else None
            while not all(r.finished() for r in requests):
                self.step()
                if bar is not None:
                    bar.update(sum(r.finished() for r in requests) - bar.n)
            if bar is not None:
                bar.close()
        for r in requests:
            r.done.wait()
        return [r.completions if r.params.n > 1 else r.completions[0] for r in requests]  # type: ignore[misc]

    # ---- background loop (servers) ----
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="nanoseek-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping:
            if not self.has_work():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception:  # one bad step must not take the server down: end its requests, keep serving
                logging.getLogger("nanoseek.engine").exception("engine step failed; aborting the running requests")
                for seq in list(self.running):
                    self._finish(seq, "abort")

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or not self._inbox.empty())

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + self._inbox.qsize()

    # ---- one step ----
    @torch.inference_mode()
    def step(self) -> None:
        while not self._inbox.empty():
            self.waiting.append(self._inbox.get_nowait())
        self._drop_cancelled()
        self._admit()
        batch = self._schedule()
        if not batch:
            return
        if self.fast is not None and self.fast.verifies(batch):  # one graph verifies drafts and proposes the next
            self.stats["static_steps"] += 1
            self._advance(batch, None, self.fast.verify(batch))
        else:
            hidden, logits = self._forward(batch)
            self._advance(batch, logits)
            if any(w.seq.speculate for w in batch):
                self._draft([w for w in batch if w.seq.speculate and w.seq.finish_reason is None], hidden)
        self.stats["steps"] += 1

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes: after the weights change (RL updates) their latents are stale (and so are the
        static step's weight copies)."""
        self.cache.clear_prefixes()
        if self.fast is not None:
            self.fast.refresh()
        for seq in self.running:
            seq.hashes = []

    @property
    def acceptance_rate(self) -> float:
        return self.stats["accepted"] / max(1, self.stats["drafted"])

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.request.cancelled]:
            self._finish(seq, "abort")
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
            for i in range(request.params.n):
                request.completions[i] = Completion([], "", "abort", len(request.prompt), 0, i)
            request.done.set()

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            request = self.waiting[0]
            needed = -(-(len(request.prompt) + 1) // self.cache.block_size)
            if self.cache.free_blocks() < needed and self.running:
                break  # wait for running sequences to free blocks
            self.waiting.pop(0)
            speculate = self.speculative and request.params.n == 1 and request.grammar is None
            seq = SequenceState(
                request,
                0,
                list(request.prompt),
                make_generator(request.params.seed, "cpu"),
                self._decoder(),
                forked=request.params.n > 1,
                # constrained sequences do not speculate (drafts would need the grammar's mask at every position); on
                # a compiled step only greedy ones do (speculative_step.py)
                speculate=speculate and (self.fast is None or self.fast.speculates(request.params)),
                grammar=request.grammar,
            )
            # reuse cached latents of the prompt's prefix (never all of it: the last token must run for its logits)
            seq.blocks = self.cache.match_prefix(request.prompt[: len(request.prompt) - 1], seq.salt)
            seq.num_cached = seq.hit_tokens = len(seq.blocks) * self.cache.block_size
            seq.hashes = PagedLatentCache.block_hashes(
                request.prompt[: seq.num_cached], self.cache.block_size, seq.salt
            )
            self.stats["prompt_tokens"] += len(request.prompt)
            self.stats["cache_hit_tokens"] += seq.hit_tokens
            self.running.append(seq)

    def _schedule(self) -> list[Work]:
        """What each sequence feeds this step: every decoding sequence (with its draft), then prompt chunks."""
        budget = self.max_step_tokens
        decoding = [s for s in self.running if len(s.tokens) - s.num_cached == 1]
        prefilling = [s for s in self.running if len(s.tokens) - s.num_cached > 1]
        batch: list[Work] = []
        for seq in decoding + prefilling:
            if budget <= 0:
                break
            take = min(len(seq.tokens) - seq.num_cached, budget)
            completes = take == len(seq.tokens) - seq.num_cached
            draft = seq.draft if completes else []
            work = Work(
                seq, seq.num_cached, seq.tokens[seq.num_cached : seq.num_cached + take] + draft, draft, completes
            )
            if self._reserve(seq, work.start + len(work.fed), batch):
                batch.append(work)
                budget -= len(work.fed)
        if not batch and self.running:  # every sequence waits for cache space: free the newest one
            if len(self.running) == 1:
                self._finish(self.running[0], "length")  # it alone does not fit in the cache
            else:
                self._preempt(self.running[-1])
        return batch

    def _reserve(self, seq: SequenceState, num_tokens: int, scheduled: list[Work]) -> bool:
        """Blocks for num_tokens; when the cache is full, preempt the newest unscheduled sequence."""
        while True:
            try:
                self.cache.ensure_capacity(seq.blocks, num_tokens)
                return True
            except CacheFull:
                busy = {id(w.seq) for w in scheduled} | {id(seq)}
                victims = [s for s in self.running if id(s) not in busy and s.blocks]
                if not victims:
                    return False
                self._preempt(victims[-1])

    def _preempt(self, seq: SequenceState) -> None:
        """Free a sequence's cache; it restarts from its prompt + generated tokens when blocks are free again."""
        self.cache.release(seq.blocks)
        seq.blocks, seq.hashes, seq.num_cached, seq.draft, seq.draft_probs = [], [], 0, [], None
        self.running.remove(seq)
        self.running.append(seq)  # keeps its place in line at the end; recomputed as a long prompt chunk
        self.stats["preempted"] += 1

    def _forward(self, batch: list[Work]) -> tuple[torch.Tensor, torch.Tensor]:
        """Main model over every fed token -> (hidden states [T, hidden], logits of the rows that decide tokens).
        Decode-only steps go through the static step when there is one (no hidden states: nothing drafts then)."""
        if self.fast is not None and self.fast.covers(batch):
            self.stats["static_steps"] += 1
            return None, self.fast(batch)  # type: ignore[return-value]
        ids, positions, segments, logit_rows = [], [], [], []
        for work in batch:
            work.row = len(ids)
            ids.extend(work.fed)
            positions.extend(range(work.start, work.start + len(work.fed)))
            segments.append(Segment(work.seq.blocks, work.start, len(work.fed)))
            if work.completes:  # the last uncached token and every draft token
                logit_rows.extend(range(len(ids) - len(work.draft) - 1, len(ids)))
        self.cache.plan(segments)
        hidden = self.model.hidden_states(
            torch.tensor([ids], device=self.device), torch.tensor([positions], device=self.device), self.cache
        )[0]
        rows = torch.tensor(logit_rows, device=self.device, dtype=torch.long)
        logits = self._logits(hidden.index_select(0, rows)) if logit_rows else hidden.new_empty(0)
        return hidden, logits

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(hidden).float()
        return logits if self.undecodable is None else logits.masked_fill_(self.undecodable, float("-inf"))

    def _register(self, seq: SequenceState) -> None:
        """Offer newly completed full blocks to the prefix cache."""
        full = seq.num_cached // self.cache.block_size
        if full > len(seq.hashes):
            bs = self.cache.block_size
            parent = seq.hashes[-1] if seq.hashes else seq.salt
            new = PagedLatentCache.block_hashes(seq.tokens[len(seq.hashes) * bs : full * bs], bs, parent)
            self.cache.register(new, seq.blocks[len(seq.hashes) : full])
            seq.hashes.extend(new)

    def _advance(self, batch: list[Work], logits: torch.Tensor | None, verified_by_step: list | None = None) -> None:
        """Decide new tokens (sampling, or verifying drafts), then move every sequence forward. verified_by_step:
        what the speculative static step decided for each work (tokens, log-probabilities, next draft) instead."""
        row = 0
        plain: list[tuple[SequenceState, int]] = []  # (sequence, logits row) sampled the ordinary way
        verified: list[tuple[Work, list[int], list[float]]] = []
        for i, work in enumerate(batch):
            seq = work.seq
            work.valid = len(work.fed) - len(work.draft)
            if not work.completes:
                continue
            first, row = row, row + len(work.draft) + 1
            if work.draft:
                try:
                    tokens, logprobs = (
                        verified_by_step[i][:2]
                        if verified_by_step is not None
                        else verify(logits[first:row], work.draft, seq.draft_probs, seq.request.params, seq.generator)
                    )
                except Exception:
                    self._fail(seq)
                    continue
                self.stats["drafted"] += len(work.draft)
                self.stats["accepted"] += len(tokens) - 1
                work.valid += len(tokens) - 1
                verified.append((work, tokens, logprobs))
            else:
                plain.append((seq, first))
                if seq.forked:  # n > 1: the prompt is done; the other samples share its cache from here
                    plain.extend((sibling, first) for sibling in self._fork(seq, work.start + work.valid))
        for work in batch:
            if work.seq.finish_reason is not None:
                continue  # its verification failed: finished, its blocks already released
            work.seq.num_cached = work.start + work.valid
            work.seq.draft, work.seq.draft_probs = [], None
            self._register(work.seq)
        if plain:
            index = [r for _, r in plain]  # every row, in order, on a static step: no gather to make
            rows = logits if index == list(range(len(logits))) else logits[torch.tensor(index, device=logits.device)]
            mask_logits(rows, [s.grammar for s, _ in plain])  # constrained rows: only what their grammar allows
            tokens, logprobs = sample(rows, [s.request.params for s, _ in plain], [s.generator for s, _ in plain])
            for (seq, _), token, logprob in zip(plain, tokens.tolist(), logprobs.tolist()):
                self._append(seq, token, logprob)
        for work, tokens, logprobs in verified:
            for token, logprob in zip(tokens, logprobs):
                if work.seq.finish_reason is not None:
                    break
                self._append(work.seq, token, logprob)
        for work, (*_, draft) in zip(batch, verified_by_step or []):
            if work.seq.finish_reason is None:
                work.seq.draft = [draft]

    def _append(self, seq: SequenceState, token: int, logprob: float) -> None:
        """Add a token; what fails here (detokenizing, a stream callback) ends this sequence only, not the step."""
        try:
            self._add_token(seq, token, logprob)
        except Exception:
            self._fail(seq)

    def _fail(self, seq: SequenceState) -> None:
        logging.getLogger("nanoseek.engine").exception("sequence of request %d failed", seq.request.id)
        seq.decoder = None  # it may be what failed; the text so far stands
        try:
            self._finish(seq, "error")
        except Exception:  # the request's callback failed again: it gets no delta, but its caller is released
            logging.getLogger("nanoseek.engine").exception("request %d: error delta failed", seq.request.id)
            if seq.request.finished():
                seq.request.done.set()

    def _fork(self, seq: SequenceState, num_cached: int) -> list[SequenceState]:
        seq.forked = False
        siblings = []
        for i in range(1, seq.request.params.n):
            seed = seq.request.params.seed
            sibling = SequenceState(
                seq.request,
                i,
                list(seq.tokens),
                make_generator(None if seed is None else seed + i, "cpu"),
                self._decoder(),
                num_cached=num_cached,
                hit_tokens=seq.hit_tokens,
                grammar=seq.grammar.fork() if seq.grammar is not None else None,  # each sample its own position
            )
            sibling.blocks = self.cache.fork(seq.blocks, num_cached)
            sibling.hashes = list(seq.hashes)
            self.running.append(sibling)
            siblings.append(sibling)
        return siblings

    def _draft(self, batch: list[Work], hidden: torch.Tensor) -> None:
        """MTP pass: the MTP module reads each valid row's hidden state and the token after it (now known),
        extending its own cache; its last row proposes the next draft token."""
        batch = [w for w in batch if w.valid > 0]
        if not batch:
            return
        rows, next_ids, positions, segments, last = [], [], [], [], []
        for work in batch:
            seq = work.seq
            rows.extend(range(work.row, work.row + work.valid))
            next_ids.extend(seq.tokens[work.start + 1 : work.start + work.valid + 1])
            positions.extend(range(work.start, work.start + work.valid))
            segments.append(Segment(seq.blocks, work.start, work.valid))
            last.append(len(rows) - 1)
        self.cache.plan(segments)
        device = self.device
        h = hidden.index_select(0, torch.tensor(rows, device=device)).unsqueeze(0)
        mtp = self.model.mtp_hidden_states(
            0, h, torch.tensor([next_ids], device=device), torch.tensor([positions], device=device), self.cache
        )[0]
        drafting = [i for i, w in enumerate(batch) if w.completes and w.seq.finish_reason is None]
        if not drafting:
            return
        logits = self._logits(mtp.index_select(0, torch.tensor([last[i] for i in drafting], device=device)))
        for i, row_logits in zip(drafting, logits):
            seq = batch[i].seq
            seq.draft, seq.draft_probs = propose(row_logits, seq.request.params, seq.generator)

    def _add_token(self, seq: SequenceState, token: int, logprob: float) -> None:
        params = seq.request.params
        self.stats["generated_tokens"] += 1
        if seq.grammar is not None:
            seq.grammar.accept(token)
            if token in self.eos_ids:  # the grammar allows EOS only where it is complete: it ends the output
                self._finish(seq, "stop")
                return
        if (token in self.eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        seq.generated.append(token)
        if params.logprobs:
            seq.logprobs.append(logprob)
        new_text = seq.decoder.step(token) if seq.decoder is not None else ""
        seq.text += new_text
        if params.stop and new_text:
            window = seq.text[max(0, seq.emitted - max(map(len, params.stop))) :]
            hits = [window.find(s) for s in params.stop if s in window]
            if hits:
                seq.text = seq.text[: len(seq.text) - len(window) + min(hits)]
                seq.decoder = None  # the text ends at the stop string: nothing pending is wanted
                self._finish(seq, "stop")
                return
        out_of_room = len(seq.tokens) >= min(self.max_context, self.cache.capacity_tokens)
        if seq.grammar is not None and seq.grammar.done:  # nothing but EOS could follow: done, without a step for it
            self._finish(seq, "stop")
        elif out_of_room or (params.max_tokens is not None and len(seq.generated) >= params.max_tokens):
            self._finish(seq, "length")
        else:
            self._emit(seq)

    def _emit(self, seq: SequenceState, final: Completion | None = None) -> None:
        on_delta = seq.request.on_delta
        if on_delta is None:
            return
        hold = 0 if final else max((len(s) for s in seq.request.params.stop), default=1) - 1
        upto = max(seq.emitted, len(seq.text) - hold)
        delta = StreamDelta(
            seq.index,
            seq.text[seq.emitted : upto],
            seq.generated[-1:] if not final else [],
            final.finish_reason if final else None,
            final,
            seq.logprobs[-1] if seq.logprobs and not final else None,
        )
        seq.emitted = upto
        if delta.text or delta.token_ids or final:
            on_delta(delta)

    def _finish(self, seq: SequenceState, reason: str) -> None:
        seq.finish_reason = reason
        if seq.decoder is not None:
            seq.text += seq.decoder.flush()  # bytes of a character the last token left incomplete
        if seq in self.running:
            self.running.remove(seq)
        self._register(seq)
        self.cache.release(seq.blocks)
        seq.blocks = []
        request = seq.request
        completion = Completion(
            seq.generated,
            seq.text,
            reason,
            len(request.prompt),
            seq.hit_tokens,
            seq.index,
            seq.logprobs if request.params.logprobs else None,
        )
        if seq.forked:  # finished before its siblings existed (e.g. aborted): they finish the same way
            for i in range(1, request.params.n):
                request.completions[i] = Completion([], "", reason, len(request.prompt), seq.hit_tokens, i)
        request.completions[seq.index] = completion
        self._emit(seq, completion)
        if request.finished():
            request.done.set()

    def _decoder(self):
        return self.tokenizer.stream_decoder() if self.tokenizer is not None else None


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load_tokenizer(path: str):
    from pathlib import Path

    if not (Path(path) / "tokenizer.json").exists():
        return None
    from nanoseek.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(path)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="req")
