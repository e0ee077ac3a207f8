"""`nanoseek train`, `nanoseek sft` and `nanoseek export`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _train_args(p: argparse.ArgumentParser, sft: bool, distill: bool = False) -> None:
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
    if distill:
        p.add_argument("--preset", default="tiny", help="student size, for a fresh student (see `nanoseek info`)")
        p.add_argument("--init-from", help="start the student from this checkpoint instead of a fresh preset")
        p.add_argument("--teacher", help="also distil the teacher's logits (a checkpoint sharing the tokenizer)")
        p.add_argument("--distill-weight", type=float, default=0.5, help="share of the KL-to-teacher loss")
        p.add_argument("--distill-temperature", type=float, default=1.0)
    elif sft:
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


def rl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init-from", required=True, help="the model RL starts from (checkpoint or run directory)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--recipe",
        choices=["r1-zero", "r1"],
        default="r1-zero",
        help="r1-zero: RL straight from the model; r1: cold-start SFT on worked traces first",
    )
    p.add_argument("--tasks", nargs="+", default=["addition"], help="task specs (addition, countdown:count=3, ...)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--advantage", choices=["grpo", "dr-grpo", "reinforce"], default="grpo")
    p.add_argument("--loss-agg", choices=["token", "sequence", "constant"], default="token")
    p.add_argument("--clip-low", type=float, default=0.2)
    p.add_argument("--clip-high", type=float, default=0.28, help="DAPO clip-higher (= --clip-low for symmetric)")
    p.add_argument("--kl-beta", type=float, default=0.0, help="k3 KL penalty to the starting model (0: none)")
    p.add_argument("--epochs", type=int, default=1, help="optimisation passes per batch")
    p.add_argument("--minibatch-size", type=int, default=64)
    p.add_argument("--dynamic-sampling", action="store_true", help="drop groups whose rewards are all equal")
    p.add_argument("--format-weight", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--cold-start-examples", type=int, default=300)
    p.add_argument("--cold-start-steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of RL (equal-time comparisons)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def rl_config_from_args(args: argparse.Namespace):
    from nanoseek.train.grpo import RLConfig
    from nanoseek.train.optim import OptimConfig

    return RLConfig(
        out=args.out,
        init_from=args.init_from,
        tasks=args.tasks,
        recipe=args.recipe,
        cold_start_examples=args.cold_start_examples,
        cold_start_steps=args.cold_start_steps,
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        group_size=args.group_size,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        advantage=args.advantage,
        loss_agg=args.loss_agg,
        clip_low=args.clip_low,
        clip_high=args.clip_high,
        kl_beta=args.kl_beta,
        epochs=args.epochs,
        minibatch_size=args.minibatch_size,
        dynamic_sampling=args.dynamic_sampling,
        format_weight=args.format_weight,
        optim=OptimConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=0.0, schedule="constant"),
        eval_every=args.eval_every,
        eval_problems=args.eval_problems,
        save_every=args.save_every,
        seed=args.seed,
        threads=args.threads,
        time_budget=args.time_budget,
        resume=args.resume,
        progress=not args.no_progress,
    )


def rl_main(args: argparse.Namespace) -> int:
    from nanoseek.train.grpo import rl

    print(f"model: {rl(rl_config_from_args(args))}")
    return 0


COMMANDS.append(("rl", "GRPO with verifiable rewards (R1-Zero and R1 recipes)", rl_args, rl_main))


def distill_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="chat JSONL to append verified traces to (resumable)")
    p.add_argument("--tasks", nargs="+", default=["addition"], help="task specs or GSM8K/MATH-style .jsonl files")
    p.add_argument("--problems", type=int, default=500, help="prompts per task")
    p.add_argument("--samples", type=int, default=4, help="traces sampled per prompt (k)")
    p.add_argument("--keep-per-prompt", type=int, default=1, help="verified distinct traces kept per prompt")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher", help="a local checkpoint (generation through nanoseek's engine)")
    teacher.add_argument("--teacher-url", help="an OpenAI-compatible endpoint, e.g. https://api.deepseek.com/v1")
    p.add_argument("--teacher-model", help="model name at the endpoint (default: its first model)")
    p.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight to an endpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def distill_generate_main(args: argparse.Namespace) -> int:
    from nanoseek.train.distill import GenerateConfig, generate

    summary = generate(
        GenerateConfig(
            out=args.out,
            tasks=args.tasks,
            problems=args.problems,
            samples=args.samples,
            keep_per_prompt=args.keep_per_prompt,
            teacher=args.teacher,
            teacher_url=args.teacher_url,
            teacher_model=args.teacher_model,
            api_key=args.api_key,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
            seed=args.seed,
            progress=not args.no_progress,
        )
    )
    for task, row in summary["per_task"].items():
        print(f"{task}: {row['with_verified_trace']}/{row['prompts']} prompts with a verified trace")
    print(f"{summary['traces']} traces in {args.out}")
    return 0


def distill_train_main(args: argparse.Namespace) -> int:
    from nanoseek.train.trainer import train

    print(f"model: {train(config_from_args(args, 'sft'))}")
    return 0


def distill_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="distill_command", metavar="SUBCOMMAND", required=True)
    gen = sub.add_parser("generate", help="sample teacher traces, keep the verified ones (resumable)")
    distill_generate_args(gen)
    gen.set_defaults(_distill=distill_generate_main)
    tr = sub.add_parser("train", help="student SFT on traces (+ optional logit distillation)")
    _train_args(tr, sft=True, distill=True)
    tr.set_defaults(_distill=distill_train_main)


def distill_main(args: argparse.Namespace) -> int:
    return args._distill(args)


COMMANDS.append(
    (
        "distill",
        "teacher traces with rejection sampling, student SFT and logit distillation",
        distill_args,
        distill_main,
    )
)


def command_line(config) -> list[str]:
    """The `nanoseek train`/`sft` arguments that reproduce a TrainConfig (to launch it under torchrun)."""
    c, o = config, config.optim
    args = [
        "sft" if c.mode == "sft" else "train",
        "--data",
        *c.data,
        "--out",
        c.out,
        "--steps",
        str(c.steps),
        "--batch-size",
        str(c.batch_size),
        "--grad-accum",
        str(c.grad_accum),
        "--seq-len",
        str(c.seq_len),
        "--optimizer",
        o.optimizer,
        "--lr",
        str(o.lr),
        "--weight-decay",
        str(o.weight_decay),
        "--schedule",
        o.schedule,
        "--warmup-fraction",
        str(o.warmup_fraction),
        "--decay-fraction",
        str(o.decay_fraction),
        "--grad-clip",
        str(c.grad_clip),
        "--mtp-weight",
        str(c.mtp_weight),
        "--bias-update-speed",
        str(c.bias_update_speed),
        "--precision",
        c.precision,
        "--eval-every",
        str(c.eval_every),
        "--save-every",
        str(c.save_every),
        "--log-every",
        str(c.log_every),
        "--seed",
        str(c.seed),
    ]
    if c.mode != "sft":
        args += ["--preset", c.preset]
    for flag, value in (
        ("--init-from", c.init_from),
        ("--tokenizer", c.tokenizer),
        ("--threads", c.threads),
        ("--aux-loss-alpha", c.aux_loss_alpha),
    ):
        if value is not None:
            args += [flag, str(value)]
    if c.model_overrides:
        args += ["--set", *(f"{k}={json.dumps(v)}" for k, v in c.model_overrides.items())]
    args += [
        flag
        for flag, on in (
            ("--compile", c.compile),
            ("--fp8", c.fp8),
            ("--resume", c.resume),
            ("--no-progress", not c.progress),
        )
        if on
    ]
    return args
