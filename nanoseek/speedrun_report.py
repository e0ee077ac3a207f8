"""The speedrun's report card: report.md (tables and plots) and summary.json (machine-readable)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nanoseek.train.state import atomic_write_text

MODEL_STAGES = ("base", "sft", "rl", "student")


def write_report(out: Path, record: dict[str, Any], plan) -> dict[str, Any]:
    from nanoseek.config import ModelConfig
    from nanoseek.model.sizes import latent_cache_bytes_per_token, parameter_counts
    from nanoseek.speedrun import commit, machine

    evals = record["eval"]
    stages = {
        s: {
            "checkpoint": record[s]["checkpoint"],
            "pass1": evals[s]["pass1"],
            "seconds": record[s]["seconds"],
            "active_params": evals[s]["active_params"],
            "mean_length": evals[s]["mean_length"],
        }
        for s in MODEL_STAGES
    }
    wall = sum(v.get("seconds", 0) for k, v in record.items() if not k.startswith("_") and isinstance(v, dict))
    summary = {
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "machine": machine(),
        "commit": commit(),
        "plan": asdict(plan),
        "task": plan.task,
        "rl_gain_over_sft": round(stages["rl"]["pass1"] - stages["sft"]["pass1"], 4),
        "student_vs_teacher": round(stages["student"]["pass1"] / max(stages["rl"]["pass1"], 1e-9), 4),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    plots = _plots(out)
    teacher = ModelConfig.from_json(Path(stages["rl"]["checkpoint"]) / "config.json")
    student = ModelConfig.from_json(Path(stages["student"]["checkpoint"]) / "config.json")
    lines = [
        "# nanoseek speedrun report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · commit `{summary['commit'] or 'unknown'}` · "
        f"{summary['machine']['cpu']} ({summary['machine']['cores']} cores, torch {summary['machine']['torch']})"
        + (f" · GPU {summary['machine']['gpu']}" if summary["machine"]["gpu"] else ""),
        "",
        f"Task: **{plan.task}** (held-out problems never seen in training). Total: **{wall / 60:.1f} minutes**.",
        "",
        "## Held-out pass@1 by stage",
        "",
        "| stage | what it is | pass@1 (greedy) | mean response tokens | active params | time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    what = {
        "base": "pretrained on half worked / half direct answers",
        "sft": "chat SFT, mostly direct answers (15% reasoned)",
        "rl": "GRPO with verifiable rewards",
        "student": "distilled from the RL model's verified traces",
    }
    for s in MODEL_STAGES:
        st = stages[s]
        lines.append(
            f"| {s} | {what[s]} | **{st['pass1']:.1%}** | {st['mean_length']:.0f} | "
            f"{st['active_params'] / 1e6:.2f}M | {st['seconds']:.0f}s |"
        )
    lines += [
        "",
        f"RL over SFT: **{summary['rl_gain_over_sft'] * 100:+.1f} points**. "
        f"Student / teacher pass@1: **{summary['student_vs_teacher']:.0%}** with "
        f"{stages['student']['active_params'] / stages['rl']['active_params']:.0%} of the teacher's active parameters.",
        "",
        "## Models",
        "",
        "| model | total params | active per token | latent cache per token (bf16, all layers) |",
        "| --- | --- | --- | --- |",
    ]
    for name, config in (("teacher (base / sft / rl)", teacher), ("student", student)):
        counts = parameter_counts(config)
        cache = latent_cache_bytes_per_token(config, 2)
        lines.append(
            f"| {name} | {counts.total / 1e6:.2f}M | {counts.active / 1e6:.2f}M | "
            f"{cache['mla_all_layers']:,} B (MHA would need {cache['mha_all_layers']:,} B) |"
        )
    lines += ["", "## Time per stage", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v['seconds']:.0f} |" for k, v in record.items() if not k.startswith("_") and "seconds" in v]
    if plots:
        lines += ["", "## Plots", ""]
        for title, path in plots:
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out)})", ""]
    rl_model = stages["rl"]["checkpoint"]
    lines += [
        "",
        "## Talk to it",
        "",
        "```bash",
        f"nanoseek chat {rl_model}",
        f"nanoseek serve {rl_model} --port 8000   # then open http://127.0.0.1:8000/ or use the openai client",
        "```",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    print("\n".join(lines[-6:]), flush=True)
    return {"report": str(out / "report.md"), "summary": str(out / "summary.json")}


def _plots(out: Path) -> list[tuple[str, Path]]:
    from nanoseek.train.plot import plot_run

    plots = []
    titles = {
        "loss.png": "loss",
        "balance.png": "expert balance",
        "throughput.png": "throughput",
        "rl.png": "reward, accuracy and response length",
    }
    for stage in ("base", "rl", "student"):
        run = out / stage
        if not (run / "metrics.jsonl").exists():
            continue
        for path in plot_run(run, out / "plots" / stage):
            if path.name in titles and (stage == "rl" or path.name != "rl.png"):
                if stage != "base" and path.name in ("balance.png", "throughput.png"):
                    continue
                plots.append((f"{stage}: {titles[path.name]}", path))
    return plots
