"""The `nanoseek` command. Each subcommand lives next to the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING
from typing import Any

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]


# ---- a run config's dataclass is its flags: a field cannot be added to one and forgotten in the other ----
def arg(default: Any = MISSING, help: str | None = None, **flag: Any) -> Any:
    """A config field with its flag's help and argparse keywords (choices, metavar, flag="--set" to rename)."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **flag})
    return dataclasses.field(default=default, metadata={"help": help, **flag})


def override(item: str) -> tuple[str, Any]:
    """One `--set FIELD=VALUE`: the value is JSON where it parses (4, 1e-3, true, null, [1, 2]), else a string."""
    name, eq, value = item.partition("=")
    if not (eq and name):
        raise argparse.ArgumentTypeError(f"--set expects FIELD=VALUE, got {item!r}")
    if value in ("", "None"):
        return name, None
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _walk(cls: type, config: Any = None) -> Iterator[tuple[dataclasses.Field, Any, Any]]:
    """(field, type, value) per flag, nested configs flattened; values are `config`'s or, without one, the defaults
    (a nested config's come from its parent's default, e.g. RL's own learning rate)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if config is not None:
            value = getattr(config, f.name)
        else:
            value = f.default_factory() if f.default_factory is not MISSING else f.default
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], value)
        else:
            kind = hints[f.name]  # `int | None` -> int
            if isinstance(kind, types.UnionType):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            yield f, kind, value


def _flag(f: dataclasses.Field) -> str:
    on = "--" + f.name.replace("_", "-")
    return f.metadata.get("flag", "--no-" + on[2:] if f.default is True else on)


def add_config_args(
    p: argparse.ArgumentParser,
    cls: type,
    fixed: dict | None = None,
    defaults: dict | None = None,
    required: tuple = (),
    one_of: tuple = (),
) -> None:
    """A flag per field of `cls` but the `fixed` ones (set by the command); `defaults` are this command's own,
    `one_of` names fields of which exactly one must be given."""
    fixed, defaults = fixed or {}, defaults or {}
    group = p.add_mutually_exclusive_group(required=True) if one_of else None
    for f, kind, default in _walk(cls):
        if f.name in fixed:
            continue
        meta = {k: v for k, v in f.metadata.items() if k != "flag"}
        options = {"dest": f.name, "default": defaults.get(f.name, default), **meta}
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            options["action"] = "store_false" if f.default is True else "store_true"
        elif origin is list:
            options.update(nargs="+", type=args[0])
        elif origin is dict:
            options.update(nargs="*", type=override, metavar="FIELD=VALUE")
        elif origin is tuple:
            options.update(nargs=len(args), type=args[0])
        else:
            options["type"] = kind
        if (default is MISSING or f.name in required) and f.name not in one_of:
            options["required"] = True
        (group if f.name in one_of else p).add_argument(_flag(f), **options)
    p.set_defaults(_config=(cls, fixed))


def config_from_args(args: argparse.Namespace, cls: type | None = None, fixed: dict | None = None) -> Any:
    """The config that `add_config_args` flags were parsed into."""
    if cls is None:
        cls, fixed = args._config
    hints, values = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = config_from_args(args, hints[f.name], fixed)
        elif f.name in (fixed or {}):
            values[f.name] = fixed[f.name]
        else:
            value, origin = getattr(args, f.name), typing.get_origin(hints[f.name])
            values[f.name] = dict(value) if origin is dict else tuple(value) if origin is tuple else value
    return cls(**values)


def config_argv(config: Any, fixed: dict | None = None) -> list[str]:
    """Flags that rebuild `config` exactly: every field is written, so no command's defaults can change it."""
    argv = []
    for f, kind, value in _walk(type(config), config):
        if f.name in (fixed or {}) or value is None or (isinstance(value, list | dict) and not value):
            continue  # None and an empty collection are the flag's absence
        if kind is bool:
            argv += [_flag(f)] if value != f.default else []
        elif isinstance(value, dict):
            argv += [_flag(f), *(f"{k}={json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, list | tuple):
            argv += [_flag(f), *map(str, value)]
        else:
            argv += [_flag(f), str(value)]
    return argv


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
    from nanoseek.model.sizes import flops_per_token, latent_cache_bytes_per_token, parameter_counts

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
    mla, mha = cache["mla_all_layers"], cache["mha_all_layers"]
    kind = "latent cache (MLA)" if config.uses_mla else f"key/value cache ({config.num_key_value_heads} kv heads)"
    print(f"{kind} per token (bf16): {mla:,} bytes (multi-head attention would need {mha:,}: {mha / mla:.1f}x)")
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
