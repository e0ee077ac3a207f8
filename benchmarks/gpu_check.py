"""The one script to run when a GPU is lent (issue 17's GPU half). A lent device comes for a few minutes, once: this
script is prepared so that they go to measuring, not to debugging. Every part runs on --device, writes its figures
to OUT/gpu_check.json as it goes (a run cut short keeps what it measured; its part shows "ok": null), and a part that
fails records its error and traceback and lets the next part run.

  env       torch and CUDA versions, the device's name and memory
  decode    bench-18m (random weights), batch 1 at 16 and 2k tokens of context: the engine's eager step and its
            compiled step (on CUDA: captured as CUDA graphs, torch.compile mode reduce-overhead, engine/step.py)
            against transformers' generate on the same device, greedy ids compared
  speedrun  the whole speedrun on the device (default: `--preset cpu`'s recipe, the story a laptop tells, here in
            a few minutes; the GPU preset's own sizes take longer than a lent device stays): every stage, GRPO's
            rollouts and updates and the teacher's traces included; its run under --work, its summary.json and
            report.md copied beside gpu_check.json
  batching  32 concurrent prompts through continuous batching against batch 1, compiled (last: on a GPU every
            batch bucket is a CUDA graph of its own, minutes of compiling)

    python benchmarks/gpu_check.py --out DIR                               # on a GPU (minutes; never timed on one)
    python benchmarks/gpu_check.py --out /tmp/g --device cpu --quick        # every part at its smallest, on CPU

On the `device` tool's H200 (its python3 holds torch and transformers; nothing is installed: the checkout is put on
the path; only 8 files come back from $OUT, so the speedrun's run stays in /tmp and its report is copied out):

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT --work /tmp/g 2>&1 | tee $OUT/log

--quick (what the test suite runs, so the script cannot rot unnoticed on machines without a GPU): the nano preset,
short contexts, the uncompiled static step instead of the compiled one, and a miniature speedrun up to GRPO.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import decode_speed
import torch
from decode_speed import ours_decode, theirs_decode

from nanoseek.config import preset
from nanoseek.model import build_model
from nanoseek.runtime import resolve_device

warnings.filterwarnings("ignore")

PARTS = ("env", "decode", "speedrun", "batching")  # the order they run in: the figures wanted most first

# the decode and batching parts' sizes, full and --quick (the uncompiled static step: the same graph, no compile)
DECODE = {
    "full": dict(preset="bench-18m", contexts=(16, 2048), new_tokens=128, steps=("eager", "compiled"), concurrent=32),
    "quick": dict(preset="nano", contexts=(16, 64), new_tokens=8, steps=("eager", "static"), concurrent=4),
}


def _decode_model(args: argparse.Namespace, device: torch.device) -> tuple[dict, torch.nn.Module]:
    sizes = DECODE["quick" if args.quick else "full"]
    config = preset(sizes["preset"], num_nextn_predict_layers=0, max_position_embeddings=4096)
    return sizes, build_model(config).to(device)


# --quick's speedrun: the test suite's miniature plan, run up to GRPO (a 12-step teacher writes no verified traces
# for the student stage to learn from)
QUICK_PLAN = dict(
    corpus_problems=300,
    vocab_size=300,
    teacher_preset="nano",
    base_steps=6,
    batch_size=4,
    seq_len=128,
    sft_traces=64,
    sft_steps=2,
    rl_steps=1,
    rl_prompts=2,
    rl_group=4,
    max_tokens=16,
    eval_problems=4,
    threads=1,
)
QUICK_STAGES = ("data", "tokenizer", "base", "sft", "rl")


def part_env(device: torch.device, args: argparse.Namespace, save) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"cuda": torch.version.cuda, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return info


def part_decode(device: torch.device, args: argparse.Namespace, save) -> dict:
    sizes, model = _decode_model(args, device)
    name, vocab, new_tokens = sizes["preset"], model.config.vocab_size, sizes["new_tokens"]
    result: dict = {"batch 1": []}
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        for context in sizes["contexts"]:
            prompt = torch.randint(2, vocab, (context,), generator=torch.Generator().manual_seed(0))
            theirs, their_ids = theirs_decode(path, prompt.tolist(), new_tokens, device=str(device))
            for step in sizes["steps"]:
                ours, engine = ours_decode(model, [prompt.tolist()], new_tokens, decode_step=step)
                row = {"model": name, "context": context, "decode step": engine.decode_step, "tok/s": round(ours, 1)}
                row |= {"transformers tok/s": round(theirs, 1), "ratio": round(ours / theirs, 2)}
                row |= {"same ids": engine.outputs[0] == their_ids, "first call s": round(engine.warmup_seconds, 1)}
                result["batch 1"].append(row)
                save(result)
                print(f"  decode {name} context {context} {step}: {ours:.1f} tok/s vs transformers {theirs:.1f}")
    return result


def part_batching(device: torch.device, args: argparse.Namespace, save) -> dict:
    """Continuous batching against batch 1 (last by default: on a GPU each batch bucket is its own CUDA graph)."""
    sizes, model = _decode_model(args, device)
    concurrent, step, g = sizes["concurrent"], sizes["steps"][-1], torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompts = [torch.randint(2, vocab, (16 + 8 * i,), generator=g).tolist() for i in range(concurrent)]
    tokens = 8 if args.quick else 48
    single, _ = ours_decode(model, prompts[:1], tokens, decode_step=step)
    many, _ = ours_decode(model, prompts, tokens, decode_step=step)
    print(f"  {concurrent} concurrent ({step}): {many:.1f} tok/s vs batch 1 {single:.1f}")
    result = {"model": sizes["preset"], "prompts": concurrent, "decode step": step, "tok/s": round(many, 1)}
    return result | {"batch-1 tok/s": round(single, 1), "ratio": round(many / single, 2)}


def part_speedrun(device: torch.device, args: argparse.Namespace, save) -> dict:
    """Stage by stage (a run resumes past finished stages), so a run cut short keeps the stages it finished."""
    from nanoseek.speedrun import PLANS, STAGES, Speedrun

    plan = replace(PLANS[args.speedrun_preset], device=str(device))
    stages = STAGES
    if args.quick:
        plan, stages = replace(plan, **QUICK_PLAN), list(QUICK_STAGES)
    work = args.work / "speedrun"
    result = {"plan": args.speedrun_preset + (" (quick)" if args.quick else ""), "device": plan.device}
    for stage in stages:
        record = Speedrun(work, plan, progress=not args.quick).run([stage])
        result["stage seconds"] = {s: round(r["seconds"], 1) for s, r in record.items() if s in STAGES}
        save(result)
    if (work / "summary.json").exists():  # the report stage's; copied beside gpu_check.json (the run stays in work)
        summary = json.loads((work / "summary.json").read_text())
        result["pass@1"] = {s: row["pass1"] for s, row in summary["stages"].items()}
        result["claims"] = {name: claim["ok"] for name, claim in summary["claims"].items()}
        for name in ("summary.json", "report.md"):
            shutil.copy(work / name, args.out / f"speedrun_{name}")
    return result


def run_part(name: str, device: torch.device, args: argparse.Namespace, results: dict) -> None:
    """One part, timed; what it measured so far (and its error, if it fails) saved as it goes."""
    print(f"[gpu_check] {name}...", flush=True)
    start = time.perf_counter()

    def save(partial: dict, ok: bool | None = None) -> None:
        results[name] = {"ok": ok, **partial, "seconds": round(time.perf_counter() - start, 1)}
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))

    partial: dict = {}
    try:
        fn = {"env": part_env, "decode": part_decode, "speedrun": part_speedrun, "batching": part_batching}[name]
        save(fn(device, args, lambda measured: partial.update(measured) or save(partial)), ok=True)
    except Exception as error:  # keep going: the next part may still measure something
        failure = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(failure["traceback"], flush=True)
        save(partial | failure, ok=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json and the speedrun's report go")
    parser.add_argument("--work", type=Path, help="where the speedrun runs (default: OUT; on a lent device: /tmp)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (with --quick: the suite's check)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--speedrun-preset", default="cpu", choices=["cpu", "cpu-large", "gpu"], help="the speedrun plan to run there"
    )
    parser.add_argument("--quick", action="store_true", help="every part at its smallest (minutes -> seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per decode figure; the median is reported")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)  # a missing GPU is refused here, before any work
    decode_speed.REPEATS = 1 if args.quick else args.repeats
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or args.out
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name in args.parts:
        run_part(name, device, args, results)
    failed = [name for name in args.parts if not results[name]["ok"]]
    print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=1, default=str)[:6000])
    verdict = "failed: " + ", ".join(failed) if failed else "every part ran"
    print(f"[gpu_check] {verdict}; figures in {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
