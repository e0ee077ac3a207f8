"""Optimizers (AdamW, Muon + AdamW), parameter groups and learning-rate schedules."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from nanoseek.config import preset
from nanoseek.model import build_model
from nanoseek.train.optim import (
    Muon,
    OptimConfig,
    build_optimizer,
    lr_at,
    newton_schulz,
    param_groups,
    set_lr,
)


def _names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}  # named_parameters lists a tied weight once


def _group_names(model: torch.nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = _names(model)
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


# ---- parameter groups ----


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_param_groups_cover_every_parameter_once(tie, optimizer):
    model = build_model(preset("nano", tie_word_embeddings=tie, attention_bias=True))
    groups = param_groups(model, OptimConfig(optimizer=optimizer))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is missing"
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(g["params"] for g in groups)


def test_adamw_groups_decay_only_matrices():
    model = build_model(preset("nano", attention_bias=True))
    groups = param_groups(model, OptimConfig(optimizer="adamw", weight_decay=0.05))
    by_name = _group_names(model, groups)
    assert set(by_name) == {"decay", "no_decay"}
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 0.05, "no_decay": 0.0}
    decay, no_decay = by_name["decay"], by_name["no_decay"]
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= no_decay
    assert any(n.endswith(".bias") for n in no_decay)
    assert all(n.endswith((".bias", "norm.weight")) for n in no_decay - {"model.embed_tokens.weight", "lm_head.weight"})
    for suffix in ("mlp.experts.w_gate_up", "mlp.experts.w_down", "mlp.gate.weight", "o_proj.weight", "eh_proj.weight"):
        assert any(n.endswith(suffix) for n in decay), suffix
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 for n in decay)


def test_muon_groups_hidden_matrices_only():
    model = build_model(preset("nano", attention_bias=True))
    by_name = _group_names(model, param_groups(model, OptimConfig(optimizer="muon")))
    assert set(by_name) == {"muon", "decay", "no_decay"}
    params = dict(model.named_parameters())
    muon = by_name["muon"]
    assert all(n.startswith("model.layers.") and params[n].ndim >= 2 for n in muon)
    assert any(params[n].ndim == 3 for n in muon), "stacked expert weights go to Muon"
    assert by_name["decay"] and all(n.endswith("mlp.gate.weight") for n in by_name["decay"]), "router -> AdamW"
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= by_name["no_decay"]
    matrices = {n for n, p in params.items() if p.ndim >= 2}
    assert matrices - muon == {"model.embed_tokens.weight", "lm_head.weight"} | by_name["decay"]


def test_tied_head_appears_once_and_is_not_decayed():
    model = build_model(preset("nano", tie_word_embeddings=True))
    for optimizer in ("adamw", "muon"):
        groups = {g["name"]: g for g in param_groups(model, OptimConfig(optimizer=optimizer))}
        head = model.lm_head.weight
        hits = [name for name, g in groups.items() for p in g["params"] if p is head]
        assert hits == ["no_decay"]


def test_frozen_parameters_are_skipped():
    model = build_model(preset("nano"))
    model.model.embed_tokens.weight.requires_grad_(False)
    ids = {id(p) for g in param_groups(model, OptimConfig()) for p in g["params"]}
    assert id(model.model.embed_tokens.weight) not in ids


def test_adamw_is_fused_on_cpu():
    opt = build_optimizer(build_model(preset("nano")), OptimConfig(optimizer="adamw"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]


# ---- Newton-Schulz ----


def _well_conditioned(*shape: int, seed: int) -> torch.Tensor:
    """Random singular vectors, singular values spread over [0.05, 1] times an arbitrary scale."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(*batch, m, k, generator=g)).Q
    v = torch.linalg.qr(torch.randn(*batch, n, k, generator=g)).Q
    s = torch.logspace(math.log10(0.05), 0, k).expand(*batch, k)
    return 37.0 * (u * s.unsqueeze(-2)) @ v.mT


@pytest.mark.parametrize("shape", [(48, 48), (64, 24), (24, 64), (4, 40, 24), (3, 16, 48)])
def test_newton_schulz_is_nearly_orthogonal(shape):
    x = _well_conditioned(*shape, seed=sum(shape))
    out = newton_schulz(x, steps=5)
    assert out.shape == x.shape and out.dtype == torch.float32
    sv = torch.linalg.svdvals(out)
    assert sv.min() > 0.5 and sv.max() < 1.5, (sv.min(), sv.max())
    # and it points where the exact orthogonal factor U V^T does
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    polar = u @ vh
    cosine = (out * polar).sum((-2, -1)) / (out.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cosine > 0.97).all()


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96), (6, 32, 48)])
def test_newton_schulz_on_gaussian_noise(shape):
    """Gaussian matrices: no singular value overshoots the band; almost all land in it (square ones have a few
    near-zero singular values that five steps cannot lift, as in any Muon implementation)."""
    sv = torch.linalg.svdvals(newton_schulz(torch.randn(shape, generator=torch.Generator().manual_seed(1))))
    assert sv.max() < 1.5
    assert (sv > 0.5).float().mean() > 0.85


def test_newton_schulz_batches_per_matrix_and_keeps_precision_choice():
    x = torch.randn(5, 24, 40, generator=torch.Generator().manual_seed(2))
    stacked = newton_schulz(x)
    one_by_one = torch.stack([newton_schulz(m) for m in x])
    torch.testing.assert_close(stacked, one_by_one, rtol=1e-4, atol=1e-5)
    assert newton_schulz(x, dtype=torch.bfloat16).dtype == torch.bfloat16


# ---- Muon's update rule ----


def test_muon_first_step_matches_the_rule():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 24, 40))  # stacked experts
    w0 = w.detach().clone()
    w.grad = torch.randn_like(w)
    lr, wd, mom = 0.02, 0.1, 0.95
    Muon([w], lr=lr, weight_decay=wd, momentum=mom).step()
    update = w.grad + mom * w.grad  # nesterov on a fresh buffer (buf = grad)
    expected = w0 * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * newton_schulz(update)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    rms = ((w0 * (1 - lr * wd) - w.detach()).pow(2).mean().sqrt() / lr).item()
    assert 0.12 < rms < 0.25, rms  # Moonlight's target: AdamW-like update RMS ~0.2


def test_muon_orthogonalises_same_shape_matrices_in_one_batch_with_each_ones_own_update(monkeypatch):
    """Two 24x40 matrices and a stack of three go through one Newton-Schulz call, a 40x24 one through its own;
    over two steps (momentum) every parameter ends where the rule applied to it alone puts it."""
    import nanoseek.train.optim as optim

    g = torch.Generator().manual_seed(3)
    shapes = [(24, 40), (40, 24), (3, 24, 40), (24, 40)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(2)]
    start = [p.detach().clone() for p in params]
    calls = []
    monkeypatch.setattr(optim, "newton_schulz", lambda x, *a: calls.append(tuple(x.shape)) or newton_schulz(x, *a))
    lr, wd, mom = 0.02, 0.1, 0.95
    opt = Muon(params, lr=lr, weight_decay=wd, momentum=mom)
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
    assert sorted(calls) == [(5, 24, 40), (5, 24, 40), (40, 24), (40, 24)], calls  # 2 + 3 matrices stacked
    for i, (w, shape) in enumerate(zip(start, shapes)):
        buf = torch.zeros(shape)
        for step_grads in grads:
            buf = mom * buf + step_grads[i]
            w = w * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * newton_schulz(step_grads[i] + mom * buf)
        torch.testing.assert_close(params[i].detach(), w, rtol=1e-5, atol=1e-6)


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="use_muon=False"):
        Muon([torch.nn.Parameter(torch.ones(8))])


# ---- optimisation ----


def _least_squares(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, generator=g)
    return x, x @ (0.1 * torch.randn(32, 16, generator=g))  # weights of the scale a network has


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_least_squares_converges(optimizer):
    x, y = _least_squares()
    model = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False))  # "0.weight": a hidden matrix
    with torch.no_grad():
        model[0].weight.zero_()
    opt = build_optimizer(model, OptimConfig(optimizer=optimizer, lr=0.02, weight_decay=0.0))
    assert any(g.get("use_muon") for g in opt.param_groups) == (optimizer == "muon")
    first = None
    for step in range(200):
        set_lr(opt, lr_at(step, 200, OptimConfig(lr=0.02, schedule="cosine")))
        loss = (model(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = (model(x) - y).pow(2).mean().item()
    assert final < 0.01 * first, (first, final)


def _batch(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(seed))


def _train(model, opt, steps: int, seed: int = 0) -> list[float]:
    losses = []
    for i in range(steps):
        ids = _batch(model.config.vocab_size, seed + i % 2)
        logits = model(ids[:, :-1])  # plain next-token loss: only the stable logits API of the model
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_tiny_model_loss_goes_down(optimizer):
    model = build_model(preset("nano"))
    opt = build_optimizer(model, OptimConfig(optimizer=optimizer, lr=1e-2))
    losses = _train(model, opt, 12)
    assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_state_dict_round_trip_is_bit_exact(optimizer):
    config = OptimConfig(optimizer=optimizer, lr=1e-2)
    model = build_model(preset("nano"))
    opt = build_optimizer(model, config)
    _train(model, opt, 3)
    set_lr(opt, 7e-3)
    saved_model = io.BytesIO()
    torch.save(model.state_dict(), saved_model)
    saved_opt = io.BytesIO()
    torch.save(opt.state_dict(), saved_opt)  # as a checkpoint would: through bytes, loaded weights-only
    _train(model, opt, 3, seed=5)

    resumed = build_model(preset("nano"), seed=123)
    saved_model.seek(0)
    resumed.load_state_dict(torch.load(saved_model, weights_only=True))
    resumed_opt = build_optimizer(resumed, config)
    saved_opt.seek(0)
    resumed_opt.load_state_dict(torch.load(saved_opt, weights_only=True))
    assert [g["lr"] for g in resumed_opt.param_groups] == [7e-3] * len(opt.param_groups)
    assert [g["name"] for g in resumed_opt.param_groups] == [g["name"] for g in opt.param_groups]
    _train(resumed, resumed_opt, 3, seed=5)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_torch_lr_scheduler_drives_muon():
    model = build_model(preset("nano"))
    config = OptimConfig(optimizer="muon", lr=1.0, warmup_steps=4, schedule="constant")
    opt = build_optimizer(model, config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, 10, config))
    assert {g["lr"] for g in opt.param_groups} == {0.25}
    opt.step()
    sched.step()
    assert {g["lr"] for g in opt.param_groups} == {0.5}


# ---- schedules ----


def test_warmup_ramps_then_constant():
    config = OptimConfig(lr=1.0, schedule="constant", warmup_steps=4)
    assert [lr_at(s, 10, config) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    frac = OptimConfig(lr=1.0, schedule="constant", warmup_fraction=0.1)
    assert [lr_at(s, 100, frac) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert [lr_at(s, 10, OptimConfig(lr=2.0, schedule="constant")) for s in (0, 9)] == [2.0, 2.0]


def test_wsd_stable_then_linear_decay_to_min():
    config = OptimConfig(lr=1.0, schedule="wsd", warmup_steps=2, decay_fraction=0.2, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, config) for s in range(101)]
    assert lrs[:2] == [0.5, 1.0]
    assert all(v == 1.0 for v in lrs[2:81])  # stable until the last 20 steps
    assert lrs[81] == pytest.approx(0.1 + 0.9 * 19 / 20)
    assert lrs[90] == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert lrs[99] == pytest.approx(0.1 + 0.9 / 20)  # the last update is still above the floor
    assert lrs[100] == pytest.approx(0.1) and lr_at(150, 100, config) == pytest.approx(0.1)
    steps = [b - a for a, b in itertools.pairwise(lrs[80:])]
    assert all(d == pytest.approx(-0.9 / 20) for d in steps)  # linear
    assert lr_at(99, 100, OptimConfig(lr=1.0, decay_fraction=0.0)) == 1.0


def test_cosine_endpoints():
    config = OptimConfig(lr=2.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.05)
    assert lr_at(9, 110, config) == 2.0
    assert lr_at(10, 110, config) == 2.0  # decay starts from the peak
    assert lr_at(60, 110, config) == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))
    assert lr_at(110, 110, config) == pytest.approx(0.1)
    lrs = [lr_at(s, 110, config) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_set_lr_sets_every_group():
    model = build_model(preset("nano"))
    opt = build_optimizer(model, OptimConfig(optimizer="muon"))
    set_lr(opt, 1.5e-4)
    assert len(opt.param_groups) == 3 and all(g["lr"] == 1.5e-4 for g in opt.param_groups)


# ---- bad config ----


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(optimizer="sgd"), "unknown optimizer 'sgd'"),
        (dict(schedule="linear"), "unknown schedule 'linear'"),
        (dict(lr=-1e-3), "lr must be >= 0"),
        (dict(decay_fraction=1.5), r"decay_fraction must be in \[0, 1\]"),
        (dict(decay_fraction=-0.1), r"decay_fraction must be in \[0, 1\]"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(warmup_steps=10, warmup_fraction=0.1), "not both"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
    ],
)
def test_bad_config_raises(fields, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**fields)


def test_bad_values_set_after_construction_are_caught_on_use():
    config = OptimConfig()
    config.schedule = "exponential"
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 10, config)
    config = OptimConfig()
    config.optimizer = "lion"
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(torch.nn.Linear(2, 2), config)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0, OptimConfig())
