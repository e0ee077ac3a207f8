"""The model against transformers' DeepseekV3ForCausalLM, and its internal identities."""

import pytest
import torch
from helpers import random_config, random_model

import nanoseek
from nanoseek.config import preset
from nanoseek.model import IGNORE_INDEX, build_model
from nanoseek.model.kernels import grouped_matmul
from nanoseek.model.moe import Experts

transformers = pytest.importorskip("transformers")

FIDELITY_SEEDS = range(12)


def _coverage(configs):
    return {
        "q_lora_rank null": any(c.q_lora_rank is None for c in configs),
        "q_lora_rank set": any(c.q_lora_rank is not None for c in configs),
        "group-limited routing": any(
            c.n_group > 1 and c.topk_group < c.n_group and c.first_k_dense_replace < c.num_hidden_layers
            for c in configs
        ),
        "yarn": any(c.is_yarn for c in configs),
        "first_k_dense_replace 0": any(c.first_k_dense_replace == 0 for c in configs),
        "first_k_dense_replace > 0": any(0 < c.first_k_dense_replace < c.num_hidden_layers for c in configs),
        "several top-k": len({c.num_experts_per_tok for c in configs}) >= 3,
        "non-interleaved rope": any(not c.rope_interleave for c in configs),
    }


def test_random_configs_cover_the_architecture():
    coverage = _coverage([random_config(s) for s in FIDELITY_SEEDS])
    assert all(coverage.values()), coverage


@pytest.mark.parametrize("seed", FIDELITY_SEEDS)
def test_logits_match_transformers_both_directions(seed, tmp_path):
    config = random_config(seed)
    ours = random_model(config, seed)
    tokens = torch.randint(0, config.vocab_size, (3, 19), generator=torch.Generator().manual_seed(seed))

    ours.save_pretrained(tmp_path / "from_nanoseek")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "from_nanoseek", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = theirs(tokens).logits
        assert expected.abs().max() > 0.5  # weights large enough for a meaningful comparison
        assert (ours(tokens) - expected).abs().max().item() < 1e-4

    theirs.save_pretrained(tmp_path / "from_transformers")
    reloaded = nanoseek.from_pretrained(tmp_path / "from_transformers")
    with torch.no_grad():
        assert (reloaded(tokens) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 3, 5])
def test_absorbed_attention_equals_expanded(seed):
    config = random_config(seed)
    model = random_model(config, seed)
    attn = model.main_layers[0].self_attn
    x = torch.randn(2, 13, config.hidden_size, dtype=torch.float64)
    attn.double()
    rope = model.model.rotary(torch.arange(13))
    with torch.no_grad():
        expanded = attn(x, rope)
        absorbed = attn(x, rope, absorb=True)
    assert (expanded - absorbed).abs().max().item() < 1e-5
    attn.float()
    with torch.no_grad():
        assert (attn(x.float(), rope) - attn(x.float(), rope, absorb=True)).abs().max().item() < 1e-5


def test_absorbed_attention_over_a_longer_context_sees_only_the_past():
    """Attending for the last S tokens over T latents equals the tail of a full causal pass."""
    config = random_config(1)
    model = random_model(config)
    attn = model.main_layers[0].self_attn
    x = torch.randn(1, 10, config.hidden_size)
    rope = model.model.rotary(torch.arange(10))
    with torch.no_grad():
        full = attn(x, rope)
        q_nope, q_rope = attn.project_query(x[:, 7:], rope[7:])
        entries = attn.project_latent(x, rope)
        tail = attn.o_proj(attn.attend_absorbed(q_nope, q_rope, entries).flatten(-2))
    assert (tail - full[:, 7:]).abs().max().item() < 1e-5


def test_grouped_matmul_matches_per_expert_loop_with_empty_experts():
    torch.manual_seed(0)
    weight = torch.randn(5, 8, 6)
    counts = torch.tensor([3, 0, 4, 0, 2])
    x = torch.randn(int(counts.sum()), 8)
    out = grouped_matmul(x, weight, counts.cumsum(0).to(torch.int32))
    rows = torch.repeat_interleave(torch.arange(5), counts)
    expected = torch.stack([x[i] @ weight[rows[i]] for i in range(len(x))])
    assert torch.allclose(out, expected, atol=1e-5)


def test_experts_match_a_naive_per_token_loop_including_gradients():
    config = preset("nano")
    experts = Experts(config)
    torch.nn.init.normal_(experts.w_gate_up, std=0.3)
    torch.nn.init.normal_(experts.w_down, std=0.3)
    x = torch.randn(11, config.hidden_size, requires_grad=True)
    ids = torch.stack([torch.randperm(config.n_routed_experts)[: config.num_experts_per_tok] for _ in range(11)])
    weights = torch.rand(11, config.num_experts_per_tok)
    counts = torch.bincount(ids.flatten(), minlength=config.n_routed_experts)
    out = experts(x, weights, ids, counts)
    naive = []
    for t in range(11):
        acc = 0
        for j in range(config.num_experts_per_tok):
            h = x[t] @ experts.w_gate_up[ids[t, j]]
            g, u = h.split(config.moe_intermediate_size)
            acc = acc + weights[t, j] * ((torch.nn.functional.silu(g) * u) @ experts.w_down[ids[t, j]])
        naive.append(acc)
    naive = torch.stack(naive)
    assert torch.allclose(out, naive, atol=1e-5)
    grad = torch.randn_like(out)
    g1 = torch.autograd.grad(out, [x, experts.w_gate_up], grad)
    g2 = torch.autograd.grad(naive, [x, experts.w_gate_up], grad)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-4)


def test_bias_update_drives_a_skewed_router_toward_uniform_load():
    config = preset("nano", n_group=1, topk_group=1, n_routed_experts=8, num_experts_per_tok=2)
    model = build_model(config)
    gate = model.moe_modules()[0].gate
    with torch.no_grad():  # skew: tokens share a direction that two experts are strongly aligned with
        gate.weight[:2] += 0.05
    x = torch.randn(512, config.hidden_size) + 1.0

    def max_over_mean():
        gate.load.zero_()
        with torch.no_grad():
            _, ids, _ = gate(x)
        load = torch.bincount(ids.flatten(), minlength=8).float()
        gate.load += load
        return (load.max() / load.mean()).item()

    before = max_over_mean()
    for _ in range(300):
        max_over_mean()
        gate.update_bias(gamma=0.01)
    after = max_over_mean()
    assert before > 3.0  # the skew is real
    assert after < 1.5, (before, after)
    # the bias steers selection only: gate weights (the output weighting) never changed
    assert gate.e_score_correction_bias.abs().max() > 0


def test_sequence_balance_loss_is_minimal_for_uniform_routing_and_trains_the_router():
    config = preset("nano", aux_loss_alpha=0.01)
    model = build_model(config).train()
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    out = model(tokens, labels=tokens.roll(-1, dims=1))
    assert out.balance.item() > 0
    # the theoretical minimum of sum_i f_i P_i is 1 (uniform f and P): alpha * 1 per MoE layer
    assert out.balance.item() >= 0.01 * len(model.moe_modules()) * 0.99
    out.loss.backward()
    assert model.moe_modules()[0].gate.weight.grad.abs().sum() > 0


def _mtp_cross_entropy_by_hand(model, tokens: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """Each MTP depth k's cross entropy against tokens[i + k + shift], computed without the model's loss code.

    Depth k (1-based) at position i reads depth k-1's state at i and the embedding of tokens[i + k]; with the
    right shift (1) it predicts tokens[i + k + 1]. Causal attention makes every position independent of later
    ones, so each depth runs on the prefix that has a target and the padding the model uses never matters.
    """
    import torch.nn.functional as F

    seq = tokens.shape[1]
    h = model.hidden_states(tokens)
    losses = []
    for depth in range(len(model.mtp_layers)):
        k = depth + 1
        h = model.mtp_hidden_states(depth, h[:, : seq - k], tokens[:, k:], torch.arange(seq - k))
        logits = model.lm_head(h[:, : seq - k - shift])
        targets = tokens[:, k + shift :]
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)))
    return losses


def test_mtp_loss_targets_are_shifted_per_depth():
    """Depth-k MTP predicts token i+k+1: its loss equals a hand-computed cross entropy on those targets, and not
    the one on targets shifted one less or one more."""
    config = preset("nano", num_nextn_predict_layers=2)
    model = build_model(config, seed=0).train()
    tokens = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = tokens.roll(-1, dims=1)
    labels[:, -1] = IGNORE_INDEX
    out = model(tokens, labels=labels, mtp_weight=0.5)
    assert len(out.mtp) == 2
    with torch.no_grad():
        right = _mtp_cross_entropy_by_hand(model, tokens, shift=1)
        wrong = [_mtp_cross_entropy_by_hand(model, tokens, shift=s) for s in (0, 2)]
    for depth, loss in enumerate(out.mtp):
        assert torch.allclose(loss, right[depth], atol=1e-5), (depth, loss, right[depth])
        for other in wrong:  # a wrong shift is measurably different, so the comparison above can fail
            assert (loss - other[depth]).abs() > 1e-3, (depth, loss, other[depth])
    expected = out.main + out.balance + 0.5 * torch.stack(out.mtp).mean()
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    for layer in model.mtp_layers:
        assert layer.eh_proj.weight.grad is not None and layer.eh_proj.weight.grad.abs().sum() > 0
    # all-ignored labels give zero loss, not NaN
    empty = model(tokens, labels=torch.full_like(tokens, IGNORE_INDEX))
    assert empty.main.item() == 0 and all(m.item() == 0 for m in empty.mtp)


def test_mtp_depth_one_equals_manual_computation():
    config = preset("nano")
    model = build_model(config).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        h = model.hidden_states(tokens)
        positions = torch.arange(1, 9)
        mtp = model.mtp_hidden_states(0, h[:, :-1], tokens[:, 1:], positions)
        layer = model.mtp_layers[0]
        x = layer.eh_proj(torch.cat([layer.enorm(model.model.embed_tokens(tokens[:, 1:])), layer.hnorm(h[:, :-1])], -1))
        rope = model.model.rotary(positions)
        x = x + layer.self_attn(layer.input_layernorm(x), rope)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        assert torch.allclose(mtp, layer.shared_head.norm(x), atol=1e-6)


def test_bf16_autocast_forward_backward_runs_and_routing_stays_float32():
    model = build_model(preset("nano")).train()
    tokens = torch.randint(0, 512, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens, labels=tokens).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.moe_modules()[0].gate.weight.dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, 5, 16), (16,)])
def test_rms_norm_training_backward_matches_autograd_of_the_fused_norm(shape):
    """The CPU training path's written-out backward gives F.rms_norm's gradients, for the input and the weight."""
    from nanoseek.model.attention import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(shape[-1])
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    out = norm(x)
    assert "RMSNormCPU" in type(out.grad_fn).__name__  # the training path, not the fused kernel
    got = torch.autograd.grad(out, (x, norm.weight), grad)
    ref_out = torch.nn.functional.rms_norm(x, (shape[-1],), norm.weight, norm.eps)
    ref = torch.autograd.grad(ref_out, (x, norm.weight), grad)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
