"""Tokenise documents into flat token shards with a JSON manifest.

Layout of a shard directory::

    manifest.json         dtype, vocab size, BOS id, tokenizer fingerprint, per split: shards, tokens, documents
    train_00000.bin       flat token ids (uint16 when the vocabulary fits, else uint32), documents back to back,
    train_00000.idx.npy   each starting with BOS; the .idx.npy holds each document's start offset (int64)
    val_00000.bin ...

Shards hold whole documents (a shard is closed once it reaches `shard_tokens`), so a document never spans two
files. A document goes to the validation split when a hash of its text falls below `val_fraction`: the split
does not depend on the order of the documents, and duplicates land on the same side. Every file is written to a
temporary name and renamed, and the manifest is removed first and written last, so an interrupted run leaves
no manifest rather than one pointing at half-written shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nanoseek.tokenizer import Tokenizer

MANIFEST = "manifest.json"
FORMAT = "nanoseek-tokens"
VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def split_of(text: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the document's text (order-independent, deterministic)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") < val_fraction * 2**64 else "train"


class _SplitWriter:
    """Buffers one split's documents and writes them out a shard at a time."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.docs: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: list[int]) -> None:
        self.docs.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.docs:
            return
        name = f"{self.split}_{len(self.shards):05d}"
        lengths = np.array([len(d) for d in self.docs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        _atomic(self.out_dir / f"{name}.bin", lambda f: np.concatenate(self.docs).tofile(f))
        _atomic(self.out_dir / f"{name}.idx.npy", lambda f: np.save(f, starts))
        shard = {"file": f"{name}.bin", "index": f"{name}.idx.npy", "tokens": int(lengths.sum())}
        self.shards.append({**shard, "documents": len(self.docs)})
        self.docs, self.buffered = [], 0

    def summary(self) -> dict[str, Any]:
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "documents": sum(s["documents"] for s in self.shards),
            "shards": self.shards,
        }


def tokenize_to_shards(
    documents: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    shard_tokens: int = 2**24,
    val_fraction: float = 0.01,
    batch_documents: int = 512,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Tokenise `documents` (BOS + ids each) into train/val shards under `out_dir`; returns the manifest.

    Empty documents are skipped. `progress`: a tqdm bar (default: only when stderr is a terminal).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: _SplitWriter(out, split, dtype, shard_tokens) for split in SPLITS}
    bar = _progress(progress)
    for batch in _batches((d for d in documents if d), batch_documents):
        for text, ids in zip(batch, tokenizer.encode_batch(batch, add_bos=True), strict=True):
            writers[split_of(text, val_fraction)].add(ids)
        bar.update(len(batch))
    bar.close()
    for writer in writers.values():
        writer.flush()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer": {"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size},
        "val_fraction": val_fraction,
        "splits": {split: w.summary() for split, w in writers.items()},
    }
    _atomic(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode("utf-8")))
    return manifest


def load_manifest(shard_dir: str | os.PathLike, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """Read and check a shard directory's manifest: format, files present and complete, and (when a tokenizer is
    given) that the shards were made with it."""
    shard_dir = Path(shard_dir)
    path = shard_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {shard_dir} (not tokenised yet, or tokenisation was interrupted)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{VERSION} manifest")
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            file = shard_dir / shard["file"]
            if not file.is_file() or not (shard_dir / shard["index"]).is_file():
                raise FileNotFoundError(f"{split} shard {file} (or its index) listed in {path} is missing")
            if file.stat().st_size != shard["tokens"] * itemsize:
                raise ValueError(f"{file} has {file.stat().st_size} bytes, expected {shard['tokens'] * itemsize}")
    if tokenizer is not None and manifest["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
        raise ValueError(
            f"{shard_dir} was tokenised with another tokenizer (fingerprint {manifest['tokenizer']['fingerprint']}, "
            f"vocab {manifest['tokenizer']['vocab_size']}; this one: {tokenizer.fingerprint}, vocab "
            f"{tokenizer.vocab_size}): re-tokenise the data"
        )
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _atomic(path: Path, write: Any) -> None:
    """Write through `write(file)` to a temporary name, then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_previous(out: Path) -> None:
    """Drop an earlier run's manifest first (so no manifest ever points at a half-rewritten shard), then its shards."""
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        files = [s[k] for info in old["splits"].values() for s in info["shards"] for k in ("file", "index")]
    except (json.JSONDecodeError, KeyError, TypeError):
        files = []
    path.unlink()
    for name in files:
        (out / Path(name).name).unlink(missing_ok=True)


def _progress(enabled: bool | None) -> Any:
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(desc="tokenizing", unit="doc", disable=not enabled)
