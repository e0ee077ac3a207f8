"""Deterministic, resumable pretraining batches from token shards.

Packing: BOS-aligned windows of seq_len + 1 tokens, laid out once from the document index (no token is read for
it). Walking each shard, a window starts at a document's BOS and runs seq_len + 1 tokens across whatever
documents follow. The next window starts at the first BOS at or after the previous window's last token, skipping
the tail of the document that was cut, unless that tail is longer than `max_skip` tokens (default seq_len // 8):
then the next window continues the document where the last one stopped (sharing its last token, which was only
a target there), so long documents are read whole and at most ~1/8 of the tokens are ever skipped. Windows stay
inside a shard; the last partial window of a shard is dropped.

Order: each epoch visits every window once, in the permutation `default_rng([seed, epoch])`. Global step k of an
epoch takes windows k*B*W ... (k+1)*B*W - 1 of that order (B = batch_size, W = world_size) and rank r its r-th
slice of B, so ranks see disjoint batches of one global order. The position is (epoch, step): `state_dict()`
after n batches plus `load_state_dict()` on a fresh loader yields exactly batch n + 1 of the uninterrupted run.
Tokens are read from np.memmap files, one window at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nanoseek.data.shards import load_manifest

if TYPE_CHECKING:
    from nanoseek.tokenizer import Tokenizer


class EpochBatches:
    """Shared (epoch, step) bookkeeping: subclasses say how many items an epoch has, in which order, and how a
    batch is built from item indices."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int, epochs: int | None, device: Any):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epochs = epochs
        self.device = torch.device(device)
        self.epoch = 0
        self.step = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray = np.empty(0, dtype=np.int64)

    # subclasses
    def _epoch_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def _make_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        """What must match for a saved position to mean the same batches."""
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size}

    # iteration
    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order, self._order_epoch = self._epoch_order(epoch), epoch
        return self._order

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        return len(self.order(self.epoch if epoch is None else epoch)) // (self.batch_size * self.world_size)

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self.step >= self.steps_per_epoch():
            self.epoch, self.step = self.epoch + 1, 0
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        start = self.step * self.batch_size * self.world_size + self.rank * self.batch_size
        inputs, targets = self._make_batch(self.order(self.epoch)[start : start + self.batch_size])
        self.step += 1
        return self._to_device(inputs), self._to_device(targets)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    # resume
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: saved {saved!r}, now {now!r}" for k, (saved, now) in mismatched.items())
            raise ValueError(f"cannot resume this loader from a state made for other data or settings ({details})")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def window_starts(doc_starts: np.ndarray, n_tokens: int, seq_len: int, max_skip: int) -> np.ndarray:
    """Start offsets of the BOS-aligned windows of one shard (see the module docstring)."""
    starts = []
    s = 0
    while s + seq_len + 1 <= n_tokens:
        starts.append(s)
        end = s + seq_len  # this window's last token: the next window may begin there
        j = int(np.searchsorted(doc_starts, end))
        next_bos = int(doc_starts[j]) if j < len(doc_starts) else n_tokens
        s = next_bos if next_bos - end <= max_skip else end
    return np.asarray(starts, dtype=np.int64)


class TokenLoader(EpochBatches):
    """(inputs, targets) int64 [batch_size, seq_len] batches from a shard directory's split; targets are the
    inputs shifted by one. Infinite unless `epochs` is given; `shuffle=False` reads windows in file order (for
    evaluation). `tokenizer`, when given, must be the one the shards were made with."""

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        split: str = "train",
        batch_size: int = 8,
        seq_len: int = 512,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = True,
        epochs: int | None = None,
        max_skip: int | None = None,
        tokenizer: Tokenizer | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size, epochs, device)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        manifest = load_manifest(shard_dir, tokenizer)
        if split not in manifest["splits"]:
            raise ValueError(f"{shard_dir} has no split {split!r} (splits: {', '.join(manifest['splits'])})")
        self.split, self.seq_len, self.shuffle = split, seq_len, shuffle
        self.max_skip = seq_len // 8 if max_skip is None else max_skip
        self.manifest = manifest
        dtype = np.dtype(manifest["dtype"])
        shard_dir = Path(shard_dir)
        self._tokens, shard_of, starts = [], [], []
        for i, shard in enumerate(manifest["splits"][split]["shards"]):
            self._tokens.append(np.memmap(shard_dir / shard["file"], dtype=dtype, mode="r"))
            doc_starts = np.load(shard_dir / shard["index"], mmap_mode="r")
            s = window_starts(doc_starts, shard["tokens"], seq_len, self.max_skip)
            starts.append(s)
            shard_of.append(np.full(len(s), i, dtype=np.int32))
        self._starts = np.concatenate(starts) if starts else np.empty(0, dtype=np.int64)
        self._shard_of = np.concatenate(shard_of) if shard_of else np.empty(0, dtype=np.int32)
        if len(self._starts) < batch_size * world_size:
            raise ValueError(
                f"{shard_dir} {split} split has {len(self._starts)} windows of {seq_len + 1} tokens, fewer than one "
                f"global batch ({batch_size} x {world_size} ranks): use less batch or seq_len, or more data"
            )

    @property
    def num_windows(self) -> int:
        return len(self._starts)

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "split": self.split, "seq_len": self.seq_len, "windows": self.num_windows}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_windows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)

    def _make_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        span = self.seq_len + 1
        rows = np.empty((len(indices), span), dtype=np.int64)
        for row, i in enumerate(indices):
            start = self._starts[i]
            rows[row] = self._tokens[self._shard_of[i]][start : start + span]
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
