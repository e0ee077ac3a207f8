"""`nanoseek train`, `sft`, `rl`, `distill` and `export`. A run command's flags are its config dataclass's fields
(`nanoseek.configargs.add_config_args`), so a field cannot be added to the config and forgotten by the command line."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from nanoseek.configargs import add_config_args, config_argv, config_from_args
from nanoseek.train.distill import GenerateConfig
from nanoseek.train.grpo import RLConfig
from nanoseek.train.trainer import TrainConfig

SFT = {"steps": 200, "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "warmup_fraction": 0.02}
# (command words, config, add_config_args settings); `command_line` takes the first that fits a config
RUN_COMMANDS = [
    (("train",), TrainConfig, {"fixed": {"mode": "pretrain"}, "defaults": {"warmup_fraction": 0.02}}),
    (("sft",), TrainConfig, {"fixed": {"mode": "sft"}, "defaults": SFT, "required": ("init_from",)}),
    (("distill", "train"), TrainConfig, {"fixed": {"mode": "sft"}, "defaults": SFT}),
    (("rl",), RLConfig, {}),
    (("distill", "generate"), GenerateConfig, {"one_of": ("teacher", "teacher_url")}),
]


def _run_args(*words: str):
    _, cls, settings = next(c for c in RUN_COMMANDS if c[0] == words)
    return lambda p: add_config_args(p, cls, **settings)


def command_line(config) -> list[str]:
    """The `nanoseek` arguments that rebuild a run config exactly (to launch it under torchrun)."""
    for words, cls, settings in RUN_COMMANDS:
        fixed = settings.get("fixed", {})
        if (
            type(config) is cls
            and all(getattr(config, k) == v for k, v in fixed.items())
            and all(getattr(config, k) is not None for k in settings.get("required", ()))
        ):
            return [*words, *config_argv(config, fixed)]
    raise ValueError(f"no nanoseek command runs {config!r}")


def train_main(args: argparse.Namespace) -> int:
    from nanoseek.train.trainer import train

    print(f"model: {train(config_from_args(args))}")
    return 0


def rl_main(args: argparse.Namespace) -> int:
    from nanoseek.train.grpo import rl

    print(f"model: {rl(config_from_args(args))}")
    return 0


def distill_generate_main(args: argparse.Namespace) -> int:
    from nanoseek.train.distill import generate

    summary = generate(config_from_args(args))
    for task, row in summary["per_task"].items():
        print(f"{task}: {row['with_verified_trace']}/{row['prompts']} prompts with a verified trace")
    print(f"{summary['traces']} traces in {args.out}")
    return 0


def distill_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="distill_command", metavar="SUBCOMMAND", required=True)
    gen = sub.add_parser("generate", help="sample teacher traces, keep the verified ones (resumable)")
    _run_args("distill", "generate")(gen)
    gen.set_defaults(_distill=distill_generate_main)
    tr = sub.add_parser("train", help="student SFT on traces (+ logit distillation with --teacher)")
    _run_args("distill", "train")(tr)
    tr.set_defaults(_distill=train_main)


def distill_main(args: argparse.Namespace) -> int:
    return args._distill(args)


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory (its final model, or --checkpoint) or a checkpoint directory")
    p.add_argument("--to", required=True, help="directory to write the clean Hugging Face checkpoint to")
    p.add_argument(
        "--checkpoint", help="export this checkpoint of the run (e.g. step_000200) instead of the final model"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="store the weights in this dtype")
    p.add_argument("--max-shard-gb", type=float, default=5.0)


def export_main(args: argparse.Namespace) -> int:
    """Write a clean checkpoint (no training state) that transformers, vLLM and SGLang load."""
    import torch

    from nanoseek.checkpoint import from_pretrained, resolve_model_path

    source = Path(args.run)
    if args.checkpoint:
        source = source / "checkpoints" / args.checkpoint / "model"
    source = resolve_model_path(source)
    target = Path(args.to)
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target} exists and is not empty: choose an empty --to directory")
    model = from_pretrained(source, dtype=torch.float32)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model.save_pretrained(target, dtype=dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    print(f"exported {source} -> {target}" + (f" ({args.dtype})" if args.dtype else ""))
    return 0


COMMANDS = [
    ("train", "pretrain a DeepSeek-style model (MLA + MoE + MTP) on text", _run_args("train"), train_main),
    (
        "sft",
        "supervised fine-tuning on chat JSONL (loss on assistant tokens, reasoning included)",
        _run_args("sft"),
        train_main,
    ),
    ("export", "write a clean Hugging Face checkpoint from a run", export_args, export_main),
    ("rl", "GRPO with verifiable rewards (R1-Zero and R1 recipes)", _run_args("rl"), rl_main),
    (
        "distill",
        "teacher traces with rejection sampling, student SFT and logit distillation",
        distill_args,
        distill_main,
    ),
]
