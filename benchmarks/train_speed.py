"""End-to-end training speed: `nanoseek train` vs transformers' DeepseekV3ForCausalLM in a standard PyTorch loop.

Same config, data (the same token shards), batch and optimizer, each at its best CPU setting, in one run. The
optimizer is the same object on both sides: nanoseek's build_optimizer (torch.optim.AdamW, fused where the build
supports it, the same parameter groups, betas and weight decay), printed per side.
nanoseek's figure is wall-clock over the timed steps with everything the trainer does: data loading, the MTP
loss, bias updates, logging, a validation pass and a checkpoint. MFU is against the matmul peak measured here.

    python benchmarks/train_speed.py                       # bench-18m (and --presets bench-300m for the big one)
    python benchmarks/train_speed.py --quick               # eager settings only
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
from common import describe_optimizer, matmul_peak, table

from nanoseek.config import preset
from nanoseek.model.sizes import flops_per_token, parameter_counts
from nanoseek.runtime import keep_freed_memory
from nanoseek.train.optim import OptimConfig, build_optimizer

warnings.filterwarnings("ignore")
# what `nanoseek train` builds from its default flags (--optimizer adamw --lr 3e-3 --weight-decay 0.1)
OPTIM = OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1)
ROOT = Path(__file__).resolve().parent.parent


def make_data(work: Path, vocab: int) -> tuple[Path, Path]:
    """Task text, a tokenizer of about `vocab` ids, and token shards (shared by both sides)."""
    sys.path.insert(0, str(ROOT))
    from nanoseek.data import read_documents, tokenize_to_shards
    from nanoseek.tasks import get_task
    from nanoseek.tasks.corpus import solution_documents
    from nanoseek.tokenizer import Tokenizer

    docs = solution_documents(
        get_task("addition").generate(30000, seed=1) + get_task("sorting").generate(20000, seed=1, count=6), 0.5
    )
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = Tokenizer.train([corpus], vocab, min_frequency=1)
    tokenizer.save_pretrained(work / "tok")
    tokenize_to_shards(read_documents(corpus), tokenizer, work / "shards", val_fraction=0.01, progress=False)
    return work / "tok", work / "shards"


def nanoseek_run(work: Path, name: str, tok: Path, shards: Path, args, compile_: bool, mtp: bool) -> float:
    out = work / f"run-{name}-{compile_}-{mtp}"
    cmd = (
        [
            sys.executable,
            "-m",
            "nanoseek.cli",
            "train",
            "--data",
            str(shards),
            "--tokenizer",
            str(tok),
            "--out",
            str(out),
            "--preset",
            name,
            "--steps",
            str(args.warmup + args.steps),
            "--batch-size",
            str(args.batch),
            "--seq-len",
            str(args.seq),
            "--log-every",
            "1",
            "--eval-every",
            str(args.warmup + args.steps // 2),
            "--save-every",
            str(args.warmup + args.steps // 2),
            "--no-progress",
            "--optimizer",
            OPTIM.optimizer,
            "--lr",
            str(OPTIM.lr),
            "--weight-decay",
            str(OPTIM.weight_decay),
            "--set",
            f"vocab_size={args.vocab_pad}",
        ]
        + (["--compile"] if compile_ else [])
        + ([] if mtp else ["--mtp-weight", "0"])
    )
    subprocess.run(cmd, check=True, capture_output=True)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    first, last = train[args.warmup - 1], train[-1]  # wall clock from the end of warmup to the last step
    return (last["step"] - first["step"]) * args.batch * args.seq / (last["time"] - first["time"])


def optimizers(config) -> tuple[str, str]:
    """(nanoseek's, transformers') optimizer as each side runs it: the one `nanoseek train` builds, and the one
    transformers_run builds, described by class and implementation flags."""
    import transformers

    from nanoseek.model import build_model

    ours = build_model(config, seed=0)
    with tempfile.TemporaryDirectory() as path:
        ours.save_pretrained(path)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return describe_optimizer(build_optimizer(ours, OPTIM)), describe_optimizer(build_optimizer(theirs, OPTIM))


def transformers_run(shards: Path, config, args, compile_: bool) -> float:
    import transformers

    from nanoseek.data import TokenLoader
    from nanoseek.model import build_model

    with tempfile.TemporaryDirectory() as path:
        build_model(config, seed=0).save_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    opt = build_optimizer(model, OPTIM)  # exactly what `nanoseek train` steps: same class, flags and groups
    forward = torch.compile(model) if compile_ else model
    loader = TokenLoader(shards, "train", batch_size=args.batch, seq_len=args.seq, seed=0)
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        inputs, _ = next(loader)
        loss = forward(input_ids=inputs, labels=inputs).loss  # transformers shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return args.steps * args.batch * args.seq / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["bench-18m"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=8000, help="tokenizer size (the model vocab is --vocab-pad)")
    parser.add_argument("--vocab-pad", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="skip the torch.compile settings")
    args = parser.parse_args()
    keep_freed_memory()
    peak = matmul_peak(torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, shards = make_data(work, args.vocab)
        for name in args.presets:
            config = preset(name, vocab_size=args.vocab_pad)
            flops_ours = flops_per_token(config, args.seq, training=True, mtp=True)
            flops_theirs = flops_per_token(config.replace(num_nextn_predict_layers=0), args.seq, training=True)
            results = {}
            ours_opt, theirs_opt = optimizers(config)
            print(f"  {name} optimizer: nanoseek {ours_opt}; transformers {theirs_opt}", flush=True)
            settings = [
                ("transformers fp32 (eager)", "transformers", False, flops_theirs),
                ("transformers fp32 + compile", "transformers", True, flops_theirs),
                ("nanoseek train fp32 (eager)", "nanoseek", False, flops_ours),
                ("nanoseek train fp32 + compile", "nanoseek", True, flops_ours),
                # the same work as transformers' loop: no MTP module (DeepSeek's recipe trains with it)
                ("nanoseek train fp32 + compile, no MTP", "nanoseek-no-mtp", True, flops_theirs),
            ]
            for label, impl, compile_, flops in settings:
                if compile_ and args.quick:
                    continue
                try:
                    if impl.startswith("nanoseek"):
                        tps = nanoseek_run(work, name, tok, shards, args, compile_, mtp=impl == "nanoseek")
                    else:
                        tps = transformers_run(shards, config, args, compile_)
                except Exception as e:  # a setting that cannot run is reported, not fatal
                    detail = getattr(e, "stderr", None) or str(e)  # a failed subprocess: its own error message
                    detail = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
                    print(f"  {name} {label}: failed ({type(e).__name__}: {detail.strip()[-400:]})", flush=True)
                    continue
                results[label] = tps
                print(f"  {name} {label}: {tps:,.0f} tokens/s", flush=True)
                rows.append(
                    {
                        "model": f"{name} ({parameter_counts(config).total / 1e6:.0f}M)",
                        "setting": label,
                        "tokens/s": f"{tps:,.0f}",
                        "MFU (fp32 peak)": f"{tps * flops / peak:.1%}",
                        "optimizer": ours_opt if impl.startswith("nanoseek") else theirs_opt,
                    }
                )
            best_theirs = max((v for k, v in results.items() if k.startswith("transformers")), default=None)
            best_ours = max((v for k, v in results.items() if k.startswith("nanoseek")), default=None)
            if best_theirs and best_ours:
                rows.append(
                    {
                        "model": name,
                        "setting": "best nanoseek / best transformers",
                        "tokens/s": f"{best_ours / best_theirs:.2f}x",
                    }
                )
    print(f"\nfp32 matmul peak {peak / 1e9:.0f} GFLOP/s; nanoseek's MFU counts its MTP module's work too\n")
    print(table(rows, ["model", "setting", "tokens/s", "MFU (fp32 peak)", "optimizer"]))


if __name__ == "__main__":
    main()
