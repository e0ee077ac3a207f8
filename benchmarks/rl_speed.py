"""GRPO speed: `nanoseek rl` vs TRL's GRPOTrainer on the same model, task, group size and batch, on CPU.

Speed is samples (completions generated and trained on) per second over the timed steps. Both sides start from
the same checkpoint (a tiny model pretrained on the task, made here unless --model is given), sample G=8
completions for each of 8 prompts per step with up to --max-tokens tokens, and take one optimizer step.
TRL's GRPOConfig turns gradient checkpointing on by default (it saves memory on big models and costs ~20% of a
step); TRL's docs recommend turning it off when the model fits, as this tiny one does, so it is off here (nanoseek
does not checkpoint) and the setting is printed. `--gradient-checkpointing` measures TRL with it on.

    python benchmarks/rl_speed.py
    python benchmarks/rl_speed.py --model runs/speedrun/sft/model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import speedrun_plan, table

warnings.filterwarnings("ignore")


def base_model(work: Path, task: str, steps: int) -> Path:
    """A tiny model pretrained on the task's worked and direct solutions (what RL starts from)."""
    from nanoseek.eval.evaluate import load_examples
    from nanoseek.tasks.corpus import solution_documents
    from nanoseek.tokenizer import Tokenizer

    docs = solution_documents(load_examples(task, 20000, "train", seed=1, at_most=True), 0.5, seed=1)
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    Tokenizer.train([work / "corpus.jsonl"], 512).save_pretrained(work / "tok")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nanoseek.cli",
            "train",
            "--data",
            str(work / "corpus.jsonl"),
            "--tokenizer",
            str(work / "tok"),
            "--out",
            str(work / "base"),
            "--preset",
            "tiny",
            "--steps",
            str(steps),
            "--batch-size",
            "16",
            "--seq-len",
            "256",
            "--no-progress",
            "--eval-every",
            "1000",
        ],
        check=True,
    )
    return work / "base" / "model"


def nanoseek_speed(model: Path, work: Path, args, compile: bool = False) -> float:
    out = work / ("nanoseek-rl-compiled" if compile else "nanoseek-rl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nanoseek.cli",
            "rl",
            "--init-from",
            str(model),
            "--out",
            str(out),
            "--steps",
            str(args.warmup + args.steps),
            "--prompts-per-step",
            str(args.prompts),
            "--group-size",
            str(args.group),
            "--tasks",
            args.task,
            "--max-tokens",
            str(args.max_tokens),
            "--eval-every",
            "100000",
            "--eval-problems",
            "2",
            "--save-every",
            "100000",
            "--no-progress",
            *(["--compile"] if compile else []),
        ],
        check=True,
        capture_output=True,
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "rl"][args.warmup - 1 :]  # wall clock, as for TRL below
    return (len(steps) - 1) * args.prompts * args.group / (steps[-1]["time"] - steps[0]["time"])


def trl_speed(model: Path, args) -> float:
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from nanoseek.eval.evaluate import load_examples, response
    from nanoseek.tasks import reward

    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    # a task spec ("multiplication:round_numbers=0"), read as `nanoseek rl --tasks` reads it
    examples = load_examples(args.task, args.prompts * (args.warmup + args.steps), "train", seed=5)
    by_prompt = {}
    rows = []
    for ex in examples:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True
        )
        by_prompt[prompt] = ex
        rows.append({"prompt": prompt})

    def task_reward(prompts, completions, **_):
        return [reward(by_prompt[p], response(c)).total for p, c in zip(prompts, completions)]

    times = []

    class Timer(transformers.TrainerCallback):
        def on_step_end(self, *a, **k):  # (on_step_begin does not fire for every GRPO step in TRL 1.16)
            times.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        max_completion_length=args.max_tokens,
        learning_rate=1e-4,
        max_steps=args.warmup + args.steps,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        temperature=1.0,
        beta=0.0,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=str(model),
        reward_funcs=task_reward,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    checkpointing = getattr(trainer.model, "is_gradient_checkpointing", None)
    print(
        f"  TRL: gradient_checkpointing={trainer.args.gradient_checkpointing} (model: {checkpointing}), "
        f"optim={trainer.args.optim}",
        flush=True,
    )
    trainer.train()
    timed = times[args.warmup - 1 :]  # from the end of the last warmup step to the end of the last step
    return (len(timed) - 1) * args.prompts * args.group / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint to start from (default: train a tiny one, ~3 min)")
    parser.add_argument("--task", help="the task both sides train on (default: --model's speedrun's, or addition)")
    parser.add_argument("--base-steps", type=int, default=600, help="pretraining steps of the base made here")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, help="default: --model's speedrun's limit, or 120")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="leave TRL's gradient checkpointing on (GRPOConfig's default; off by default here)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time nanoseek rl --compile (rollouts on the compiled decode step, compiled before the timed steps)",
    )
    args = parser.parse_args()
    plan = speedrun_plan(args.model)
    args.task = args.task or plan.get("task", "addition")
    args.max_tokens = args.max_tokens or plan.get("max_tokens", 120)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or base_model(work, args.task, args.base_steps)
        ours = {"nanoseek rl": nanoseek_speed(model, work, args)}
        if args.compile:
            ours["nanoseek rl --compile"] = nanoseek_speed(model, work, args, compile=True)
        rows = []
        for name, speed in ours.items():
            print(f"  {name}: {speed:.1f} samples/s", flush=True)
            rows.append({"implementation": name, "samples/s": f"{speed:.1f}"})
        try:
            theirs = trl_speed(model, args)
            print(f"  TRL GRPOTrainer: {theirs:.2f} samples/s", flush=True)
            rows += [
                {"implementation": "TRL GRPOTrainer (transformers generate)", "samples/s": f"{theirs:.2f}"},
                *(
                    {"implementation": f"ratio, {name}", "samples/s": f"{speed / theirs:.1f}x"}
                    for name, speed in ours.items()
                ),
            ]
        except Exception as e:
            rows.append({"implementation": f"TRL failed: {type(e).__name__}: {str(e)[:150]}", "samples/s": "-"})
    checkpointing = "on" if args.gradient_checkpointing else "off"
    print(
        f"\nGRPO on CPU ({torch.get_num_threads()} threads), {args.task}, {args.prompts} prompts x G={args.group}, "
        f"<= {args.max_tokens} new tokens; TRL gradient checkpointing {checkpointing}:\n"
    )
    print(table(rows, ["implementation", "samples/s"]))


if __name__ == "__main__":
    main()
