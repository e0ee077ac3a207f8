"""Training end to end: tokenizer -> train -> export -> transformers; exact resume after kill -9; SFT; torchrun."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nanoseek
from nanoseek.checkpoint import CheckpointError
from nanoseek.cli import main as cli
from nanoseek.tasks import get_task

NANOSEEK = [sys.executable, "-m", "nanoseek.cli"]


def _corpus(path: Path, n: int = 400) -> Path:
    rng = random.Random(0)
    task = get_task("addition")
    docs = [f"{ex.prompt}\n{task.solution(ex, rng.choice(['worked', 'direct']))}" for ex in task.generate(n, seed=3)]
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    corpus = _corpus(root / "corpus.txt")
    assert cli(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    return root


def _train_args(workspace: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(workspace / "corpus.txt"),
        "--tokenizer",
        str(workspace / "tok"),
        "--out",
        str(out),
        "--preset",
        "nano",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--log-every",
        "1",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _metrics(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """A 60-step run (its tokenised shards in RUN/data), made once for every test here that starts from one: each
    test also runs alone (`-k`), not only after the test that used to make it."""
    run = workspace / "run"
    assert cli(_train_args(workspace, run, "--steps", "60", "--eval-every", "20", "--save-every", "30")) == 0
    return run


def test_train_then_export_opens_in_transformers(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    run = trained
    val = [r["val_loss"] for r in _metrics(run, "val")]
    assert len(val) == 3 and val[-1] < val[0] - 0.5, val  # validation loss falls
    assert all("val_bpb" in r for r in _metrics(run, "val"))
    train = _metrics(run)
    assert {"loss", "main_loss", "mtp_loss", "lr", "tokens_per_s", "mfu", "balance_max_over_mean"} <= set(train[-1])
    assert (run / "model" / "tokenizer.json").exists() and (run / "checkpoints" / "LATEST").exists()

    assert cli(["export", str(run), "--to", str(tmp_path / "hf")]) == 0
    ours = nanoseek.from_pretrained(tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.randint(0, ours.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.decode(tok.encode("What is 12 + 5?", add_special_tokens=False)) == "What is 12 + 5?"
    assert cli(["export", str(run), "--to", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert nanoseek.from_pretrained(tmp_path / "bf16").model.embed_tokens.weight.dtype == torch.bfloat16


def test_resume_after_kill_is_bit_exact(workspace, tmp_path, trained):
    args = lambda out: [
        *NANOSEEK,
        *_train_args(
            workspace,
            out,
            "--steps",
            "40",
            "--save-every",
            "5",
            "--eval-every",
            "10",
            "--data",
            str(trained / "data"),
        ),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(args(whole), check=True, capture_output=True, env=env)
    proc = subprocess.Popen(args(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    latest = killed / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while not (latest.exists() and latest.read_text().strip() != "step_000005") and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = len(_metrics(killed))
    assert 10 <= stopped_at < 40, stopped_at  # killed mid-run, after a checkpoint
    subprocess.run([*args(killed), "--resume"], check=True, capture_output=True, env=env)
    timing = {"time", "tokens_per_s", "mfu"}  # wall-clock figures differ; every loss and norm must not
    exact = lambda run: [{k: v for k, v in r.items() if k not in timing} for r in _metrics(run)]
    assert exact(killed) == exact(whole) and len(exact(whole)) == 40
    a = nanoseek.from_pretrained(whole / "model").state_dict()
    b = nanoseek.from_pretrained(killed / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_or_corrupt_checkpoints_are_refused(workspace, tmp_path, trained):
    run = tmp_path / "run"
    base = _train_args(workspace, run, "--steps", "6", "--save-every", "3", "--data", str(trained / "data"))
    assert cli(base) == 0
    # a half-written checkpoint (staging directory left by a crash) is never used, and gets cleaned up
    staging = run / "checkpoints" / ".tmp_step_000009"
    (staging / "model").mkdir(parents=True)
    assert cli([*base[: base.index("--steps")], "--steps", "9", *base[base.index("--steps") + 2 :], "--resume"]) == 0
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_000009" and not staging.exists()
    # a truncated weights file in the newest checkpoint: a clear error naming the file
    weights = run / "checkpoints" / "step_000009" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        nanoseek.from_pretrained(run / "checkpoints" / "step_000009" / "model")
    # LATEST naming a checkpoint whose training state is missing: refused with what to do
    (run / "checkpoints" / "step_000009" / "trainer_state" / "state.json").unlink()
    assert cli([*base, "--resume"]) == 2


def test_a_second_run_into_the_same_directory_is_refused(workspace, tmp_path, capsys, trained):
    run = tmp_path / "run"
    args = _train_args(workspace, run, "--steps", "2", "--data", str(trained / "data"))
    assert cli(args) == 0
    assert cli(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli([*args, "--resume", "--lr", "0.5"]) == 2  # settings must match the run being resumed


def test_set_overrides_the_fields_taken_from_the_tokenizer(workspace, tmp_path):
    run = tmp_path / "run"
    assert cli(_train_args(workspace, run, "--steps", "1", "--set", "vocab_size=512")) == 0
    assert nanoseek.from_pretrained(run / "model").config.vocab_size == 512  # padded past the tokenizer's 300


def test_sft_learns_assistant_tokens_from_a_checkpoint(tmp_path, trained):
    task = get_task("addition")
    with open(tmp_path / "chat.jsonl", "w") as f:
        for ex in task.generate(120, seed=5):
            reasoning, answer = task.solution(ex, "worked").split("</think>")
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": ex.prompt},
                            {
                                "role": "assistant",
                                "content": answer.strip(),
                                "reasoning_content": reasoning.replace("<think>", "").strip(),
                            },
                        ]
                    }
                )
                + "\n"
            )
    out = tmp_path / "sft"
    assert (
        cli(
            [
                "sft",
                "--data",
                str(tmp_path / "chat.jsonl"),
                "--init-from",
                str(trained),
                "--out",
                str(out),
                "--steps",
                "30",
                "--batch-size",
                "4",
                "--seq-len",
                "256",
                "--log-every",
                "1",
                "--eval-every",
                "15",
                "--no-progress",
                "--threads",
                "1",
                "--lr",
                "3e-3",
            ]
        )
        == 0
    )
    losses = [r["main_loss"] for r in _metrics(out)]
    assert losses[-1] < losses[0] * 0.8
    assert (out / "model" / "config.json").exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_torchrun_two_processes_match_one(workspace, tmp_path, optimizer, trained):
    """FSDP2 over gloo, 2 ranks x 4 sequences == 1 rank x 8 sequences, step by step (Muon: Newton-Schulz on
    DTensor-sharded updates still orthogonalises whole matrices)."""
    data = str(trained / "data")
    common = [
        "--data",
        data,
        "--tokenizer",
        str(workspace / "tok"),
        "--preset",
        "nano",
        "--seq-len",
        "64",
        "--steps",
        "5",
        "--log-every",
        "1",
        "--eval-every",
        "5",
        "--save-every",
        "100",
        "--no-progress",
        "--threads",
        "1",
        "--optimizer",
        optimizer,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*NANOSEEK, "train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
        check=True,
        capture_output=True,
        env=env,
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, "-m", "nanoseek.cli", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    assert (
        abs(_metrics(tmp_path / "one", "val")[0]["val_loss"] - _metrics(tmp_path / "two", "val")[0]["val_loss"]) < 1e-4
    )
    a = nanoseek.from_pretrained(tmp_path / "one" / "model")
    b = nanoseek.from_pretrained(tmp_path / "two" / "model")
    assert max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values())) < 1e-4


def _parse(argv: list[str]):
    from nanoseek.cli import build_parser
    from nanoseek.configargs import config_from_args

    return config_from_args(build_parser().parse_args(argv))


def _every_field_changed():
    """One config per run command, each field (nested optimizer's included) away from that command's default, so a
    field the command line drops comes back changed."""
    from nanoseek.train.distill import GenerateConfig
    from nanoseek.train.grpo import RLConfig
    from nanoseek.train.optim import OptimConfig
    from nanoseek.train.trainer import TrainConfig

    optim = OptimConfig("muon", 0.25, 0.05, (0.8, 0.9), 1e-6, 0.9, 3, "constant", 7, 0.0, 0.3, 0.1)
    rl_optim = dataclasses.replace(optim, schedule="wsd")  # RL's default is constant
    train = dict(
        out="runs/x y", data=["a.jsonl", "hf://b"], preset="nano", init_from="ckpt", tokenizer="tok",
        model_overrides={"num_hidden_layers": 2, "hidden_act": "silu", "rope_scaling": None, "lr": 1e-5},
        steps=9, batch_size=3, grad_accum=2, seq_len=33, optim=optim, grad_clip=0.5, mtp_weight=0.1,
        bias_update_speed=0.0, aux_loss_alpha=1e-4, indexer_warmup_steps=5, teacher="t", distill_weight=0.75,
        distill_temperature=2.0, precision="bf16", compile=True, fp8=True, threads=1, eval_every=5, eval_batches=2,
        save_every=4, keep=1, log_every=3, val_fraction=0.1, seed=7, resume=True, progress=False,
    )  # fmt: skip
    rl = dict(
        out="o", init_from="i", tasks=["countdown:count=3", "addition"], recipe="r1", cold_start_examples=5,
        cold_start_steps=6, steps=7, prompts_per_step=8, group_size=4, max_tokens=9, temperature=0.7, compile=True,
        advantage="dr-grpo", loss_agg="constant", clip_low=0.1, clip_high=0.3, kl_beta=0.01, epochs=2,
        minibatch_size=16, dynamic_sampling=True, format_weight=0.2, optim=rl_optim, grad_clip=0.5, eval_every=3,
        eval_problems=10, save_every=4, keep=1, seed=3, threads=2, time_budget=60.5, resume=True, progress=False,
    )  # fmt: skip
    generate = dict(
        out="t.jsonl", tasks=["gsm8k.jsonl"], problems=3, samples=2, keep_per_prompt=2, teacher_url="http://x/v1",
        teacher_model="m", api_key="k", temperature=1.0, top_p=0.5, max_tokens=64, concurrency=2, retries=1, seed=4,
        progress=False,
    )  # fmt: skip
    return {  # command: (config, the fewest flags that command takes)
        "train": (TrainConfig(**train), ["--data", "d"]),
        "sft": (TrainConfig(**{**train, "mode": "sft"}), ["--data", "d", "--init-from", "i"]),
        "distill train": (TrainConfig(**{**train, "mode": "sft", "init_from": None}), ["--data", "d"]),
        "rl": (RLConfig(**rl), ["--init-from", "d"]),
        "distill generate": (GenerateConfig(**generate), ["--teacher", "d"]),
        "distill generate --teacher": (
            GenerateConfig(**{**generate, "teacher_url": None, "teacher": "c"}),
            ["--teacher", "d"],
        ),
    }


@pytest.mark.parametrize("command", list(_every_field_changed()))
def test_every_run_config_round_trips_through_its_command_line(command):
    """The flags are derived from the config dataclasses: parse(command_line(c)) == c, for every field."""
    from nanoseek.configargs import _walk
    from nanoseek.train.commands import command_line

    config, minimal = _every_field_changed()[command]
    words = command.split(" --")[0].split()
    argv = command_line(config)
    assert argv[: len(words)] == words
    assert _parse(argv) == config
    # every field differs from the command's own default, but those the command sets, the None ones, and (RL)
    # warmup_fraction: 0 by default and exclusive with warmup_steps
    default = _parse([*words, "--out", "d", *minimal])
    same = {
        f.name for (f, _, a), (_, _, b) in zip(_walk(type(config), config), _walk(type(default), default)) if a == b
    }
    assert same <= {"mode", "warmup_fraction"} | {f.name for f, _, v in _walk(type(config), config) if v is None}


def _chat(path: Path, n: int = 40) -> Path:
    task = get_task("addition")
    with open(path, "w") as f:
        for ex in task.generate(n, seed=6):
            messages = [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.mark.parametrize("mode", ["pretrain", "sft"])
def test_batches_are_made_on_the_models_device(tmp_path, monkeypatch, mode):
    """On one GPU the model goes to CUDA and so must every batch. No GPU here: the run's device is `meta`, where a
    model can be built and a batch placed, so a batch left on the CPU shows."""
    from helpers import tiny_checkpoint

    from nanoseek.train import distributed
    from nanoseek.train import trainer as trainer_module

    start = tiny_checkpoint(tmp_path / "start")
    data = _corpus(tmp_path / "corpus.txt", 200) if mode == "pretrain" else _chat(tmp_path / "chat.jsonl")
    monkeypatch.setattr(distributed, "setup", lambda device=None: distributed.Dist(device=torch.device("meta")))
    monkeypatch.setattr(trainer_module, "matmul_peak", lambda *args: 1e12)  # nothing to time on meta
    config = trainer_module.TrainConfig(
        out=str(tmp_path / "run"),
        data=[str(data)],
        mode=mode,
        init_from=str(start),
        batch_size=2,
        seq_len=32,
        val_fraction=0.3,
        progress=False,
    )
    trainer = trainer_module.Trainer(config)
    device = next(trainer.model.parameters()).device
    assert device.type == "meta"
    for loader in (trainer.train_loader, trainer.val_loader):
        inputs, targets = next(loader)
        assert inputs.device == targets.device == device


def test_fp8_without_a_gpu_is_refused_before_reading_data(workspace, tmp_path, monkeypatch):
    from nanoseek.train import distributed
    from nanoseek.train.trainer import TrainConfig, Trainer

    monkeypatch.setattr(
        distributed, "setup", lambda device=None: distributed.Dist(device=torch.device("cpu"))
    )  # GPU or not
    missing = str(tmp_path / "no-such-corpus.txt")
    config = TrainConfig(out=str(tmp_path / "run"), data=[missing], tokenizer=str(workspace / "tok"), fp8=True)
    with pytest.raises(ValueError, match=r"--fp8 needs an NVIDIA GPU.*this run is on cpu"):
        Trainer(config)


def test_a_crash_while_a_finished_run_saves_again_leaves_latest_loadable(tmp_path, monkeypatch):
    """A finished run resumed saves its last step again: LATEST must lead to a whole checkpoint at every instant."""
    from helpers import random_config, random_model
    from test_checkpoint import _same, crash_everywhere

    from nanoseek.train.state import RunDir

    config = random_config(3)
    first, second = random_model(config, seed=1), random_model(config, seed=2)
    run = RunDir(tmp_path / "run")

    def save(model, step=5, keep=1):
        staging = run.begin(step)
        model.save_pretrained(staging / "model", max_shard_bytes=150_000)
        return run.commit(step, {"step": step, "seed": id(model)}, keep=keep)

    def check(finished):
        latest = run.latest()
        assert json.loads((latest / "trainer_state" / "state.json").read_text())["step"] == 5
        loaded = nanoseek.from_pretrained(latest / "model").state_dict()
        assert _same(second if finished else first, loaded) or _same(second, loaded)

    for _ in range(2):  # the second time round a crashed save's leftovers are in the directory too
        save(first)
        crash_everywhere(monkeypatch, lambda: save(second), check)
    assert run.latest() == run.checkpoints / "step_000005"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["LATEST", "step_000005"]
    save(first, step=3, keep=1)  # an older step committed later (LATEST pointed back by hand): never pruned away
    assert run.latest() == run.checkpoints / "step_000003"
