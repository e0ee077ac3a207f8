"""llama.cpp beside nanoseek: batch-1 greedy decode tokens/s on the same checkpoints, at equal precision.

llama.cpp is the engine CPU users pick today. For each shape, one random-weights checkpoint is written by nanoseek in
transformers' layout (with a small byte-level BPE tokenizer), converted by llama.cpp's own `convert_hf_to_gguf.py`
at f32 and q8_0, and decoded by both:
  - llama.cpp: `llama-bench -p 0 -n N -d DEPTH` (DEPTH tokens already in its cache, then N tokens generated one by
    one; tokens/s over the N, as llama-bench reports, mean of -r repeats);
  - nanoseek: the engine with the compiled static decode step, fp32 and int8 (int8 weights, int8 activations per
    row: llama.cpp's q8_0 also quantizes both), timed as in decode_speed.py (prefill excluded, median of repeats).
Shapes: bench-18m (DeepSeek-V3's architecture: MLA + MoE; llama.cpp's `deepseek2`, which runs MLA absorbed as
nanoseek's decode step does) and Qwen2.5-0.5B (dense, GQA; the R1-Distill students' family).

llama.cpp is not a Python dependency: `--build DIR` downloads the llama-cpp-python sdist with pip (its
vendor/llama.cpp is llama.cpp's source at the commit that release pins), and builds llama-bench with cmake for this
CPU (-DGGML_NATIVE=ON; ~10 minutes of one core here). The converter runs from the same source tree.

    python benchmarks/llama_cpp_peer.py --build .cache/llama.cpp               # once
    python benchmarks/llama_cpp_peer.py --llama-cpp .cache/llama.cpp --threads 1
    python benchmarks/llama_cpp_peer.py --llama-cpp .cache/llama.cpp --shapes bench-18m --depths 16

The converter asks the tokenizer for its pre-tokenizer by hashing how it splits a test string, and refuses hashes
it does not know (ours); that choice only matters for tokenizing text, which llama-bench never does, so it is set
to llama.cpp's "default" here.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import decode_speed
import torch
from common import table

from nanoseek.config import ModelConfig, preset
from nanoseek.engine.quant import quantize_int8
from nanoseek.model import build_model
from nanoseek.tokenizer import Tokenizer

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendor/llama.cpp is built (pinned: llama.cpp's flags move)
SHAPES = {
    "bench-18m": lambda: preset("bench-18m", num_nextn_predict_layers=0, max_position_embeddings=4096),
    "qwen2.5-0.5b": lambda: ModelConfig(**decode_speed.QWEN2_0_5B),
}


def build(root: Path) -> Path:
    """Download llama.cpp's source (inside the llama-cpp-python sdist) into `root` and build llama-bench there."""
    root.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-deps"]
    subprocess.run([*pip, "--no-binary", ":all:", "-d", str(root)], check=True)
    with tarfile.open(root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as sdist:
        sdist.extractall(root, filter="data")
    source = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    flags = ["-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    flags += ["-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), *flags], check=True)
    subprocess.run(["cmake", "--build", str(source / "build"), "--target", "llama-bench", "-j"], check=True)
    return source


def find_source(path: Path) -> Path:
    """The llama.cpp source tree under `path` (as --build leaves it, or a llama.cpp checkout), with llama-bench."""
    for candidate in [path, *sorted(path.glob("llama_cpp_python-*/vendor/llama.cpp"))]:
        if (candidate / "convert_hf_to_gguf.py").exists() and (candidate / "build/bin/llama-bench").exists():
            return candidate
    raise SystemExit(f"no built llama.cpp under {path}: run `python benchmarks/llama_cpp_peer.py --build {path}` first")


CONVERT = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import convert_hf_to_gguf
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"  # see this benchmark's docstring


def no_sentencepiece(self):  # our tokenizers are BPE (tokenizer.json); Qwen2's converter tries sentencepiece first
    raise FileNotFoundError("no tokenizer.model")


TextModel._set_vocab_sentencepiece = no_sentencepiece
convert_hf_to_gguf.main()
"""


def convert(source: Path, checkpoint: Path, outtype: str) -> Path:
    out = checkpoint.parent / f"{checkpoint.name}-{outtype}.gguf"
    command = [sys.executable, "-c", CONVERT, str(source), str(checkpoint), "--outtype", outtype, "--outfile", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"convert_hf_to_gguf.py failed on {checkpoint}:\n{done.stderr[-3000:]}")
    return out


def llama_bench(source: Path, gguf: Path, depth: int, tokens: int, threads: int, repeats: int) -> float:
    """llama-bench's decode tokens/s (mean of `repeats`) for `tokens` tokens after `depth` tokens of context."""
    command = [str(source / "build/bin/llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(tokens)]
    command += ["-d", str(depth), "-t", str(threads), "-r", str(repeats), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llama-bench failed on {gguf}:\n{done.stderr[-3000:]}")
    (result,) = json.loads(done.stdout)
    return result["avg_ts"]


def write_checkpoint(name: str, work: Path) -> tuple[torch.nn.Module, Path]:
    """A random-weights checkpoint of shape `name` in transformers' layout, with a tokenizer the converter reads."""
    model = build_model(SHAPES[name](), seed=0)
    path = work / name
    model.save_pretrained(path)
    text = "The quick brown fox jumps over the lazy dog. 0123456789 " * 50
    Tokenizer.train([text], vocab_size=300).save_pretrained(path)
    return model, path


def measure(name: str, source: Path, work: Path, args) -> list[dict]:
    model, path = write_checkpoint(name, work)
    quantized = copy.deepcopy(model)
    quantize_int8(quantized)
    ggufs = {precision: convert(source, path, precision) for precision in ("f32", "q8_0")}
    rows = []
    for depth in args.depths:
        prompt = torch.randint(2, model.config.vocab_size, (depth,), generator=torch.Generator().manual_seed(0))
        for precision, ours_model, theirs in [("fp32 / f32", model, "f32"), ("int8 / q8_0", quantized, "q8_0")]:
            ours, engine = decode_speed.ours_decode(ours_model, [prompt.tolist()], args.tokens, False, "compiled")
            rate = llama_bench(source, ggufs[theirs], depth, args.tokens, args.threads, args.repeats)
            rows.append(
                {
                    "model": name,
                    "context": depth,
                    "precision": precision,
                    "nanoseek tok/s": f"{ours:.1f}",
                    "nanoseek step": engine.decode_step,
                    "llama.cpp tok/s": f"{rate:.1f}",
                    "nanoseek / llama.cpp": f"{ours / rate:.2f}x",
                }
            )
            print(f"  {name} context {depth} {precision}: nanoseek {ours:.1f} vs llama.cpp {rate:.1f}", flush=True)
    return rows


def measure_shapes(source: Path, args) -> list[dict]:
    """The rows of every shape in args.shapes (args: depths, tokens, threads, repeats; decode_speed.py's section g
    passes its own)."""
    decode_speed.REPEATS = args.repeats  # (when decode_speed.py runs as a script, this is a second copy of it)
    with tempfile.TemporaryDirectory() as tmp:
        return [row for name in args.shapes for row in measure(name, source, Path(tmp), args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, metavar="DIR", help="download and build llama.cpp into DIR, then exit")
    parser.add_argument("--llama-cpp", type=Path, default=Path(".cache/llama.cpp"), help="where --build put it")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--depths", nargs="+", type=int, default=[16, 2048], help="tokens of context before decode")
    parser.add_argument("--tokens", type=int, default=128, help="decoded tokens per figure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.build:
        print(f"built: {build(args.build) / 'build/bin/llama-bench'}")
        return
    source = find_source(args.llama_cpp)
    torch.set_num_threads(args.threads)
    commit = subprocess.run([str(source / "build/bin/llama-bench"), "--version"], capture_output=True, text=True)
    rows = measure_shapes(source, args)
    print(
        f"\nbatch-1 greedy decode, {args.tokens} tokens after each context, {args.threads} threads; nanoseek median "
        f"and llama.cpp mean of {args.repeats} runs; llama.cpp {(commit.stdout or commit.stderr).strip()[:80]}:\n"
    )
    print(table(rows, list(rows[0])))
    ratios = [float(r["nanoseek / llama.cpp"][:-1]) for r in rows]
    print(f"\ngeometric mean nanoseek / llama.cpp: {statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
