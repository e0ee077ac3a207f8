"""DeepSeek-V4's inference cache: per layer a sliding window of keys, compressed entries, and the compressors' rows.

What a V4 layer reads at position t (model/v4_attention.py): the keys (= values) of the last `sliding_window`
tokens, and for compressed layers every complete compressed entry (HCA) or the lightning indexer's top-k of them
(CSA, scored against the indexer's own compressed keys). A compressed entry pools the compressor's projections of
its `rate` rows (CSA: also the previous window's, the overlapping "Ca" half). So the cache keeps two kinds of state:

- growing, kept for the whole sequence, paged like PagedLatentCache (`entries`): per compressed layer one entry of
  head_dim numbers per `rate` tokens, and for CSA one index key of index_head_dim numbers per entry;
- bounded, needed only near the sequence's end (`window`, in "window slots"): per layer the key of every token of
  the block, and per compressor the projected (kv | gate) rows of the window being filled (CSA, for its overlap:
  and of the one before it, a ring indexed by window parity).

A block of `block_size` tokens (rounded up to a multiple of every compress rate, so windows never straddle blocks)
owns its entries for as long as it lives; its window slot only while some sequence may still read it. That is
while the block is among the last `tail_blocks` of a sequence's block table: enough to cover the window plus the
overlapping rows behind the first token of a prefill chunk of max_step_tokens. Out of every tail, the slot is
evictable (LRU), so memory per sequence is bounded by tail_blocks window slots plus its entries.

Prefix reuse: a full block's entries and window slot are final, so a cached prefix resumes exactly when the
window slots of its last blocks (those the next token reads) are still there; `match_prefix` shortens the hit to
the longest such prefix. Forks share full blocks and copy the partial one (entries and window slot).

Tensors, per main layer: keys [window slots, block_size, head_dim]; per compressor: ring [window slots, kept, rate,
2 * width] (kv | gate rows; CSA: kept 2, width 2 dim for its overlapping pair), entries [blocks, block_size / rate,
dim]. Everything in the cache dtype (the rows too: they are the model's projections, rounded as it rounds them).
Window slot 0 and block 0 belong to nobody (padding reads).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from nanoseek.config import ModelConfig
from nanoseek.config_v4 import CSA, SLIDING
from nanoseek.engine.cache import CacheFull, PagedLatentCache, Segment

# The engine's default cap on window slots, allocated up front: V4-Flash's are 11.7 MB each (43 layers x 128 keys
# of 512 numbers, and the compressors' rows), 6 per sequence at max_step_tokens 512: 2 GiB holds 25 sequences' tails
# (more running sequences than that are preempted as for a full cache).
WINDOW_SLOT_BYTES = 2 * 1024**3


class _Compressed:
    """One compressor's storage in one layer: its projected rows (ring, window slots) and entries (blocks)."""

    def __init__(self, rate: int, dim: int, overlap: bool, window_slots: int, num_blocks: int, block_size: int, **kw):
        self.rate, self.dim, self.overlap = rate, dim, overlap
        self.kept = 2 if overlap else 1  # windows of rows kept: the one being filled (CSA: and the one before)
        width = 2 * dim if overlap else dim
        self.ring = torch.zeros(window_slots, self.kept, rate, 2 * width, **kw)  # kv | gate rows, by window
        self.entries = torch.zeros(num_blocks, block_size // rate, dim, **kw)


@dataclass
class _RatePlan:
    """The compression work of one step for the compressors of one rate keeping `kept` windows of rows."""

    ring_write: torch.Tensor  # [n] flat ring rows the step's tokens are stored at (the last `kept` windows/block)
    ring_source: torch.Tensor  # [n] those tokens' rows in the step
    windows: torch.Tensor  # [N] windows completed this step
    from_step: torch.Tensor  # [N, kept rate] bool: row j of window w (position (w + 1 - kept) rate + j) is new
    step_rows: torch.Tensor  # [N, kept rate] its row in the step (0 where not)
    ring_rows: torch.Tensor  # [N, kept rate] its flat ring row (0 where from the step or before position 0)
    entry_write: torch.Tensor  # [N] flat entry rows of the completed windows
    entry_read: list[torch.Tensor]  # per segment, the flat entry rows of all its complete windows [E]


@dataclass
class _SegmentPlan:
    rows: slice  # its tokens' rows in the step
    positions: torch.Tensor  # [L]
    key_rows: torch.Tensor  # [K] flat key rows of the window its tokens read
    key_positions: torch.Tensor  # [K]


@dataclass
class _Plan:
    key_write: torch.Tensor  # [T] flat key row of every new token
    segments: list[_SegmentPlan]
    rates: dict[tuple[int, int], _RatePlan]  # by (rate, windows kept)


class V4Cache(PagedLatentCache):
    """Allocator, prefix index and block tables as PagedLatentCache (its methods, for the blocks); V4's own tensors,
    window slots and plan. The model reads it through `store_keys`, `compress`, `window`, `entries`."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        window_slots: int,
        max_step_tokens: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        assert config.layer_types is not None and config.head_dim is not None and config.sliding_window is not None
        kinds = config.layer_types[: config.num_hidden_layers]
        rates = {config.compress_rates[k] for k in kinds if k != SLIDING} if config.compress_rates else set()
        unit = math.lcm(*rates) if rates else 1
        block_size = -(-block_size // unit) * unit  # windows never straddle blocks
        # the block pool without PagedLatentCache's tensors (num_layers=0): its allocator and prefix index only
        super().__init__(0, 1, 1, 1, num_blocks, block_size, dtype, device)
        self.sliding_window, self.head_dim = config.sliding_window, config.head_dim
        # how far before a chunk's first token its reads reach: the window, and the rows of the window being
        # compressed (CSA: plus the window before it)
        rows = [config.compress_rates[k] * (2 if k == CSA else 1) for k in kinds if k != SLIDING]
        reach = max([self.sliding_window, *rows])
        self.tail_blocks = -(-(max_step_tokens + reach) // block_size) + 1
        self.reach, self.max_step_tokens = reach, max_step_tokens
        window_slots = max(window_slots, self.tail_blocks + 2)
        kw = dict(dtype=dtype, device=device)
        self.keys = [torch.zeros(window_slots, block_size, self.head_dim, **kw) for _ in kinds]  # type: ignore[arg-type]
        self.compressed: list[dict[str, _Compressed]] = []
        for kind in kinds:
            parts = {}
            if kind != SLIDING:
                rate = config.compress_rates[kind]
                sizes = (window_slots, num_blocks, block_size)
                parts["attn"] = _Compressed(rate, self.head_dim, kind == CSA, *sizes, **kw)
                if kind == CSA:
                    parts["index"] = _Compressed(rate, config.index_head_dim, True, *sizes, **kw)
            self.compressed.append(parts)
        self.rates = sorted({(p.rate, p.kept) for ps in self.compressed for p in ps.values()})
        self.window_slots = window_slots
        self.wfree: list[int] = list(range(window_slots - 1, 0, -1))
        self.wslot = [-1] * num_blocks  # block -> its window slot (-1: none, or evicted)
        self.wref = [0] * num_blocks  # how many sequences have the block among their last tail_blocks
        self.wlru: OrderedDict[int, None] = OrderedDict()  # blocks holding a window slot, least recently read first
        self._v4plan: _Plan | None = None

    @classmethod
    def for_engine(cls, config: ModelConfig, engine, cache_tokens: int | None, block_size: int, dtype, decode_step):
        """The cache an Engine over a deepseek_v4 model uses; refuses the engine options V4 cannot serve yet."""
        if engine.speculative:
            raise ValueError(
                "speculative decoding is not available for deepseek_v4 yet (its MTP module reads the hyper-connection "
                "streams, which the engine does not keep); create the Engine with speculative=False"
            )
        if decode_step != "eager":
            raise ValueError(
                f"decode_step={decode_step!r}: the static decode step does not read deepseek_v4's cache yet; "
                "use decode_step='eager' (drop --compile)"
            )
        if cache_tokens is None:  # entries are small: four full contexts, at least 16k tokens
            cache_tokens = max(16 * 1024, 4 * engine.max_context)
        probe = cls(config, 2, block_size, 1, engine.max_step_tokens, dtype, "meta")  # the rounded block size
        size, wanted = probe.block_size, engine.max_running * (probe.tail_blocks + 1) + 1
        return cls(
            config,
            num_blocks=-(-cache_tokens // size) + 1,
            block_size=size,
            window_slots=min(wanted, WINDOW_SLOT_BYTES // probe.window_slot_bytes),
            max_step_tokens=engine.max_step_tokens,
            dtype=dtype,
            device=engine.device,
        )

    # ---- sizes ----
    @property
    def bytes_per_token(self) -> int:
        """Bytes each further token adds (entries and index keys, all layers); the window is per sequence."""
        total = sum(p.entries[0].numel() * p.entries.element_size() for ps in self.compressed for p in ps.values())
        return total // self.block_size

    @property
    def window_slot_bytes(self) -> int:
        """One window slot over all layers: block_size keys per layer + the compressors' row rings."""
        per = sum(k[0].numel() * k.element_size() for k in self.keys)
        return per + sum(p.ring[0].numel() * p.ring.element_size() for ps in self.compressed for p in ps.values())

    def memory_bytes(self) -> int:
        tensors = [*self.keys] + [t for ps in self.compressed for p in ps.values() for t in (p.ring, p.entries)]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- window slots ----
    def _take_slot(self) -> int:
        if self.wfree:
            return self.wfree.pop()
        for block in self.wlru:  # evict the least recently read slot no sequence needs any more
            if self.wref[block] == 0:
                return self._drop_slot(block)
        raise CacheFull(f"all {self.window_slots - 1} window slots are in use")

    def _drop_slot(self, block: int) -> int:
        slot, self.wslot[block] = self.wslot[block], -1
        del self.wlru[block]
        return slot

    def _count(self, blocks: list[int], delta: int) -> None:
        """A sequence's last tail_blocks blocks are the ones its next chunk may read."""
        for block in blocks[-self.tail_blocks :]:
            self.wref[block] += delta

    def _forget(self, block: int) -> None:
        """The block is free (or reused for other tokens): its window slot too."""
        if self.wslot[block] >= 0:
            self.wfree.append(self._drop_slot(block))

    # ---- allocation (PagedLatentCache's, plus window slots) ----
    def allocate(self) -> int:
        block = super().allocate()
        self._forget(block)  # it may be a cached prefix block, reused for new tokens
        try:
            self.wslot[block] = self._take_slot()
        except CacheFull:
            self.refcount[block] = 0
            self.free.append(block)
            raise
        self.wlru[block] = None
        return block

    def release(self, blocks: list[int]) -> None:
        self._count(blocks, -1)
        for block in blocks:
            self._unref(block)

    def _unref(self, block: int) -> None:
        self.refcount[block] -= 1
        if self.refcount[block] == 0 and block not in self.block_hash:
            self.free.append(block)
            self._forget(block)

    def ensure_capacity(self, blocks: list[int], num_tokens: int) -> None:
        """Grow a block table; each new block joins the sequence's tail and pushes its oldest block out. (The tail
        stays counted while allocating: the slots it needs must not be the ones evicted for the new blocks.)"""
        while len(blocks) * self.block_size < num_tokens:
            blocks.append(self.allocate())
            self.wref[blocks[-1]] += 1
            if len(blocks) > self.tail_blocks:
                self.wref[blocks[-self.tail_blocks - 1]] -= 1

    def fork(self, blocks: list[int], num_tokens: int) -> list[int]:
        """Full blocks shared, the partial last one copied (`_copy_block`: entries and window slot)."""
        new = super().fork(blocks, num_tokens)
        self._count(new, +1)
        return new

    def _copy_block(self, source: int, copy: int) -> None:
        to, frm = self.wslot[copy], self.wslot[source]
        for keys in self.keys:
            keys[to] = keys[frm]
        for part in (p for ps in self.compressed for p in ps.values()):
            part.ring[to], part.entries[copy] = part.ring[frm], part.entries[source]

    def match_prefix(self, tokens: list[int], salt: bytes = b"") -> list[int]:
        """The longest cached prefix whose last blocks (those the next token reads) still hold their window slots."""
        blocks = super().match_prefix(tokens, salt)
        while blocks and not self._resumable(blocks):
            self._unref(blocks.pop())
        self._count(blocks, +1)
        return blocks

    def _resumable(self, blocks: list[int]) -> bool:
        end = len(blocks) * self.block_size
        first = max(0, end - self.reach) // self.block_size
        return all(self.wslot[b] >= 0 for b in blocks[first:])

    def clear_prefixes(self) -> None:
        for block in self.block_hash:
            if self.refcount[block] == 0:
                self._forget(block)
        super().clear_prefixes()

    # ---- one step ----
    def plan(self, segments: list[Segment]) -> None:
        """Index tensors for one forward over these segments (tokens laid out segment after segment)."""
        bs, device = self.block_size, self.keys[0].device if self.keys else "cpu"

        def slot(blocks: list[int], p: int) -> int:
            s = self.wslot[blocks[p // bs]]
            assert s > 0, f"position {p}: its block's window slot was evicted while a sequence needed it"
            return s

        key_write, plans, offset = [], [], 0
        for seg in segments:
            end = seg.start + seg.length
            for p in range(seg.start, end):
                key_write.append(slot(seg.blocks, p) * bs + p % bs)
            lo = max(0, seg.start - self.sliding_window + 1)
            key_rows = [slot(seg.blocks, p) * bs + p % bs for p in range(lo, end)]
            for b in seg.blocks[lo // bs : (end - 1) // bs + 1]:  # read now: the last to evict
                self.wlru.move_to_end(b)
            plans.append(
                _SegmentPlan(
                    slice(offset, offset + seg.length),
                    torch.arange(seg.start, end, device=device),
                    torch.tensor(key_rows, device=device),
                    torch.arange(lo, end, device=device),
                )
            )
            offset += seg.length
        rates = {(r, k): self._plan_rate(r, k, segments, slot, device) for r, k in self.rates}
        self._v4plan = _Plan(torch.tensor(key_write, device=device), plans, rates)

    def _plan_rate(self, rate: int, kept: int, segments: list[Segment], slot, device) -> _RatePlan:
        bs, per_block = self.block_size, self.block_size // rate
        ring_write, ring_source, windows, entry_write = [], [], [], []
        from_step, step_rows, ring_rows, entry_read = [], [], [], []

        def ring_row(blocks: list[int], p: int) -> int:
            return (slot(blocks, p) * kept + (p // rate) % kept) * rate + p % rate

        def entry_row(blocks: list[int], w: int) -> int:
            return blocks[w * rate // bs] * per_block + (w * rate % bs) // rate

        offset = 0
        for seg in segments:
            start, end = seg.start, seg.start + seg.length
            for p in range(start, end):
                # only the last `kept` windows of each block up to here: all the ring holds
                last = min(end - 1, (p // bs + 1) * bs - 1)
                if p // rate > last // rate - kept:
                    ring_write.append(ring_row(seg.blocks, p))
                    ring_source.append(offset + p - start)
            for w in range(start // rate, end // rate):
                positions = range((w + 1 - kept) * rate, (w + 1) * rate)
                windows.append(w)
                from_step.append([p >= start for p in positions])
                step_rows.append([offset + p - start if p >= start else 0 for p in positions])
                ring_rows.append([ring_row(seg.blocks, p) if 0 <= p < start else 0 for p in positions])
                entry_write.append(entry_row(seg.blocks, w))
            # every complete entry, block after block (one tensor op: long contexts have many)
            table = torch.tensor(seg.blocks[: -(-end // bs)], dtype=torch.long)
            rows_of = (table.unsqueeze(-1) * per_block + torch.arange(per_block)).flatten()
            entry_read.append(rows_of[: end // rate])
            offset += seg.length

        def t(x: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype, device=device)

        def rows(x: list, dtype: torch.dtype = torch.long) -> torch.Tensor:  # [N, kept rate], N may be 0
            return t(x, dtype).view(-1, kept * rate)

        return _RatePlan(
            t(ring_write),
            t(ring_source),
            t(windows),
            rows(from_step, torch.bool),
            rows(step_rows),
            rows(ring_rows),
            t(entry_write),
            [e.to(device) for e in entry_read],
        )

    # ---- what the model calls (model/v4_attention.py) ----
    @property
    def segments(self) -> list[_SegmentPlan]:
        assert self._v4plan is not None, "call plan() before the forward pass"
        return self._v4plan.segments

    def store_keys(self, layer_idx: int, kv: torch.Tensor) -> None:
        """kv [T, head_dim]: this step's keys (= values), rotated."""
        assert self._v4plan is not None, "call plan() before the forward pass"
        keys = self.keys[layer_idx]
        keys.view(-1, self.head_dim).index_copy_(0, self._v4plan.key_write, kv.to(keys.dtype))

    def window(self, layer_idx: int, segment: _SegmentPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment's window: keys [K, head_dim] and the mask [L, K] of the ones each of its tokens reads."""
        keys = self.keys[layer_idx].view(-1, self.head_dim).index_select(0, segment.key_rows)
        offset = segment.positions.unsqueeze(-1) - segment.key_positions  # query minus key position
        return keys, (offset >= 0) & (offset < self.sliding_window)

    def compress(self, layer_idx: int, part: str, rows: torch.Tensor, pool) -> None:
        """rows [T, 2 width]: the compressor's kv | gate projections of this step's tokens. Stores them, then pools
        every window they complete: pool(rows [N, kept rate, 2 width] (CSA: the window before, then the window;
        rows before position 0 are masked by the pooling), windows [N]) -> entries [N, dim], stored."""
        store, plan = self.compressed[layer_idx][part], self._v4plan
        assert plan is not None, "call plan() before the forward pass"
        rp = plan.rates[store.rate, store.kept]
        ring = store.ring.view(-1, store.ring.shape[-1])
        if rp.windows.numel():
            rows_of = torch.where(
                rp.from_step.unsqueeze(-1), rows[rp.step_rows], ring[rp.ring_rows].to(rows.dtype)
            )  # [N, 2 rate, 2 width]
            entries = pool(rows_of, rp.windows)
            store.entries.view(-1, store.dim).index_copy_(0, rp.entry_write, entries.to(store.entries.dtype))
        ring.index_copy_(0, rp.ring_write, rows.index_select(0, rp.ring_source).to(ring.dtype))

    def entries(self, layer_idx: int, part: str, segment_index: int) -> torch.Tensor:
        """A segment's complete compressed entries [E, dim] (E = its last position + 1 // rate)."""
        store, plan = self.compressed[layer_idx][part], self._v4plan
        assert plan is not None
        return store.entries.view(-1, store.dim).index_select(
            0, plan.rates[store.rate, store.kept].entry_read[segment_index]
        )

    def rate(self, layer_idx: int) -> int:
        return self.compressed[layer_idx]["attn"].rate


def v4_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """What the engine's V4 cache adds per token of context (see V4Cache.bytes_per_token)."""
    assert config.layer_types is not None and config.head_dim is not None and config.compress_rates is not None
    total = 0
    for kind in config.layer_types[: config.num_hidden_layers]:
        if kind != SLIDING:
            width = config.head_dim + (config.index_head_dim if kind == CSA else 0)
            total += width * dtype_bytes // config.compress_rates[kind]
    return total
