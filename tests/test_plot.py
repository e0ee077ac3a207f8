"""`nanoseek plot`: metrics.jsonl -> PNG figures, robust to killed runs and partial data."""

from __future__ import annotations

import argparse
import json
import math
import random
import warnings
from pathlib import Path

import pytest

from nanoseek.train.plot import COMMAND, ema, load_metrics, plot_args, plot_main, plot_run, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pretrain_records(steps: int = 300, seed: int = 0) -> list[dict]:
    """A plausible pretraining log: noisy falling loss, WSD lr, balance settling toward 1, steady throughput."""
    rng = random.Random(seed)
    records = []
    for step in range(steps):
        main = 2.6 + 4.0 * math.exp(-step / 40) + rng.gauss(0, 0.12)
        lr = 3e-3 * min(1.0, (step + 1) / 20, (steps - step) / (0.2 * steps))
        records.append(
            dict(
                step=step,
                kind="train",
                loss=main + 0.3 * (main + 0.2),
                main_loss=main,
                mtp_loss=main + 0.2 + rng.gauss(0, 0.05),
                lr=lr,
                grad_norm=1.0 + rng.random(),
                tokens_per_s=52_000 + rng.gauss(0, 1500),
                mfu=0.41 + rng.gauss(0, 0.01),
                balance_max_over_mean=1.0 + 2.5 * math.exp(-step / 60) + abs(rng.gauss(0, 0.08)),
                balance_loss=0.002 * math.exp(-step / 100),
                elapsed_s=step * 0.8,
                some_new_metric="ignored",
            )
        )
        if step % 50 == 49:
            val = 2.8 + 4.0 * math.exp(-step / 40)
            records.append(dict(step=step, kind="val", val_loss=val, val_bpb=val / math.log(2) / 4.2))
    return records


def rl_records(steps: int = 200, seed: int = 1) -> list[dict]:
    """A GRPO-style log: reward and accuracy climb while responses lengthen (R1-Zero's "aha" curve)."""
    rng = random.Random(seed)
    records = []
    for step in range(steps):
        progress = 1 / (1 + math.exp(-(step - 90) / 20))
        accuracy = min(1.0, max(0.0, 0.15 + 0.55 * progress + rng.gauss(0, 0.06)))
        records.append(
            dict(
                step=step,
                kind="rl",
                reward=accuracy + 0.1 * min(1.0, step / 30) + rng.gauss(0, 0.05),
                accuracy=accuracy,
                format_rate=min(1.0, step / 30),
                response_length=180 + 650 * progress + rng.gauss(0, 30),
                kl=0.002 * step + abs(rng.gauss(0, 0.01)),
                entropy=1.2 - 0.5 * progress + rng.gauss(0, 0.03),
                clip_fraction=0.02 + abs(rng.gauss(0, 0.01)),
                loss=rng.gauss(0, 0.02),
            )
        )
        if step % 40 == 0:
            records.append(dict(step=step, kind="eval", task="gsm8k", pass1=0.1 + 0.5 * progress))
            records.append(dict(step=step, kind="eval", task="math", pass1=0.05 + 0.3 * progress))
    return records


def write_run(path: Path, records: list[dict], tail: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))  # a real figure, not an empty canvas


def test_pretraining_run(tmp_path):
    run = write_run(tmp_path / "run", pretrain_records())
    paths = plot_run(run)
    assert [p.name for p in paths] == ["loss.png", "lr.png", "balance.png", "throughput.png"]
    assert all(p.parent == run / "plots" for p in paths)
    for p in paths:
        assert_png(p)
    assert not list((run / "plots").glob(".*"))  # no temporary files left behind


def test_rl_run_to_chosen_directory(tmp_path):
    run = write_run(tmp_path / "rl", rl_records())
    out = tmp_path / "figures"
    paths = plot_run(run, out_dir=out)
    assert [p.name for p in paths] == ["rl.png"]  # no train lines: no loss / lr / balance / throughput
    assert_png(out / "rl.png")
    assert not (run / "plots").exists()


def test_figures_only_for_data_present(tmp_path):
    records = [dict(step=s, kind="train", loss=5.0 - 0.01 * s) for s in range(40)]
    records += [dict(step=s, kind="train", lr=1e-3, tokens_per_s=1000.0) for s in range(0, 40, 10)]
    names = [p.name for p in plot_run(write_run(tmp_path / "run", records))]
    assert names == ["loss.png", "lr.png", "throughput.png"]  # no balance, no RL
    only_val = [dict(step=10, kind="val", val_loss=4.0), dict(step=20, kind="val", val_loss=3.5)]
    assert [p.name for p in plot_run(write_run(tmp_path / "val", only_val))] == ["loss.png"]


def test_truncated_last_line_is_skipped_quietly(tmp_path):
    records = pretrain_records(30)
    run = write_run(tmp_path / "run", records, tail='{"step": 30, "kind": "train", "loss": 2.')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a write cut short by a kill
        loaded = load_metrics(run)
    assert len(loaded) == len(records)
    assert len(plot_run(run)) == 4


def test_corrupt_middle_line_is_reported_with_its_number(tmp_path):
    lines = [json.dumps(dict(step=s, kind="train", loss=4.0 - s / 10, lr=1e-3)) for s in range(20)]
    lines[6] = '{"step": 6, "kind": "tra'
    lines[9] = "[1, 2]"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n\n")
    with pytest.warns(UserWarning) as caught:
        loaded = load_metrics(run)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "metrics.jsonl:7: skipping a bad line (not JSON" in messages[0]
    assert "metrics.jsonl:10:" in messages[1] and "not an object" in messages[1]
    assert [r["step"] for r in loaded] == [s for s in range(20) if s not in (6, 9)]


def test_missing_keys_and_odd_values_are_tolerated(tmp_path):
    records = [
        dict(step=0, kind="train", loss=5.0),
        dict(step=1, kind="train"),
        dict(step=2, kind="train", loss=None, lr="n/a"),
        dict(step=3, kind="train", loss=float("nan")),
        dict(step=4, loss=4.0),  # no kind: train
        dict(step=5, kind="weird", loss=1.0),
    ]
    run = write_run(tmp_path / "run", records)
    assert series(load_metrics(run), "train", "loss") == ([0, 3, 4], [5.0, pytest.approx(math.nan, nan_ok=True), 4.0])
    assert [p.name for p in plot_run(run)] == ["loss.png"]


def test_resumed_run_keeps_the_later_lines():
    records = [dict(step=s, kind="train", loss=float(s)) for s in range(10)]
    records += [dict(step=s, kind="train", loss=100.0 + s) for s in range(6, 12)]  # resumed from step 6
    steps, values = series(records, "train", "loss")
    assert steps == list(range(12))
    assert values[:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and values[6:] == [100.0 + s for s in range(6, 12)]


def test_ema_smooths_and_skips_non_finite():
    assert ema([1.0, 1.0, 1.0], beta=0.9) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected: no ramp from 0
    smoothed = ema([0.0, 10.0] * 50)
    assert 4 < smoothed[-1] < 6
    assert ema([math.nan, 2.0], beta=0.5)[1] == 2.0 and math.isnan(ema([math.nan], beta=0.5)[0])


def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nope does not exist"):
        plot_run(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl not found"):
        load_metrics(tmp_path / "empty_dir")
    write_run(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no metrics"):
        plot_run(tmp_path / "empty")
    write_run(tmp_path / "cut", [], tail='{"step": 0, "kind"')
    with pytest.raises(ValueError, match="no metrics"):
        plot_run(tmp_path / "cut")


def test_command_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", pretrain_records(40))
    name, _help, add_args, main = COMMAND
    assert name == "plot" and add_args is plot_args and main is plot_main
    parser = argparse.ArgumentParser()
    plot_args(parser)
    assert plot_main(parser.parse_args([str(run), "--out", str(tmp_path / "out")])) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / f"{n}.png") for n in ("loss", "lr", "balance", "throughput")]
    assert plot_main(parser.parse_args([str(run / "metrics.jsonl")])) == 0  # the file itself works too
    assert (run / "plots" / "loss.png").exists()


def test_command_line_with_nothing_to_plot(tmp_path, capsys):
    run = write_run(tmp_path / "run", [dict(step=0, kind="eval", task="gsm8k", pass1=0.3)])
    parser = argparse.ArgumentParser()
    plot_args(parser)
    assert plot_main(parser.parse_args([str(run)])) == 1
    assert "nothing to plot" in capsys.readouterr().err
