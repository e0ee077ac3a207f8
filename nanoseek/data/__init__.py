"""Data pipeline: read documents, tokenise them into shards, serve resumable pretraining and SFT batches.

docs = read_documents("corpus.txt")                  # .txt / .jsonl / .parquet / hf://NAME[:CONFIG][@SPLIT]
tokenize_to_shards(docs, tokenizer, "data/shards")   # train_*.bin + val_*.bin + manifest.json
loader = TokenLoader("data/shards", "train", batch_size=8, seq_len=512, seed=0)
inputs, targets = next(loader)                       # int64 [8, 512]; loader.state_dict() to resume
sft = SFTLoader(sft_examples("chat.jsonl", tokenizer), batch_size=8, seq_len=512, seed=0)
"""

from nanoseek.data.loader import EpochBatches, TokenLoader, window_starts
from nanoseek.data.readers import (
    parse_hf_uri,
    read_documents,
    read_hf,
    read_jsonl,
    read_jsonl_records,
    read_parquet,
    read_txt,
)
from nanoseek.data.sft import IGNORE_INDEX, SFTLoader, pack_best_fit, sft_examples
from nanoseek.data.shards import load_manifest, split_of, token_dtype, tokenize_to_shards

__all__ = [
    "IGNORE_INDEX",
    "EpochBatches",
    "SFTLoader",
    "TokenLoader",
    "load_manifest",
    "pack_best_fit",
    "parse_hf_uri",
    "read_documents",
    "read_hf",
    "read_jsonl",
    "read_jsonl_records",
    "read_parquet",
    "read_txt",
    "sft_examples",
    "split_of",
    "token_dtype",
    "tokenize_to_shards",
    "window_starts",
]
