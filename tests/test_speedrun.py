"""The speedrun's plumbing on a miniature plan: every stage runs, the report and summary are complete, and a
second invocation skips finished stages. (The real plan's figures come from `make speedrun`.)"""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from nanoseek.speedrun import Plan, Speedrun

MINI = Plan(
    corpus_problems=300,
    vocab_size=300,
    teacher_preset="nano",
    base_steps=12,
    batch_size=8,
    seq_len=160,
    sft_traces=64,  # direct answers are short: enough to pack one batch of 8 x 160
    sft_steps=4,
    rl_steps=2,
    rl_prompts=2,
    rl_group=4,
    max_tokens=24,
    distill_problems=48,
    distill_samples=2,
    student_preset="tiny-student",
    student_base_steps=4,
    student_steps=4,
    eval_problems=8,
    threads=1,
)


@pytest.mark.parametrize("threads", [1, 2])
def test_speedrun_runs_every_stage_and_resumes(tmp_path, capsys, monkeypatch, threads):
    """On 2 threads the student's pretraining runs in a second process beside the teacher's sampling."""
    from nanoseek.tasks import Reward

    # a 12-step teacher solves nothing: accept its traces so the student stage has data (plumbing, not quality)
    monkeypatch.setattr("nanoseek.train.distill.reward", lambda example, text, *a: Reward(1.0, 1.0, 1.1))
    record = Speedrun(tmp_path, replace(MINI, threads=threads), progress=False).run()
    beside_log = tmp_path / "student_base.log"
    assert beside_log.exists() == (threads == 2)
    if threads == 2:
        assert "training in a second process" in capsys.readouterr().out
        assert json.loads((tmp_path / "student_base" / "model" / "config.json").read_text())["hidden_size"] == 64
    assert record["student"]["student_base"].endswith("student_base/model")
    for stage in ("data", "tokenizer", "base", "sft", "rl", "student", "eval", "report"):
        assert stage in record and record[stage]["seconds"] >= 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wall_seconds"] > 0
    for stage in ("base", "sft", "rl", "student"):
        row = summary["stages"][stage]
        assert set(row) >= {"checkpoint", "pass1", "seconds", "active_params"}
        assert 0 <= row["pass1"] <= 1 and row["active_params"] > 0
        assert (tmp_path / row["checkpoint"]).exists() or __import__("pathlib").Path(row["checkpoint"]).exists()
    report = (tmp_path / "report.md").read_text()
    assert "Held-out pass@1 by stage" in report and "nanoseek chat" in report and "nanoseek serve" in report
    assert "![" in report and (tmp_path / "plots" / "rl" / "rl.png").exists()
    capsys.readouterr()
    Speedrun(tmp_path, replace(MINI, threads=threads), progress=False).run()  # everything done: all skipped
    assert capsys.readouterr().out.count("skipped") == 8


def test_a_failed_second_process_says_where_its_log_is_and_how_to_resume(tmp_path):
    run = Speedrun(tmp_path, MINI, progress=False)
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    config = type("Config", (), {"out": str(tmp_path / "student_base")})()
    with pytest.raises(RuntimeError, match=r"exit status 3.*student_base\.log.*again to resume"):
        run._finish_beside(failing, config)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_second_process_dies_with_a_killed_speedrun(tmp_path):
    """SIGKILL leaves no handler to clean up: the child must not outlive its parent and race the re-run."""
    import contextlib
    import os
    import signal
    import time

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; from nanoseek.speedrun import _die_with_parent; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "preexec_fn=_die_with_parent); print(child.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped by its new parent
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_a_different_plan_in_the_same_directory_is_refused(tmp_path):
    import pytest

    (tmp_path / "stages.json").write_text(json.dumps({"_plan": {"task": "countdown"}}))
    with pytest.raises(ValueError, match="another plan"):
        Speedrun(tmp_path, MINI)


def test_the_real_plans_student_has_under_a_quarter_of_the_teachers_active_parameters():
    from nanoseek.config import preset
    from nanoseek.model.sizes import parameter_counts
    from nanoseek.speedrun import PLANS

    plan = PLANS["cpu"]
    vocab = dict(vocab_size=plan.vocab_size)
    teacher, student = (
        parameter_counts(preset(plan.teacher_preset, **vocab)),
        parameter_counts(preset(plan.student_preset, **vocab)),
    )
    assert student.active <= teacher.active / 4


def test_every_documented_command_has_help():
    from nanoseek.cli import build_parser

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in [
        "speedrun",
        "tokenizer",
        "train",
        "sft",
        "rl",
        "distill",
        "eval",
        "generate",
        "chat",
        "serve",
        "export",
        "plot",
        "info",
    ]:
        assert name in choices, name
        assert choices[name].format_help()


def test_seed_changes_the_data_and_every_training_stage(tmp_path):
    import dataclasses

    runs = [Speedrun(tmp_path / str(seed), dataclasses.replace(MINI, seed=seed), progress=False) for seed in (0, 1)]
    corpora = []
    for run in runs:
        run.record["data"] = run.stage_data()
        corpora.append((tmp_path / str(run.plan.seed) / "data" / "corpus.jsonl").read_text())
    assert corpora[0] != corpora[1]
    assert len({runs[0]._seed(k) for k in range(7)} | {runs[1]._seed(k) for k in range(7)}) == 14


def test_the_plans_task_is_a_spec_whose_options_reach_the_corpus(tmp_path):
    """`task` is a spec like the default multiplication:round_numbers=0: its options must shape the data, not just
    its name (one-digit sums have 55 problems in all, so MINI's 300 cannot be drawn)."""
    run = Speedrun(tmp_path, replace(MINI, task="addition:digits=1"), progress=False)
    data = run.stage_data()
    problems = [json.loads(line)["text"] for line in (tmp_path / "data" / "corpus.jsonl").read_text().splitlines()]
    assert data["documents"] == len(problems) and 0 < len(problems) < 2 * 55
    assert all("+" in text or "plus" in text or "sum" in text.lower() or "Add" in text for text in problems)


def test_every_preset_fits_its_task_and_a_plan_that_does_not_is_refused_before_training(tmp_path):
    from nanoseek.speedrun import PLANS

    for name, plan in PLANS.items():
        Speedrun(tmp_path / name, plan, progress=False)._check_task_has_enough_problems()
    with pytest.raises(ValueError, match="eval_problems"):
        Speedrun(tmp_path / "too_many", replace(MINI, eval_problems=1000), progress=False).run()
    assert not (tmp_path / "too_many" / "data").exists()  # refused before the first stage, not at eval


def test_the_report_fails_a_claim_the_numbers_do_not_support():
    from nanoseek.speedrun_report import check_claims

    def stages(base, sft, rl, student, lengths=(10, 12, 90)):
        rows = {
            s: {"pass1": p, "active_params": 100}
            for s, p in zip(("base", "sft", "rl", "student"), (base, sft, rl, student))
        }
        rows["student"]["active_params"] = 25
        for s, n in zip(("base", "sft", "rl"), lengths):
            rows[s]["mean_length"] = n
        rows["student"]["mean_length"] = 90
        return rows

    good = check_claims(stages(0.02, 0.05, 0.9, 0.85))
    assert all(c["ok"] for c in good.values()) and good["rl_gain"]["value"] == 0.85
    # the gain is measured against the best stage before RL, not a weakened one
    assert not check_claims(stages(0.8, 0.05, 0.9, 0.85))["rl_gain"]["ok"]
    assert not check_claims(stages(0.02, 0.05, 0.9, 0.5))["student_vs_teacher"]["ok"]
    assert not check_claims(stages(0.02, 0.05, 0.9, 0.85, lengths=(100, 100, 20)))["rl_longer"]["ok"]


def test_a_resumed_run_may_change_threads_and_device_but_not_the_recipe(tmp_path):
    from dataclasses import asdict, replace

    from nanoseek.speedrun import PLANS, Speedrun

    plan = PLANS["cpu"]
    (tmp_path / "stages.json").write_text(json.dumps({"_plan": asdict(plan)}))
    Speedrun(tmp_path, replace(plan, threads=1, device="cpu"))  # where and how fast: free to change
    with pytest.raises(ValueError, match="another plan"):
        Speedrun(tmp_path, replace(plan, base_steps=plan.base_steps + 1))
