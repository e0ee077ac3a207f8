"""The latent KV cache: MLA's compressed latent + rotary key per token, in fixed-size blocks.

Per token and layer the cache stores one vector of kv_lora_rank + qk_rope_head_dim numbers (the normalised latent
and the rotated shared key) and nothing else. Sequences own lists of blocks (a block table), so memory is
allocated as they grow, freed when they finish, and full blocks are shared:

- prefix cache: a full block is named by the hash of all tokens up to its end; a new request whose prompt starts
  with the same tokens reuses those blocks instead of recomputing them (system prompts, multi-turn chats, the G
  samples of a GRPO group);
- forks: n samples of one prompt share its blocks and copy only the partial last one.

Attention reads the blocks of each sequence in place of its past, in latent space (see attention.py's absorbed
path): for one new token per sequence, the heads become rows of one matrix product against the latents.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


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
    tables: torch.Tensor  # block tables [n, blocks], padded with block 0
    mask: torch.Tensor  # [n, t * heads, keys]: 0 where a (token, head) row may see a cached position, else -inf
    n: int
    length: int


@dataclass
class _Plan:
    write_index: torch.Tensor  # flat cache row of every new token
    groups: list[_Group] = field(default_factory=list)


class LatentCache:
    """Block pool + allocator + prefix index. One instance serves every layer of one model (MTP layers too)."""

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
    ):
        if num_blocks < 2:
            raise ValueError("the cache needs at least 2 blocks")
        self.num_layers, self.width, self.value_width, self.num_heads = num_layers, width, value_width, num_heads
        self.block_size, self.num_blocks = block_size, num_blocks
        # block 0 stays zero: padding rows of block tables point at it
        self.pool = torch.zeros(num_layers, num_blocks, block_size, width, dtype=dtype, device=device)
        self.refcount = [0] * num_blocks
        self.free: list[int] = list(range(num_blocks - 1, 0, -1))
        self.cached: OrderedDict[bytes, int] = OrderedDict()  # prefix hash -> block, in LRU order
        self.block_hash: dict[int, bytes] = {}
        self._plan: _Plan | None = None

    # ---- sizes ----
    @property
    def bytes_per_token(self) -> int:
        """Cache bytes per token over all layers (the acceptance figure: (r + rope) x dtype size x layers)."""
        return self.num_layers * self.width * self.pool.element_size()

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    def free_blocks(self) -> int:
        """Blocks obtainable now: free ones plus cached prefixes nobody uses (evictable)."""
        return len(self.free) + sum(1 for b in self.cached.values() if self.refcount[b] == 0)

    def memory_bytes(self) -> int:
        return self.pool.numel() * self.pool.element_size()

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
            self.pool[:, copy] = self.pool[:, blocks[shared]]
            new.append(copy)
        return new

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
        device, bs = self.pool.device, self.block_size
        positions = torch.cat([torch.arange(seg.start, seg.start + seg.length) for seg in segments])
        owner_blocks = torch.cat(
            [
                torch.tensor(seg.blocks, dtype=torch.long)[torch.arange(seg.start, seg.start + seg.length) // bs]
                for seg in segments
            ]
        )
        plan = _Plan((owner_blocks * bs + positions % bs).to(device))
        by_length: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            by_length.setdefault(seg.length, []).append(i)
        offsets = [0]
        for seg in segments:
            offsets.append(offsets[-1] + seg.length)
        for length, members in by_length.items():
            nb = -(-max(segments[i].start + length for i in members) // bs)
            tables = torch.zeros(len(members), nb, dtype=torch.long)
            for row, i in enumerate(members):
                blocks = segments[i].blocks[:nb]
                tables[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
            starts = torch.tensor([segments[i].start for i in members])
            query_pos = starts[:, None] + torch.arange(length)[None, :]  # [n, t]
            visible = torch.arange(nb * bs)[None, None, :] <= query_pos[:, :, None]  # causal, prefix included
            mask = torch.zeros(visible.shape, dtype=self.pool.dtype).masked_fill_(~visible, float("-inf"))
            mask = mask.repeat_interleave(self.num_heads, dim=1)  # rows are (token, head) pairs
            rows = None
            if len(by_length) > 1:
                rows = torch.cat([torch.arange(offsets[i], offsets[i] + length) for i in members]).to(device)
            plan.groups.append(_Group(rows, tables.to(device), mask.to(device), len(members), length))
        self._plan = plan

    def attend(self, layer_idx: int, query: torch.Tensor, entry: torch.Tensor, scale: float) -> torch.Tensor:
        """Store this step's entries for `layer_idx`, then attend: query [T, H, D] -> [T, H, value_width]."""
        plan = self._plan
        assert plan is not None, "call plan() before the forward pass"
        self.pool[layer_idx].view(-1, self.width).index_copy_(0, plan.write_index, entry.to(self.pool.dtype))
        heads = query.shape[1]
        if len(plan.groups) == 1:
            return self._attend_group(layer_idx, query, plan.groups[0], scale)
        out = query.new_empty(query.shape[0], heads, self.value_width)
        for group in plan.groups:
            out.index_copy_(
                0, group.rows, self._attend_group(layer_idx, query.index_select(0, group.rows), group, scale)
            )
        return out

    def _attend_group(self, layer_idx: int, query: torch.Tensor, group: _Group, scale: float) -> torch.Tensor:
        # one shared latent key per token (MQA in latent space): the heads of all of a sequence's new tokens
        # become rows of one product against its cached latents
        keys = self.pool[layer_idx][group.tables].view(group.n, -1, self.width).to(query.dtype)  # [n, L, D]
        q = query.reshape(group.n, group.length * query.shape[1], self.width)
        # three kernels (scores + mask, softmax, values): cheaper than SDPA's general path for these small shapes
        scores = torch.baddbmm(group.mask.to(q.dtype), q, keys.transpose(1, 2), alpha=scale)
        out = torch.bmm(torch.softmax(scores, dim=-1), keys[..., : self.value_width])
        return out.view(group.n * group.length, query.shape[1], self.value_width)
