"""The static decode step: one token per sequence, as one graph with no data-dependent shape, compiled once per
batch bucket and reused (see ../shared/notes/decode-step.md for what each choice was worth).

The engine's ordinary step (engine.py + cache.py) dispatches ~100 small eager ops per layer and loops over experts in
Python; on small models that dispatch, not the hardware, bounds decoding. Here a decode step of n sequences is
padded to a batch bucket B (1, 2, 4, ... 32) and becomes tensors only:

- token ids and positions [B]; each sequence's block table padded to a length bucket (a multiple of 32 tokens on CPU)
  [B, blocks]; a position mask hides the padding. Padding rows decode token 0 at position 0 into block 0, which
  belongs to nobody and is only ever read under a -inf mask.
- attention: MLA's absorbed path over the latent cache (DeepSeek-V2/V3), or grouped-query attention over each kv
  head's key | value entries (Qwen2, Llama: the R1-Distill students). DeepSeek-V3.2: the indexer scores every
  position of the padded table (its index keys read block by block from the cache's index pool), `topk` keeps
  index_topk of them (fixed k, so static shapes) and attention runs over those k entries; a table no longer than
  index_topk is attended whole.
- MoE by expert gathering: top-k routing, then the chosen experts' weights read with `index_select` ([B, k, ...]),
  no `.tolist()` and no per-expert loop; the shared expert is one more (always chosen) matrix product. Once rows
  share experts (2 B k > experts, the eager engine's threshold) the model's grouped kernel reads each expert once,
  unless a layer's experts are small enough to stay in the CPU's caches.
- compiled (`torch.compile(fullgraph=True)`), the matrix products of up to 8 rows are written as a broadcast
  multiply and a sum per row (`_contract`): inductor then fuses the rows' sums into one loop that reads each weight
  once, and norms, RoPE, the cache write, softmax, SiLU and residuals into a few C++ kernels around them, instead of
  calling out to BLAS (slow at a few rows here) between every elementwise op. Buckets 16 and 32 call BLAS.
  Uncompiled ("static" mode, for tests and debugging) the same contractions run as einsums.

- int8 (engine/quant.py): the unpacked int8 weights, dequantized inside the same fused products (weight-only), the
  routed experts always gathered. Rows longer than 4096 are summed in parts, and the activation a fused product reads
  is computed into a buffer first (`_realized`): both are inductor footguns that cost 2-7x on the kernels they hit.

Weights are read at every call (not frozen into the graph): on CPU from a copy packed into one buffer per dtype
(packed.py: a few graph inputs instead of hundreds), elsewhere the model's own parameters. The copies (packed, and
routed experts transposed for the compiled step) follow in-place updates (GRPO) through `refresh()`, which
`Engine.reset_prefix_cache()` calls, as weight updates do anyway. Prefill takes the engine's ordinary path; MTP
speculation has its own graph (speculative_step.py: verify and draft in one call, built on this one's layers); steps of
more than 32 sequences run as several graph calls.

Measured on bench-18m, batch 1, 1 thread of a shared 2-core EPYC (CPU time per step, graph only): 1.97 ms with the
experts in their stored layout, 1.45 ms transposed (the roofline at 24 GB/s is 1.3 ms); cpp_wrapper ~7%; inductor's
freezing gained nothing here (and would bake the weights in); full guard evaluation cost 0.1-0.3 ms a step.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch.nn.utils.stateless import _reparametrize_module  # functional_call's swap, without its per-call checks

from nanoseek.engine import graph_cache
from nanoseek.engine.packed import PackedWeights
from nanoseek.engine.quant import Int8Experts, Int8Linear
from nanoseek.engine.step_ops import _REALIZE, SUM_CHUNK, _contract, _dequantized, _norm, _realized, _rope  # noqa: F401
from nanoseek.model.indexer import index_scores, top_k_indices
from nanoseek.model.moe import Experts, MoE

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
# tokens: attention runs over the smallest multiple of this that holds every position. Each length is its own graph
# (CUDA graphs), except on CPU, where one graph takes every length (`mark_dynamic`) and a fine quantum only trims
# padding: 1.06x at 32 rows of 16-176 tokens, 1.08x at batch 1 (bench-18m, 1 thread). At least two blocks there: a
# dynamic length traced at 1 would be specialized to 1
LENGTH_QUANTUM = 256
CPU_LENGTH_QUANTUM = 32
MODES = ("eager", "static", "compiled")
# rows up to which a matrix product is a fused multiply-and-sum (one per row, which inductor fuses into one loop that
# reads the weight once: _contract); past it the graph calls BLAS. Small-M BLAS is slow here (bench-300m's lm_head, 4
# rows: 11.2 ms in MKL, 5.5 fused), so the fused products go up to 8 rows: a bench-300m step of 4 rows 33.1 -> 20.1
# ms, of 8 rows 46.9 -> 38.1 (1 thread, benchmarks/step_buckets.py); at 16 and 32 rows neither won clearly (bench-18m)
# and BLAS compiles faster
FUSED_MAX_ROWS = 8
# routed experts are stored [E, in, out] (the grouped kernel's layout); a fused product reads them fastest as
# [E, out, in], each output a contiguous dot product (1.7x on bench-18m's experts, measured). The step keeps such a
# copy when all experts together take at most this many bytes (refreshed by `refresh()` after weight updates)
TRANSPOSED_EXPERTS_MAX_BYTES = 2 * 1024**3
# a layer's experts up to this size stay in the CPU's caches while each row gathers its own: gathering then beats the
# grouped kernel (a small GEMM per expert) at every bucket (bench-18m, 6 MiB a layer, batch 32: 460 vs 650 us)
GATHER_ALWAYS_BYTES = 8 * 1024**2
# int8 (engine/quant.py): FBGEMM's packed weights cannot be traced, so the step reads an unpacked int8 copy (1 byte a
# weight, dequantized inside the fused product); past this size the copy costs too much memory and int8 runs eagerly
INT8_COPY_MAX_BYTES = 2 * 1024**3

_ANNOUNCED: set = set()  # (model shapes, batch bucket) whose compile this process has announced
# per step: its graphs compiled ahead of time. Outside the step's own attributes: aot_compile serializes what it
# reaches from the step (an input of the graph), and a compiled graph in there cannot be pickled
_AHEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _int8_modules(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (Int8Linear, Int8Experts))]


def refusal(model: torch.nn.Module) -> str | None:
    """Why the static step cannot serve this engine (it then decodes eagerly), or None when it can."""
    int8 = sum(m.weight_bytes for m in _int8_modules(model))
    if int8 > INT8_COPY_MAX_BYTES:
        return f"int8 weights of {int8 / 2**30:.1f} GiB: the step would keep a second, unpacked copy of them"
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        return f"weights in {dtype}"
    return None


class StaticDecodeStep:
    """Decode steps (one new token per sequence) over the engine's paged cache, in batch buckets of up to 32."""

    def __init__(self, model, cache, undecodable: torch.Tensor | None, compiled: bool = True):
        self.model, self.cache, self.undecodable = model, cache, undecodable
        self.layers = model.main_layers
        self.graph_layers = self.layers + self._extra_layers()  # every layer the graph runs (speculation: + MTP)
        self.compiled = compiled
        self.device = cache.pools[0].device
        self.shapes: set[tuple[str, int, int]] = set()  # (graph, batch bucket, blocks) shapes run so far
        # V3.2: tables stay longer than this (`table_blocks`); the indexers' own top-k, which the graph branches on
        self.index_topk = max((a.indexer.topk for a in model.sparse_attentions()), default=0)
        self._signature = (repr(model.config), str(next(model.parameters()).dtype), str(self.device))
        for module in _int8_modules(model):
            module.unpack()  # the int8 weights as plain tensors (buffers): the graph reads those
        # what names this step's graphs on disk (graph_cache.py), beside the inputs' shapes
        int8 = tuple(type(m).__name__ for m in _int8_modules(model))
        self._graph_identity = (type(self).__name__, *self._signature, int8, undecodable is None)
        self.experts = self._transposed_experts() if compiled else [None] * len(self.graph_layers)
        # per layer: routed experts small enough to stay in the CPU's caches (always gathered: GATHER_ALWAYS_BYTES)
        self.small_experts = [c is not None and c[0].nbytes + c[1].nbytes <= GATHER_ALWAYS_BYTES for c in self.experts]
        # weights as a few packed buffers (packed.py); CUDA graphs pay nothing per input
        self.packed = PackedWeights.of(model) if self.device.type == "cpu" else None
        self._fn = self._forward
        _AHEAD[self] = {}  # (graph, bucket) -> that graph compiled ahead of time, called without dynamo (`warmup`)
        self._compile_ahead = False
        if compiled:
            import torch._dynamo

            # one graph per batch bucket (+ one per length bucket on CUDA, where graphs are captured per shape)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            cuda = self.device.type == "cuda"
            if cuda:  # CUDA graphs (reduce-overhead) replay writes into the cache only if its addresses never change;
                # and inputs not marked static are copied into the graph's own buffers at every replay
                copies = [t for pair in self.experts if pair is not None for t in pair]
                for tensor in [*cache.pools, *cache.index_pools, *copies]:
                    torch._dynamo.mark_static_address(tensor)
            self._fn = self._compile(self._forward)

    def _compile(self, fn):
        cuda = self.device.type == "cuda"
        # CPU: the wrapper that calls the kernels in C++ rather than Python (~7% of a bench-18m step, measured)
        options = None if cuda else {"cpp_wrapper": True}
        mode = "reduce-overhead" if cuda else None  # CUDA graphs: one launch per step
        return torch.compile(fn, fullgraph=True, mode=mode, options=options)

    def _extra_layers(self) -> list:
        return []

    def _transposed_experts(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per graph layer: routed experts as (gate | up [E, 2I, hidden], down [E, hidden, I]), or None (dense
        layers, or experts too large to copy: those are read in the stored layout)."""
        moes = [
            layer.mlp if isinstance(layer.mlp, MoE) and isinstance(layer.mlp.experts, Experts) else None
            for layer in self.graph_layers
        ]
        size = sum(m.experts.w_gate_up.nbytes + m.experts.w_down.nbytes for m in moes if m is not None)
        if size > TRANSPOSED_EXPERTS_MAX_BYTES:
            return [None] * len(moes)
        return [
            None if m is None else (m.experts.w_gate_up.mT.contiguous(), m.experts.w_down.mT.contiguous()) for m in moes
        ]

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read the model's weights into the step's copies (after training updated them in place)."""
        for layer, copies in zip(self.graph_layers, self.experts):
            if copies is not None:
                copies[0].copy_(layer.mlp.experts.w_gate_up.mT)
                copies[1].copy_(layer.mlp.experts.w_down.mT)
        if self.packed is not None:
            self.packed.refresh(self.model)

    @staticmethod
    def buckets_for(sequences: int) -> tuple[int, ...]:
        """The batch buckets that steps of up to `sequences` sequences use."""
        needed = next((b for b in BATCH_BUCKETS if b >= sequences), BATCH_BUCKETS[-1])
        return tuple(b for b in BATCH_BUCKETS if b <= needed)

    @torch.inference_mode()
    def warmup(self, sizes: tuple[int, ...] = BATCH_BUCKETS) -> None:
        """Compile (or load from disk: graph_cache.py) the graphs of these batch buckets now, e.g. before a server
        takes traffic, rather than at the first step of each size. Writes only into block 0, which nobody owns.

        On CPU a warmed-up step compiles its graphs ahead of time (`aot_compile`) and calls them without dynamo: no
        frame evaluation or guard lookup per call (bench-18m, batch 1: ~0.2 ms of a 1.4 ms step, measured). Guards
        are off for those calls, which is safe because a graph belongs to this step alone: its model, cache pools
        and settings never change under it (weights change in place, and the graph reads them at every call)."""
        self._compile_ahead = self.compiled and self.device.type == "cpu"
        for size in sizes:
            work = [_Padding(self.table_blocks(1))] * size
            self(work)

    @staticmethod
    def verifies(batch) -> bool:
        """Whether this step verifies drafts (speculative_step.py; a plain step never does)."""
        return False

    def covers(self, batch) -> bool:
        """A step this graph can run: every sequence feeds exactly its one last token, no drafts."""
        return all(w.completes and len(w.fed) == 1 for w in batch)

    def __call__(self, batch) -> torch.Tensor:
        """-> logits [len(batch), vocab] (float32, undecodable ids at -inf), one row per sequence. More sequences
        than the largest bucket run as several graph calls (each sequence's cache rows are its own)."""
        n, most = len(batch), BATCH_BUCKETS[-1]
        if n > most:
            return torch.cat([self(batch[i : i + most]) for i in range(0, n, most)])
        size, ids, positions, tables = self._inputs(batch, ahead=0)
        layers = len(self.layers)
        index_pools = self.cache.index_pools[:layers] or [None] * layers
        args = (ids, positions, tables, self.cache.pools[:layers], index_pools, self.experts, self._buffers())
        return self._run(self._fn, "decode", size, args)[:n]

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return self.packed.buffers if self.packed is not None else ()

    def _weights_from(self, buffers: tuple[torch.Tensor, ...]):
        """Inside the graph: the model's tensors read from the packed buffers for the duration (or as they are)."""
        if not buffers:
            return contextlib.nullcontext()
        return _reparametrize_module(self.model, self.packed.views(buffers))

    def table_blocks(self, positions: int) -> int:
        """Length in blocks of the padded block tables for attention over `positions` positions: a multiple of
        LENGTH_QUANTUM tokens (CPU_LENGTH_QUANTUM on CPU), and for V3.2 longer than index_topk. A graph compiled
        ahead of time runs without guards, so it must not depend on which side of index_topk the length it was
        traced at fell: one traced at a table no longer than index_topk attended the whole table at every length
        (found with index_topk 300, 700 tokens of context). Past index_topk every graph selects; with fewer visible
        positions the selection is all of them (plus masked fillers), the same attention as over the whole table."""
        bs = self.cache.block_size
        blocks = -(-max(positions, self.index_topk + 1) // bs)
        cpu = self.device.type == "cpu"
        quantum = max(2, -(-CPU_LENGTH_QUANTUM // bs)) if cpu else -(-LENGTH_QUANTUM // bs)
        return -(-blocks // quantum) * quantum

    def _inputs(self, batch, ahead: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (batch bucket, ids [B] of each sequence's fed token, positions [B], block tables [B, blocks]), padded
        to the bucket; the tables cover `ahead` positions past each fed token (a draft's)."""
        n = len(batch)
        size = next(b for b in BATCH_BUCKETS if b >= n)
        blocks = self.table_blocks(max(w.start for w in batch) + 1 + ahead)
        pad = size - n
        ids = [w.fed[0] for w in batch] + [0] * pad
        positions = [w.start for w in batch] + [0] * pad
        tables = [(w.seq.blocks[:blocks] + [0] * blocks)[:blocks] for w in batch] + [[0] * blocks] * pad
        tensors = [torch.tensor(t, device=self.device) for t in (ids, positions, tables)]
        return size, *tensors  # type: ignore[return-value]

    def _run(self, fn, graph: str, size: int, args: tuple):
        """Call a graph of this bucket, compiling it on its first call (announced once per process)."""
        ahead = _AHEAD[self].get((graph, size))
        if ahead is not None:
            return ahead(self, *args)
        tables = args[2 if graph == "decode" else 3]
        key = (graph, size, tables.shape[1])
        # graphs live in torch.compile's per-process cache: engines of the same shapes reuse them, so say so once
        first = self.compiled and ((self._signature, graph, size) not in _ANNOUNCED or self._compile_ahead)
        _ANNOUNCED.add((self._signature, graph, size))
        if self.compiled and self.device.type == "cpu":
            # lengths vary step by step: one graph for all of them (loop bounds are runtime values in C++), batch
            # buckets stay static (a graph each, no recompiles after the first call)
            torch._dynamo.mark_dynamic(tables, 1)
        if first:
            print(
                f"[nanoseek] compiling the {graph} step for batch bucket {size} (about a minute the first time, "
                "seconds on later starts: kept on disk)...",
                file=sys.stderr,
                flush=True,
            )
            start = time.perf_counter()
        if self._compile_ahead and (ahead := self._ahead_of_time(fn, graph, size, args)) is not None:
            out = ahead(self, *args)
        elif self.compiled and key in self.shapes:
            # this step already passed every guard for this shape: check only those that tell compiled graphs
            # apart (shapes, buckets), not the ~2400 on the model's modules and weights (0.1-0.3 ms a step here)
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                out = fn(*args)
        elif self.compiled:
            # a first call may compile: weights' and experts' shapes stay static even when another model's step
            # compiled in this process before (dynamo would otherwise make them symbolic: slower kernels, and
            # Python-side sizes such as `nbytes` stop being numbers)
            with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
                out = fn(*args)
        else:
            out = fn(*args)
        if first:
            print(f"[nanoseek] {graph} step ready in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
        self.shapes.add(key)
        return out

    def _ahead_of_time(self, fn, graph: str, size: int, args: tuple):
        """This bucket's graph compiled ahead of time (see `warmup`): loaded from disk where an earlier start saved it
        (graph_cache.py), else compiled and saved; None where torch cannot compile it ahead (logged once)."""
        path = graph_cache.graph_path(self._graph_identity, graph, size, args, 2 if graph == "decode" else 3)
        compiled = graph_cache.load(path)
        if compiled is None:
            try:
                with torch._dynamo.config.patch(automatic_dynamic_shapes=False), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*grad attribute of a Tensor that is not a leaf")
                    compiled = fn.aot_compile((args, {}))  # torch's precompile API (experimental in 2.13)
                compiled.disable_guard_check()
            except Exception as error:  # the dynamo path still works: use it
                logging.getLogger("nanoseek.engine").warning("decode step: no ahead-of-time graph (%s)", error)
                self._compile_ahead = False
                return None
            graph_cache.save(compiled, path)
        _AHEAD[self][(graph, size)] = compiled
        return compiled

    # ---- the graph ----
    def _forward(self, ids, positions, tables, pools, index_pools, experts, buffers) -> torch.Tensor:
        """ids, positions [B]; tables [B, blocks]; pools: each main layer's cache [kv heads (MLA: 1), all blocks,
        block, entry width]; index_pools: V3.2's index keys [all blocks, block, index width] per main layer, or
        Nones; experts: each layer's transposed expert copies or None; buffers: the packed weights (or none).
        Writes each token's cache entry, returns logits [B, vocab] float32."""
        with self._weights_from(buffers):
            return self._logits(self._trunk(ids, self._where(positions, tables), pools, index_pools, experts))

    def _trunk(self, ids, where: tuple, pools, index_pools, experts) -> torch.Tensor:
        """The main layers over one token per row (see _forward; `where`: `_where`'s) -> final normalised hidden
        states [B, hidden]. pools, index_pools and experts may go on past the main layers (the MTP layer's)."""
        x = self.model.model.embed_tokens.weight.index_select(0, ids)  # [B, hidden]
        for layer, pool, keys, copies, small in zip(self.layers, pools, index_pools, experts, self.small_experts):
            x = self._layer(layer, x, where, pool, keys, copies, small)
        return _norm(self.model.model.norm, x)

    def _where(self, positions: torch.Tensor, tables: torch.Tensor) -> tuple:
        """What every layer's attention needs of the rows' places: (pool rows of every key position [B, length],
        this token's pool row [B], additive mask [B, length], tables, RoPE cos and sin [B, rope / 2])."""
        bs = self.cache.block_size
        length = tables.shape[1] * bs
        rows = (tables.unsqueeze(-1) * bs + torch.arange(bs, device=tables.device)).flatten(1)
        slot = rows.gather(1, positions.unsqueeze(1)).squeeze(1)
        visible = torch.arange(length, device=tables.device).unsqueeze(0) <= positions.unsqueeze(1)
        dtype = self.model.model.embed_tokens.weight.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=tables.device).masked_fill(~visible, float("-inf"))
        rotary = self.model.model.rotary
        angles = positions.float().unsqueeze(-1) * rotary.inv_freq.float()  # [B, rope / 2], float32 as rope.py
        cos, sin = rotary.attention_factor * torch.cos(angles), rotary.attention_factor * torch.sin(angles)
        return rows, slot, mask, tables, cos, sin

    def _layer(self, layer, x: torch.Tensor, where: tuple, pool, keys, copies, small: bool) -> torch.Tensor:
        """One decoder layer (attention writing into `pool`, then MoE or MLP) over one token per row."""
        rows, slot, mask, tables, cos, sin = where
        attend = self._attention if self.model.config.uses_mla else self._gqa_attention
        h = _norm(layer.input_layernorm, x)
        x = x + attend(layer.self_attn, h, cos, sin, rows, slot, mask, pool, tables, keys)
        h = _norm(layer.post_attention_layernorm, x)
        return x + (self._moe(layer.mlp, h, copies, small) if isinstance(layer.mlp, MoE) else self._mlp(layer.mlp, h))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._decodable(self._linear(hidden, self.model.lm_head).float())

    def _decodable(self, logits: torch.Tensor) -> torch.Tensor:
        """logits with the ids past the tokenizer's vocabulary at -inf (never chosen)."""
        return logits if self.undecodable is None else logits.masked_fill(self.undecodable, float("-inf"))

    def _linear(self, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
        fused = self.compiled and x.shape[0] <= FUSED_MAX_ROWS
        if isinstance(linear, Int8Linear):
            y = _dequantized("bi,oi->bo", x, linear.int8_weight, linear.int8_scale, fused)
        elif not fused:
            return F.linear(x, linear.weight, linear.bias)
        else:
            y = _contract("bi,oi->bo", x, linear.weight, True)
        return (y if linear.bias is None else y + linear.bias).to(x.dtype)

    def _attention(self, attn, x, cos, sin, rows, slot, mask, pool, tables, index_pool) -> torch.Tensor:
        """MLA's absorbed path (model/attention.py) for one token per row: x [B, hidden] -> [B, hidden].
        Letters: b row, h head, n nope dim, r latent dim, w cache entry width (r + rope), t key position, v value."""
        batch, heads = x.shape[0], attn.num_heads
        q_resid = None
        if attn.low_rank_query:
            q_resid = _norm(attn.q_a_layernorm, self._linear(x, attn.q_a_proj))
            q = self._linear(q_resid, attn.q_b_proj)
        else:
            q = self._linear(x, attn.q_proj)
        q_nope, q_rope = q.view(batch, heads, -1).split([attn.nope_dim, attn.rope_dim], dim=-1)
        latent, k_rope = self._linear(x, attn.kv_a_proj_with_mqa).split([attn.kv_lora_rank, attn.rope_dim], dim=-1)
        entry = torch.cat([_norm(attn.kv_a_layernorm, latent), _rope(k_rope, cos, sin, attn.interleave)], dim=-1)
        flat = pool.view(-1, pool.shape[-1])  # [all blocks * block, w]
        flat.index_copy_(0, slot, entry.to(pool.dtype))  # written first: each token attends to itself too
        if attn.indexer is not None:  # V3.2: the token's index key, at the same row of the index pool
            key = self._index_rope(attn.indexer.k_norm(self._linear(x, attn.indexer.wk)), attn.indexer, cos, sin)
            index_pool.view(-1, index_pool.shape[-1]).index_copy_(0, slot, key.to(index_pool.dtype))
            # always: tables outgrow index_topk (`table_blocks`), so no graph depends on its traced length
            assert q_resid is not None  # V3.2 always has a low-rank query (validated in ModelConfig)
            rows, mask = self._select(attn, x, q_resid, cos, sin, index_pool, tables, rows, mask)
        w_uk, w_uv = attn.absorbed_weights()  # [h, n, r], [h, v, r]
        fused = self.compiled and batch <= FUSED_MAX_ROWS
        query = torch.cat(
            [
                _contract("bhn,hnr->bhr", q_nope, w_uk, fused),
                _rope(q_rope, cos.unsqueeze(1), sin.unsqueeze(1), attn.interleave),
            ],
            dim=-1,
        )  # [b, h, w]
        width = attn.kv_lora_rank + attn.rope_dim
        keys = flat.index_select(0, rows.flatten()).view(batch, rows.shape[1], width).to(query.dtype)  # [b, t, w]
        scores = _contract("bhw,btw->bht", query, keys, fused) * attn.scale + mask.unsqueeze(1)
        probs = torch.softmax(scores, dim=-1)
        # a batched matmul, not a fused sum: inductor would vectorize this one along t, through gathered loads
        # (2.5x slower at 2k context, measured); the gathered keys are realized once for it
        out_latent = torch.matmul(probs, keys[..., : attn.kv_lora_rank])  # [b, h, r]
        out = _contract("bhr,hvr->bhv", out_latent, w_uv, fused)
        return self._linear(out.flatten(1), attn.o_proj)

    def _index_rope(self, x: torch.Tensor, indexer, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The indexer's RoPE: rotate-half on the first rope dims (indexer.py), x [B, ..., Di] with cos/sin [B, d/2]."""
        for _ in range(x.dim() - 2):
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return torch.cat([_rope(x[..., : indexer.rope_dim], cos, sin, False), x[..., indexer.rope_dim :]], dim=-1)

    def _select(self, attn, x, q_resid, cos, sin, index_pool, tables, rows, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """V3.2's top-k over the padded block table (indexer.py, as the eager cache's `_attend_selected`): score
        every position's index key (read by whole blocks of the index pool), keep the k best visible ones. -> their
        pool rows [B, k] and mask [B, k] (-inf on fillers where fewer than k are visible), for attention over k
        entries."""
        indexer, batch = attn.indexer, x.shape[0]
        query = self._linear(q_resid, indexer.wq_b).view(batch, indexer.num_heads, indexer.head_dim)
        query = self._index_rope(query, indexer, cos, sin)
        weights = self._linear(x, indexer.weights_proj) * indexer.weight_scale
        keys = index_pool.index_select(0, tables.flatten()).view(batch, rows.shape[1], -1)
        scores = index_scores(query.unsqueeze(1), weights.unsqueeze(1), keys).squeeze(1)  # [B, positions]
        chosen, _ = top_k_indices(scores, mask == 0, indexer.topk)
        return rows.gather(1, chosen), mask.gather(1, chosen)

    def _gqa_attention(self, attn, x, cos, sin, rows, slot, mask, pool, tables, index_pool) -> torch.Tensor:
        """Grouped-query attention (Qwen2, Llama) for one token per row: x [B, hidden] -> [B, hidden]. The pool holds
        per kv head its rotated key | value [kv heads, blocks, block, 2 d]. Letters: b row, k kv head, g query head
        of a kv head (query head k * G + g reads kv head k), d head dim, t key position."""
        batch, kv, d = x.shape[0], attn.num_kv_heads, attn.head_dim
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = _rope(self._linear(x, attn.q_proj).view(batch, attn.num_heads, d), c, s, False)
        k = _rope(self._linear(x, attn.k_proj).view(batch, kv, d), c, s, False)
        v = self._linear(x, attn.v_proj).view(batch, kv, d)
        flat = pool.view(-1, pool.shape[-1])  # [kv heads * all blocks * block, 2 d]
        heads = torch.arange(kv, device=x.device) * (pool.shape[1] * pool.shape[2])  # first row of each kv head
        entry = torch.cat([k, v], dim=-1).flatten(0, 1)  # [b * k, 2 d]
        flat.index_copy_(0, (slot.unsqueeze(1) + heads).flatten(), entry.to(pool.dtype))
        index = (rows.unsqueeze(1) + heads[:, None]).flatten()  # [b, k, t] rows of the pool
        entries = flat.index_select(0, index).view(batch, kv, rows.shape[1], -1).to(q.dtype)  # [b, k, t, 2 d]
        query = q.view(batch, kv, -1, d)  # [b, k, g, d]
        fused = self.compiled and batch <= FUSED_MAX_ROWS
        scores = _contract("bkgd,bktd->bkgt", query, entries[..., :d], fused) * attn.scale
        probs = torch.softmax(scores + mask[:, None, None], dim=-1)
        out = torch.matmul(probs, entries[..., d:])  # [b, k, g, d], as MLA's values (see _attention)
        return self._linear(out.reshape(batch, -1), attn.o_proj)

    def _mlp(self, mlp, h: torch.Tensor) -> torch.Tensor:
        return self._linear(F.silu(self._linear(h, mlp.gate_proj)) * self._linear(h, mlp.up_proj), mlp.down_proj)

    def _moe(self, moe: MoE, h: torch.Tensor, transposed, small: bool) -> torch.Tensor:
        """Routed experts by gathering the chosen ones' weights (from the transposed copies when there are; int8:
        from their unpacked copies, always gathered), or by the model's grouped kernel once rows share experts."""
        weights, ids, _ = moe.gate(h)  # [b, k] float32, [b, k]
        experts = moe.experts
        if isinstance(experts, Int8Experts):  # unpacked copies in the transposed layout [E, out, in]
            matrices, scales = (experts.gate_up_int8, experts.down_int8), (experts.gate_up_scale, experts.down_scale)
            routed = self._gathered(h, weights, ids, experts.intermediate, matrices, True, scales)
        elif 2 * ids.numel() > experts.num_experts and not small:  # experts shared by several rows: read each once,
            # by the model's grouped kernel (static shapes: argsort, cumsum, a registered op)
            counts = torch.zeros(experts.num_experts, dtype=ids.dtype, device=ids.device)
            counts = counts.scatter_add(0, ids.flatten(), torch.ones_like(ids.flatten()))
            routed = experts(h, weights, ids, counts)
        else:
            matrices = transposed or (experts.w_gate_up, experts.w_down)
            routed = self._gathered(h, weights, ids, experts.intermediate, matrices, transposed is not None)
        return routed if moe.shared_experts is None else routed + self._mlp(moe.shared_experts, h)

    def _gathered(self, h, weights, ids, intermediate: int, matrices, transposed: bool, scales=None) -> torch.Tensor:
        """Each row's chosen experts, their matrices read with `index_select` ([b, k, ...]): matrices (gate | up,
        down) stored [E, in, out], or transposed [E, out, in] (a fused product reads those fastest); int8 ones come
        with per-output scales [E, out]. Letters: b row, k choice, d hidden, i expert intermediate (gate | up: o)."""
        (batch, k), chosen = ids.shape, ids.flatten()

        def product(equation: str, x: torch.Tensor, which: int) -> torch.Tensor:
            matrix = matrices[which].index_select(0, chosen).view(batch, k, *matrices[which].shape[1:])
            if scales is None:
                return _contract(equation, x, matrix, self.compiled)
            scale = scales[which].index_select(0, chosen).view(batch, k, -1)
            return _dequantized(equation, x, matrix, scale, self.compiled)

        equations = ("bd,bkod->bko", "bki,bkdi->bkd") if transposed else ("bd,bkdo->bko", "bki,bkid->bkd")
        gate, up = product(equations[0], h, 0).split(intermediate, dim=-1)
        out = product(equations[1], (F.silu(gate) * up).to(h.dtype), 1)  # [b, k, d]
        return (out * weights.unsqueeze(-1)).sum(1).to(h.dtype)  # gains in float32, as the eager experts


class _Padding:
    """A stand-in for engine Work: token 0 at position 0 in block 0 (what padding rows decode)."""

    def __init__(self, blocks: int):
        self.fed, self.start, self.completes, self.draft = [0], 0, True, [0]  # draft: a verifying step's
        self.seq = self
        self.blocks = [0] * blocks


def build_decode_step(mode: str, model, cache, undecodable: torch.Tensor | None, speculative: bool):
    """The engine's static decode step, or None (eager), and a line saying which and why."""
    if mode not in MODES:
        raise ValueError(f"unknown decode_step={mode!r}; choose from {', '.join(MODES)}")
    if mode == "eager":
        return None, "eager (asked for)"
    reason = refusal(model)
    if reason is not None:
        logging.getLogger("nanoseek.engine").warning("decode step: eager, not %s: %s", mode, reason)
        return None, f"eager ({reason})"
    if speculative:  # drafts verified (greedy) and proposed in the same graph call
        from nanoseek.engine.speculative_step import SpeculativeDecodeStep

        step = SpeculativeDecodeStep(model, cache, undecodable, compiled=mode == "compiled")
        return step, f"{mode}, speculative" + (", int8 draft head" if step.draft_head else "")
    return StaticDecodeStep(model, cache, undecodable, compiled=mode == "compiled"), mode
