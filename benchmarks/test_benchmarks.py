"""The benchmarks' own checks: the arms they compare are configured as they claim (fast), and each benchmark runs
end to end at its smallest settings (slow: `make test-slow`; the figures of such runs mean nothing)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# the RL arm may differ from the speedrun's RL stage only in these (where it writes, what it starts from, how
# long it runs and how it evaluates itself); everything that shapes the updates must be the same
RUN_LENGTH_AND_BOOKKEEPING = {
    "out",
    "init_from",
    "steps",
    "time_budget",
    "eval_every",
    "eval_problems",
    "save_every",
    "seed",
    "threads",
    "progress",
    "resume",
}


def _speedrun_rl_config(plan, tmp_path: Path, monkeypatch):
    """The RLConfig that the speedrun's rl stage builds for `plan` (captured instead of run)."""
    import nanoseek.train.grpo as grpo
    from nanoseek.speedrun import Speedrun

    captured = []
    monkeypatch.setattr(grpo, "rl", lambda config: captured.append(config) or tmp_path / "rl" / "model")
    run = Speedrun(tmp_path / "speedrun", plan, progress=False)
    run.record["base"] = run.record["sft"] = {"checkpoint": str(tmp_path / "base" / "model")}
    run.stage_rl()
    return captured[0]


@pytest.mark.parametrize("plan_name", ["cpu", "gpu"])
@pytest.mark.parametrize("task", [None, "multiplication"])
def test_distill_vs_rl_rl_arm_is_the_speedrun_recipe(plan_name, task, tmp_path, monkeypatch):
    from distill_vs_rl import rl_arm

    from nanoseek.cli import build_parser
    from nanoseek.configargs import config_from_args
    from nanoseek.speedrun import PLANS

    plan = PLANS[plan_name]
    if task:
        plan = dataclasses.replace(plan, task=task)
    ours = _speedrun_rl_config(plan, tmp_path, monkeypatch)
    argv = rl_arm(dataclasses.asdict(plan), plan.task, tmp_path / "base", tmp_path / "arm", 150.0, 1, 40)
    assert argv[0] == "rl"
    arm = config_from_args(build_parser().parse_args(argv))
    same = {f.name for f in dataclasses.fields(arm)} - RUN_LENGTH_AND_BOOKKEEPING
    assert {k: getattr(arm, k) for k in same} == {k: getattr(ours, k) for k in same}
    assert arm.tasks == [plan.task] and arm.time_budget == 150.0 and arm.eval_problems == 40


def test_rl_ablation_variants_are_the_speedrun_recipe_plus_only_their_own_settings(tmp_path, monkeypatch):
    import argparse

    from rl_ablation import VARIANTS, ablation_argv

    from nanoseek.cli import build_parser
    from nanoseek.configargs import config_from_args
    from nanoseek.speedrun import PLANS

    plan = PLANS["cpu"]
    ours = _speedrun_rl_config(plan, tmp_path, monkeypatch)
    args = argparse.Namespace(task=plan.task, problems=40, steps=15)
    same = {f.name for f in dataclasses.fields(ours)} - RUN_LENGTH_AND_BOOKKEEPING
    own = {
        "GRPO + KL (beta 0.04)": {"kl_beta"},
        "Dr. GRPO": {"advantage", "loss_agg"},
        "REINFORCE (batch baseline)": {"advantage"},
    }
    for name, extra in VARIANTS.items():
        argv = ablation_argv(dataclasses.asdict(plan), tmp_path / "base", tmp_path / name, 0, extra, args)
        variant = config_from_args(build_parser().parse_args(argv))
        differ = {k for k in same if getattr(variant, k) != getattr(ours, k)}
        assert differ == own.get(name, set()), name
        assert variant.steps == 15 and variant.eval_every == 15 and variant.eval_problems == 40


def test_distill_vs_rl_distillation_arm_is_the_speedrun_student_stage(tmp_path, monkeypatch):
    import argparse
    import json

    from distill_vs_rl import distill_generate, distill_train

    import nanoseek.speedrun as speedrun
    import nanoseek.train.distill as distill
    from nanoseek.cli import build_parser
    from nanoseek.configargs import config_from_args
    from nanoseek.speedrun import PLANS, Speedrun

    plan = PLANS["cpu"]
    trained, generated = [], []
    monkeypatch.setattr(Speedrun, "_train", lambda self, config: trained.append(config) or tmp_path / "model")
    # the student base in turn through `_train` (captured), not in a second process, whatever the thread count
    monkeypatch.setattr(Speedrun, "_start_beside", lambda self, config: None)
    monkeypatch.setattr(distill, "generate", lambda config: generated.append(config) or {"traces": 10})
    monkeypatch.setattr(speedrun, "_longest_example", lambda traces, tokenizer: plan.seq_len + 1)
    run = Speedrun(tmp_path / "speedrun", plan, progress=False)
    run.record["rl"] = {"checkpoint": str(tmp_path / "teacher")}
    run.stage_student()
    ours_generate, ours_train = generated[0], trained[1]  # (trained[0]: the student base)
    args = argparse.Namespace(distill_problems=None, sft_steps=None)
    plan_dict = json.loads(json.dumps(dataclasses.asdict(plan)))
    argv = distill_generate(plan_dict, plan.task, tmp_path / "teacher", tmp_path / "t.jsonl", args, 3)
    theirs_generate = config_from_args(build_parser().parse_args(argv))
    argv = distill_train(plan_dict, tmp_path / "t.jsonl", tmp_path / "base", tmp_path / "out", args, 3)
    theirs_train = config_from_args(build_parser().parse_args(argv))
    bookkeeping = {"out", "data", "init_from", "seed", "threads", "device", "progress", "resume", "eval_every"}
    bookkeeping |= {"save_every", "teacher"}
    for ours, theirs in ((ours_generate, theirs_generate), (ours_train, theirs_train)):
        same = {f.name for f in dataclasses.fields(ours)} - bookkeeping
        assert {k: getattr(theirs, k) for k in same} == {k: getattr(ours, k) for k in same}


def test_distill_vs_rl_parses_and_takes_the_task_from_the_plan_or_the_flag(tmp_path):
    run = subprocess.run(
        [sys.executable, str(HERE / "distill_vs_rl.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--task" in run.stdout and "--speedrun-student" in run.stdout
    missing = subprocess.run(
        [sys.executable, str(HERE / "distill_vs_rl.py"), "--run", str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "not a finished speedrun" in missing.stderr


def _smoke(script: str, flags: str, timeout: int = 900) -> str:
    """Run benchmarks/`script` with `flags` (space-separated) on one thread; its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, str(HERE / script), *flags.split()]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


@pytest.mark.slow
def test_model_speed_runs_with_the_same_optimizer_on_both_sides():
    out = _smoke(
        "model_speed.py",
        "--preset nano --quick --steps 1 --warmup 1 --batch 1 --seq 16 --threads 1",
    )
    lines = [line for line in out.splitlines() if "tokens/s (" in line]
    assert len(lines) == 4 and all("torch.optim.AdamW(fused=True, foreach=False)" in line for line in lines), out


@pytest.mark.slow
def test_train_speed_runs_with_the_same_optimizer_on_both_sides():
    out = _smoke(
        "train_speed.py",
        "--presets nano --quick --steps 2 --warmup 1 --batch 1 --seq 16 --vocab 300 --vocab-pad 512",
    )
    line = next(line for line in out.splitlines() if "optimizer: nanoseek" in line)
    ours, theirs = line.split("optimizer: nanoseek ")[1].split("; transformers ")
    assert ours == theirs and "AdamW(fused=True" in ours, line


@pytest.mark.slow
def test_decode_speed_reports_medians_timed_the_same_way():
    out = _smoke("decode_speed.py", "--sections a --presets nano --repeats 2 --threads 1")
    assert "median of 2 runs" in out and "transformers" in out, out


@pytest.mark.slow
def test_decode_speed_times_speculation_and_its_plain_step_on_both_paths():
    out = _smoke("decode_speed.py", "--sections d --repeats 1 --threads 1")
    assert "eager (asked for)" in out and "compiled, speculative" in out, out


def test_bytes_per_token_leave_mtp_layers_out_and_a_verify_call_adds_the_draft_rows_reads():
    import types

    import decode_speed
    import torch

    from nanoseek.config import preset
    from nanoseek.model import build_model

    without, with_mtp = (build_model(preset("nano", num_nextn_predict_layers=n), seed=0) for n in (0, 1))
    plain = decode_speed.weight_bytes_per_token(with_mtp)
    assert plain == decode_speed.weight_bytes_per_token(without)  # a plain step never runs the MTP layer
    head = with_mtp.lm_head.weight
    int8_head = (torch.zeros(head.shape, dtype=torch.int8), torch.zeros(head.shape[0]))
    exact = decode_speed.verify_bytes(with_mtp, types.SimpleNamespace(draft_head=()))
    int8 = decode_speed.verify_bytes(with_mtp, types.SimpleNamespace(draft_head=int8_head))
    assert exact - int8 == head.nbytes - sum(t.nbytes for t in int8_head)
    # beyond a plain step: the draft row's own k experts in each MoE layer, the MTP layer (a MoE layer here) over
    # both rows, the head read again for the draft, and 3 more embedding rows (the draft's, the MTP's two)
    config, mtp = with_mtp.config, with_mtp.mtp_layers[0]
    expert = 3 * config.hidden_size * config.moe_intermediate_size * 4
    draft_experts = (config.num_hidden_layers - config.first_k_dense_replace) * config.num_experts_per_tok * expert
    mtp_bytes = sum(m.weight.nbytes for m in mtp.modules() if isinstance(m, torch.nn.Linear))
    mtp_bytes += 2 * config.num_experts_per_tok * expert
    assert exact == plain + draft_experts + mtp_bytes + head.nbytes + 3 * config.hidden_size * 4


@pytest.mark.slow
def test_decode_speed_prices_a_verify_call_with_both_draft_heads():
    out = _smoke("decode_speed.py", "--sections h --presets nano --threads 1")
    assert "weights read ratio" in out and " int8 " in out and " exact " in out, out


@pytest.mark.slow
def test_step_buckets_compares_the_two_thresholds_per_bucket():
    out = _smoke("step_buckets.py", "--preset nano --buckets 1 4 --rounds 1")
    assert "fused <= 8: x bucket 1" in out and "fused <= 2: x bucket 1" in out, out


@pytest.mark.slow
def test_rl_speed_runs_with_trl_gradient_checkpointing_off():
    """...on a task spec with options, as a speedrun's plan names its task (the TRL side once read only names)."""
    pytest.importorskip("trl")
    out = _smoke(
        "rl_speed.py",
        "--base-steps 5 --prompts 2 --group 2 --max-tokens 8 --steps 2 --warmup 1 "
        "--task multiplication:round_numbers=0",
    )
    assert "TRL: gradient_checkpointing=False" in out and "gradient checkpointing off" in out, out
    assert "TRL failed" not in out, out


@pytest.mark.slow
def test_kv_cache_v4_table_and_the_tiny_engine_match_the_formula():
    out = _smoke("kv_cache.py", "--v4")
    assert "deepseek-v4-flash" in out and "as the formula says" in out, out


@pytest.mark.slow
def test_decode_speed_v4_runs_all_three_arms():
    out = _smoke("decode_speed_v4.py", "--contexts 1024 --steps 2 --repeats 1 --chunk 512")
    assert "V4 transformers tok/s" in out and "V3 (MLA) nanoseek tok/s" in out, out


def test_rl_speed_takes_the_task_and_token_limit_of_the_checkpoints_speedrun(tmp_path):
    """rl_speed.py (and rl_ablation.py) read a speedrun checkpoint's plan: they ran the CLI's default task, addition,
    on the multiplication speedrun's models; without a speedrun around the checkpoint there is no plan."""
    import json

    from common import speedrun_plan

    model = tmp_path / "run" / "rl" / "model"
    model.mkdir(parents=True)
    assert speedrun_plan(model) == {} and speedrun_plan(None) == {}
    plan = {"task": "multiplication", "max_tokens": 192}
    (tmp_path / "run" / "stages.json").write_text(json.dumps({"_plan": plan}))
    assert speedrun_plan(model) == plan


def test_direct_only_base_is_the_speedrun_base_without_a_worked_document(tmp_path):
    """direct_only.py's plan differs from the speedrun's only in its corpus, and that corpus answers every problem
    directly (an empty think block), so what it measures is the task without reasoning."""
    from direct_only import direct_plan

    from nanoseek.speedrun import Plan, Speedrun

    plan = direct_plan(seed=1, threads=None)
    assert dataclasses.replace(plan, worked_fraction=Plan().worked_fraction) == Plan(seed=1)
    run = Speedrun(tmp_path / "run", dataclasses.replace(plan, corpus_problems=60), progress=False)
    run.record["data"] = run.stage_data()
    docs = [json.loads(line)["text"] for line in Path(run.record["data"]["corpus"]).read_text().splitlines()]
    assert len(docs) == 60
    assert all("<think>\n\n</think>" in doc for doc in docs)


def test_isa_avx2_restarts_the_script_on_torchs_avx2_kernels(tmp_path):
    """`--isa avx2` (speedrun_seeds, direct_only): the script runs again with the AVX2 environment, and torch's own
    kernels are then the AVX2 ones (on an AVX-512 machine this is what tells the two apart). torch reads the
    environment once, at its first kernel: a script that already ran one must start again, not set a variable."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import torch\n"
        "torch.ones(8).softmax(0), torch.backends.cpu.get_cpu_capability()  # kernels ran before\n"
        "from common import emulate_isa\n"
        "emulate_isa('avx2')\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'], cache_dir(), sys.argv[1:])\n"
    )
    shared = tmp_path / "inductor"
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(shared)}
    command = [sys.executable, str(script), "--seed", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    # compiled graphs go to a cache of their own: inductor's does not key on the ISA (common.isa_environment)
    assert done.stdout.split() == ["AVX2", "AVX2", f"{shared}-avx2", "['--seed',", "'3']"]


def test_gpu_check_runs_every_part_and_a_failing_part_does_not_stop_the_others(tmp_path, monkeypatch):
    """gpu_check.py is what a lent GPU runs, once, for minutes: it must not meet its own bugs there. --quick on the
    CPU runs every part end to end (the decode rows greedy-equal to transformers, GRPO trained and saved); a part
    that raises keeps what it measured before, records its error, the parts after it still run, and the exit status
    says it failed."""
    import gpu_check

    out = tmp_path / "quick"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--quick"]) == 0
    results = json.loads((out / "gpu_check.json").read_text())
    assert [results[part]["ok"] for part in gpu_check.PARTS] == [True] * len(gpu_check.PARTS)
    rows = results["decode"]["batch 1"]
    assert len(rows) == 4 and all(row["same ids"] and row["tok/s"] > 0 for row in rows)
    assert results["batching"]["prompts"] == 4 and results["batching"]["ratio"] > 0
    assert list(results["speedrun"]["stage seconds"]) == list(gpu_check.QUICK_STAGES)
    assert (out / "speedrun" / "rl" / "model" / "config.json").exists()

    calls = []

    def fails_on_its_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_decode(*args, **kwargs)

    real_decode = gpu_check.ours_decode
    monkeypatch.setattr(gpu_check, "ours_decode", fails_on_its_second_call)
    out = tmp_path / "broken"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--quick", "--parts", "decode", "env"]) == 1
    results = json.loads((out / "gpu_check.json").read_text())
    assert not results["decode"]["ok"] and "illegal memory access" in results["decode"]["error"]
    assert len(results["decode"]["batch 1"]) == 1  # what it measured before failing is kept
    assert results["env"]["ok"] and results["env"]["device"] == "cpu"
