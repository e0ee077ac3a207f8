"""`nanoseek train`, `nanoseek sft` and `nanoseek export`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _train_args(p: argparse.ArgumentParser, sft: bool) -> None:
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="SOURCE",
        help="chat JSONL ({'messages': [...]})"
        if sft
        else ".txt/.jsonl/.parquet files, hf://NAME datasets, or a tokenised shard directory",
    )
    p.add_argument("--out", required=True, help="run directory (metrics, checkpoints, final model)")
    if sft:
        p.add_argument("--init-from", required=True, help="checkpoint to fine-tune (a model or run directory)")
    else:
        p.add_argument("--preset", default="tiny", help="model size for a fresh model (see `nanoseek info`)")
        p.add_argument("--init-from", help="continue from this checkpoint instead of a fresh model")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the --init-from checkpoint's)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="model config overrides")
    p.add_argument("--steps", type=int, default=200 if sft else 500)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-3 if sft else 3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0 if sft else 0.1)
    p.add_argument("--schedule", choices=["wsd", "cosine", "constant"], default="cosine" if sft else "wsd")
    p.add_argument("--warmup-fraction", type=float, default=0.02)
    p.add_argument("--decay-fraction", type=float, default=0.2, help="WSD: fraction of steps spent decaying")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--mtp-weight", type=float, default=0.3, help="MTP loss weight (DeepSeek-V3's lambda)")
    p.add_argument("--bias-update-speed", type=float, default=1e-3, help="aux-loss-free balancing speed gamma (0: off)")
    p.add_argument("--aux-loss-alpha", type=float, help="sequence-wise balance loss weight")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fp8", action="store_true", help="float8 linear layers (torchao; FP8 GPUs)")
    p.add_argument("--threads", type=int, help="CPU threads (tiny models can be faster on 1)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true")


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        field, value = item.split("=", 1)
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return overrides


def config_from_args(args: argparse.Namespace, mode: str):
    from nanoseek.train.optim import OptimConfig
    from nanoseek.train.trainer import TrainConfig

    optim = OptimConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_fraction=args.warmup_fraction,
        decay_fraction=args.decay_fraction,
    )
    return TrainConfig(
        out=args.out,
        data=args.data,
        mode=mode,
        preset=getattr(args, "preset", "tiny"),
        init_from=args.init_from,
        tokenizer=args.tokenizer,
        model_overrides=parse_overrides(args.set),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        optim=optim,
        grad_clip=args.grad_clip,
        mtp_weight=args.mtp_weight,
        bias_update_speed=args.bias_update_speed,
        aux_loss_alpha=args.aux_loss_alpha,
        precision=args.precision,
        compile=args.compile,
        fp8=args.fp8,
        threads=args.threads,
        eval_every=args.eval_every,
        save_every=args.save_every,
        log_every=args.log_every,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
    )


def train_main(args: argparse.Namespace) -> int:
    from nanoseek.train.trainer import train

    model_dir = train(config_from_args(args, "pretrain"))
    print(f"model: {model_dir}")
    return 0


def sft_main(args: argparse.Namespace) -> int:
    from nanoseek.train.trainer import train

    model_dir = train(config_from_args(args, "sft"))
    print(f"model: {model_dir}")
    return 0


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
    ("train", "pretrain a DeepSeek-style model (MLA + MoE + MTP) on text", lambda p: _train_args(p, False), train_main),
    (
        "sft",
        "supervised fine-tuning on chat JSONL (loss on assistant tokens, reasoning included)",
        lambda p: _train_args(p, True),
        sft_main,
    ),
    ("export", "write a clean Hugging Face checkpoint from a run", export_args, export_main),
]
