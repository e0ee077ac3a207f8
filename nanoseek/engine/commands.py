"""`nanoseek generate`: batch generation from the command line (prompts as arguments or a file)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "auto": None}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads an engine (generate, serve, chat, eval)."""
    p.add_argument("--dtype", choices=list(DTYPES), default="auto", help="weights dtype (auto: as stored)")
    p.add_argument("--quantize", choices=["int8"], help="int8 linear layers and experts (CPU)")
    p.add_argument("--speculative", action="store_true", help="draft with the MTP module and verify (MTP models)")
    p.add_argument("--max-running", type=int, default=64, help="sequences decoded together")
    p.add_argument("--device", help="where the model, cache, sampling and decode step run: cpu (default), cuda, cuda:1")
    p.add_argument("--threads", type=int, help="CPU threads (on a machine shared with other work, 1 is often faster)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with the compiled static step (2-5x faster at batch 1; compiles for up to a minute per batch "
        "size the first time it is used, cached on disk afterwards; with --speculative, greedy requests verify and "
        "draft in one graph call; sampled ones do not draft)",
    )
    p.add_argument(
        "--cache-tokens",
        type=int,
        help="cache size in tokens (default: 4 full contexts capped at 2 GiB, but at least 16k tokens)",
    )


def load_engine(args: argparse.Namespace, warm_sequences: int = 0):
    """The engine the flags describe. warm_sequences: with --compile, compile (or load from disk)
    the decode step's graphs for up to this many sequences now, with a progress line each, so no request waits on a
    compile (a server: --max-running; a chat: 1)."""
    import torch

    from nanoseek.engine import Engine

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)  # the process-wide default: threads started later (the engine loop) use it
    dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
    engine = Engine.from_pretrained(
        args.model,
        dtype=dtype,
        device=getattr(args, "device", None),
        quantize=args.quantize,
        speculative=args.speculative,
        max_running=args.max_running,
        cache_tokens=args.cache_tokens,
        # eager by default: a compile stalls the first request at each batch size (a server's first clients) for up
        # to a minute; --compile opts in until the step is compiled at start-up (warm-up) with a progress line
        decode_step="compiled" if getattr(args, "compile", False) else "eager",
    )
    if engine.fast is not None and warm_sequences:
        engine.fast.warmup(engine.fast.buckets_for(warm_sequences))
    return engine


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (DeepSeek recommends 0.6 for R1)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def params_from_flags(args: argparse.Namespace, **extra):
    """SamplingParams from the flags add_sampling_args defines (plus `extra` fields)."""
    from nanoseek.engine import SamplingParams

    flags = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop")
    return SamplingParams(**{name: getattr(args, name) for name in flags}, **extra)


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory (or Hugging Face hub id)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--prompts", type=Path, help="a .txt file (a prompt per line) or .jsonl ({'prompt'} or {'messages'})"
    )
    p.add_argument("--raw", action="store_true", help="send prompts as they are, without the chat template")
    p.add_argument("--system", help="system message for chat-templated prompts")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--output", type=Path, help="write JSON lines here instead of printing")
    add_sampling_args(p)
    add_engine_args(p)


def _read_prompts(args: argparse.Namespace) -> list:
    prompts: list = list(args.prompt)
    if args.prompts:
        if not args.prompts.exists():
            raise FileNotFoundError(f"no prompts file at {args.prompts}")
        if args.prompts.suffix == ".jsonl":
            for number, line in enumerate(args.prompts.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    prompts.append(record["messages"] if "messages" in record else record["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(
                        f"{args.prompts}:{number}: expected {{'prompt': ...}} or {{'messages': [...]}}"
                    ) from None
        else:
            prompts += [line for line in args.prompts.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT or --prompts FILE")
    return prompts


def render(engine, prompt, raw: bool, system: str | None = None) -> str | list[int]:
    """Text prompts go through the checkpoint's chat template unless raw; message lists always do."""
    if isinstance(prompt, str) and raw:
        return prompt
    if engine.tokenizer is None:
        raise ValueError("this checkpoint has no tokenizer: use --raw with token ids, or add tokenizer files")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def generate_main(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    params = params_from_flags(args, n=args.n)
    # --compile: the graphs of the batch sizes this run decodes, compiled ahead of time (or loaded from disk)
    engine = load_engine(args, warm_sequences=min(len(prompts) * args.n, args.max_running))
    start = time.perf_counter()
    results = engine.generate(
        [render(engine, p, args.raw, args.system) for p in prompts],
        params,
        progress=len(prompts) > 1 and sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - start
    out = args.output.open("w") if args.output else None
    for prompt, result in zip(prompts, results):
        for c in result if isinstance(result, list) else [result]:
            record = {
                "prompt": prompt,
                "index": c.index,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "completion_tokens": len(c.token_ids),
                "prompt_tokens": c.prompt_tokens,
                "prompt_cache_hit_tokens": c.prompt_cache_hit_tokens,
            }
            if out:
                out.write(json.dumps(record) + "\n")
            else:
                print(c.text if len(prompts) == 1 and args.n == 1 else json.dumps(record))
    if out:
        out.close()
    generated = engine.stats["generated_tokens"]
    note = f", draft acceptance {engine.acceptance_rate:.0%}" if args.speculative else ""
    note += f", decode step {engine.decode_step}"
    print(f"[{generated} tokens in {seconds:.1f}s: {generated / seconds:.1f} tokens/s{note}]", file=sys.stderr)
    return 0


COMMAND = ("generate", "generate text from a checkpoint (batched, latent cache)", generate_args, generate_main)
