"""Decode speed: nanoseek's engine vs transformers' `generate` on the same checkpoints, in one run.

(a) batch-1 greedy decode tokens/s on bench-18m and bench-300m, with the fraction of the memory-bandwidth
    roofline (read bandwidth measured in this run / bytes of weights one token reads): the eager engine, the
    compiled static decode step (engine/step.py; "first call s" includes its compile, cached on disk afterwards)
    and int8, each against transformers;
(b) decode with 2k tokens of context already in the cache;
(c) 32 concurrent prompts through continuous batching: total tokens/s against batch-1, eager and compiled;
(d) MTP speculative decoding on a model whose MTP module was trained: acceptance rate and speed-up over plain
    decoding with the same decode step (eager; compiled: the verify graph of engine/speculative_step.py);
(e) a dense Qwen2 of Qwen2.5-0.5B's shape (the R1-Distill students' family, random weights) in bf16 and int8:
    batch-1 greedy decode tokens/s against transformers in bf16, and the fraction of the roofline;
(f) long context, DeepSeek-V3.2's sparse attention: bench-18m (V3) against bench-18m-v32 (the same model plus a
    lightning indexer, index_topk 512) with 2k, 8k and 16k tokens of context, batch 1. V3 attends to every past
    token; V3.2 scores them all with its narrow indexer and attends only to the top 512. Not run by default
    (the 16k prefills take minutes).
(h) what MTP speculation would give on larger, memory-bound shapes: a verify step's cost against a plain step's
    (graph calls only, batch 1, 2k tokens of context; random weights: a step costs the same whatever they are), the
    bytes of weights each reads (a second row gathers its own experts; the draft reads the lm_head again: an int8
    copy by default, or the model's own), and the speed-up implied at the acceptance rate of (d),
    (1 + acceptance) / cost ratio. Not run by default.
(g) llama.cpp as the peer instead of transformers (benchmarks/llama_cpp_peer.py: bench-18m and Qwen2.5-0.5B's shape,
    f32 and q8_0 GGUFs from llama.cpp's own converter, llama-bench against the compiled engine in fp32 and int8);
    needs a llama.cpp built once with `python benchmarks/llama_cpp_peer.py --build .cache/llama.cpp`.
DeepSeek-V4 (its own cache: window, compressed rows, indexer) at 16k and 64k beside transformers and a same-size V3
is `benchmarks/decode_speed_v4.py`: its prefills alone take minutes.

    python benchmarks/decode_speed.py              # all sections (~5 minutes on 2 cores)
    python benchmarks/decode_speed.py --sections a c --presets bench-18m
    python benchmarks/decode_speed.py --mtp-checkpoint runs/speedrun/base   # (d) on a pretrained model
    python benchmarks/decode_speed.py --sections e --qwen2-vocab 32768      # (e) with a smaller vocabulary
    python benchmarks/decode_speed.py --sections f --threads 2              # (f) long context, V3 vs V3.2
    python benchmarks/decode_speed.py --sections g --threads 1              # (g) llama.cpp in .cache/llama.cpp
    python benchmarks/decode_speed.py --sections h --threads 1 --acceptance 0.83   # (h) MTP on larger shapes

Both sides are timed the same way: the prompt is prefilled (and its first token produced) before the clock starts,
and the clock stops at the last token, so a figure is (new tokens - 1) / decode seconds. nanoseek's engine is
stepped until the prompt is cached; transformers' `generate` runs once and a stopping criterion (called after
every token) records when each token was produced. Each figure is the median of --repeats runs. (f) times single
decode steps after one prefill (a 16k prefill is too long to repeat), V3's and V3.2's engines side by side in
alternating turns of 8 steps, so a load that moves (other jobs) weighs on both: the median of --long-steps steps each.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import table, timed_decode

from nanoseek.config import ModelConfig, preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.quant import Int8Experts, Int8Linear, quantize_int8
from nanoseek.model import build_model
from nanoseek.model.moe import Experts
from nanoseek.runtime import keep_freed_memory

warnings.filterwarnings("ignore")


def read_bandwidth(megabytes: int = 1024) -> float:
    """Bytes/s this machine reads from memory (a sum over a buffer far larger than the caches)."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    buffer.sum()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def weights_read(modules, config, rows: int = 1) -> float:
    """Bytes of weights these modules read in a step of `rows` tokens of one sequence: every dense matrix once, k of
    E routed experts per MoE layer and row (the static step gathers each row's own; overlaps are not subtracted)."""
    total = 0.0
    for module in modules:
        if isinstance(module, Int8Linear):
            total += module.weight_bytes
        elif isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, (Experts, Int8Experts)):
            per_expert = 3 * config.hidden_size * config.moe_intermediate_size
            size = 1 if isinstance(module, Int8Experts) else module.w_down.element_size()
            total += rows * config.num_experts_per_tok * per_expert * size
    return total


def _main_modules(model) -> list:
    mtp = {id(m) for layer in model.mtp_layers for m in layer.modules()}  # not run without speculation
    return [m for m in model.modules() if id(m) not in mtp]


def weight_bytes_per_token(model) -> float:
    """Bytes of weights one decoded token reads (the MTP layers are not run without speculation)."""
    return weights_read(_main_modules(model), model.config) + model.config.hidden_size * 4  # + one embedding row


def verify_bytes(model, step) -> float:
    """Bytes of weights one verify + draft call (speculative_step.py) reads at batch 1: the main model over 2 rows,
    the MTP layer over 2 rows, then the lm_head again for the draft (the step's int8 copy of it where it has one)."""
    config = model.config
    main = weights_read(_main_modules(model), config, rows=2)
    mtp = weights_read(model.mtp_layers[0].modules(), config, rows=2)
    head = sum(t.nbytes for t in step.draft_head) or model.lm_head.weight.nbytes
    return main + mtp + head + 4 * config.hidden_size * 4  # + the tokens' and the MTP's embedding rows


REPEATS = 3  # runs per figure (the median is reported); main() sets it from --repeats


def ours_decode(
    model,
    prompts: list[list[int]],
    new_tokens: int,
    speculative: bool = False,
    decode_step: str = "eager",
    ahead: bool = True,
) -> tuple[float, Engine]:
    """Median decode tokens/s over REPEATS runs (each on a fresh engine; a compiled step compiles in the first one
    only: later engines of the same shapes reuse its graph), and the last run's engine (`engine.outputs`: the
    generated ids of each prompt; `engine.warmup_seconds`: the first run's warming call, untimed, which compiles
    the step unless this process or inductor's disk cache already holds it)."""
    runs = [_ours_decode_once(model, prompts, new_tokens, speculative, decode_step, ahead) for _ in range(REPEATS)]
    runs[-1][1].warmup_seconds = runs[0][1].warmup_seconds  # the first engine's: the one that compiled
    return statistics.median(r[0] for r in runs), runs[-1][1]


def _ours_decode_once(
    model, prompts: list[list[int]], new_tokens: int, speculative: bool, decode_step: str, ahead: bool = True
) -> tuple[float, Engine]:
    engine = Engine(model, speculative=speculative, max_step_tokens=4096, decode_step=decode_step)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    if engine.fast is not None and ahead:  # as `serve`/`chat --compile` do: graphs compiled ahead of time (step.py)
        engine.fast.warmup(engine.fast.buckets_for(len(prompts)))
    engine.generate([p[:8] for p in prompts], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    engine.warmup_seconds = time.perf_counter() - start
    rate, requests = timed_decode(engine, prompts, params)
    engine.outputs = [r.completions[0].token_ids for r in requests]
    return rate, engine


def theirs_decode(
    path: str, prompt: list[int], new_tokens: int, dtype=torch.float32, device: str = "cpu"
) -> tuple[float, list[int]]:
    """Median decode tokens/s of transformers' greedy `generate` over REPEATS runs, timed as ours_decode times the
    engine: from the first generated token (prefill done) to the last, within one `generate` call; and its ids."""
    import transformers

    class TokenClock(transformers.StoppingCriteria):
        """Never stops generation; records when each new token was appended (generate calls it per token)."""

        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            if input_ids.is_cuda:  # the token exists once its kernels ran, not when they were queued
                torch.cuda.synchronize(input_ids.device)
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().to(device)
    ids = torch.tensor([prompt], device=device)
    rates = []
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
        for _ in range(REPEATS):
            clock = TokenClock()
            out = model.generate(
                ids,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                stopping_criteria=transformers.StoppingCriteriaList([clock]),
            )
            assert out.shape[1] - ids.shape[1] == new_tokens == len(clock.times), (out.shape, len(clock.times))
            rates.append((new_tokens - 1) / (clock.times[-1] - clock.times[0]))
    return statistics.median(rates), out[0, ids.shape[1] :].tolist()


def section_a_b(presets: list[str], bandwidth: float, sections: set[str]) -> list[dict]:
    rows = []
    for name in presets:
        config = preset(name, num_nextn_predict_layers=0, max_position_embeddings=4096)
        model = build_model(config)
        quantized = copy.deepcopy(model)
        quantize_int8(quantized)
        with tempfile.TemporaryDirectory() as path:
            model.save_pretrained(path)
            for label, context, new_tokens in [
                ("a: batch 1, 16-token context", 16, 128),
                ("b: batch 1, 2k context", 2048, 64),
            ]:
                if label[0] not in sections:
                    continue
                prompt = torch.randint(
                    2, config.vocab_size, (context,), generator=torch.Generator().manual_seed(0)
                ).tolist()
                theirs, their_ids = theirs_decode(path, prompt, new_tokens)
                eager = None
                for setting, m, step in SETTINGS:
                    ours, engine = ours_decode(quantized if m == "int8" else model, [prompt], new_tokens, False, step)
                    eager = eager or ours
                    roofline = bandwidth / weight_bytes_per_token(quantized if m == "int8" else model)
                    rows.append(
                        {
                            "section": label,
                            "model": name,
                            "nanoseek": f"{setting}, {engine.decode_step}"
                            if "eager (" in engine.decode_step
                            else setting,
                            "nanoseek tok/s": f"{ours:.1f}",
                            "transformers fp32 tok/s": f"{theirs:.1f}",
                            "ratio": f"{ours / theirs:.2f}x",
                            "x eager engine": f"{ours / eager:.2f}x",
                            "same ids as transformers": "yes" if engine.outputs[0] == their_ids else "no",
                            "first call s": f"{engine.warmup_seconds:.1f}",
                            "roofline tok/s": f"{roofline:.0f}",
                            "of roofline": f"{ours / roofline:.0%}",
                        }
                    )
                    print(f"  {label} {name} {setting}: {ours:.1f} tok/s vs transformers {theirs:.1f}", flush=True)
    return rows


# (label, weights, decode step) of each nanoseek row in (a, b); int8 compiled reads unpacked int8 weights (step.py)
SETTINGS = [("fp32 eager", "fp32", "eager"), ("fp32 compiled", "fp32", "compiled"), ("int8", "int8", "compiled")]


def section_c(presets: list[str], concurrent: int) -> list[dict]:
    rows = []
    for name in presets:
        config = preset(name, num_nextn_predict_layers=0)
        model = build_model(config)
        g = torch.Generator().manual_seed(1)
        prompts = [
            torch.randint(2, config.vocab_size, (int(n),), generator=g).tolist()
            for n in torch.randint(16, 128, (concurrent,), generator=g)
        ]
        for step in ("eager", "compiled"):
            # warmed up, as `serve --compile` is: graphs compiled ahead of time (the first run compiles the six
            # buckets, minutes; later runs' fresh engines load them from disk: engine/graph_cache.py)
            single, _ = ours_decode(model, prompts[:1], 48, decode_step=step)
            many, _ = ours_decode(model, prompts, 48, decode_step=step)
            rows.append(
                {
                    "model": name,
                    "decode step": step,
                    "batch-1 tok/s": f"{single:.1f}",
                    f"{concurrent} concurrent tok/s": f"{many:.1f}",
                    "ratio": f"{many / single:.1f}x",
                }
            )
            print(f"  c {name} {step}: {many:.1f} vs {single:.1f} tok/s", flush=True)
    return rows


def trained_mtp_model():
    """A tiny model whose MTP module learned something (the test suite's fixture), when no checkpoint is given."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import stride_sequences, trained_mtp_model

    model = trained_mtp_model(steps=300)
    prompts = stride_sequences(1, 8, model.config.vocab_size, torch.Generator().manual_seed(5)).tolist()
    return model, prompts


def section_d(checkpoint: str | None) -> list[dict]:
    if checkpoint:
        import nanoseek
        from nanoseek.checkpoint import resolve_model_path
        from nanoseek.tokenizer import Tokenizer

        model = nanoseek.from_pretrained(checkpoint)
        tokenizer = Tokenizer.from_pretrained(resolve_model_path(checkpoint))
        prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "What is 123 + 456?"}]))]
        label = checkpoint
    else:
        model, prompts = trained_mtp_model()
        label = "nano, MTP trained 300 steps (test fixture)"
    rows = []
    for step in ("eager", "compiled"):  # compiled: greedy drafts verified and proposed in one graph call
        # plain and speculative runs alternate (and each gets one untimed run first, which compiles): a machine
        # whose speed drifts weighs on both sides of the ratio alike
        for speculative in (False, True):
            _ours_decode_once(model, prompts, 64, speculative, step)
        runs = [[_ours_decode_once(model, prompts, 64, s, step) for s in (False, True)] for _ in range(REPEATS)]
        plain = statistics.median(r[0][0] for r in runs)
        fast, engine = statistics.median(r[1][0] for r in runs), runs[-1][1][1]
        rows.append(
            {
                "model": label,
                "decode step": engine.decode_step,
                "plain tok/s": f"{plain:.1f}",
                "speculative tok/s": f"{fast:.1f}",
                "speed-up": f"{fast / plain:.2f}x",
                "acceptance": f"{engine.acceptance_rate:.0%}",
            }
        )
        print(f"  d {step}: {fast:.1f} vs {plain:.1f} tok/s, acceptance {engine.acceptance_rate:.0%}", flush=True)
    return rows


def _alternating_step_times(steps: dict, context: int, calls: int) -> dict[str, list[float]]:
    """Seconds of `calls` graph calls each at `context` positions: the plain step of steps["int8"], and each step's
    verify step, in turns (a drifting machine weighs on all), after two untimed rounds."""
    from nanoseek.engine.step import _Padding

    plain = [_Padding(steps["int8"].table_blocks(context))]
    verify = [_Padding(steps["int8"].table_blocks(context + 1))]
    kinds = ["plain", *steps]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with torch.inference_mode():
        for i in range(len(kinds) * (calls + 2)):
            kind = kinds[i % len(kinds)]
            start = time.perf_counter()
            steps["int8"](plain) if kind == "plain" else steps[kind].verify(verify)
            if i >= 2 * len(kinds):
                times[kind].append(time.perf_counter() - start)
    return times


def section_h(presets: list[str], acceptance: float, context: int = 2048, calls: int = 40) -> list[dict]:
    rows = []
    for name in presets:
        model = build_model(preset(name, num_nextn_predict_layers=1)).eval()
        steps = {}
        for head in ("int8", "exact"):  # the draft's lm_head: the compiled step's int8 copy, or the model's own
            engine = Engine(model, speculative=True, decode_step="compiled", cache_tokens=2 * context + 512)
            if head == "exact":
                engine.fast.draft_head = ()  # before any graph is built: its graphs take no int8 head
            engine.fast.warmup((1,))  # the plain and the verifying graph of bucket 1, ahead of time (or from disk)
            steps[head] = engine.fast
        times = _alternating_step_times(steps, context, calls)
        t_plain = statistics.median(times["plain"])
        for head, step in steps.items():
            t_verify = statistics.median(times[head])
            ratio = t_verify / t_plain
            rows.append(
                {
                    "model": name,
                    "draft head": head,
                    "plain step ms": f"{t_plain * 1e3:.2f}",
                    "verify + draft ms": f"{t_verify * 1e3:.2f}",
                    "cost ratio": f"{ratio:.2f}",
                    "weights read ratio": f"{verify_bytes(model, step) / weight_bytes_per_token(model):.2f}",
                    f"implied speed-up at {acceptance:.0%}": f"{(1 + acceptance) / ratio:.2f}x",
                }
            )
            print(f"  h {name} {head}: verify {t_verify * 1e3:.2f} ms vs plain {t_plain * 1e3:.2f} ms", flush=True)
        del steps, model
    return rows


# Qwen2.5-0.5B's shape (the 1.5B R1-Distill student's family at a size that decodes quickly on a laptop)
QWEN2_0_5B = dict(
    model_type="qwen2",
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    max_position_embeddings=4096,
)


def section_e(bandwidth: float, vocab: int) -> list[dict]:
    config = ModelConfig(**{**QWEN2_0_5B, "vocab_size": vocab})
    model = build_model(config, dtype=torch.bfloat16)
    quantized = copy.deepcopy(model)
    quantize_int8(quantized)
    prompt = torch.randint(2, vocab, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        theirs, _ = theirs_decode(path, prompt, 48, dtype=torch.bfloat16)
    rows = []
    for setting, m, step in [
        ("bf16", model, "eager"),
        ("bf16 compiled", model, "compiled"),
        ("int8", quantized, "eager"),
        ("int8 compiled", quantized, "compiled"),
    ]:
        ours, engine = ours_decode(m, [prompt], 48, decode_step=step)
        roofline = bandwidth / weight_bytes_per_token(m)
        rows.append(
            {
                "model": f"qwen2 0.5B-shape, vocab {vocab}",
                "nanoseek": setting if engine.decode_step in ("eager (asked for)", step) else engine.decode_step,
                "nanoseek tok/s": f"{ours:.1f}",
                "transformers bf16 tok/s": f"{theirs:.1f}",
                "ratio": f"{ours / theirs:.2f}x",
                "roofline tok/s": f"{roofline:.0f}",
                "of roofline": f"{ours / roofline:.0%}",
            }
        )
        print(f"  e qwen2 {setting}: {ours:.1f} tok/s vs transformers bf16 {theirs:.1f}", flush=True)
    return rows


LONG_PAIR = ("bench-18m", "bench-18m-v32")  # (f): V3 and V3.2 of the same shape, random weights
LONG_CONTEXTS = (2048, 8192, 16384)


def long_context_engine(name: str, context: int, steps: int, decode_step: str) -> Engine:
    """A batch-1 engine with `context` tokens in its cache, ready to decode `steps` more. The context is a prefill
    of random tokens, in 1k chunks (the masked prefill's [chunk, context] score matrices stay a few hundred MB)."""
    config = preset(name, num_nextn_predict_layers=0, max_position_embeddings=context + steps + 64)
    engine = Engine(
        build_model(config, seed=0), max_step_tokens=1024, cache_tokens=context + steps + 64, decode_step=decode_step
    )
    prompt = torch.randint(2, config.vocab_size, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    engine.submit(prompt, SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True))
    while any(len(s.tokens) - s.num_cached > 1 for s in engine.running) or engine.num_waiting:
        engine.step()  # prefill (and the first token)
    for _ in range(4):
        engine.step()  # untimed
    return engine


def interleaved_rates(engines: dict[str, Engine], steps: int, turn: int = 8) -> dict[str, float]:
    """tok/s of each engine as 1 / its median step, timed in alternating turns of `turn` steps: when the machine's
    load moves (other jobs), both models see the same load, so their ratio holds even where the figures drift."""
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(max(steps // turn, 1)):
        for name, engine in engines.items():
            for _ in range(turn):
                start = time.perf_counter()
                engine.step()
                seconds[name].append(time.perf_counter() - start)
    return {name: 1 / statistics.median(s) for name, s in seconds.items()}


def section_f(contexts: list[int], steps: int, decode_steps: list[str]) -> list[dict]:
    rows = []
    for decode_step in decode_steps:
        rates: dict[tuple[str, int], float] = {}
        for context in contexts:
            engines = {name: long_context_engine(name, context, steps, decode_step) for name in LONG_PAIR}
            measured = interleaved_rates(engines, steps)
            row: dict = {"context": context, "decode step": engines[LONG_PAIR[1]].decode_step}
            for name in LONG_PAIR:
                rates[name, context] = measured[name]
                row[f"{name} tok/s"] = f"{measured[name]:.1f}"
                print(f"  f {name} {context} context, {row['decode step']}: {measured[name]:.1f} tok/s", flush=True)
            v3, v32 = (rates[name, context] for name in LONG_PAIR)
            row["V3.2 / V3"] = f"{v32 / v3:.2f}x"
            rows.append(row)
            del engines
        # how much each model slows down from the shortest context to each longer one
        for row in rows[-len(contexts) :]:
            for name in LONG_PAIR:
                row[f"{name} vs {contexts[0]}"] = f"{rates[name, row['context']] / rates[name, contexts[0]]:.2f}x"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["bench-18m", "bench-300m"])
    parser.add_argument("--sections", nargs="+", default=["a", "b", "c", "d", "e"])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--mtp-checkpoint", help="a checkpoint with a trained MTP module for section d")
    parser.add_argument("--qwen2-vocab", type=int, default=QWEN2_0_5B["vocab_size"], help="vocabulary for (e)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--long-contexts", nargs="+", type=int, default=list(LONG_CONTEXTS), help="(f) contexts")
    parser.add_argument("--long-steps", type=int, default=32, help="(f): timed decode steps per figure (median)")
    parser.add_argument(
        "--long-decode-steps", nargs="+", default=["eager"], choices=["eager", "compiled"], help="(f): engine paths"
    )
    parser.add_argument("--acceptance", type=float, default=0.83, help="(h): the MTP acceptance rate to assume")
    parser.add_argument("--llama-cpp", type=Path, default=Path(".cache/llama.cpp"), help="(g): llama.cpp's build")
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    sections = set(args.sections)
    bandwidth = read_bandwidth()
    print(
        f"memory read bandwidth: {bandwidth / 1e9:.1f} GB/s; {args.threads} threads; every tok/s is the median of "
        f"{REPEATS} runs, decode only (prefill and first token excluded) on both sides",
        flush=True,
    )
    if sections & {"a", "b"}:
        rows = section_a_b(args.presets, bandwidth, sections)
        print("\n(a, b) batch-1 greedy decode, nanoseek engine vs transformers generate (fp32):\n")
        print(
            table(
                rows,
                [
                    "section",
                    "model",
                    "nanoseek",
                    "nanoseek tok/s",
                    "transformers fp32 tok/s",
                    "ratio",
                    "x eager engine",
                    "same ids as transformers",
                    "first call s",
                    "roofline tok/s",
                    "of roofline",
                ],
            )
        )
    if "c" in sections:
        rows = section_c(args.presets, args.concurrent)
        print(f"\n(c) continuous batching, {args.concurrent} prompts of 16-128 tokens, 48 new tokens each:\n")
        print(table(rows, list(rows[0])))
    if "d" in sections:
        rows = section_d(args.mtp_checkpoint)
        print("\n(d) MTP speculative decoding (greedy, batch 1; output identical to plain decoding):\n")
        print(table(rows, list(rows[0])))
    if "e" in sections:
        rows = section_e(bandwidth, args.qwen2_vocab)
        print("\n(e) dense Qwen2 (Qwen2.5-0.5B's shape), batch-1 greedy decode, 32-token prompt:\n")
        print(table(rows, list(rows[0])))
    if "f" in sections:
        rows = section_f(args.long_contexts, args.long_steps, args.long_decode_steps)
        print(
            f"\n(f) long context, batch 1, random weights: V3 ({LONG_PAIR[0]}) vs V3.2 ({LONG_PAIR[1]}, index_topk "
            f"{preset(LONG_PAIR[1]).index_topk}); decode tok/s = 1 / median step of {args.long_steps}:\n"
        )
        print(table(rows, list(rows[0])))
    if "h" in sections:
        rows = section_h(args.presets, args.acceptance)
        print("\n(h) MTP verify + draft graph against the plain graph, batch 1, 2k context (graph calls only):\n")
        print(table(rows, list(rows[0])))
    if "g" in sections:
        import llama_cpp_peer

        source = llama_cpp_peer.find_source(args.llama_cpp)
        peer = dict(shapes=list(llama_cpp_peer.SHAPES), depths=[16, 2048], tokens=128, repeats=REPEATS)
        rows = llama_cpp_peer.measure_shapes(source, argparse.Namespace(**peer, threads=args.threads))
        print(f"\n(g) batch-1 greedy decode, nanoseek (compiled) vs llama.cpp (llama-bench), {args.threads} threads:\n")
        print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
