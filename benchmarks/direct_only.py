"""Is the speedrun's task out of reach without reasoning? The speedrun's base, pretrained on direct answers only.

Issue 14's test of a task for the R1 story: a model of the speedrun's size and budget (its teacher preset, base
steps, rows, optimizer and MTP) trained only on direct answers must stay below 10% held-out pass@1, on every seed,
so that RL has reasoning to find. Each seed runs the speedrun's own data, tokenizer and base stages with
`worked_fraction=0` (every problem answered directly, none worked) into its own directory under --out (re-running
skips finished seeds), then scores the base greedily on the speedrun's held-out problems and their unseen phrasings.

    python benchmarks/direct_only.py --seeds 0 1 2 --threads 2      # ~4-5 minutes a seed on 2 cores
    python benchmarks/direct_only.py --isa avx2 --out runs/direct_only_avx2   # as an AVX2-only CPU rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import add_isa_argument, emulate_isa, table

from nanoseek.speedrun import Plan, Speedrun

LIMIT = 0.10  # the bar: direct answers stay below this held-out pass@1


def direct_plan(seed: int, threads: int | None) -> Plan:
    """The speedrun's default plan with no worked solutions in the base corpus: the same model, steps and rows."""
    return Plan(seed=seed, threads=threads, worked_fraction=0.0)


def run_seed(out: Path, seed: int, threads: int | None) -> dict:
    """The speedrun's data, tokenizer and base stages on direct answers only (resumable), then the base scored as the
    speedrun's eval stage scores every stage."""
    result_file = out / f"seed{seed}" / "direct_only.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run = Speedrun(out / f"seed{seed}", direct_plan(seed, threads), progress=False)
    run.run(("data", "tokenizer", "base"))
    result = {"seed": seed, **run.score(run.record["base"]["checkpoint"], "base, direct answers only")}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/direct_only"))
    add_isa_argument(parser)
    args = parser.parse_args()
    emulate_isa(args.isa)
    results = []
    for seed in args.seeds:
        results.append(run_seed(args.out, seed, args.threads))
        print(f"seed {seed}: held-out pass@1 {results[-1]['pass1']:.3f}", flush=True)
    rows = [
        {
            "seed": r["seed"],
            "held-out pass@1": f"{r['pass1']:.3f}",
            "unseen phrasings": f"{r.get('pass1_unseen_phrasing', float('nan')):.3f}",
            "mean tokens": f"{r['mean_length']:.0f}",
        }
        for r in results
    ]
    passes = [r["pass1"] for r in results]
    spread = statistics.stdev(passes) if len(passes) > 1 else 0.0
    print(table(rows, list(rows[0])))
    print(f"mean {statistics.mean(passes):.3f} ± {spread:.3f}; below {LIMIT:.0%} on every seed: {max(passes) < LIMIT}")


if __name__ == "__main__":
    main()
