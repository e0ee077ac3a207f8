"""The `nanoseek` command. Each subcommand lives next to the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from nanoseek.configargs import override

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="a preset name (nano, tiny, bench-18m, deepseek-v3, r1-distill-qwen-1.5b, ...) or a checkpoint directory",
    )
    p.add_argument("--seq-len", type=int, default=2048, help="context length for the FLOPs estimate")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nanoseek.config import PRESETS, ModelConfig, preset
    from nanoseek.model.sizes import (
        cache_bytes_per_token_at,
        flops_per_token,
        latent_cache_bytes_per_token,
        parameter_counts,
    )

    if args.model in PRESETS:
        config = preset(args.model)
    elif Path(args.model).is_dir():
        config = ModelConfig.from_json(Path(args.model) / "config.json")
    else:
        raise ValueError(f"{args.model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    info = {
        "parameters": parameter_counts(config).as_dict(),
        "train_flops_per_token": flops_per_token(config, args.seq_len, training=True),
        "cache_bytes_per_token_bf16": latent_cache_bytes_per_token(config, 2),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p = info["parameters"]
    cache = info["cache_bytes_per_token_bf16"]
    print(
        f"parameters: {p['total'] / 1e6:,.1f}M total, {p['active'] / 1e6:,.1f}M active per token, "
        f"MTP +{p['mtp'] / 1e6:,.1f}M"
    )
    print(f"training FLOPs per token at {args.seq_len} context: {info['train_flops_per_token'] / 1e9:,.3f} GFLOP")
    if config.is_v4:
        print(
            f"cache (bf16, engine/cache_v4.py): a {config.sliding_window}-token window per layer and the compressors' "
            f"unpooled rows ({cache['window_all_layers'] + cache['state_all_layers']:,} bytes per sequence) + "
            f"{cache['growing_per_token']:,} bytes per token of compressed entries and index keys (multi-head "
            f"attention would need {cache['mha_per_token']:,})"
        )
        at = {n: cache_bytes_per_token_at(config, n) for n in (128 * 1024, 1024 * 1024)}
        print("  per token of one sequence: " + ", ".join(f"{v:,.0f} bytes at {n // 1024}k" for n, v in at.items()))
        print("decode step: eager only (--compile is refused: V4's window and compressed cache have no static step)")
        return 0
    mla, mha = cache["mla_all_layers"], cache["mha_all_layers"]
    kind = "latent cache (MLA)" if config.uses_mla else f"key/value cache ({config.num_key_value_heads} kv heads)"
    index = cache["index_all_layers"]
    if index:  # V3.2: every token's index key is cached beside its latent, and counts against the cache
        kind = f"latent cache (MLA) + index key (latent {mla - index:,} + index key {index:,})"
    print(f"{kind} per token (bf16): {mla:,} bytes (multi-head attention would need {mha:,}: {mha / mla:.1f}x)")
    if config.has_indexer:
        print(
            f"  attention reads at most {config.index_topk} tokens; {config.index_n_heads} index heads x "
            f"{config.index_head_dim} score every one"
        )
    print(
        "decode step with --compile: one static graph per batch bucket (1-32), fp32/bf16 and int8 (unpacked copy, "
        "eager above 2 GiB of int8 weights); with --speculative, greedy requests verify the MTP draft and propose the "
        "next in one graph call (sampled ones do not draft: plain compiled steps)"
    )
    return 0


def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="preset name (see `nanoseek info`)")
    p.add_argument("out", help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        type=override,
        metavar="FIELD=VALUE",
        help="override config fields, e.g. --set num_hidden_layers=4 vocab_size=4096",
    )


def _init(args: argparse.Namespace) -> int:
    from nanoseek.config import preset
    from nanoseek.model import build_model

    model = build_model(preset(args.preset, **dict(args.set)), seed=args.seed)
    model.save_pretrained(args.out)
    print(f"wrote a randomly initialised {args.preset} checkpoint to {args.out}")
    return 0


def commands() -> list[Command]:
    from nanoseek import server, speedrun, tokenizer_commands
    from nanoseek.engine import commands as engine_commands
    from nanoseek.eval import commands as eval_commands
    from nanoseek.train import commands as train_commands
    from nanoseek.train import plot

    return [
        ("info", "parameter counts, FLOPs and cache size of a preset or checkpoint", _info_args, _info),
        ("init", "write a randomly initialised checkpoint from a preset", _init_args, _init),
        tokenizer_commands.COMMAND,
        *train_commands.COMMANDS,
        plot.COMMAND,
        engine_commands.COMMAND,
        eval_commands.COMMAND,
        *server.COMMANDS,
        speedrun.COMMAND,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanoseek", description="DeepSeek-style models: train, reason, distill, serve."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_args, run in commands():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # bad input: say what is wrong, no traceback
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
