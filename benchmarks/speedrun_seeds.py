"""The speedrun on several seeds and thread counts: does its story hold beyond one run?

    python benchmarks/speedrun_seeds.py --seeds 0 1 2 --threads 1 2
    python benchmarks/speedrun_seeds.py --seeds 0 1 2 --threads 1 --jobs 2   # two 1-thread runs side by side
    python benchmarks/speedrun_seeds.py --isa avx2 --out runs/speedrun_seeds_avx2   # an AVX2-only CPU's rounding

Each (seed, threads) pair is a full `nanoseek speedrun` in its own directory under --out (re-running resumes
and skips finished runs). Different thread counts change the reduction order of every matmul, so the same
seed rounds differently: the cheapest way to see another CPU's rounding on one machine. Prints one row per
run and the mean and spread of every figure, and whether each of the report's claims held in every run.
`--jobs 2` runs two speedruns at once: only sensible with --threads 1 on a 2-core machine, and the stage
times it prints are then not the speedrun's standalone times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import add_isa_argument, emulate_isa

STAGES = ("base", "sft", "rl", "student")


def run_one(out: Path, seed: int, threads: int, preset: str) -> dict:
    run = out / f"seed{seed}_threads{threads}"
    if not (run / "summary.json").exists():
        command = [sys.executable, "-m", "nanoseek.cli", "speedrun", "--preset", preset, "--out", str(run)]
        command += ["--seed", str(seed), "--threads", str(threads), "--no-progress"]
        log = run.with_suffix(".log")
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            return {"seed": seed, "threads": threads, "error": f"failed (exit {done.returncode}); see {log}"}
    summary = json.loads((run / "summary.json").read_text())
    return {"seed": seed, "threads": threads, **summary}


def row(result: dict) -> dict[str, float]:
    stages = result["stages"]
    figures = {f"{s} pass@1": stages[s]["pass1"] for s in STAGES}
    figures.update({f"{s} unseen": stages[s].get("pass1_unseen_phrasing", float("nan")) for s in STAGES})
    figures.update({f"{s} length": stages[s]["mean_length"] for s in ("sft", "rl")})
    figures["RL gain"] = result["claims"]["rl_gain"]["value"]
    figures["student/teacher"] = result["claims"]["student_vs_teacher"]["value"]
    figures["minutes"] = result["wall_seconds"] / 60
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="speedruns at once (2 only with --threads 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/speedrun_seeds"))
    add_isa_argument(parser)
    args = parser.parse_args()
    emulate_isa(args.isa)
    pairs = [(seed, threads) for threads in args.threads for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda p: run_one(args.out, p[0], p[1], args.preset), pairs))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"seed {r['seed']} threads {r['threads']}: {r['error']}")
    results = [r for r in results if "error" not in r]
    if not results:
        return 1
    machine = results[0]["machine"]
    cpu = machine["cpu"] + (f", {machine['isa']} kernels" if "isa" in machine else "")
    rows = [(f"seed {r['seed']}, {r['threads']} thr", row(r)) for r in results]
    columns = list(rows[0][1])
    print(f"\nspeedrun --preset {args.preset} on {cpu}: held-out greedy pass@1 per stage\n")
    print("| run | " + " | ".join(columns) + " | claims |")
    print("| --- " * (len(columns) + 2) + "|")
    for (name, figures), r in zip(rows, results):
        held = (
            "all"
            if all(c["ok"] for c in r["claims"].values())
            else "FAILED: " + ", ".join(k for k, c in r["claims"].items() if not c["ok"])
        )
        print(f"| {name} | " + " | ".join(f"{figures[c]:.3g}" for c in columns) + f" | {held} |")
    means = [statistics.mean(f[c] for _, f in rows) for c in columns]
    spreads = [statistics.stdev(f[c] for _, f in rows) if len(rows) > 1 else 0.0 for c in columns]
    print("| mean ± sd | " + " | ".join(f"{m:.3g} ± {s:.2g}" for m, s in zip(means, spreads)) + " | |")
    held_everywhere = all(all(c["ok"] for c in r["claims"].values()) for r in results) and not failed
    print(f"\nevery claim held in every run: {'yes' if held_everywhere else 'NO'}")
    return 0 if held_everywhere else 1


if __name__ == "__main__":
    raise SystemExit(main())
