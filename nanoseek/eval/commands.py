"""`nanoseek eval`: held-out pass@1 / pass@k per task (and on GSM8K-style files)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanoseek.engine.commands import add_engine_args, load_engine


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint or run directory")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["addition"],
        help="task names with options (addition:digits=4) or GSM8K/MATH-style .jsonl files",
    )
    p.add_argument("--n", type=int, default=200, help="held-out problems per task")
    p.add_argument("--samples", type=int, default=0, help="sampled completions per problem (pass@1 sampled, pass@k)")
    p.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k values (need --samples >= k)")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--system", help="system message")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    add_engine_args(p)


def eval_main(args: argparse.Namespace) -> int:
    from nanoseek.eval.evaluate import evaluate, load_examples, table

    examples = [ex for spec in args.tasks for ex in load_examples(spec, args.n, seed=args.seed)]
    # --compile: the batch sizes the run decodes, compiled ahead of time (or loaded from disk) before the first problem
    engine = load_engine(args, warm_sequences=min(len(examples) * (1 + args.samples), args.max_running))
    if engine.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files: evaluation needs the chat template")
    results = evaluate(
        engine,
        examples,
        greedy=not args.no_greedy,
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        k=tuple(args.k),
        max_tokens=args.max_tokens,
        seed=args.seed,
        system=args.system,
        progress=True,
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    return 0


COMMAND = ("eval", "held-out pass@1 / pass@k per task, response length, format rate", eval_args, eval_main)
