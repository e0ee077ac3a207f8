"""Training-step speed: nanoseek vs transformers' DeepseekV3ForCausalLM, same config, weights and batches.

One step = forward + backward + AdamW update on a batch of 8 x 256 tokens (the foundation issue's bench config,
~18M parameters). Both sides step the same optimizer: torch.optim.AdamW with the implementation of --adamw
(fused by default; printed per setting). Prints tokens/s per setting, the ratio to transformers' fp32 and best
settings, and MFU against the fp32 and bf16 matmul peaks measured in the same run. Losses over the timed steps
show each setting still learns.

    python benchmarks/model_speed.py                 # all settings (compiles: a few minutes)
    python benchmarks/model_speed.py --quick         # eager settings only
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import warnings

import torch
from common import ADAMW_IMPLEMENTATIONS, adamw, describe_optimizer, matmul_peak, table, timed

import nanoseek
from nanoseek.config import preset
from nanoseek.model import build_model
from nanoseek.model.sizes import flops_per_token, parameter_counts
from nanoseek.runtime import keep_freed_memory

warnings.filterwarnings("ignore")


def make_batches(vocab: int, batch: int, seq: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        out.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return out


def ours_step(path: str, dtype: str, compile_: bool, optimizer: str):
    model = nanoseek.from_pretrained(path, dtype=torch.float32).train()
    opt = adamw(model.parameters(), optimizer, lr=1e-3, weight_decay=0.1)
    forward = torch.compile(model) if compile_ else model

    def step(tokens, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = forward(tokens, labels=labels, mtp_weight=0.0).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, opt


def transformers_step(path: str, dtype: str, compile_: bool, optimizer: str):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    opt = adamw(model.parameters(), optimizer, lr=1e-3, weight_decay=0.1)
    forward = torch.compile(model) if compile_ else model

    def step(tokens, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            # labels already shifted; -100 on nothing. transformers shifts internally, so pass the inputs as labels.
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench-18m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="skip torch.compile settings")
    parser.add_argument(
        "--adamw", choices=ADAMW_IMPLEMENTATIONS, default="fused", help="the AdamW implementation both sides use"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (by default both libraries run with freed memory kept)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        keep_freed_memory()

    config = preset(args.preset, num_nextn_predict_layers=0)  # transformers has no MTP training: compare the bare model
    flops = flops_per_token(config, args.seq, training=True)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"{args.preset}: {parameter_counts(config).total / 1e6:.1f}M parameters, batch {args.batch}x{args.seq}, "
        f"{args.threads} threads; {flops / 1e6:.1f} MFLOP/token; matmul peaks fp32 {peaks['fp32'] / 1e9:.0f} "
        f"GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s"
    )
    batches = make_batches(config.vocab_size, args.batch, args.seq)
    settings = [
        ("transformers", "fp32", False),
        ("transformers", "bf16", False),
        ("nanoseek", "fp32", False),
        ("nanoseek", "bf16", False),
    ]
    if not args.quick:
        settings += [("transformers", "fp32", True), ("nanoseek", "fp32", True), ("nanoseek", "bf16", True)]
    rows = []
    with tempfile.TemporaryDirectory() as path:
        build_model(config, seed=0).save_pretrained(path)
        for impl, dtype, compile_ in settings:
            make = ours_step if impl == "nanoseek" else transformers_step
            name = f"{impl} {dtype}{' compile' if compile_ else ''}"
            try:
                step, opt = make(path, dtype, compile_, args.adamw)
                cycle = itertools.cycle(batches)
                seconds, losses = timed(lambda step=step, cycle=cycle: step(*next(cycle)), args.warmup, args.steps)
            except Exception as e:  # a setting the library cannot run is reported, not fatal
                print(f"{name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                continue
            tps = args.batch * args.seq / seconds
            rows.append(
                {
                    "setting": name,
                    "impl": impl,
                    "tokens/s": round(tps),
                    "step ms": round(seconds * 1e3),
                    "MFU fp32": f"{tps * flops / peaks['fp32']:.1%}",
                    "MFU bf16": f"{tps * flops / peaks['bf16']:.1%}",
                    "loss first->last": f"{losses[0]:.3f}->{losses[-1]:.3f}",
                    "optimizer": describe_optimizer(opt),
                }
            )
            print(f"  {name}: {tps:,.0f} tokens/s ({describe_optimizer(opt)})", flush=True)
    base = next(r["tokens/s"] for r in rows if r["setting"] == "transformers fp32")
    best_theirs = max(r["tokens/s"] for r in rows if r["impl"] == "transformers")
    for r in rows:
        r["vs transformers fp32"] = f"{r['tokens/s'] / base:.2f}x"
        r["vs transformers best"] = f"{r['tokens/s'] / best_theirs:.2f}x"
    print()
    print(
        table(
            rows,
            [
                "setting",
                "tokens/s",
                "step ms",
                "vs transformers fp32",
                "vs transformers best",
                "MFU fp32",
                "MFU bf16",
                "loss first->last",
                "optimizer",
            ],
        )
    )
    ours_fp32 = next(r["tokens/s"] for r in rows if r["setting"] == "nanoseek fp32")
    best_ours = max((r for r in rows if r["impl"] == "nanoseek"), key=lambda r: r["tokens/s"])
    print(f"\nfp32 parity: nanoseek/transformers = {ours_fp32 / base:.2f}x (target >= 0.9x)")
    print(
        f"best vs best: {best_ours['setting']} / transformers best = {best_ours['tokens/s'] / best_theirs:.2f}x "
        f"(target >= 2x); its MFU: {best_ours['MFU fp32']} of fp32 peak, {best_ours['MFU bf16']} of bf16 peak"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
