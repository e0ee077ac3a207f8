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
    """summary.json (its keys are a contract: benchmarks and users read them), then report.md from it."""
    summary = _summary(record, plan)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [
        *_header(summary, plan),
        *_stage_table(summary["stages"], plan),
        "",
        "## Does the run show what it claims?",
        "",
        *[f"- {'PASS' if c['ok'] else '**FAIL**'}: {c['text']}" for c in summary["claims"].values()],
        *_model_table(summary["stages"]),
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "| --- | --- |",
        *[f"| {k} | {v['seconds']:.0f} |" for k, v in _timed_stages(record)],
        *_plot_section(out),
        *_talk_to_it(summary["stages"]["rl"]["checkpoint"]),
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    print("\n".join(lines[-6:]), flush=True)
    return {"report": str(out / "report.md"), "summary": str(out / "summary.json")}


def _timed_stages(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The record's stages that were timed (keys starting with _ are the plan and bookkeeping)."""
    return [(k, v) for k, v in record.items() if not k.startswith("_") and isinstance(v, dict) and "seconds" in v]


def _summary(record: dict[str, Any], plan) -> dict[str, Any]:
    from nanoseek.speedrun import commit, machine

    evals = record["eval"]
    stages = {}
    for s in MODEL_STAGES:
        stages[s] = {"checkpoint": record[s]["checkpoint"], "pass1": evals[s]["pass1"], "seconds": record[s]["seconds"]}
        keep = ("active_params", "mean_length", "pass1_unseen_phrasing")
        stages[s].update({k: evals[s][k] for k in keep if k in evals[s]})
    claims = check_claims(stages)
    wall = sum(v["seconds"] for _, v in _timed_stages(record))
    return {
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "machine": machine(),
        "commit": commit(),
        "plan": asdict(plan),
        "task": plan.task,
        "rl_gain_over_sft": round(stages["rl"]["pass1"] - stages["sft"]["pass1"], 4),
        "rl_gain_over_best_before": claims["rl_gain"]["value"],
        "student_vs_teacher": claims["student_vs_teacher"]["value"],
        "claims": claims,
    }


def _header(summary: dict[str, Any], plan) -> list[str]:
    m = summary["machine"]
    return [
        "# nanoseek speedrun report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · commit `{summary['commit'] or 'unknown'}` · "
        f"{m['cpu']} ({m['cores']} cores, "
        + (f"{m['isa']} kernels, " if m.get("isa") else "")
        + f"torch {m['torch']})"
        + (f" · GPU {m['gpu']}" if m["gpu"] else ""),
        "",
        f"Task: **{plan.task}** (held-out problems never seen in training). "
        f"Total: **{summary['wall_seconds'] / 60:.1f} minutes**.",
    ]


def _stage_table(stages: dict[str, dict[str, Any]], plan) -> list[str]:
    """Held-out pass@1 of every model stage (and on unseen phrasings, when the eval measured them)."""
    unseen = all("pass1_unseen_phrasing" in stages[s] for s in MODEL_STAGES)
    what = {
        "base": f"pretrained; {plan.worked_fraction / (1 + plan.worked_fraction):.0%} of its documents reason, "
        "the rest answer directly",
        "sft": "concise chat SFT of the base (a side row: RL starts from the base)",
        "rl": "GRPO with verifiable rewards on the base (R1-Zero)",
        "student": "distilled from the RL model's verified traces (R1-Distill)",
    }
    lines = [
        "",
        "## Held-out pass@1 by stage",
        "",
        "| stage | what it is | pass@1 (greedy) |"
        + (" same problems, phrasings never trained on |" if unseen else "")
        + " mean response tokens | active params | time |",
        "| --- | --- | --- |" + (" --- |" if unseen else "") + " --- | --- | --- |",
    ]
    for s in MODEL_STAGES:
        st = stages[s]
        lines.append(
            f"| {s} | {what[s]} | **{st['pass1']:.1%}** |"
            + (f" {st['pass1_unseen_phrasing']:.1%} |" if unseen else "")
            + f" {st['mean_length']:.0f} | {st['active_params'] / 1e6:.2f}M | {st['seconds']:.0f}s |"
        )
    return lines


def _model_table(stages: dict[str, dict[str, Any]]) -> list[str]:
    from nanoseek.config import ModelConfig
    from nanoseek.model.sizes import latent_cache_bytes_per_token, parameter_counts

    lines = [
        "",
        "## Models",
        "",
        "| model | total params | active per token | latent cache per token (bf16, all layers) |",
        "| --- | --- | --- | --- |",
    ]
    for name, stage in (("teacher (base / sft / rl)", "rl"), ("student", "student")):
        config = ModelConfig.from_json(Path(stages[stage]["checkpoint"]) / "config.json")
        counts = parameter_counts(config)
        cache = latent_cache_bytes_per_token(config, 2)
        lines.append(
            f"| {name} | {counts.total / 1e6:.2f}M | {counts.active / 1e6:.2f}M | "
            f"{cache['mla_all_layers']:,} B (MHA would need {cache['mha_all_layers']:,} B) |"
        )
    return lines


def _plot_section(out: Path) -> list[str]:
    plots = _plots(out)
    lines = ["", "## Plots", ""] if plots else []
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}]({path.relative_to(out)})", ""]
    return lines


def _talk_to_it(rl_model: str) -> list[str]:
    return [
        "",
        "## Talk to it",
        "",
        "```bash",
        f"nanoseek chat {rl_model}",
        f"nanoseek serve {rl_model} --port 8000   # then open http://127.0.0.1:8000/ or use the openai client",
        "```",
        "",
    ]


def check_claims(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The story's claims, each checked against this run's numbers and said plainly when it fails."""
    before = max(("base", "sft"), key=lambda s: stages[s]["pass1"])
    gain = stages["rl"]["pass1"] - stages[before]["pass1"]
    grew = stages["rl"]["mean_length"] - stages[before]["mean_length"]
    ratio = stages["student"]["pass1"] / max(stages["rl"]["pass1"], 1e-9)
    share = stages["student"]["active_params"] / stages["rl"]["active_params"]
    return {
        "rl_gain": {
            "ok": gain >= 0.30,
            "value": round(gain, 4),
            "text": f"RL raises held-out pass@1 by {gain * 100:+.1f} points over the best stage before it "
            f"({before}, {stages[before]['pass1']:.1%}); the claim needs >= +30.",
        },
        "rl_longer": {
            "ok": grew > 0,
            "value": round(grew, 1),
            "text": f"responses grow through RL: {stages[before]['mean_length']:.0f} -> "
            f"{stages['rl']['mean_length']:.0f} tokens (the model learned to reason, R1-Zero's finding).",
        },
        "student_vs_teacher": {
            "ok": ratio >= 0.90 and share <= 0.25,
            "value": round(ratio, 4),
            "text": f"the student reaches {ratio:.0%} of the teacher's pass@1 (claim: >= 90%) with {share:.0%} of its "
            "active parameters (claim: <= 25%).",
        },
    }


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
