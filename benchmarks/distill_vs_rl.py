"""R1's finding, in miniature: distilling a strong reasoner into a small student beats running RL on the small
student itself for the same wall-clock budget. Uses a finished speedrun (its RL teacher, its tokenizer and plan);
for each seed: (a) distillation = teacher traces (verified) + student SFT, timed; (b) RL (GRPO) on the same
student base for that same time. Held-out greedy pass@1 of both, next to the teacher's.

    python benchmarks/distill_vs_rl.py --run runs/speedrun [--seeds 0 1 2]
    python benchmarks/distill_vs_rl.py --run runs/speedrun --speedrun-student   # the control below

The student base (default) is the speedrun's student size pretrained on the speedrun's problems with direct
answers only (~3 min): a small model that has never seen the teacher's reasoning format, as R1-Distill's bases
had never seen R1's. RL cannot discover a format the policy never samples; distillation hands it over.
`--speedrun-student` starts both arms from the speedrun's own student base instead, pretrained on the teacher's
corpus (a fifth of it worked solutions): RL then only has to select a format the student already executes.
Both arms are the speedrun's own recipes, read from its plan (stages.json), so they cannot drift from it: the
distillation arm is the student stage (the plan's problems and samples, verified traces, SFT with its optimizer,
lr and steps, no MTP loss), the RL arm the GRPO stage (`rl_arm`), run for the distillation arm's wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def nanoseek(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nanoseek.cli", *args], check=True, capture_output=True)


def pass1(model: Path, task: str, problems: int, max_tokens: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        nanoseek(
            "eval",
            str(model),
            "--tasks",
            task,
            "--n",
            str(problems),
            "--max-tokens",
            str(max_tokens),
            "--json",
            str(out),
        )
        return json.loads(out.read_text())[0]["pass1_greedy"]


def active_params(model: Path) -> int:
    from nanoseek.config import ModelConfig
    from nanoseek.model.sizes import parameter_counts

    return parameter_counts(ModelConfig.from_json(model / "config.json")).active


def direct_only_student(run: Path, plan: dict, task: str, work: Path) -> Path:
    """The speedrun's student base, pretrained the same way on the same problems with direct answers only."""
    from nanoseek.eval import load_examples
    from nanoseek.tasks.corpus import solution_documents

    examples = load_examples(task, plan["corpus_problems"], "train", seed=1, at_most=True)
    corpus = work / "direct.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in solution_documents(examples, 0.0)))
    out = work / "student_direct"
    nanoseek(
        "train",
        "--data",
        str(corpus),
        "--tokenizer",
        str(run / "tokenizer"),
        "--out",
        str(out),
        "--preset",
        plan["student_preset"],
        "--steps",
        str(plan["student_base_steps"]),
        "--batch-size",
        str(plan["batch_size"]),
        "--seq-len",
        str(plan["seq_len"]),
        "--lr",
        str(plan["base_lr"]),
        "--eval-every",
        str(10**9),
        "--save-every",
        str(10**9),
        "--no-progress",
    )
    return out / "model"


def rl_arm(plan: dict, task: str, init: Path, out: Path, budget: float, seed: int, problems: int) -> list[str]:
    """`nanoseek rl` arguments for the RL arm: the speedrun's own GRPO recipe (Speedrun.stage_rl, read from the
    run's plan: prompts, group, lr, max tokens, AdamW at a constant lr, no weight decay, T=1, no KL, GRPO
    advantages), every setting spelled out so a change of the CLI's defaults cannot change it silently. Only the
    length differs: the same wall clock as the distillation arm instead of plan["rl_steps"]. The run evaluates
    itself on `problems` held-out problems before and after (outside the time budget)."""
    return [
        "rl",
        "--init-from",
        str(init),
        "--out",
        str(out),
        "--recipe",
        "r1-zero",
        "--tasks",
        task,
        "--steps",
        "100000",
        "--time-budget",
        str(budget),
        "--prompts-per-step",
        str(plan["rl_prompts"]),
        "--group-size",
        str(plan["rl_group"]),
        "--max-tokens",
        str(plan["max_tokens"]),
        "--optimizer",
        "adamw",
        "--lr",
        str(plan["rl_lr"]),
        "--temperature",
        "1.0",
        "--advantage",
        "grpo",
        "--loss-agg",
        "token",
        "--kl-beta",
        "0",
        "--format-weight",
        "0.1",
        "--eval-every",
        str(10**9),
        "--eval-problems",
        str(problems),
        "--save-every",
        str(10**9),
        "--seed",
        str(seed),
        "--no-progress",
    ]


def distill_generate(plan: dict, task: str, teacher: Path, out: Path, args, seed: int) -> list[str]:
    """`nanoseek distill generate` as the speedrun's student stage runs it (Speedrun.stage_student): the plan's
    problems and samples per problem, T=0.6, the plan's token limit; only verified traces are kept."""
    problems = args.distill_problems or plan["distill_problems"]
    argv = ["distill", "generate", "--tasks", task, "--teacher", str(teacher), "--out", str(out)]
    argv += ["--problems", str(problems), "--samples", str(plan["distill_samples"]), "--temperature", "0.6"]
    return [*argv, "--max-tokens", str(plan["max_tokens"]), "--seed", str(seed), "--no-progress"]


def distill_train(plan: dict, traces: Path, init: Path, out: Path, args, seed: int) -> list[str]:
    """`nanoseek distill train` (SFT on the traces) as the speedrun's student stage: the plan's optimizer, lr,
    batch and steps, no weight decay, cosine with 2% warm-up, no MTP loss."""
    argv = ["distill", "train", "--data", str(traces), "--init-from", str(init), "--out", str(out)]
    argv += ["--steps", str(args.sft_steps or plan["student_steps"]), "--batch-size", str(plan["batch_size"])]
    argv += ["--seq-len", str(plan["seq_len"]), "--optimizer", plan["optimizer"], "--lr", str(plan["student_lr"])]
    argv += ["--weight-decay", "0", "--schedule", "cosine", "--warmup-fraction", "0.02", "--mtp-weight", "0"]
    return [*argv, "--seed", str(seed), "--eval-every", str(10**9), "--save-every", str(10**9), "--no-progress"]


def rl_curve(run: Path) -> dict:
    """The RL run's own record: steps taken, and reward / accuracy / format rate / response length of its first
    and last steps, with its held-out pass@1 before and after (so a run that went wrong shows where)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "rl"]
    evals = [r for r in lines if r["kind"] == "eval"]
    if not steps:
        return {"steps": 0, "summary": "no RL step ran"}
    head, tail = steps[: max(1, len(steps) // 5)], steps[-max(1, len(steps) // 5) :]

    def mean(rows: list[dict], key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    summary = ", ".join(
        f"{key} {mean(head, key):.2f}->{mean(tail, key):.2f}"
        for key in ("reward", "accuracy", "format_rate", "response_length")
    )
    if evals:
        summary += f", pass@1 {evals[0]['pass1']:.3f}->{evals[-1]['pass1']:.3f}"
    return {"steps": len(steps), "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished speedrun directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", help="task spec to compare on (default: the speedrun's, from stages.json's _plan)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--distill-problems", type=int, help="default: the speedrun plan's (distill_problems)")
    parser.add_argument("--sft-steps", type=int, help="default: the speedrun plan's student steps")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--speedrun-student", action="store_true", help="the speedrun's student base (saw reasoning)")
    base.add_argument("--student-base", type=Path, help="start both arms from this checkpoint instead")
    args = parser.parse_args()
    teacher, student_base = args.run / "rl" / "model", args.run / "student_base" / "model"
    if not (teacher / "config.json").exists() or not (student_base / "config.json").exists():
        raise SystemExit(f"{args.run} is not a finished speedrun (no rl/model or student_base/model in it)")
    plan = json.loads((args.run / "stages.json").read_text())["_plan"]
    task = args.task or plan["task"]
    teacher_pass = pass1(teacher, task, args.problems, plan["max_tokens"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.student_base:
            student_base = args.student_base
        elif not args.speedrun_student:
            student_base = direct_only_student(args.run, plan, task, Path(tmp))
        base = pass1(student_base, task, args.problems, plan["max_tokens"])
        print(f"  student base {student_base}: pass@1 {base:.3f}", flush=True)
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            start = time.perf_counter()
            nanoseek(*distill_generate(plan, task, teacher, work / "traces.jsonl", args, seed))
            nanoseek(*distill_train(plan, work / "traces.jsonl", student_base, work / "distilled", args, seed))
            budget = time.perf_counter() - start
            nanoseek(*rl_arm(plan, task, student_base, work / "rl", budget, seed, args.problems))
            curve = rl_curve(work / "rl")
            rows.append(
                {
                    "seed": seed,
                    "budget s": f"{budget:.0f}",
                    "distilled student": pass1(work / "distilled", task, args.problems, plan["max_tokens"]),
                    "RL-only student": pass1(work / "rl", task, args.problems, plan["max_tokens"]),
                    "RL steps": curve["steps"],
                    "RL run": curve["summary"],
                }
            )
            print(f"  {rows[-1]}", flush=True)
        share = active_params(student_base) / active_params(teacher)
    means = {key: [r[key] for r in rows] for key in ("distilled student", "RL-only student")}
    rows.append(
        {"seed": "mean ± sd", **{k: f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}" for k, v in means.items()}}
    )
    print(
        f"\nteacher (RL model) pass@1 {teacher_pass:.3f}; student ({share:.0%} of its active parameters) base"
        f" {base:.3f}; same wall-clock per seed:\n"
    )
    print(table(rows, ["seed", "budget s", "distilled student", "RL-only student", "RL steps", "RL run"]))
    broken = [r["seed"] for r in rows[:-1] if r["RL-only student"] < base - 0.02]
    if broken:  # a broken RL run is not a finding: say so instead of printing a ratio
        print(
            f"\nRL arm ended below its start (base {base:.3f}) for seeds {broken}: the RL run is broken, the table is "
            "not a result. See each seed's RL curve above (reward, accuracy, format, length first -> last)."
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
