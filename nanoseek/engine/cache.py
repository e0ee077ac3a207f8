"""The paged inference cache: what attention needs of each past token, in fixed-size blocks.

Per token and layer the cache stores `kv_heads` entries (see `ModelConfig.cache_spec`) and nothing else:
- MLA (DeepSeek-V2/V3): one entry of kv_lora_rank + qk_rope_head_dim numbers, the normalised latent and the
  rotated shared key, whose first kv_lora_rank numbers double as the value;
- GQA (Qwen2, Llama): per kv head, its rotated key and its value (2 x head_dim numbers);
- V3.2: MLA's entry, and the lightning indexer's key (index_head_dim numbers) in a pool of its own per layer with the
  same block ids, so block tables, prefix reuse, forks and freeing cover it with no bookkeeping of its own.
Sequences own lists of blocks (a block table), so memory is allocated as they grow, freed when they finish, and
full blocks are shared:

- prefix cache: a full block is named by the hash of all tokens up to its end; a new request whose prompt starts
  with the same tokens reuses those blocks instead of recomputing them (system prompts, multi-turn chats, the G
  samples of a GRPO group);
- forks: n samples of one prompt share its blocks and copy only the partial last one.

Attention reads the blocks of each sequence in place of its past: for each kv head, the query heads that share it
(all heads, for MLA's latent space, see attention.py's absorbed path) and all of a sequence's new tokens become
rows of one matrix product against that kv head's cached entries.

V3.2 (an `IndexQuery` given): a decode step, or any group whose t x index_topk entries are at most its context,
scores the index keys of the visible context (read block by block from the index pool), keeps each token's top-k
and gathers just those entries: attention then costs O(index_topk) per token at any context, the scoring
O(context) at the indexer's narrow width. Long prefill chunks attend over the whole context under a top-k mask instead.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from nanoseek.config import ModelConfig
from nanoseek.model.indexer import IndexQuery, index_scores, top_k_indices, top_k_visible


class CacheFull(RuntimeError):
    """No free block is left: the scheduler should wait for running sequences to finish (or preempt)."""


@dataclass
class Segment:
    """New tokens of one sequence in a forward step: positions start .. start + length - 1."""

    blocks: list[int]
    start: int
    length: int


@dataclass
class _Group:
    """Segments with the same number of new tokens, attended together."""

    rows: torch.Tensor | None  # their tokens' rows in the step (None: all rows, in order)
    tables: torch.Tensor  # (kv head, block) rows [kv_heads * n, blocks] of the block tables, padded with block 0
    mask: torch.Tensor  # [kv_heads * n, t * heads / kv_heads, keys]: 0 where a (token, head) row may see a
    # cached position, else -inf
    visible: torch.Tensor  # [n, t, keys] bool: the mask's causal pattern per token (V3.2's top-k reads it)
    n: int
    length: int
    slots: torch.Tensor | None = None  # V3.2: [n, keys] flat pool row of each position (gathers by index_select)


@dataclass
class _Plan:
    write_index: torch.Tensor  # flat pool row of every new token's entry for each kv head
    groups: list[_Group] = field(default_factory=list)


class PagedLatentCache:
    """Block pool + allocator + prefix index. One instance serves every layer of one model (MTP layers too).

    Each layer's pool is its own tensor [kv_heads, blocks, block_size, entry_width]: gathering a sequence's blocks
    gives each kv head's entries contiguously, ready for a batched product. One buffer per layer, not one stacked
    buffer, because the compiled decode step (step.py) writes each layer's pool in place: views of one stacked
    buffer alias each other, and torch.compile then copies the whole cache per layer and step (-24% at 2k context).

    V3.2's index keys live in `index_pools[layer]` [blocks, block_size, index_width], not in the entries: a decode
    step reads every visible token's index key, and as contiguous blocks of block_size x index_width numbers that is
    one memcpy per block, where a column slice of the entries is a strided copy per token (2 ms of a 10 ms step at
    16k context on bench-18m-v32, measured). Attention then reads only the k chosen entries.
    """

    def __init__(
        self,
        num_layers: int,
        width: int,
        value_width: int,
        num_heads: int,
        num_blocks: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        num_kv_heads: int = 1,
        value_offset: int = 0,
        index_width: int = 0,
    ):
        """width: the key's numbers at the start of each entry; values are entry[value_offset : + value_width];
        index_width: V3.2's index key, stored in `index_pools` (attend's entries carry it after the entry)."""
        if num_blocks < 2:
            raise ValueError("the cache needs at least 2 blocks")
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} kv heads evenly")
        self.num_layers, self.width, self.value_width, self.num_heads = num_layers, width, value_width, num_heads
        self.num_kv_heads, self.value_offset = num_kv_heads, value_offset
        self.entry_width = max(width, value_offset + value_width)
        self.index_width = index_width
        if index_width and num_kv_heads != 1:
            raise ValueError("index keys (V3.2) need MLA's single kv head")
        self.block_size, self.num_blocks = block_size, num_blocks
        # block 0 belongs to nobody: padding rows of block tables point at it (always under a -inf mask), and the
        # static decode step writes its padding rows' entries there
        self.pools = [
            torch.zeros(num_kv_heads, num_blocks, block_size, self.entry_width, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]
        # V3.2: the index keys, same block ids as `pools` (block 0 again nobody's)
        self.index_pools = [
            torch.zeros(num_blocks, block_size, index_width, dtype=dtype, device=device)
            for _ in range(num_layers if index_width else 0)
        ]
        self.refcount = [0] * num_blocks
        self.free: list[int] = list(range(num_blocks - 1, 0, -1))
        self.cached: OrderedDict[bytes, int] = OrderedDict()  # prefix hash -> block, in LRU order
        self.block_hash: dict[int, bytes] = {}
        self._plan: _Plan | None = None

    @classmethod
    def for_model(
        cls, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device | str
    ) -> PagedLatentCache:
        """The cache `config.cache_spec` describes."""
        spec = config.cache_spec
        return cls(
            num_layers=spec.layers,
            width=spec.key_width,
            value_width=spec.value_width,
            num_heads=config.num_attention_heads,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=device,
            num_kv_heads=spec.kv_heads,
            value_offset=spec.value_offset,
            index_width=spec.index_width,
        )

    # ---- sizes ----
    @property
    def bytes_per_token(self) -> int:
        """Cache bytes per token over all layers: MLA (r + rope [+ V3.2's index key]) x dtype size x layers; GQA
        2 x head_dim x kv heads x dtype size x layers."""
        width = self.num_kv_heads * self.entry_width + self.index_width
        return self.num_layers * width * self.pools[0].element_size()

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    def free_blocks(self) -> int:
        """Blocks obtainable now: free ones plus cached prefixes nobody uses (evictable)."""
        return len(self.free) + sum(1 for b in self.cached.values() if self.refcount[b] == 0)

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in [*self.pools, *self.index_pools])

    # ---- allocation ----
    def allocate(self) -> int:
        if self.free:
            block = self.free.pop()
        else:
            block = next((b for b in self.cached.values() if self.refcount[b] == 0), None)
            if block is None:
                raise CacheFull(f"all {self.num_blocks - 1} cache blocks are in use")
            del self.cached[self.block_hash.pop(block)]
        self.refcount[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refcount[block] -= 1
            if self.refcount[block] == 0 and block not in self.block_hash:
                self.free.append(block)

    def ensure_capacity(self, blocks: list[int], num_tokens: int) -> None:
        """Grow a block table (in place) to hold num_tokens.

        Shared blocks are always full ones (prefix hits stop before the prompt's last token; forks copy the partial
        block), and full blocks are never written again, so no copy-on-write is needed.
        """
        while len(blocks) * self.block_size < num_tokens:
            blocks.append(self.allocate())

    def fork(self, blocks: list[int], num_tokens: int) -> list[int]:
        """A copy of a sequence's cache: full blocks shared, the partial last block copied."""
        shared = num_tokens // self.block_size
        new = list(blocks[:shared])
        for b in new:
            self.refcount[b] += 1
        if num_tokens % self.block_size:
            copy = self.allocate()
            self._copy_block(blocks[shared], copy)
            new.append(copy)
        return new

    def _copy_block(self, source: int, copy: int) -> None:
        """Everything the cache keeps for block `source`, into block `copy` (a fork's partial last block)."""
        for pool in self.pools:
            pool[:, copy] = pool[:, source]
        for pool in self.index_pools:
            pool[copy] = pool[source]

    # ---- prefix cache ----
    @staticmethod
    def block_hashes(tokens: list[int], block_size: int, parent: bytes = b"") -> list[bytes]:
        """Hash of each full block of tokens, chained so a block's name covers everything before it."""
        hashes = []
        for start in range(0, len(tokens) - block_size + 1, block_size):
            parent = hashlib.blake2b(
                parent + repr(tokens[start : start + block_size]).encode(), digest_size=16
            ).digest()
            hashes.append(parent)
        return hashes

    def match_prefix(self, tokens: list[int], salt: bytes = b"") -> list[int]:
        """Blocks holding the longest cached prefix of `tokens` (taken: caller owns a reference to each)."""
        blocks = []
        for h in self.block_hashes(tokens, self.block_size, salt):
            block = self.cached.get(h)
            if block is None:
                break
            self.cached.move_to_end(h)
            self.refcount[block] += 1
            blocks.append(block)
        return blocks

    def clear_prefixes(self) -> None:
        """Drop the prefix index; unused cached blocks become free."""
        for block in self.block_hash:
            if self.refcount[block] == 0:
                self.free.append(block)
        self.cached.clear()
        self.block_hash.clear()

    def register(self, hashes: list[bytes], blocks: list[int]) -> None:
        """Offer full blocks (named by their prefix hashes) for reuse by later requests."""
        for h, block in zip(hashes, blocks):
            if h in self.cached or block in self.block_hash:
                continue
            self.cached[h] = block
            self.block_hash[block] = h

    # ---- attention ----
    def plan(self, segments: list[Segment]) -> None:
        """Index tensors for one forward over these segments (tokens laid out segment after segment)."""
        device, bs = self.pools[0].device, self.block_size
        # built as Python lists and turned into tensors once: per-segment tensors cost more than the decode step
        slots = torch.tensor(
            [seg.blocks[p // bs] * bs + p % bs for seg in segments for p in range(seg.start, seg.start + seg.length)]
        )
        # flat (kv head, block, slot) rows of the pool, token-major like the entries: [T * kv_heads]
        heads = torch.arange(self.num_kv_heads) * (self.num_blocks * bs)
        plan = _Plan((slots[:, None] + heads[None, :]).flatten().to(device))
        by_length: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            by_length.setdefault(seg.length, []).append(i)
        offsets = [0]
        for seg in segments:
            offsets.append(offsets[-1] + seg.length)
        for length, members in by_length.items():
            nb = -(-max(segments[i].start + length for i in members) // bs)
            padded = [segments[i].blocks[:nb] + [0] * (nb - len(segments[i].blocks[:nb])) for i in members]
            tables = torch.tensor(padded, dtype=torch.long)
            starts = torch.tensor([segments[i].start for i in members])
            query_pos = starts[:, None] + torch.arange(length)[None, :]  # [n, t]
            visible = torch.arange(nb * bs)[None, None, :] <= query_pos[:, :, None]  # causal, prefix included
            mask = torch.zeros(visible.shape, dtype=self.pools[0].dtype).masked_fill_(~visible, float("-inf"))
            # rows are (token, query head of one kv head) pairs; the batch is (kv head, sequence)
            mask = mask.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            if self.num_kv_heads > 1:
                mask = mask.repeat(self.num_kv_heads, 1, 1)
            rows = None
            if len(by_length) > 1:
                rows = torch.cat([torch.arange(offsets[i], offsets[i] + length) for i in members]).to(device)
            # (kv head, block) rows of the pool: each kv head's block tables, kv-head-major
            tables = (tables[None] + torch.arange(self.num_kv_heads)[:, None, None] * self.num_blocks).flatten(0, 1)
            group = _Group(rows, tables.to(device), mask.to(device), visible.to(device), len(members), length)
            if self.index_width:  # MLA (one kv head): tables are block ids, and block * block_size + offset the pool
                # row of every padded position (index_pools' flat rows too)
                group.slots = (group.tables[:, :, None] * bs + torch.arange(bs, device=device)).flatten(1)
            plan.groups.append(group)
        self._plan = plan

    def attend(
        self, layer_idx: int, query: torch.Tensor, entry: torch.Tensor, scale: float, index: IndexQuery | None = None
    ) -> torch.Tensor:
        """Store this step's entries [T, kv_heads * entry_width (+ index_width: V3.2's index key)] for `layer_idx`,
        then attend: query [T, H, width] -> [T, H, value_width]. With `index` (V3.2), only to each token's top-k
        entries."""
        plan = self._plan
        assert plan is not None, "call plan() before the forward pass"
        pool = self.pools[layer_idx]
        if self.index_width:  # one kv head: write_index is each token's block * block_size + offset in both pools
            entry, key = entry.split([self.entry_width, self.index_width], dim=-1)
            keys = self.index_pools[layer_idx]
            keys.view(-1, self.index_width).index_copy_(0, plan.write_index, key.to(keys.dtype))
        rows = pool.view(-1, self.entry_width)
        rows.index_copy_(0, plan.write_index, entry.reshape(-1, self.entry_width).to(pool.dtype))
        heads = query.shape[1]
        if len(plan.groups) == 1:
            return self._attend_group(layer_idx, query, plan.groups[0], scale, index)
        out = query.new_empty(query.shape[0], heads, self.value_width)
        for group in plan.groups:
            rows = group.rows
            assert rows is not None
            part = None if index is None else IndexQuery(index.query[rows], index.weights[rows], index.topk)
            out.index_copy_(0, rows, self._attend_group(layer_idx, query.index_select(0, rows), group, scale, part))
        return out

    def _attend_group(
        self, layer_idx: int, query: torch.Tensor, group: _Group, scale: float, index: IndexQuery | None = None
    ) -> torch.Tensor:
        # for each kv head, the query heads sharing it over all of a sequence's new tokens become rows of one
        # product against its cached entries (MLA: one shared latent key, so all heads)
        kv, n, t = self.num_kv_heads, group.n, group.length
        if index is not None:
            keys_total = group.tables.shape[1] * self.block_size
            if index.topk >= keys_total:  # top-k keeps every visible token: the causal mask, no scoring needed
                index = None
            elif t * index.topk <= keys_total:  # t x k gathered entries read no more than the whole context
                return self._attend_selected(layer_idx, query, group, scale, index)
        blocks = self.pools[layer_idx].view(-1, self.block_size, self.entry_width)  # (kv head, block) rows
        entries = blocks[group.tables].view(kv * n, -1, self.entry_width).to(query.dtype)  # [kv * n, keys, entry]
        keys = entries if self.width == self.entry_width else entries[..., : self.width]
        values = entries[..., self.value_offset : self.value_offset + self.value_width]
        q = self._fold(query, n, t)  # [kv * n, t * H / kv, width]
        mask = group.mask if index is None else self._select(layer_idx, group, index)
        # scores [kv * n, t * H / kv, keys] = q @ keys^T + mask; softmax; @ values [kv * n, keys, value_width]:
        # three kernels, cheaper than SDPA's general path for these small shapes
        scores = torch.baddbmm(mask.to(q.dtype), q, keys.transpose(1, 2), alpha=scale)
        return self._unfold(torch.bmm(torch.softmax(scores, dim=-1), values), n, t)

    def _index_scores(self, index_keys: torch.Tensor, group: _Group, index: IndexQuery) -> torch.Tensor:
        """index_keys [n, keys, Di] -> I [n, t, keys] for the group's tokens (see indexer.py)."""
        n, t = group.n, group.length
        return index_scores(index.query.view(n, t, *index.query.shape[1:]), index.weights.view(n, t, -1), index_keys)

    def _attend_selected(
        self, layer_idx: int, query: torch.Tensor, group: _Group, scale: float, index: IndexQuery
    ) -> torch.Tensor:
        """V3.2's sparse attention by gathering (MLA: one kv head): score the context's index keys, then attend over
        each token's top-k entries only, so attention costs O(k) per token however long the context; the scoring
        stays O(context) but reads only the index pool. query [n * t, H, width] -> [n * t, H, value_width].

        The same tokens as the masked path (`_select`: same scores, same `top_k_indices`), in another order: equal
        results up to the summation order of the softmax."""
        n, t, k, slots = group.n, group.length, index.topk, group.slots
        assert slots is not None, "plan() makes slots for caches with index keys"
        flat = self.pools[layer_idx].view(-1, self.entry_width)
        scores = self._index_scores(self._index_keys(layer_idx, group), group, index)
        chosen, valid = top_k_indices(scores, group.visible, k)  # [n, t, k]
        rows = slots.gather(1, chosen.view(n, t * k))  # flat pool rows [n, t * k]
        entries = flat.index_select(0, rows.flatten()).view(n * t, k, -1).to(query.dtype)  # [n * t, k, entry]
        keys = entries[..., : self.width]
        values = entries[..., self.value_offset : self.value_offset + self.value_width]
        mask = torch.zeros(valid.shape, dtype=query.dtype, device=query.device).masked_fill_(~valid, float("-inf"))
        scores = torch.baddbmm(mask.view(n * t, 1, k), query, keys.transpose(1, 2), alpha=scale)  # [n * t, H, k]
        return torch.bmm(torch.softmax(scores, dim=-1), values)

    def _index_keys(self, layer_idx: int, group: _Group) -> torch.Tensor:
        """The index keys of the group's padded block tables [n, keys, Di]: whole blocks, each one contiguous
        block_size x Di chunk (tables hold block ids: one kv head)."""
        blocks = self.index_pools[layer_idx].index_select(0, group.tables.flatten())
        return blocks.view(group.n, -1, self.index_width)

    def _select(self, layer_idx: int, group: _Group, index: IndexQuery) -> torch.Tensor:
        """V3.2 by masking, for groups of many tokens (long prefills, where t x k entries would outweigh the
        context): the group's mask narrowed to each token's top-k visible entries (MLA: one kv head).
        -> mask [n, t * H, keys]."""
        heads = self.num_heads
        scores = self._index_scores(self._index_keys(layer_idx, group), group, index)
        selected = top_k_visible(scores, group.visible, index.topk)
        mask = torch.zeros(selected.shape, dtype=group.mask.dtype, device=selected.device)
        return mask.masked_fill_(~selected, float("-inf")).repeat_interleave(heads, dim=1)

    def _fold(self, query: torch.Tensor, n: int, t: int) -> torch.Tensor:
        """[n * t, H, width] -> [kv * n, t * H / kv, width]: rows (token, query head) per (kv head, sequence)."""
        if self.num_kv_heads == 1:
            return query.reshape(n, -1, self.width)
        kv = self.num_kv_heads
        folded = query.reshape(n, t, kv, -1, self.width).permute(2, 0, 1, 3, 4)  # [kv, n, t, H / kv, width]
        return folded.reshape(kv * n, -1, self.width)

    def _unfold(self, out: torch.Tensor, n: int, t: int) -> torch.Tensor:
        """_fold's inverse for the attention output: [kv * n, t * H / kv, value_width] -> [n * t, H, value_width]."""
        if self.num_kv_heads == 1:
            return out.view(n * t, -1, self.value_width)
        kv = self.num_kv_heads
        return out.view(kv, n, t, -1, self.value_width).permute(1, 2, 0, 3, 4).reshape(n * t, -1, self.value_width)
