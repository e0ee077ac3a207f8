"""RL ablation table: GRPO vs plain REINFORCE (batch-mean baseline, no group normalisation), and KL on/off, from the
same base model, same prompts and budget, over several seeds. Held-out greedy pass@1 before and after, and the
mean response length after (the R1-Zero effect: the model learns to think, and its answers get longer).

    python benchmarks/rl_ablation.py --model runs/speedrun/base/model [--steps 15] [--seeds 0 1 2]

Every variant is the speedrun's own RL recipe (Speedrun.stage_rl: R1-Zero from the base, AdamW at a constant lr,
no weight decay, T=1, token-level loss, format weight 0.1), spelled out here so a change of the CLI's defaults
cannot change it, with only the advantage / KL settings of the variant on top. The task, lr and token limit are
read from the speedrun's plan (stages.json two levels above --model) when there is one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import speedrun_plan, table

VARIANTS = {
    "GRPO (no KL)": [],
    "GRPO + KL (beta 0.04)": ["--kl-beta", "0.04"],
    "Dr. GRPO": ["--advantage", "dr-grpo", "--loss-agg", "constant"],
    "REINFORCE (batch baseline)": ["--advantage", "reinforce"],
}


def run(model: Path, out: Path, seed: int, extra: list[str], args) -> dict:
    recipe = ["--recipe", "r1-zero", "--tasks", args.task, "--optimizer", "adamw", "--lr", str(args.lr)]
    recipe += ["--temperature", "1.0", "--advantage", "grpo", "--loss-agg", "token", "--kl-beta", "0"]
    recipe += ["--format-weight", "0.1", "--schedule", "constant", "--weight-decay", "0"]
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
            str(args.steps),
            "--prompts-per-step",
            "16",
            "--group-size",
            "8",
            "--max-tokens",
            str(args.max_tokens),
            "--eval-every",
            str(args.steps),
            "--eval-problems",
            str(args.problems),
            "--save-every",
            str(10**9),
            "--seed",
            str(seed),
            "--no-progress",
            *recipe,
            *extra,  # the variant's settings come last: they override the recipe's
        ],
        check=True,
        capture_output=True,
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if r["kind"] == "eval"]
    rl = [r for r in lines if r["kind"] == "rl"]
    return {
        "before": evals[0]["pass1"],
        "after": evals[-1]["pass1"],
        "length_before": evals[0]["mean_length"],
        "length_after": evals[-1]["mean_length"],
        "seconds": sum(r["generate_s"] + r["train_s"] for r in rl),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint RL starts from")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-tokens", type=int, help="default: the speedrun's (192 without one)")
    parser.add_argument("--task", help="default: the speedrun's task (multiplication without one)")
    parser.add_argument("--lr", type=float, help="default: the speedrun's RL lr (1e-4 without one)")
    parser.add_argument("--problems", type=int, default=200)
    args = parser.parse_args()
    plan = speedrun_plan(args.model)
    args.task = args.task or plan.get("task", "multiplication")
    args.max_tokens = args.max_tokens or plan.get("max_tokens", 192)
    args.lr = args.lr or plan.get("rl_lr", 1e-4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in VARIANTS.items():
            results = [
                run(args.model, Path(tmp) / f"{name}-{seed}".replace(" ", "_"), seed, extra, args)
                for seed in args.seeds
            ]
            after = [r["after"] for r in results]
            rows.append(
                {
                    "variant": name,
                    "pass@1 before": f"{results[0]['before']:.3f}",
                    "pass@1 after (mean ± sd)": f"{statistics.mean(after):.3f} ± {statistics.pstdev(after):.3f}",
                    "per seed": " ".join(f"{a:.2f}" for a in after),
                    "length before -> after": f"{results[0]['length_before']:.0f} -> "
                    f"{statistics.mean(r['length_after'] for r in results):.0f}",
                    "RL seconds": f"{statistics.mean(r['seconds'] for r in results):.0f}",
                }
            )
            print(f"  {rows[-1]}", flush=True)
    print(
        f"\n{args.steps} RL steps x 16 prompts x G=8 on {args.task} (max {args.max_tokens} tokens, lr {args.lr}) "
        f"from {args.model}, seeds {args.seeds}:\n"
    )
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
