"""Supervised fine-tuning data: chat JSONL -> (ids, loss_mask) examples -> packed, resumable batches.

Packing: each epoch shuffles the examples (`default_rng([seed, epoch])`), then packs them best-fit decreasing
into rows of seq_len + 1 tokens (longest first, each into the fullest row it still fits; ties keep the shuffled
order) and shuffles the rows. An example is never split across rows. One row gives seq_len inputs and the next
tokens as targets; a target is -100 where the example's loss mask is 0, at padding, and where the next token
belongs to another example (an example's last token predicts nothing). Examples longer than seq_len + 1 tokens
are truncated to seq_len + 1 (they lose their end, EOS included); one whose kept part has nothing to learn is
skipped. Both are counted (`truncated`, `skipped`) and reported in one warning. Batches, ranks and
state_dict/load_state_dict follow `EpochBatches` (nanoseek/data/loader.py).
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nanoseek.data.loader import EpochBatches
from nanoseek.data.readers import read_jsonl_records
from nanoseek.model.loss import IGNORE_INDEX  # targets the loss skips

if TYPE_CHECKING:
    from nanoseek.tokenizer import Tokenizer

Example = tuple[list[int], list[int]]  # (ids, loss_mask)


def sft_examples(jsonl_path: str | os.PathLike, tokenizer: Tokenizer, last_turn_only: bool = False) -> list[Example]:
    """(ids, loss_mask) for each `{"messages": [...], "tools": [...]}` line of a chat JSONL file (OpenAI's chat
    shape: assistant `tool_calls`, `tool` messages with results; see `Tokenizer.render_training_example`); errors
    name the file and line."""
    if not os.path.isfile(jsonl_path):
        raise FileNotFoundError(f"SFT file {jsonl_path} does not exist")
    examples = []
    for lineno, record in read_jsonl_records(jsonl_path):
        where = f"{jsonl_path}:{lineno}"
        if "messages" not in record:
            raise ValueError(f"{where}: no 'messages' list (keys: {', '.join(record)})")
        try:
            tools = record.get("tools")  # OpenAI tool definitions, shown in the system prompt
            examples.append(tokenizer.render_training_example(record["messages"], last_turn_only, tools=tools))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
    if not examples:
        raise ValueError(f"{jsonl_path} has no examples")
    return examples


def pack_best_fit(lengths: Sequence[int], order: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of example indices, best-fit decreasing: longest first (stable, so ties keep `order`), each into the
    row with the least room that still fits it, or a new row."""
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row index), sorted
    smallest = min((lengths[i] for i in order), default=0)
    for i in sorted(order, key=lambda i: -lengths[i]):
        n = lengths[i]
        k = bisect.bisect_left(open_rows, (n, -1))
        if k < len(open_rows):
            room, r = open_rows.pop(k)
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n >= smallest:  # a row nothing can fill any more leaves the search list
            bisect.insort(open_rows, (room - n, r))
    return rows


class SFTLoader(EpochBatches):
    """(inputs, targets) int64 [batch_size, seq_len] batches of packed SFT examples (see the module docstring).
    `pad_id` fills inputs after the last example of a row (its value never matters: those targets are -100 and
    no real token attends to it)."""

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        pad_id: int = 0,
        epochs: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size, epochs, device)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len, self.pad_id = seq_len, pad_id
        self.tokens: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []  # token at a learned position, -100 elsewhere
        self.truncated = self.skipped = 0
        for n, (ids, mask) in enumerate(examples):
            if len(ids) != len(mask):
                raise ValueError(f"example {n}: {len(ids)} ids but {len(mask)} mask values")
            self._add(ids, mask)
        if self.truncated or self.skipped:
            warnings.warn(
                f"SFT: {self.truncated} of {len(examples)} examples longer than seq_len + 1 = {seq_len + 1} tokens "
                f"were truncated, {self.skipped} skipped (nothing to learn)",
                stacklevel=2,
            )
        self.lengths = [len(t) for t in self.tokens]
        rows = len(self.order(0))
        if rows < batch_size * world_size:
            raise ValueError(
                f"{len(self.tokens)} usable examples pack into {rows} rows of {seq_len + 1} tokens, fewer than one "
                f"global batch ({batch_size} x {world_size} ranks)"
            )

    def _add(self, ids: Sequence[int], mask: Sequence[int]) -> None:
        tokens = np.asarray(ids, dtype=np.int64)[: self.seq_len + 1]
        learn = np.asarray(mask, dtype=bool)[: self.seq_len + 1]
        learn[0] = False  # an example's first token has nothing before it in the example to predict it from
        self.truncated += len(ids) > self.seq_len + 1
        if not learn.any():
            self.skipped += 1
            return
        self.tokens.append(tokens)
        self.labels.append(np.where(learn, tokens, IGNORE_INDEX))

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "seq_len": self.seq_len, "examples": len(self.tokens)}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # The packed rows themselves are the items of an epoch; keep them alongside the order.
        rng = np.random.default_rng([self.seed, epoch])
        rows = pack_best_fit(self.lengths, rng.permutation(len(self.tokens)).tolist(), self.seq_len + 1)
        self._rows = [rows[i] for i in rng.permutation(len(rows))]
        return np.arange(len(self._rows))

    def rows(self, epoch: int) -> list[list[int]]:
        """The packed rows (lists of example indices) of an epoch, in the order they are served."""
        self.order(epoch)
        return self._rows

    def packing_efficiency(self, epoch: int = 0) -> float:
        """Fraction of row tokens that are example tokens rather than padding."""
        return sum(self.lengths) / (len(self.rows(epoch)) * (self.seq_len + 1))

    def _make_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        span = self.seq_len + 1
        tokens = np.full((len(indices), span), self.pad_id, dtype=np.int64)
        labels = np.full((len(indices), span), IGNORE_INDEX, dtype=np.int64)
        for row, r in enumerate(indices):
            pos = 0
            for i in self._rows[r]:
                n = self.lengths[i]
                tokens[row, pos : pos + n] = self.tokens[i]
                labels[row, pos : pos + n] = self.labels[i]
                pos += n
        # labels[i] belongs to token i, so the target of input position i is labels[i + 1]; an example's first
        # token is never learned, so no target crosses from one example into the next.
        return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(labels[:, 1:])
