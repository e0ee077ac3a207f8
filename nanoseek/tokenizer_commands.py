"""`nanoseek tokenizer train --input FILE... --vocab-size N --out DIR`: the command line of nanoseek/tokenizer.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoseek.tokenizer import _MIN_VOCAB, Tokenizer


def train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help=".txt, .jsonl, .parquet or hf://NAME")
    p.add_argument("--vocab-size", type=int, required=True, help=f"ids in the vocabulary (at least {_MIN_VOCAB})")
    p.add_argument("--out", required=True, help="tokenizer directory to write")
    p.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge")
    p.add_argument("--stats-chars", type=int, default=10_000_000, help="characters to measure tokens per character on")


def train_main(args: argparse.Namespace) -> int:
    from nanoseek.data.readers import read_documents

    for source in args.input:
        if not source.startswith("hf://") and not Path(source).exists():
            raise FileNotFoundError(f"input file {source} does not exist")
    texts = (text for source in args.input for text in read_documents(source))
    tok = Tokenizer.train(texts, args.vocab_size, min_frequency=args.min_frequency, show_progress=sys.stderr.isatty())
    tok.save_pretrained(args.out)
    chars = tokens = 0
    for text in (text for source in args.input for text in read_documents(source)):
        chars += len(text)
        tokens += len(tok.encode(text))
        if chars >= args.stats_chars:
            break
    print(f"wrote {args.out}: vocab size {tok.vocab_size} (bos {tok.bos_id}, eos {tok.eos_id}, pad {tok.pad_id})")
    print(f"{tokens / max(chars, 1):.3f} tokens per character ({chars / max(tokens, 1):.2f} characters per token)")
    return 0


def tokenizer_args(p: argparse.ArgumentParser) -> None:
    """`nanoseek tokenizer SUBCOMMAND`: one argparse level below the command registered in nanoseek/cli.py."""
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer with DeepSeek's special tokens")
    train_args(train)
    train.set_defaults(tokenizer_run=train_main)


def tokenizer_main(args: argparse.Namespace) -> int:
    run = getattr(args, "tokenizer_run", None)
    if run is None:
        raise ValueError("missing subcommand: nanoseek tokenizer train --input FILE... --vocab-size N --out DIR")
    return run(args)


COMMAND = ("tokenizer", "train a tokenizer (byte-level BPE, DeepSeek's special tokens)", tokenizer_args, tokenizer_main)
