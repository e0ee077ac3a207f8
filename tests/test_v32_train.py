"""DeepSeek-V3.2's two training stages (report 2.1.1): the indexers' dense warm-up, then sparse training.

A nano V3.2 model (index_topk 16) on stride sequences 64 tokens long, so top-k really drops tokens: a short dense
LM run gives attention something to look at, the warm-up (only the indexers train, on their KL) must teach the
indexers which tokens carry attention's mass, and sparse training must then learn about as well as dense training.
The `nanoseek train --indexer-warmup-steps` tests check the stage switch end to end: frozen weights, the optimizer,
resuming across the switch, the metrics and a loadable checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import stride_sequences, tiny_tokenizer

import nanoseek
from nanoseek.cli import main as cli
from nanoseek.config import preset
from nanoseek.model import build_model
from nanoseek.model.indexer import index_scores, top_k_visible
from nanoseek.train.plot import plot_run
from nanoseek.train.trainer import set_indexer_warmup

VOCAB, LENGTH, BATCH = 64, 64, 8


def _config():
    return preset("nano-v32", vocab_size=VOCAB, num_nextn_predict_layers=0, max_position_embeddings=256)


def _indexer_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if ".indexer." in name}


@pytest.fixture(scope="module", autouse=True)  # module scope: set before the module's training fixture runs
def _one_thread():
    """Models this small train fastest on one thread, and the machine is shared (conftest asks for two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _step(model, optimizer, tokens, loss: str = "loss", gamma: float = 1e-3) -> float:
    """One optimizer step on `loss` (a LossOutput field); gamma 0 leaves the routers' biases as they are."""
    out = model(tokens[:, :-1], labels=tokens[:, 1:])
    getattr(out, loss).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_router_bias(gamma)
    return out.main.item()


@torch.no_grad()
def mass_recovered(model, tokens: torch.Tensor) -> float:
    """Share of the main attention's mass (dense, summed over heads, normalised) on the indexer's top-k tokens,
    averaged over the queries that see more than k tokens and over layers."""
    inputs = {}
    attentions = model.sparse_attentions()
    hooks = [a.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[:2])) for a in attentions]
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    shares = []
    for a in attentions:
        x, rope = inputs[a]
        q_resid = a.query_residual(x)
        q_nope, q_rope = a.project_query(x, rope, q_resid)
        seq, k = x.shape[1], a.indexer.topk
        visible = torch.ones(seq, seq, dtype=torch.bool).tril().expand(x.shape[0], -1, -1)
        _, probs = a.attend_explicit(q_nope, q_rope, a.project_latent(x, rope), visible)
        p = probs.sum(1)
        p = p / p.sum(-1, keepdim=True)
        query, weights = a.indexer.project_query(x, q_resid, rope)
        chosen = top_k_visible(index_scores(query, weights, a.indexer.project_key(x, rope)), visible, k)
        shares.append((p * chosen).sum(-1)[:, k:].mean())  # query t sees t + 1 tokens: t >= k sees more than k
    return torch.stack(shares).mean().item()


@pytest.fixture(scope="module")
def warmed():
    """Dense LM training, then the indexer warm-up; returns the model, the probe batch and what was measured."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_model(_config(), seed=0).train()
    model.set_sparse_attention(False)  # a dense start, like the V3.1 checkpoint V3.2 was trained from
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):  # the LM loss alone: the indexers stay as initialised, like V3.2's new ones on V3.1
        _step(model, optimizer, stride_sequences(BATCH, LENGTH + 1, VOCAB, generator=g), loss="main")
    probe = stride_sequences(16, LENGTH + 1, VOCAB, generator=torch.Generator().manual_seed(99))
    k = model.config.index_topk
    before = mass_recovered(model, probe[:, :-1])

    set_indexer_warmup(model, True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == _indexer_names(model) and not any(a.sparse for a in model.sparse_attentions())
    frozen = {name: t.clone() for name, t in model.state_dict().items() if name not in trainable}
    indexers = {name: p.detach().clone() for name, p in model.named_parameters() if name in trainable}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    kls = []
    for _ in range(60):
        tokens = stride_sequences(BATCH, LENGTH + 1, VOCAB, generator=g)
        out = model(tokens[:, :-1], labels=tokens[:, 1:])
        out.loss.backward()  # the whole loss, as the trainer does: only the KL can reach the indexers
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_router_bias(0.0)
        kls.append(out.indexer.item())
    state = model.state_dict()
    assert all(torch.equal(state[name], t) for name, t in frozen.items()), "the warm-up changed a frozen weight"
    assert all(not torch.equal(state[name], t) for name, t in indexers.items())
    after = mass_recovered(model, probe[:, :-1])
    baseline = sum(k / (t + 1) for t in range(k, LENGTH)) / (LENGTH - k)  # k random tokens of the t + 1 visible
    print(f"\nattention mass on the indexer's top-{k} of up to {LENGTH}: before warm-up {before:.3f}, after {after:.3f}"
          f" (random selection {baseline:.3f}); indexer KL {kls[0]:.3f} -> {kls[-1]:.3f}")  # fmt: skip
    set_indexer_warmup(model, False)
    return model, probe, dict(before=before, after=after, baseline=baseline, kls=kls)


def test_warmup_teaches_the_indexer_where_attention_looks(warmed):
    _, _, m = warmed
    assert m["kls"][-1] < 0.5 * m["kls"][0], m["kls"]
    assert m["before"] < m["baseline"] + 0.1  # an untrained indexer picks about as well as chance
    assert m["after"] > m["baseline"] + 0.15 and m["after"] > m["before"] + 0.15, m


def test_sparse_training_tracks_dense_training(warmed):
    model, probe, _ = warmed
    start = copy.deepcopy(model.state_dict())
    final = {}
    for sparse in (False, True):
        model.load_state_dict(start)
        model.set_sparse_attention(sparse)
        model.train()
        g = torch.Generator().manual_seed(1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        first = _step(model, optimizer, stride_sequences(BATCH, LENGTH + 1, VOCAB, generator=g))
        for _ in range(29):
            _step(model, optimizer, stride_sequences(BATCH, LENGTH + 1, VOCAB, generator=g))
        model.eval()
        with torch.no_grad():
            final[sparse] = model(probe[:, :-1], labels=probe[:, 1:]).main.item()
        name = "sparse" if sparse else "dense"
        print(f"\n{name}: LM loss {first:.4f} at the first step, {final[sparse]:.4f} after 30 (held-out batch)")
    model.train()
    assert final[True] < 0.7 * first and abs(final[True] - final[False]) < 0.02 + 0.2 * final[False], final


def test_the_lm_loss_never_reaches_the_indexer_and_skipped_layers_keep_no_stale_kl():
    model = build_model(preset("nano-v32", vocab_size=VOCAB, max_position_embeddings=256), seed=0).train()
    indexers = [p for name, p in model.named_parameters() if name in _indexer_names(model)]
    tokens = stride_sequences(2, LENGTH + 1, VOCAB)
    for sparse in (False, True):
        model.set_sparse_attention(sparse)
        out = model(tokens[:, :-1], labels=tokens[:, 1:])
        lm = out.main + out.mtp[0]
        assert all(g is None for g in torch.autograd.grad(lm, indexers, allow_unused=True, retain_graph=True))
        assert all(g is not None for g in torch.autograd.grad(out.indexer, indexers))
    # with MTP off, the MTP layer's indexer does not run: its KL from the pass above must not join this loss
    out = model(tokens[:, :-1], labels=tokens[:, 1:], mtp_weight=0.0)
    out.loss.backward()
    assert model.mtp_layers[0].self_attn.indexer_loss is None


# ---- `nanoseek train --indexer-warmup-steps` ----


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("v32train")
    tiny_tokenizer().save_pretrained(root / "tok")
    (root / "corpus.txt").write_text(
        "\n\n".join(f"the sum of {i} and {i % 7} is {i + i % 7}, the answer is what we write." for i in range(400))
    )
    return root


def _args(workspace: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        *("--data", str(workspace / "corpus.txt"), "--tokenizer", str(workspace / "tok"), "--out", str(out)),
        *("--preset", "nano-v32", "--batch-size", "4", "--seq-len", "64", "--val-fraction", "0.1"),
        *("--eval-every", "100", "--log-every", "1", "--no-progress", "--threads", "1"),
        *("--indexer-warmup-steps", "3", *extra),
    ]


def _train_metrics(run: Path) -> list[dict]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    timing = {"time", "tokens_per_s", "mfu"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records if r["kind"] == "train"]


def test_train_command_runs_both_stages_and_resumes_across_the_switch(workspace, tmp_path):
    whole = tmp_path / "whole"
    assert cli(_args(workspace, whole, "--steps", "6", "--save-every", "3", "--keep", "3")) == 0
    metrics = _train_metrics(whole)
    assert [r["stage"] for r in metrics] == ["indexer_warmup"] * 3 + ["sparse"] * 3
    assert all(r["indexer_kl"] > 0 for r in metrics)
    assert "indexer.png" in [p.name for p in plot_run(whole)]
    assert metrics[0]["lr"] == metrics[3]["lr"]  # each stage runs its own schedule

    # the warm-up changed the indexers only: every other weight and buffer is the fresh model's
    warm = nanoseek.from_pretrained(whole / "checkpoints" / "step_000003" / "model")
    fresh = build_model(warm.config, seed=0)  # the trainer's initialisation (seed 0)
    indexers = _indexer_names(warm)
    a, b = fresh.state_dict(), warm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k not in indexers)
    assert all(not torch.equal(a[k], b[k]) for k in indexers)
    final = nanoseek.from_pretrained(whole / "model")
    assert not torch.equal(final.state_dict()["lm_head.weight"], b["lm_head.weight"])  # sparse training: all train
    tokens = torch.randint(0, final.config.vocab_size, (1, 48))  # 48 > index_topk: a sparse forward
    assert torch.isfinite(final(tokens)).all() and all(m.sparse for m in final.sparse_attentions())

    # stopped right after the warm-up (its optimizer in the checkpoint), resumed into sparse training: exact
    split = tmp_path / "split"
    assert cli(_args(workspace, split, "--steps", "3", "--save-every", "3", "--keep", "3")) == 0
    assert cli(_args(workspace, split, "--steps", "6", "--save-every", "3", "--keep", "3", "--resume")) == 0
    assert _train_metrics(split) == metrics
    c = nanoseek.from_pretrained(split / "model").state_dict()
    assert all(torch.equal(v, c[k]) for k, v in final.state_dict().items())


def test_warmup_flag_is_refused_for_a_model_without_an_indexer(workspace, tmp_path, capsys):
    args = _args(workspace, tmp_path / "run", "--steps", "2")
    args[args.index("nano-v32")] = "nano"
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "--indexer-warmup-steps" in err and "nano-v32" in err
    assert not (tmp_path / "run" / "data").exists()  # refused before any data was tokenised
