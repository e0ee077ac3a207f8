"""Distillation: verified traces (rejection sampling), resumable generation, student SFT with logit distillation."""

import json

import pytest
import torch
from helpers import tiny_checkpoint

from nanoseek.cli import main as cli
from nanoseek.tasks import get_task
from nanoseek.train.distill import GenerateConfig, _read_done, _verified, split_reasoning


def test_split_reasoning():
    assert split_reasoning("a\nb\n</think>\n\nThe answer is 3.") == ("a\nb", "The answer is 3.")
    assert split_reasoning("<think>\nx\n</think>y") == ("x", "y")
    assert split_reasoning("never closed") == ("never closed", "")


def test_only_verified_distinct_traces_are_kept():
    task = get_task("addition")
    example = task.generate(1, seed=4)[0]
    good = ("steps", f"The answer is {example.answer}.")
    bad = ("steps", "The answer is 0.")
    config = GenerateConfig(out="unused", keep_per_prompt=2)
    kept = _verified(example, [bad, good, good, ("other steps", f"The answer is {example.answer}.")], config, "t")
    assert [k["messages"][1]["reasoning_content"] for k in kept] == ["steps", "other steps"]
    assert all(k["prompt_id"] == example.id and k["task"] == "addition" and k["teacher"] == "t" for k in kept)


def test_restart_drops_records_of_unfinished_prompts_and_cut_lines(tmp_path):
    out, done = tmp_path / "traces.jsonl", tmp_path / "traces.jsonl.done"
    lines = [json.dumps({"prompt_id": "a", "x": 1}), json.dumps({"prompt_id": "b", "x": 2}), '{"prompt_id": "c", "x']
    out.write_text("\n".join(lines))
    done.write_text("a\n")
    assert _read_done(out, done, {"a", "b", "c"}) == {"a"}
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["a"]


def test_restart_keeps_every_line_it_did_not_write_unfinished(tmp_path):
    """Only the killed prompt's records and a cut line go, and only from the end: a user's lines all stay."""
    out, done = tmp_path / "traces.jsonl", tmp_path / "traces.jsonl.done"
    mine = ['{"messages": []}', "not json", json.dumps({"prompt_id": "elsewhere"}), "", '{"prompt_id": "a"}']
    out.write_text("\n".join([*mine, '{"prompt_id": "b"}', '{"prompt_id": "b"}', '{"prompt_id": "b", "x']))
    done.write_text("a\n")
    assert _read_done(out, done, {"a", "b"}) == {"a"}
    assert out.read_text() == "\n".join(mine) + "\n"
    out.write_text("\n".join(mine[:3]))  # a last line without its newline is kept, and gets one
    assert _read_done(out, done, {"a", "b"}) == {"a"} and out.read_text() == "\n".join(mine[:3]) + "\n"


def test_generate_never_empties_a_file_it_did_not_start(tmp_path, capsys):
    """--out naming an existing file without its .done record (a user's data, or a finished run's output whose
    record was deleted) was rewritten empty: refused, with the file untouched and what to do instead."""
    out = tmp_path / "chat.jsonl"
    out.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": []}\n')
    before = out.read_bytes()
    status = cli(["distill", "generate", "--teacher", str(tmp_path / "none"), "--out", str(out), "--no-progress"])
    assert out.read_bytes() == before and not (tmp_path / "chat.jsonl.done").exists()
    assert status == 2 and "choose another --out" in capsys.readouterr().err
    # the reverse: a .done whose output is gone would skip its prompts and write them nowhere
    (tmp_path / "t.jsonl.done").write_text("a\n")
    assert cli(["distill", "generate", "--teacher", "x", "--out", str(tmp_path / "t.jsonl"), "--no-progress"]) == 2
    assert "delete" in capsys.readouterr().err and not (tmp_path / "t.jsonl").exists()
    (tmp_path / "empty.jsonl").touch()  # an empty file has no line to lose: a fresh start
    assert _read_done(tmp_path / "empty.jsonl", tmp_path / "empty.jsonl.done", {"a"}) == set()


def test_teacher_choice_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["distill", "generate", "--out", str(tmp_path / "t.jsonl")])
    assert stop.value.code == 2 and "--teacher" in capsys.readouterr().err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("teacher"), max_position_embeddings=512)


def _sft_data(path, n=40):
    task = get_task("addition")
    with open(path, "w") as f:
        for ex in task.generate(n, seed=1):
            reasoning, answer = split_reasoning(task.solution(ex, "worked"))
            assistant = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
            f.write(json.dumps({"messages": [{"role": "user", "content": ex.prompt}, assistant]}) + "\n")
    return path


def test_distill_train_runs_logit_distillation_from_the_command_line(teacher, tmp_path, monkeypatch):
    """--teacher, --distill-weight and --distill-temperature once parsed and then vanished: no distillation ran."""
    data = _sft_data(tmp_path / "sft.jsonl", 16)
    argv = ["distill", "train", "--data", str(data), "--init-from", str(teacher), "--teacher", str(teacher)]
    argv += ["--steps", "1", "--batch-size", "2", "--seq-len", "192", "--no-progress", "--threads", "1"]
    seen = []
    monkeypatch.setattr("nanoseek.train.trainer.train", lambda config: seen.append(config) or "m")
    assert cli([*argv, "--out", "unused", "--distill-weight", "0.25", "--distill-temperature", "2"]) == 0
    assert (seen[0].teacher, seen[0].distill_weight, seen[0].distill_temperature) == (str(teacher), 0.25, 2.0)
    monkeypatch.undo()
    # the student starts as the teacher: KL(teacher || student) is 0, so the first loss is (1 - w) x cross-entropy
    # (without the KL term it would be cross-entropy plus the MTP loss)
    assert cli([*argv, "--out", str(tmp_path / "run"), "--distill-weight", "0.5", "--log-every", "1"]) == 0
    record = next(r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open()) if r["kind"] == "train")
    assert record["main_loss"] > 1 and record["loss"] == pytest.approx(0.5 * record["main_loss"], rel=1e-4)


def test_local_teacher_generation_and_logit_distillation(teacher, tmp_path):
    out = tmp_path / "traces.jsonl"
    assert (
        cli(
            [
                "distill",
                "generate",
                "--teacher",
                str(teacher),
                "--out",
                str(out),
                "--problems",
                "6",
                "--samples",
                "2",
                "--max-tokens",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "traces.jsonl.done").read_text().count("\n") == 6  # every prompt finished
    _sft_data(tmp_path / "sft.jsonl")  # a random teacher rarely verifies: the task's own solutions instead
    student = tmp_path / "student"
    assert (
        cli(
            [
                "distill",
                "train",
                "--data",
                str(tmp_path / "sft.jsonl"),
                "--out",
                str(student),
                "--preset",
                "nano",
                "--tokenizer",
                str(teacher),
                "--teacher",
                str(teacher),
                "--distill-weight",
                "0.5",
                "--steps",
                "8",
                "--batch-size",
                "4",
                "--seq-len",
                "192",
                "--no-progress",
                "--threads",
                "1",
                "--log-every",
                "1",
            ]
        )
        == 0
    )
    losses = [
        json.loads(line)["loss"]
        for line in (student / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert len(losses) == 8 and losses[-1] < losses[0]
    import nanoseek

    assert nanoseek.from_pretrained(student / "model").config.hidden_size == 64
    assert torch.isfinite(torch.tensor(losses)).all()


class CalculatorEngine:
    """An engine double for the server: answers "a + b" questions with a short reasoning, wrongly for every third
    problem (so rejection sampling has something to reject), one piece per `delay` seconds."""

    def __init__(self, delay: float = 0.03):
        from helpers import tiny_tokenizer
        from server_harness import ScriptedEngine

        self.inner = ScriptedEngine([], delay=delay, max_running=8, tokenizer=tiny_tokenizer())
        self.tokenizer, self.max_context = self.inner.tokenizer, 512

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, prompt, params, on_delta=None):
        import re

        text = self.tokenizer.decode(self.inner.encode(prompt))
        a, b = map(int, re.findall(r"\d+", text.split("<｜User｜>")[-1])[:2])
        answer = a + b + (1 if (a + b) % 3 == 0 else 0)
        script = [f"{a} + {b}: add the digits", f"\n{a} + {b} = {answer}", f"\n</think>\n\nThe answer is {answer}."]
        request = self.inner.submit(prompt, params, on_delta)
        request.script = script
        return request


def test_generation_from_a_live_server_survives_kill_9(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from server_harness import ScriptedEngine, run_server

    # per-request scripts: the double's steps read the request's own script
    step, finish = ScriptedEngine._step, ScriptedEngine._finish

    def own_script(method):
        def call(self, request, *args):
            self.script = request.script
            return method(self, request, *args)

        return call

    ScriptedEngine._step, ScriptedEngine._finish = own_script(step), own_script(finish)
    try:
        with run_server(CalculatorEngine) as (base, _):
            args = [
                sys.executable,
                "-m",
                "nanoseek.cli",
                "distill",
                "generate",
                "--teacher-url",
                f"{base}/v1",
                "--problems",
                "30",
                "--samples",
                "2",
                "--concurrency",
                "4",
                "--no-progress",
            ]
            env = {**os.environ, "OPENAI_API_KEY": "none"}
            reference = tmp_path / "reference.jsonl"
            subprocess.run([*args, "--out", str(reference)], check=True, capture_output=True, env=env)
            out = tmp_path / "traces.jsonl"
            proc = subprocess.Popen(
                [*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
            done = tmp_path / "traces.jsonl.done"
            deadline = time.time() + 120
            while (not done.exists() or done.read_text().count("\n") < 8) and time.time() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert 8 <= done.read_text().count("\n") < 30  # killed mid-run
            subprocess.run([*args, "--out", str(out)], check=True, capture_output=True, env=env)
    finally:
        ScriptedEngine._step, ScriptedEngine._finish = step, finish

    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    ids = [r["prompt_id"] for r in records]
    assert len(ids) == len(set(ids)), "a prompt's traces were written twice"
    assert sorted(ids) == sorted(r["prompt_id"] for r in expected), "prompts lost or added by the kill"
    assert 10 <= len(records) <= 25  # about a third of the problems are answered wrongly and rejected
    assert sorted(done.read_text().split()) == sorted(set(done.read_text().split()))
    assert len(done.read_text().split()) == 30
    for r in records:  # every kept trace verifies, and carries its provenance
        assert r["teacher"] == "tiny" and r["reward"] > 1 and r["messages"][1]["reasoning_content"]
