"""`nanoseek plot RUN_DIR`: a run's metrics.jsonl as PNG figures (loss, lr, expert balance, V3.2's indexer,
throughput, RL).

Each figure is drawn only when its data exists. Noisy curves (train loss, RL reward) are drawn faintly with a
light EMA on top. A run resumed without truncating its metrics logs some steps twice: the later lines win.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

Series = tuple[list[int], list[float]]

DPI = 100
SIZE = (9.0, 5.0)  # inches: 900 x 500 pixels at DPI


# ---- reading ----


def load_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl in file order (each a dict with "step" and "kind").

    A bad last line (a write cut short by a kill) is skipped quietly; a bad line elsewhere is skipped with a
    warning giving its line number.
    """
    path = _metrics_path(Path(run_dir))
    lines = path.read_text(errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record, problem = _parse(line)
        if problem is None:
            records.append(record)
        elif i != last:
            warnings.warn(f"{path}:{i + 1}: skipping a bad line ({problem})", stacklevel=2)
    if not records:
        raise ValueError(f"{path} holds no metrics yet (no complete line with a 'step')")
    return records


def _metrics_path(run_dir: Path) -> Path:
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if run_dir.is_file():  # the metrics file itself
        return run_dir
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory, or its run has logged nothing")
    return path


def _parse(line: str) -> tuple[dict[str, Any], str | None]:
    """(record, None), or ({}, what is wrong)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return {}, f"not JSON: {e.msg} at column {e.colno}"
    if not isinstance(record, dict):
        return {}, f"a JSON {type(record).__name__}, not an object"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
        return {}, f"no integer 'step' (got {step!r})"
    return {**record, "step": int(step), "kind": record.get("kind", "train")}, None


def series(records: list[dict[str, Any]], kind: str, key: str, **match: Any) -> Series:
    """(steps, values) of `key` in the `kind` records (and matching `match`), ascending in step.

    Non-numeric values are left out. When the steps go back (a resumed run), earlier points at or after the
    restart step are dropped: the resumed run's values replace them.
    """
    steps: list[int] = []
    values: list[float] = []
    for r in records:
        value = r.get(key)
        if r["kind"] != kind or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if any(r.get(k) != v for k, v in match.items()):
            continue
        while steps and steps[-1] >= r["step"]:
            steps.pop()
            values.pop()
        steps.append(r["step"])
        values.append(float(value))
    return steps, values


def ema(values: list[float], beta: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing); NaN/inf points are skipped.

    beta defaults to a light smoothing that grows with the number of points (none for under 10 points, at most 0.9).
    """
    if beta is None:
        beta = min(0.9, max(0.0, 1 - 10 / max(len(values), 1)))  # lag ~10 points at most
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg, weight = beta * avg + (1 - beta) * v, beta * weight + (1 - beta)
        out.append(avg / weight if weight else math.nan)
    return out


# ---- figures ----


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the figures that the run has data for into out_dir (default RUN_DIR/plots/); return their paths."""
    run_dir = Path(run_dir)
    records = load_metrics(run_dir)
    base = run_dir.parent if run_dir.is_file() else run_dir
    out = Path(out_dir) if out_dir is not None else base / "plots"
    title = base.resolve().name
    written = []
    for name, draw in FIGURES:
        fig = Figure(figsize=SIZE, dpi=DPI)
        if draw(fig, records):
            top = fig.axes[0]
            top.set_title(f"{top.get_title()} — {title}")  # which run, on every figure
            written.append(_save(fig, out / f"{name}.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    """Render with Agg (no display needed) and replace the file atomically, so a viewer never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _noisy(ax: Axes, data: Series, label: str, color: str) -> None:
    """The raw curve, faint, under its EMA (the line the legend names)."""
    steps, values = data
    if len(values) >= 10:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, ema(values), color=color, linewidth=1.8, label=f"{label} (EMA)")
    else:
        ax.plot(steps, values, color=color, linewidth=1.8, marker="o", markersize=3, label=label)


def _line(ax: Axes, data: Series, label: str, color: str, **style: Any) -> None:
    steps, values = data
    style.setdefault("marker", "o" if len(values) < 30 else None)
    ax.plot(steps, values, color=color, label=label, linewidth=1.5, markersize=4, **style)


def _finish(ax: Axes, title: str, ylabel: str, twin: Axes | None = None) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    _legend([ax] if twin is None else [ax, twin])


def _legend(axes: list[Axes]) -> None:
    """One legend for all the axes sharing a plot, drawn on the topmost so no line crosses it."""
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    if not handles:
        return
    style = dict(fontsize=9, framealpha=0.9)
    if len(handles) > 5:  # too many to sit on the data: a row of columns under the plot
        style.update(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(4, len(handles)))
    axes[-1].legend(handles, [h.get_label() for h in handles], **style)


def _focus_on_tail(ax: Axes, values: list[float]) -> None:
    """Loss starts near ln(vocab) and falls fast: cap the y range so the part worth reading is not squashed."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 20:
        return
    tail = finite[len(finite) // 10 :]
    low, high = min(finite), max(tail)
    if max(finite) > high + 2 * (high - low):  # the first 10% dominates the range
        ax.set_ylim(low - 0.05 * (high - low), high + 0.5 * (high - low))


def _loss(fig: Figure, records: list[dict[str, Any]]) -> bool:
    train, val = series(records, "train", "loss"), series(records, "val", "val_loss")
    main, mtp = series(records, "train", "main_loss"), series(records, "train", "mtp_loss")
    if not (train[0] or val[0] or main[0]):
        return False
    ax = fig.add_subplot()
    if train[0]:
        _noisy(ax, train, "train loss", "tab:blue")
    if main[0]:
        _noisy(ax, main, "main (next-token) loss", "tab:cyan")
    if mtp[0]:
        _noisy(ax, mtp, "MTP loss", "tab:purple")
    if val[0]:
        _line(ax, val, "val loss", "tab:red", marker="o")
    _focus_on_tail(ax, train[1] or main[1])
    twin = None
    bpb = series(records, "val", "val_bpb")
    if bpb[0]:
        twin = ax.twinx()
        _line(twin, bpb, "val bits per byte", "tab:orange", linestyle="--", marker="s")
        twin.set_ylabel("bits per byte")
    _finish(ax, "Loss", "cross-entropy (nats per token)", twin)
    return True


def _lr(fig: Figure, records: list[dict[str, Any]]) -> bool:
    lr = series(records, "train", "lr")
    if not lr[0]:
        return False
    ax = fig.add_subplot()
    _line(ax, lr, "learning rate", "tab:green", marker=None)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_ylim(bottom=0)
    _finish(ax, "Learning rate", "learning rate")
    return True


def _noisy_twin(ax: Axes, data, label: str, ylabel: str) -> Axes | None:
    """A second series on a right-hand axis from 0 (None when there is nothing to draw)."""
    if not data[0]:
        return None
    twin = ax.twinx()
    _noisy(twin, data, label, "tab:orange")
    twin.set_ylabel(ylabel)
    twin.set_ylim(bottom=0)
    return twin


def _balance(fig: Figure, records: list[dict[str, Any]]) -> bool:
    ratio, aux = series(records, "train", "balance_max_over_mean"), series(records, "train", "balance_loss")
    if not ratio[0]:
        return False
    ax = fig.add_subplot()
    _noisy(ax, ratio, "busiest expert / mean load", "tab:blue")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2, label="perfect balance (1.0)")
    ax.set_ylim(bottom=0)
    twin = _noisy_twin(ax, aux, "balance loss", "balance loss")
    _finish(ax, "MoE expert load balance", "max / mean tokens per expert", twin)
    return True


def _indexer(fig: Figure, records: list[dict[str, Any]]) -> bool:
    """V3.2: the lightning indexers' KL to attention, with the end of their dense warm-up marked."""
    kl = series(records, "train", "indexer_kl")
    if not kl[0]:
        return False
    ax = fig.add_subplot()
    _noisy(ax, kl, "indexer KL(attention || index scores)", "tab:blue")
    warmup = [r["step"] for r in records if r.get("kind") == "train" and r.get("stage") == "indexer_warmup"]
    if warmup:
        ax.axvline(max(warmup), color="black", linestyle=":", linewidth=1.2, label="dense warm-up ends")
    ax.set_ylim(bottom=0)
    _finish(ax, "Lightning indexer", "KL (nats)")
    return True


def _throughput(fig: Figure, records: list[dict[str, Any]]) -> bool:
    tps, mfu = series(records, "train", "tokens_per_s"), series(records, "train", "mfu")
    if not tps[0]:
        return False
    ax = fig.add_subplot()
    _noisy(ax, tps, "tokens / s", "tab:blue")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 52k, not 52000
    twin = _noisy_twin(ax, mfu, "MFU", "model FLOPs utilisation (MFU)")
    _finish(ax, "Throughput", "tokens / s", twin)
    return True


def _rl(fig: Figure, records: list[dict[str, Any]]) -> bool:
    reward = series(records, "rl", "reward")
    accuracy, fmt = series(records, "rl", "accuracy"), series(records, "rl", "format_rate")
    length = series(records, "rl", "response_length")
    if not (reward[0] or accuracy[0] or length[0]):
        return False
    health = [(k, series(records, "rl", k)) for k in ("kl", "entropy", "clip_fraction")]
    health = [(k, s) for k, s in health if s[0]]
    ax = fig.add_subplot(2, 1, 1) if health else fig.add_subplot()
    if health:
        fig.set_size_inches(SIZE[0], SIZE[1] * 1.6)
    if reward[0]:
        _noisy(ax, reward, "reward", "tab:blue")
    if accuracy[0]:
        _noisy(ax, accuracy, "accuracy", "tab:green")
    if fmt[0]:
        _line(ax, fmt, "format rate", "tab:gray", marker=None, alpha=0.7, linestyle="--")
    tasks = sorted({r.get("task") for r in records if r["kind"] == "eval"}, key=str)
    for task, color in zip(tasks, _COLORS, strict=False):  # more tasks than colours: the rest are left out
        evals = series(records, "eval", "pass1", task=task)
        if evals[0]:
            _line(ax, evals, f"eval pass@1: {task or 'eval'}", color, marker="D", linestyle=":")
    twin = None
    if length[0]:
        twin = ax.twinx()
        _noisy(twin, length, "response length", "tab:red")
        twin.set_ylabel("response length (tokens)")
        twin.set_ylim(bottom=0)
    _finish(ax, "RL: reward, accuracy and response length", "reward / rate", twin)
    if health:
        _rl_health(fig.add_subplot(2, 1, 2, sharex=ax), health)
    return True


_COLORS = ("tab:olive", "tab:brown", "tab:pink", "tab:cyan", "tab:purple")


def _rl_health(ax: Axes, health: list[tuple[str, Series]]) -> None:
    """KL to the reference, entropy and clip fraction: each on its own scale, so each on its own axis."""
    labels = {"kl": "KL to reference", "entropy": "entropy", "clip_fraction": "clip fraction"}
    colors = {"kl": "tab:purple", "entropy": "tab:brown", "clip_fraction": "tab:gray"}
    axes = []
    for i, (key, data) in enumerate(health):
        target = ax if i == 0 else ax.twinx()
        if i == 2:  # a third scale: move its axis outward so the tick labels do not collide
            target.spines["right"].set_position(("axes", 1.1))
        _noisy(target, data, labels[key], colors[key])
        target.set_ylabel(labels[key], color=colors[key])
        axes.append(target)
    ax.set_title("RL: policy health")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    _legend(axes)


FIGURES: list[tuple[str, Callable[[Figure, list[dict[str, Any]]], bool]]] = [
    ("loss", _loss),
    ("lr", _lr),
    ("balance", _balance),
    ("indexer", _indexer),
    ("throughput", _throughput),
    ("rl", _rl),
]


# ---- command line ----


def plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (holding metrics.jsonl), or a metrics.jsonl file")
    p.add_argument("--out", default=None, help="where to write the PNGs (default: RUN_DIR/plots)")


def plot_main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = plot_run(args.run_dir, args.out)
    for w in caught:  # bad lines: one plain line each, not a warning traceback
        print(f"warning: {w.message}", file=sys.stderr)
    if not paths:
        print(f"nothing to plot: {args.run_dir} has no train, val or rl metrics", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


COMMAND = (
    "plot",
    "plot a run's metrics (loss, lr, expert balance, throughput, RL curves) to PNG",
    plot_args,
    plot_main,
)
