"""The compiled decode step's time per batch bucket, with its fused products up to --fused rows (step.py's
FUSED_MAX_ROWS) against BLAS above --blas rows: the measurement behind that threshold.

Each setting runs in its own process (the threshold is read when a graph is traced), the two alternate for --rounds
rounds, and every process also times bucket 1, which both settings compile the same way: a machine whose speed drifts
shows up there, so compare the "x bucket 1" columns. Padding rows attend over --blocks blocks of 16 tokens.

    python benchmarks/step_buckets.py --preset bench-18m --threads 1
    python benchmarks/step_buckets.py --preset bench-300m --buckets 1 4 8 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import table


def measure(preset_name: str, buckets: list[int], blocks: int, fused: int, threads: int) -> dict[int, float]:
    """ms per step of each bucket (median of 7 x 5 steps), in this process."""
    import time

    import torch

    from nanoseek.config import preset
    from nanoseek.engine import Engine
    from nanoseek.engine import step as step_module
    from nanoseek.engine.step import _Padding
    from nanoseek.model import build_model

    torch.set_num_threads(threads)
    step_module.FUSED_MAX_ROWS = fused
    model = build_model(preset(preset_name, num_nextn_predict_layers=0, max_position_embeddings=4096))
    engine = Engine(model, decode_step="compiled")
    engine.fast.warmup(tuple(buckets))
    times: dict[int, list[float]] = {b: [] for b in buckets}
    with torch.inference_mode():
        for _ in range(7):
            for size in buckets:
                work = [_Padding(blocks)] * size
                start = time.perf_counter()
                for _ in range(5):
                    engine.fast(work)
                times[size].append((time.perf_counter() - start) / 5 * 1000)
    return {b: statistics.median(t) for b, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bench-18m")
    p.add_argument("--buckets", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--blocks", type=int, default=16, help="block-table length of the padding rows (16 tokens each)")
    p.add_argument("--fused", type=int, default=8, help="fused products up to this many rows")
    p.add_argument("--blas", type=int, default=2, help="the other setting: BLAS above this many rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    buckets = sorted({1, *args.buckets})
    if args.child is not None:
        print(json.dumps(measure(args.preset, buckets, args.blocks, args.child, args.threads)))
        return
    results: dict[int, list[dict[int, float]]] = {args.fused: [], args.blas: []}
    for _ in range(args.rounds):
        for setting in results:
            command = [sys.executable, __file__, *sys.argv[1:], "--child", str(setting)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[setting].append({int(k): v for k, v in json.loads(out.splitlines()[-1]).items()})
    rows = []
    for size in buckets:
        row = {"bucket": size}
        for setting, runs in results.items():
            ms = statistics.median(r[size] for r in runs)
            relative = statistics.median(r[size] / r[1] for r in runs)
            row[f"fused <= {setting} rows: ms"] = f"{ms:.2f}"
            row[f"fused <= {setting}: x bucket 1"] = f"{relative:.2f}"
        rows.append(row)
    print(f"{args.preset}, {args.threads} thread(s), {args.blocks * 16}-token tables, {args.rounds} round(s):\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
