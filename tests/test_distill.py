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
    assert _read_done(out, done) == {"a"}
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["a"]


def test_teacher_choice_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["distill", "generate", "--out", str(tmp_path / "t.jsonl")])
    assert stop.value.code == 2 and "--teacher" in capsys.readouterr().err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("teacher"), max_position_embeddings=512)


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
    # a random teacher rarely verifies: build the SFT set from the task's own solutions instead
    task = get_task("addition")
    with open(tmp_path / "sft.jsonl", "w") as f:
        for ex in task.generate(40, seed=1):
            reasoning, answer = split_reasoning(task.solution(ex, "worked"))
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": ex.prompt},
                            {"role": "assistant", "content": answer, "reasoning_content": reasoning},
                        ]
                    }
                )
                + "\n"
            )
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
