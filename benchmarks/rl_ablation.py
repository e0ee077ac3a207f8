"""RL ablation table: GRPO vs plain REINFORCE (batch-mean baseline, no group normalisation), and KL on/off, from the
same base model, same prompts and budget, over several seeds. Held-out greedy pass@1 before and after, and the
mean response length after (the R1-Zero effect: the model learns to think, and its answers get longer).

    python benchmarks/rl_ablation.py --model runs/speedrun/base/model [--steps 15] [--seeds 0 1 2]

Every variant is the speedrun's own RL recipe (Speedrun.stage_rl, spelled out by distill_vs_rl.py's RL arm: R1-Zero
from the base, AdamW at a constant lr, T=1, token-level loss, format weight 0.1, the plan's prompts, group, lr and
token limit), with only the variant's advantage / KL settings on top. The plan is the one of the speedrun --model
belongs to (stages.json two levels above it), or the default speedrun's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import speedrun_plan, table
from distill_vs_rl import rl_arm

from nanoseek.speedrun import PLANS

VARIANTS = {
    "GRPO (no KL)": [],
    "GRPO + KL (beta 0.04)": ["--kl-beta", "0.04"],
    "Dr. GRPO": ["--advantage", "dr-grpo", "--loss-agg", "constant"],
    "REINFORCE (batch baseline)": ["--advantage", "reinforce"],
}


def ablation_argv(plan: dict, model: Path, out: Path, seed: int, extra: list[str], args) -> list[str]:
    """`nanoseek rl` arguments of one variant: the speedrun's RL arm of distill_vs_rl.py (the speedrun's recipe,
    every setting spelled out), run for --steps steps instead of a time budget, the variant's settings last (argparse
    keeps the last value of a flag, so they override the recipe's)."""
    argv = rl_arm(plan, args.task, model, out, 1e9, seed, args.problems)
    return [*argv, "--steps", str(args.steps), "--eval-every", str(args.steps), *extra]


def run(plan: dict, model: Path, out: Path, seed: int, extra: list[str], args) -> dict:
    argv = ablation_argv(plan, model, out, seed, extra, args)
    subprocess.run([sys.executable, "-m", "nanoseek.cli", *argv], check=True, capture_output=True)
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
    parser.add_argument("--task", help="default: the task of --model's speedrun (or of the default speedrun)")
    parser.add_argument("--problems", type=int, default=200)
    args = parser.parse_args()
    plan = speedrun_plan(args.model) or dataclasses.asdict(PLANS["cpu"])
    args.task = args.task or plan["task"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in VARIANTS.items():
            results = [
                run(plan, args.model, Path(tmp) / f"{name}-{seed}".replace(" ", "_"), seed, extra, args)
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
        f"\n{args.steps} RL steps x {plan['rl_prompts']} prompts x G={plan['rl_group']} on {args.task} (max "
        f"{plan['max_tokens']} tokens, lr {plan['rl_lr']}) "
        f"from {args.model}, seeds {args.seeds}:\n"
    )
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
