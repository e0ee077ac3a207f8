"""Auxiliary-loss-free balancing, measured: expert load (max / mean per MoE layer) after N training steps with the
bias update on (gamma > 0) and off (gamma = 0), same model, data and seed.

DeepSeek-V3's claim: the per-expert bias, nudged by the sign of each expert's load error, balances the experts
without an auxiliary loss (which would also push on the language-modelling gradients).

    python benchmarks/balance.py [--steps 300] [--preset tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from nanoseek.tasks import get_task
    from nanoseek.tasks.corpus import solution_documents
    from nanoseek.tokenizer import Tokenizer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        docs = solution_documents(
            get_task("addition").generate(8000, seed=1) + get_task("sorting").generate(8000, seed=1), 0.5
        )
        (work / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        Tokenizer.train([work / "corpus.jsonl"], 512).save_pretrained(work / "tok")
        data = str(work / "corpus.jsonl")
        for gamma in args.gammas:
            out = work / f"gamma{gamma}"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nanoseek.cli",
                    "train",
                    "--data",
                    data,
                    "--tokenizer",
                    str(work / "tok"),
                    "--out",
                    str(out),
                    "--preset",
                    args.preset,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    "16",
                    "--seq-len",
                    "256",
                    "--bias-update-speed",
                    str(gamma),
                    "--log-every",
                    "10",
                    "--eval-every",
                    str(args.steps),
                    "--save-every",
                    str(10**9),
                    "--no-progress",
                ],
                check=True,
                capture_output=True,
            )
            if (out / "data").is_dir():
                data = str(out / "data")  # the first run tokenised the corpus: later runs reuse its shards
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            train = [r for r in lines if r["kind"] == "train"]
            last = train[-5:]
            val = [r for r in lines if r["kind"] == "val"][-1]
            rows.append(
                {
                    "gamma": gamma,
                    "max/mean load (mean over layers)": f"{sum(r['balance_max_over_mean'] for r in last) / 5:.2f}",
                    "worst layer": f"{sum(r['balance_worst_layer'] for r in last) / 5:.2f}",
                    "val loss": f"{val['val_loss']:.3f}",
                }
            )
            print(f"  gamma={gamma}: {rows[-1]}", flush=True)
    print(f"\n{args.preset}, {args.steps} steps (load averaged over the last 50 steps; 1.00 = perfectly even):\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
