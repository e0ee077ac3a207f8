"""Constrained decoding overhead: decode tokens/s with and without a JSON schema on the same random-weights model,
at batch 1 and 16-way (issue 16's target: at most 10% slower).

    python benchmarks/constrained_speed.py                        # bench-18m, its 8192-token vocabulary
    python benchmarks/constrained_speed.py --vocab 129280         # DeepSeek-V3's vocabulary size
    python benchmarks/constrained_speed.py --preset nano --new-tokens 16 --repeats 1   # a smoke run

The tokenizer is a byte-level BPE of the model's vocabulary size built from random merges (mostly of printable
ASCII): what a mask costs depends on the vocabulary's size and shape, not on the text it was trained on, and a
random model needs no trained one. The schema is an array of at least 50 objects (strings, bounded integers, an
enum, a nested object), so the grammar never ends before --new-tokens and both sides decode the same number of
tokens (the unconstrained side with ignore_eos). As in decode_speed.py, every prompt is prefilled before the clock
starts; a figure is decoded tokens / decode seconds, the median of --repeats runs, the two sides interleaved.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
from common import table, timed_decode

from nanoseek.config import preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.grammar import Constraint
from nanoseek.model import build_model

ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
        "unit": {"enum": ["celsius", "fahrenheit", "kelvin"]},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "ok": {"type": "boolean"}},
            "required": ["lat", "ok"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "count", "unit", "where"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": ITEM, "minItems": 50}},
    "required": ["items"],
    "additionalProperties": False,
}


def synthetic_tokenizer(vocab_size: int, seed: int = 0):
    """nanoseek's Tokenizer over a byte-level BPE of `vocab_size` ids: the 256 bytes, merges of random earlier
    tokens (at most 12 bytes, mostly printable ASCII), DeepSeek's added tokens."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from nanoseek.tokenizer import ADDED_TOKENS, SPECIAL_TOKENS, Tokenizer, _unicode_to_byte

    rng = random.Random(seed)
    to_unicode = {b: c for c, b in _unicode_to_byte().items()}
    tokens = [to_unicode[b] for b in range(256)]
    printable = tokens[32:127]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    while len(vocab) < vocab_size - len(ADDED_TOKENS):
        a = rng.choice(tokens if rng.random() < 0.8 else printable)
        b = rng.choice(printable if rng.random() < 0.5 else tokens)
        if len(a) + len(b) <= 12 and a + b not in vocab:
            vocab[a + b] = len(vocab)
            tokens.append(a + b)
            merges.append((a, b))
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_tokens([AddedToken(t, special=t in SPECIAL_TOKENS, normalized=False) for t in ADDED_TOKENS])
    return Tokenizer(hf)


def decode_rate(engine: Engine, prompts: list[str], params: SamplingParams) -> float:
    """Decoded tokens/s of one run: prompts prefilled (and their first tokens made) before the clock starts."""
    rate, requests = timed_decode(engine, prompts, params)
    if params.constraint is not None:  # the grammar held: no sequence ended early, so both sides decode as much
        assert all(c.finish_reason == "length" for r in requests for c in r.completions), "the grammar ended early"
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench-18m")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the preset's)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    config = preset(args.preset, **({"vocab_size": args.vocab} if args.vocab else {}))
    tokenizer = synthetic_tokenizer(config.vocab_size)
    config = preset(
        args.preset, vocab_size=config.vocab_size, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id
    )
    engine = Engine(build_model(config, seed=0), tokenizer, max_running=max(args.batches), max_step_tokens=4096)
    schema = Constraint("json_schema", SCHEMA, strict=True)
    engine.generate(["warm up"], SamplingParams(max_tokens=4, constraint=schema))  # builds llguidance's trie
    print(f"setup (model, tokenizer, llguidance trie): {time.perf_counter() - start:.1f} s", flush=True)
    print(
        f"{args.preset} ({config.vocab_size}-token vocabulary), {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; median of {args.repeats} runs, "
        f"{args.new_tokens} new tokens per sequence, temperature 1\n"
    )
    rows = []
    for batch in args.batches:
        prompts = [f"request {i}: list the readings as JSON" for i in range(batch)]
        rates: dict[str, list[float]] = {"plain": [], "schema": []}
        for repeat in range(args.repeats):
            for side, constraint in (("plain", None), ("schema", schema)):
                params = SamplingParams(
                    max_tokens=args.new_tokens, temperature=1.0, seed=repeat, ignore_eos=True, constraint=constraint
                )
                rates[side].append(decode_rate(engine, prompts, params))
        plain, constrained = statistics.median(rates["plain"]), statistics.median(rates["schema"])
        rows.append(
            {
                "batch": batch,
                "plain tok/s": f"{plain:.1f}",
                "json_schema tok/s": f"{constrained:.1f}",
                "overhead": f"{(plain / constrained - 1) * 100:+.1f}%",
            }
        )
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print("\n" + table(rows, list(rows[0])))
    print("overhead = how much longer the constrained decode takes per token (target: <= +10%)")


if __name__ == "__main__":
    main()
