"""Serving under load: vLLM's benchmark_serving metrics against `nanoseek serve`, plus three checks.

N concurrent streaming clients (asyncio + httpx) send greedy chat requests for a bounded number of requests and
time. Reported: request throughput, output tokens/s, TTFT (time to first token), TPOT (time per output token after
the first), ITL (time between streamed tokens): mean, p50, p99. Checked:
  - every response is 200, or 429/503 (backpressure) -- never another status;
  - streams do not mix: each greedy stream's text equals the non-streamed answer to the same prompt;
  - the server's RSS (/proc/PID/status VmRSS) returns to near its post-warmup baseline after the run.

    python benchmarks/serve_load.py                          # a random bench-18m checkpoint, served here
    python benchmarks/serve_load.py --checkpoint DIR         # serve this checkpoint
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid PID   # a server already running
    python benchmarks/serve_load.py --concurrency 16 --requests 64 --max-tokens 32   # a quicker run
    python benchmarks/serve_load.py --server-threads 1       # on cores shared with other jobs (2 threads
                                                             # that keep getting descheduled are ~10x slower)

Loopback only. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx2 as httpx
from common import table

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WORDS = ["the", "answer", "is", "what", "add", "and", "sum", "of", "think", "step", "carry", "write", "number"]


@dataclass
class Result:
    status: int
    prompt: int  # index into the prompts
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    text: tuple[str, str] = ("", "")  # (reasoning_content, content)


# ---- the server


def make_checkpoint(path: Path) -> Path:
    """A randomly initialised bench-18m model with a small trained tokenizer (vocab resized to match)."""
    from nanoseek.cli import main as nanoseek
    from nanoseek.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 9999)}." for _ in range(400)]
    tokenizer = Tokenizer.train(texts, 512)
    overrides = [f"vocab_size={tokenizer.vocab_size}", f"bos_token_id={tokenizer.bos_id}"]
    overrides.append(f"eos_token_id={tokenizer.eos_id}")
    nanoseek(["init", "bench-18m", str(path), "--set", *overrides])
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, max_running: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "nanoseek.cli", "serve", str(checkpoint), "--port", str(port)]
    command += ["--log-level", "warning", "--max-running", str(max_running), "--max-waiting", "4096"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError("the server did not become healthy in 300 s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---- requests


def make_prompts(count: int) -> list[str]:
    rng = random.Random(1)
    return [
        f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60))) + "?" for i in range(count)
    ]


def request_body(prompt: str, max_tokens: int, stream: bool) -> dict:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 0,
        "ignore_eos": True,  # every request generates exactly max_tokens: comparable throughput
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def reference(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[str, str]:
    response = await client.post(f"{url}/v1/chat/completions", json=request_body(prompt, max_tokens, False))
    response.raise_for_status()
    message = response.json()["choices"][0]["message"]
    return message.get("reasoning_content") or "", message.get("content") or ""


async def stream_one(client: httpx.AsyncClient, url: str, index: int, prompt: str, max_tokens: int) -> Result:
    start = time.perf_counter()
    body = request_body(prompt, max_tokens, True)
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        result = Result(response.status_code, index)
        if response.status_code != 200:
            await response.aread()
            return result
        reasoning, content, last = [], [], None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.output_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                piece_r, piece_c = delta.get("reasoning_content") or "", delta.get("content") or ""
                if not (piece_r or piece_c):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                reasoning.append(piece_r)
                content.append(piece_c)
        result.latency = time.perf_counter() - start
        result.text = ("".join(reasoning), "".join(content))
    return result


async def run_load(url: str, prompts: list[str], args: argparse.Namespace, headers: dict) -> tuple[list, float]:
    """`concurrency` clients, each sending its next request as soon as the last one ended, until `requests`
    were sent or `duration` seconds passed."""
    results: list[Result] = []
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.duration
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=args.duration + 60, limits=limits, headers=headers) as client:

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                results.append(
                    await stream_one(client, url, i % len(prompts), prompts[i % len(prompts)], args.max_tokens)
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return results, time.perf_counter() - start


async def references(url: str, prompts: list[str], max_tokens: int, headers: dict) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:
        return [await reference(client, url, p, max_tokens) for p in prompts]


# ---- report


def percentiles(values: list[float]) -> dict[str, str]:
    if not values:
        return {"mean": "-", "p50": "-", "p99": "-"}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    ms = lambda v: f"{v * 1000:.1f}"
    return {"mean": ms(statistics.fmean(ordered)), "p50": ms(statistics.median(ordered)), "p99": ms(p99)}


def report(results: list[Result], seconds: float) -> str:
    ok = [r for r in results if r.status == 200]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    rows = [
        {"metric": "TTFT (ms)", **percentiles([r.ttft for r in ok])},
        {"metric": "TPOT (ms)", **percentiles(tpot)},
        {"metric": "ITL (ms)", **percentiles([x for r in ok for x in r.itl])},
    ]
    summary = (
        f"requests: {len(results)} sent, {len(ok)} completed in {seconds:.1f} s\n"
        f"request throughput: {len(ok) / seconds:.2f} req/s\n"
        f"output tokens: {tokens} ({tokens / seconds:.1f} tokens/s)\n"
    )
    return summary + table(rows, ["metric", "mean", "p50", "p99"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="serve this checkpoint (default: a random bench-18m one)")
    p.add_argument("--url", help="a running server instead (loopback), e.g. http://127.0.0.1:8000")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for the memory check")
    p.add_argument("--api-key", default=os.environ.get("NANOSEEK_API_KEY"))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=256, help="at most this many measured requests")
    p.add_argument("--duration", type=float, default=300, help="at most this many seconds of load")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts (each stream is checked against one)")
    p.add_argument("--max-running", type=int, default=64, help="engine batch size of the server started here")
    p.add_argument(
        "--server-threads", type=int, help="torch threads of the server started here (1 when the cores are shared)"
    )
    p.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS growth over the baseline")
    args = p.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if urlparse(args.url).hostname not in LOOPBACK:
                raise SystemExit("--url must be a loopback address (this benchmark only loads local servers)")
            url, pid = args.url.rstrip("/").removesuffix("/v1"), args.pid
        else:
            checkpoint = args.checkpoint or make_checkpoint(Path(tmp) / "bench-18m")
            start = time.perf_counter()
            process, url = start_server(checkpoint, args.max_running, args.server_threads)
            print(f"server ready in {time.perf_counter() - start:.1f} s", flush=True)
            pid = process.pid
        try:
            return benchmark(url, pid, args, headers)
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)


def benchmark(url: str, pid: int | None, args: argparse.Namespace, headers: dict) -> int:
    prompts = make_prompts(args.prompts)
    start = time.perf_counter()
    expected = asyncio.run(references(url, prompts, args.max_tokens, headers))
    print(f"reference answers for {len(prompts)} prompts: {time.perf_counter() - start:.1f} s", flush=True)
    warmup = argparse.Namespace(**{**vars(args), "requests": args.concurrency, "duration": args.duration})
    start = time.perf_counter()
    asyncio.run(run_load(url, prompts, warmup, headers))  # the first burst grows the heap to its working size
    print(f"warmup ({args.concurrency} requests): {time.perf_counter() - start:.1f} s", flush=True)
    time.sleep(1)
    baseline = rss_mib(pid) if pid else None

    results, seconds = asyncio.run(run_load(url, prompts, args, headers))
    time.sleep(2)
    after = rss_mib(pid) if pid else None

    print(f"\n{args.concurrency} concurrent streaming clients, {args.max_tokens} greedy tokens per request\n")
    print(report(results, seconds))
    statuses = sorted({r.status for r in results})
    bad_status = [s for s in statuses if s not in (200, 429, 503)]
    mixed = [r for r in results if r.status == 200 and r.text != expected[r.prompt]]
    print(f"\nstatuses: {statuses}" + (f"  UNEXPECTED: {bad_status}" if bad_status else ""))
    print(f"streams equal to their non-streamed answer: {sum(r.status == 200 for r in results) - len(mixed)}", end="")
    print(f" of {sum(r.status == 200 for r in results)}")
    rss_ok = True
    if baseline is not None and after is not None:
        growth = (after - baseline) / baseline
        rss_ok = growth <= args.rss_tolerance
        print(f"server RSS: {baseline:.0f} MiB after warmup, {after:.0f} MiB after the run ({growth:+.1%})")
    else:
        print("server RSS: not checked (pass --pid with --url)")
    failed = bool(bad_status or mixed or not rss_ok)
    print("checks: FAILED" if failed else "checks: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
