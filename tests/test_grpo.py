"""GRPO pieces: advantages, the clipped objective with KL, token masks; a short run end to end with resume."""

import json

import pytest
import torch
from helpers import tiny_checkpoint

from nanoseek.engine import SamplingParams
from nanoseek.engine.sampling import filtered_probs
from nanoseek.tasks import get_task
from nanoseek.train import grpo
from nanoseek.train.grpo import RLConfig, Rollout, _pad, advantages, policy_loss, trace_messages

CONFIG = RLConfig(out="unused", init_from="unused")


def test_advantages_per_method():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    grpo = advantages(rewards, "grpo")
    assert torch.allclose(grpo[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / rewards[0].std(), atol=1e-5)
    assert torch.equal(grpo[1], torch.zeros(4))  # a group that all agrees teaches nothing
    assert torch.equal(advantages(rewards, "dr-grpo")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    reinforce = advantages(rewards, "reinforce")
    assert torch.allclose(reinforce, rewards - 0.75) and reinforce[1].abs().sum() > 0  # no per-group baseline


def test_policy_loss_gradient_clipping_and_kl():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]])).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    adv = torch.tensor([2.0])
    loss, stats = policy_loss(logp, logp.detach(), None, adv, mask, CONFIG)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0, 0.0]]))  # -A / tokens, masked token untouched
    assert stats["clip_fraction"] == 0 and stats["kl"] == 0
    # a ratio far above 1 + clip_high with a positive advantage is clipped: no gradient through it
    new = (logp.detach() + 1.0).requires_grad_()
    loss, stats = policy_loss(new, logp.detach(), None, adv, mask, CONFIG)
    loss.backward()
    assert new.grad.abs().sum() == 0 and stats["clip_fraction"] == 1.0
    # k3 KL is >= 0, zero when equal, and pulls toward the reference
    config = RLConfig(out="u", init_from="u", kl_beta=0.5)
    far = (logp.detach() - 0.7).requires_grad_()
    loss, stats = policy_loss(far, far.detach(), logp.detach(), torch.tensor([0.0]), mask, config)
    loss.backward()
    assert stats["kl"] > 0 and (far.grad[0, :2] < 0).all()  # raising logp toward the reference lowers the loss


@pytest.mark.parametrize("agg", ["token", "sequence", "constant"])
def test_loss_aggregations_weight_lengths_differently(agg):
    config = RLConfig(out="u", init_from="u", loss_agg=agg, max_tokens=4)
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    loss, _ = policy_loss(logp, logp.detach(), None, torch.tensor([1.0, 1.0]), mask, config)
    loss.backward()
    short, long = logp.grad[0, 0].item(), logp.grad[1, 0].item()
    expected = {"token": (-1 / 5, -1 / 5), "sequence": (-1 / 2, -1 / 8), "constant": (-1 / 8, -1 / 8)}[agg]
    assert (short, long) == pytest.approx(expected)


def test_padding_masks_exactly_the_completion_predictions():
    example = get_task("addition").generate(1, seed=0)[0]
    batch = [Rollout(example, [5, 6, 7], [8, 9, 1], 1.0, 1.0, 1.0), Rollout(example, [5, 6], [8], 0.0, 0.0, 0.0)]
    ids, mask, targets = _pad(batch, pad_id=2)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 1], [5, 6, 8, 2, 2, 2]]
    assert targets[mask].tolist() == [8, 9, 1, 8]  # every completion token, EOS included, and nothing else


def test_trace_messages_round_trip_through_the_template(tmp_path):
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    example = get_task("addition").generate(1, seed=2)[0]
    solution = get_task("addition").solution(example, "worked")
    ids, mask = tok.render_training_example(trace_messages(example, solution))
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned.replace(tok.id_to_token(tok.eos_id), "") == solution


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("start"), max_position_embeddings=512)


def _word_problems(path, n):
    lines = [
        {"question": f"Bo has {i} pens and finds {i + 2}. How many?", "answer": f"#### {2 * i + 2}"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def trainer(start, tmp_path):
    config = RLConfig(
        out=str(tmp_path / "run"),
        init_from=str(start),
        tasks=[str(_word_problems(tmp_path / "problems.jsonl", 200))],
        prompts_per_step=2,
        group_size=3,
        max_tokens=12,
        temperature=0.6,
        kl_beta=0.05,
        eval_problems=50,
        threads=1,
        progress=False,
    )
    return grpo.GRPOTrainer(config)


def test_rl_on_a_file_never_evaluates_on_a_training_problem(trainer):
    train, held_out = {e.prompt for e in trainer.pool}, {e.prompt for e in trainer.eval_examples}
    assert train and held_out and not train & held_out


@pytest.mark.parametrize("epochs", [1, 2])  # 1: the single-update shortcut (old = current); 2: a separate forward
def test_scored_logprobs_are_the_engines_sampling_distribution(trainer, monkeypatch, epochs):
    """Off temperature 1, the log-probs GRPO optimises (current, old and reference) are those of the distribution
    the engine sampled from: softmax(logits / T), computed here independently through the engine's sampler."""
    trainer.config.epochs = epochs
    batch = trainer.rollouts()
    ids, mask, targets = _pad(batch, trainer.tokenizer.pad_id)
    with torch.no_grad():
        logits = trainer.policy(ids).float()[mask]
    probs = filtered_probs(logits, [SamplingParams(temperature=trainer.config.temperature)] * len(logits))
    expected = probs.gather(1, targets[mask].unsqueeze(1)).squeeze(1).log()
    assert (expected - logits.log_softmax(-1).gather(1, targets[mask].unsqueeze(1)).squeeze(1)).abs().max() > 1e-2
    seen = []
    original = grpo.policy_loss
    monkeypatch.setattr(grpo, "policy_loss", lambda *args: seen.append(args) or original(*args))
    trainer.optimize(batch)
    # the first minibatch (the weights that sampled) holds the whole batch, in some order, in micro-batches
    first, tokens = [], 0
    while tokens < mask.sum():
        logp, old, ref, _, part_mask, *_ = seen[len(first)]
        first.append([scored[part_mask] for scored in (logp.detach(), old, ref)])
        tokens += part_mask.sum()
    assert tokens == mask.sum()
    for scored in zip(*first):
        assert torch.allclose(torch.cat(scored).sort().values, expected.sort().values, atol=1e-5)


def test_length_chunks_group_rows_of_similar_length():
    lengths = [30, 190, 32, 31, 185, 29, 192, 33] * 4
    chunks = grpo.length_chunks(lengths)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))  # every row once
    assert [sorted({lengths[i] > 100 for i in c}) for c in chunks] == [[False], [True]]  # short apart from long
    assert grpo.length_chunks([100] * 40) == [list(range(40))]  # nothing to save: one micro-batch
    assert max(len(c) for c in grpo.length_chunks([100] * 40, max_rows=16)) <= 16


@pytest.mark.parametrize("agg", ["token", "sequence", "constant"])
def test_micro_batches_give_the_gradient_of_one_padded_pass(start, agg):
    """Rollouts of mixed lengths are scored in micro-batches padded to their own longest row: the gradient, loss and
    statistics must be those of the whole minibatch padded to its longest row (one loss, not a mean of losses)."""
    from nanoseek.checkpoint import from_pretrained

    torch.manual_seed(0)
    model = from_pretrained(start, dtype=torch.float64).train()
    config = RLConfig(out="u", init_from="u", loss_agg=agg, max_tokens=40, kl_beta=0.1, temperature=0.7)
    example = get_task("addition").generate(1, seed=0)[0]
    sizes = [3, 40, 4, 38, 2, 5, 36, 3]
    batch = [Rollout(example, [5, 6, 7], [8 + (i + j) % 20 for j in range(n)], 0, 0, 0) for i, n in enumerate(sizes)]
    ids, mask, targets = _pad(batch, pad_id=2)
    lengths = [3 + n for n in sizes]
    assert len(grpo.length_chunks(lengths, overhead=4)) > 1  # the micro-batches below really split the batch
    adv = torch.randn(len(batch), dtype=torch.float64)
    with torch.no_grad():
        ref = grpo._token_logprobs(model, ids, targets, config.temperature)[0] - 0.05 * torch.rand(ids.shape)
        old = grpo._token_logprobs(model, ids, targets, config.temperature)[0] + 0.1 * torch.rand(ids.shape)

    def gradients(**split):
        model.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(grpo, "length_chunks", lambda lengths, *a, **k: original(lengths, overhead=split["overhead"]))
            stats = grpo._backward(model, ids, targets, mask, adv, lengths, old, ref, config)
        return stats, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    original = grpo.length_chunks
    (split_stats, split), (whole_stats, whole) = gradients(overhead=4), gradients(overhead=10**9)
    assert len(split) == len(whole) > 0
    for a, b in zip(split, whole):
        # float64 everywhere but routing, which runs in float32 whatever the model's dtype (moe.py): its gradient
        # differs between paddings in float32's last bits (1.9e-7 of its largest entry on torch's AVX2 kernels)
        tolerance = 1e-12 if a.dtype == torch.float64 else 1e-5
        assert (a - b).abs().max() <= tolerance * b.abs().max()
    assert split_stats == pytest.approx(whole_stats, rel=1e-10)


def _run(out, start, **extra):
    from nanoseek.cli import main

    args = [
        "rl",
        "--init-from",
        str(start),
        "--out",
        str(out),
        "--steps",
        "3",
        "--prompts-per-step",
        "2",
        "--group-size",
        "4",
        "--max-tokens",
        "24",
        "--eval-every",
        "3",
        "--eval-problems",
        "8",
        "--save-every",
        "2",
        "--no-progress",
        "--threads",
        "1",
        "--kl-beta",
        "0.05",
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)] if value is not True else [f"--{key.replace('_', '-')}"]
    return main(args)


def test_a_short_run_logs_saves_and_resumes_exactly(start, tmp_path):
    assert _run(tmp_path / "a", start) == 0
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rl_lines = [r for r in lines if r["kind"] == "rl"]
    assert len(rl_lines) == 3
    assert {"reward", "accuracy", "format_rate", "response_length", "clip_fraction", "kl", "entropy", "loss"} <= set(
        rl_lines[0]
    )
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [0, 3]
    assert (tmp_path / "a" / "model" / "tokenizer.json").exists()
    # a 2-step run extended to 3 with --resume lands on the same weights as the run that went straight through
    assert _run(tmp_path / "b", start, steps=2) == 0
    assert _run(tmp_path / "b", start, resume=True, lr=0.5) == 2  # other settings must match the run
    assert _run(tmp_path / "b", start, resume=True) == 0
    import nanoseek

    a = nanoseek.from_pretrained(tmp_path / "a" / "model").state_dict()
    b = nanoseek.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rl_compile_rolls_out_on_the_static_step_warmed_up_before_the_first_step(start, tmp_path, monkeypatch):
    """--compile: the engine decodes rollouts and evaluations with the static step, whose graphs are built at start-up
    for every batch bucket a step's rollouts use. ("static" stands in for "compiled": the same graph, uncompiled.)"""
    from nanoseek.engine import engine as engine_module
    from nanoseek.engine.step import StaticDecodeStep

    build = engine_module.build_decode_step
    monkeypatch.setattr(
        engine_module, "build_decode_step", lambda mode, *a: build(mode.replace("compiled", "static"), *a)
    )
    warmed = []
    monkeypatch.setattr(StaticDecodeStep, "warmup", lambda self, sizes: warmed.append(sizes))
    config = RLConfig(
        out=str(tmp_path / "run"),
        init_from=str(start),
        tasks=["addition"],
        prompts_per_step=2,
        group_size=3,
        max_tokens=12,
        eval_problems=4,
        threads=1,
        progress=False,
        compile=True,
    )
    trainer = grpo.GRPOTrainer(config)
    assert warmed == [(1, 2, 4, 8)]  # 6 rollouts a step: buckets up to 8, before any rollout
    trainer.train_step()
    assert trainer.engine.stats["static_steps"] > 0
