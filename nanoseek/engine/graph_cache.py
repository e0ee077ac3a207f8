"""Compiled decode graphs kept on disk, so a second start loads them in about a second instead of compiling.

A warmed-up CPU step compiles each batch bucket's graph ahead of time (`aot_compile`, step.py's `warmup`). torch's
own caches do not help that path: it names each graph with a fresh uuid and turns inductor's FX graph cache off, so
every start compiled every graph again (13-28 s a bucket for the speedrun's model on a 2-core EPYC, with the cache
"warm"). torch can serialize such a compiled graph, though (its precompile API, experimental in 2.13): this module
saves each one under inductor's cache directory and loads it on the next start (~2 s).

A loaded graph runs without guards (as a freshly compiled one does here), so its file name is a hash of everything
the graph was traced with: the torch version, the CPU (its name and the vector instructions inductor compiles for)
and the thread count (inductor bakes both into its C++), the source of every module the graph runs, the model's
config, dtype and int8 modules, the graph (decode or verify) and batch bucket, and the shape, stride and dtype of
every input (the cache's pools, the packed weights; the block table's length is a runtime value). Weights are
inputs, not constants: one file serves every checkpoint of a shape. Anything that fails here is logged and the graph
is compiled as before. Each code change or new shape adds files, so the directory is kept under a size cap
(NANOSEEK_GRAPH_CACHE_GB, default 2): the graphs used least recently go first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten

log = logging.getLogger("nanoseek.engine")
VERSION = 1  # bump when what a file holds changes

# the code a decode graph is traced from: a change to any of it makes new file names
_TRACED_SOURCES = (
    "model",
    "engine/step.py",
    "engine/step_ops.py",
    "engine/speculative_step.py",
    "engine/packed.py",
    "engine/quant.py",
)


def size_cap() -> int:
    """Bytes the directory may hold before the least recently used graphs are deleted."""
    value = os.environ.get("NANOSEEK_GRAPH_CACHE_GB", "2")
    try:
        return int(float(value) * 2**30)
    except ValueError:
        raise ValueError(f"NANOSEEK_GRAPH_CACHE_GB must be a number of GiB, got {value!r}") from None


def enabled() -> bool:
    return os.environ.get("NANOSEEK_GRAPH_CACHE", "1") != "0"  # 0: compile every start, keep nothing


def directory() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "nanoseek_graphs"


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in _TRACED_SOURCES:
        path = root / name
        for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    """The vector instructions inductor compiles for (its own pick, e.g. avx512 with VNNI) and the CPU's name: a graph
    from another machine (a shared home, a copied cache) may use instructions this one lacks."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    name = ""
    if Path("/proc/cpuinfo").exists():
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        name = names[0] if names else ""
    return f"{torch.backends.cpu.get_cpu_capability()} {pick_vec_isa()!s} {name}"


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"T{tuple(value.shape)}{value.stride()}{value.dtype}{value.device}"
    return repr(value)


def graph_path(identity: tuple, graph: str, size: int, args: tuple, tables_index: int) -> Path:
    """Where a step's graph of this bucket lives on disk (see the module docstring for what names it). identity: the
    step's class, model config, dtype, device, int8 modules, whether it masks undecodable ids."""
    leaves, _ = tree_flatten(list(args))
    tables = args[tables_index]
    described = [_describe(leaf) for leaf in leaves if leaf is not tables]
    parts = [
        VERSION,
        torch.__version__,
        _cpu(),
        torch.get_num_threads(),
        _source_hash(),
        *identity,
        graph,
        size,
        tables.dtype,
        *described,
    ]
    key = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    return directory() / f"{graph}-{size}-{key}.bin"


def load(path: Path):
    """The compiled graph saved at `path`, or None (not there, or unreadable: logged, then compiled afresh)."""
    if not enabled() or not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            compiled = torch.compiler.load_compiled_function(f)
        compiled.disable_guard_check()
        os.utime(path)  # used now: pruning keeps it over graphs not loaded lately
        return compiled
    except Exception as error:
        log.warning("decode step: could not load %s (%s); compiling it again", path, error)
        return None


def save(compiled, path: Path) -> None:
    """Keep a freshly compiled graph for the next start (atomically: a crash leaves no half-written file)."""
    if not enabled():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        compiled.save_compiled_function(str(path))
        prune(path.parent, size_cap())
    except Exception as error:
        log.warning("decode step: could not save the compiled graph to %s (%s)", path, error)


def prune(folder: Path, cap: int) -> list[Path]:
    """Delete the least recently used graph files until the folder holds at most `cap` bytes; returns the deleted.
    A file another process deletes first, or is still loading, is skipped (it is only a cache)."""
    files = []
    for file in folder.glob("*.bin"):
        with contextlib.suppress(OSError):
            stat = file.stat()
            files.append((stat.st_mtime, stat.st_size, file))
    total = sum(size for _, size, _ in files)
    deleted = []
    for _, size, file in sorted(files, key=lambda f: f[0]):
        if total <= cap:
            break
        with contextlib.suppress(OSError):
            file.unlink()
            deleted.append(file)
        total -= size
    if deleted:
        log.info(
            "decode step: deleted %d least recently used graph(s) to keep %s under %.1f GiB",
            len(deleted),
            folder,
            cap / 2**30,
        )
    return deleted
