"""Checkpoint directories: layout, sharding, dtypes, and clear errors for every way a checkpoint can be wrong."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import random_config, random_model
from safetensors import safe_open
from safetensors.torch import save_file

import nanoseek
from nanoseek.checkpoint import CheckpointError
from nanoseek.config import preset
from nanoseek.model import build_model


def _logits(model, seed=0):
    tokens = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(tokens)


@pytest.fixture
def saved(tmp_path):
    model = random_model(random_config(5, num_nextn_predict_layers=1))
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_layout_uses_hub_key_names_and_deepseek_mtp_placement(saved):
    model, path = saved
    n = model.config.num_hidden_layers
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in keys
    assert "model.layers.0.mlp.gate.e_score_correction_bias" in keys
    for suffix in (
        "enorm.weight",
        "hnorm.weight",
        "eh_proj.weight",
        "shared_head.norm.weight",
        "shared_head.head.weight",
        "embed_tokens.weight",
        "self_attn.kv_b_proj.weight",
    ):
        assert f"model.layers.{n}.{suffix}" in keys
    assert not any("w_gate_up" in k or "w_down" in k or "rotary" in k for k in keys)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["model_type"] == "deepseek_v3"
    assert config["num_nextn_predict_layers"] == 1
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == model.config.eos_token_id


def test_round_trip_keeps_mtp_weights(saved):
    model, path = saved
    loaded = nanoseek.from_pretrained(path)
    assert loaded.config.num_nextn_predict_layers == 1
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_sharded_save_writes_an_index_and_loads_back(tmp_path):
    model = random_model(random_config(3))
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert all((tmp_path / s).exists() for s in shards)
    assert torch.equal(_logits(nanoseek.from_pretrained(tmp_path)), _logits(model))
    # saving again unsharded removes the stale shards and index
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert not list(tmp_path.glob("model-*-of-*.safetensors"))
    assert torch.equal(_logits(nanoseek.from_pretrained(tmp_path)), _logits(model))


def test_bf16_save_keeps_routing_in_float32(tmp_path):
    model = random_model(random_config(5))
    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.gate.weight").dtype == torch.float32
    loaded = nanoseek.from_pretrained(tmp_path)  # dtype=None keeps what is stored
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.moe_modules()[0].gate.weight.dtype == torch.float32
    as_float = nanoseek.from_pretrained(tmp_path, dtype=torch.float32)
    assert (_logits(as_float) - _logits(model)).abs().max() < 0.2


def test_tied_embeddings_stay_tied(tmp_path):
    model = build_model(preset("nano", tie_word_embeddings=True))
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118 (a safetensors handle)
    loaded = nanoseek.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded), _logits(model))


def test_transformers_checkpoint_without_mtp_weights_loads_without_mtp(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = random_config(7, num_nextn_predict_layers=1)
    ours = random_model(config)
    ours.save_pretrained(tmp_path / "a")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32)
    theirs.save_pretrained(tmp_path / "b")  # drops the MTP layer but keeps num_nextn_predict_layers: 1
    loaded = nanoseek.from_pretrained(tmp_path / "b")
    assert loaded.config.num_nextn_predict_layers == 0
    assert (_logits(loaded) - _logits(ours)).abs().max() < 1e-4


def _rewrite(path, change):
    with safe_open(path / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.pop("model.layers.0.self_attn.kv_b_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.0.self_attn.kv_b_proj.weight'"):
        nanoseek.from_pretrained(path)


def test_unexpected_tensor_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.__setitem__("model.layers.0.mystery.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mystery.weight.*model.safetensors"):
        nanoseek.from_pretrained(path)


def test_shape_mismatch_is_named(saved):
    _, path = saved
    _rewrite(path, lambda t: t.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \(7,\)"):
        nanoseek.from_pretrained(path)


def test_unknown_model_type_lists_supported(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported: deepseek_v3"):
        nanoseek.from_pretrained(path)


def test_truncated_file_is_refused(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated or corrupt"):
        nanoseek.from_pretrained(path)


def test_corrupt_header_is_refused(saved):
    _, path = saved
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        nanoseek.from_pretrained(path)


def test_missing_shard_and_missing_weights_are_explained(tmp_path):
    model = random_model(random_config(3))
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    next(tmp_path.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"lists shard model-00002-of-.*which is missing"):
        nanoseek.from_pretrained(tmp_path)
    for f in tmp_path.glob("model*"):
        f.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no model.safetensors.*convert them to safetensors"):
        nanoseek.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        nanoseek.from_pretrained(tmp_path / "..")


def test_offline_hub_name_gives_an_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)could not fetch 'nobody/no-such-model'.*pass the local directory"
    ):
        nanoseek.from_pretrained("nobody/no-such-model")


def test_loading_holds_one_copy_of_the_weights(tmp_path):
    """Peak memory while loading stays near the weights' size (no second full copy)."""
    config = preset("bench-18m", vocab_size=32768, num_hidden_layers=10)  # ~30M parameters, ~120 MB in fp32
    build_model(config).save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    script = textwrap.dedent(f"""
        import resource, torch, nanoseek
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = nanoseek.from_pretrained({str(tmp_path)!r})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(peak - base)
    """)
    grown = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert grown < 1.5 * size, (grown, size)


# ---------------------------------------------------------------------------------------------------------------
# crashes while saving over an existing checkpoint


class Crash(Exception):
    """Stands for the process dying at that instant."""


def crash_at(monkeypatch, k: int) -> None:
    """Raise Crash at the k-th change a save makes to the file system: each write, rename and removal."""
    import os
    import shutil
    from pathlib import Path

    import nanoseek.checkpoint as checkpoint

    calls = iter(range(10**9))

    def gate(function):
        def gated(*args, **kwargs):
            if next(calls) == k:
                raise Crash(f"crash before change {k}: {function.__name__}{args[:2]}")
            return function(*args, **kwargs)

        return gated

    monkeypatch.setattr(os, "replace", gate(os.replace))
    monkeypatch.setattr(shutil, "rmtree", gate(shutil.rmtree))
    monkeypatch.setattr(Path, "unlink", gate(Path.unlink))
    monkeypatch.setattr(Path, "write_text", gate(Path.write_text))
    monkeypatch.setattr(checkpoint, "save_file", gate(checkpoint.save_file))


def crash_everywhere(monkeypatch, save, check) -> int:
    """Run `save` once per instant it can crash at, then `check()` the state it left; returns the instants tried."""
    for k in range(1000):
        with monkeypatch.context() as m:
            crash_at(m, k)
            try:
                save()
                finished = True
            except Crash:
                finished = False
        check(finished)
        if finished:
            return k
    raise AssertionError("the save never finished")


def _same(model, state):
    return all(torch.equal(a, state[k]) for k, a in model.state_dict().items())


@pytest.mark.parametrize("old_shards, new_shards", [(150_000, 150_000), (None, 150_000), (150_000, None)])
def test_a_crash_saving_over_a_checkpoint_leaves_the_old_weights_or_the_new(
    tmp_path, monkeypatch, old_shards, new_shards
):
    import shutil

    config = random_config(3)
    old, new = random_model(config, seed=1), random_model(config, seed=2)
    pristine = tmp_path / "pristine"
    old.save_pretrained(pristine, max_shard_bytes=old_shards)
    target, seen = tmp_path / "ckpt", []

    def save():
        new.save_pretrained(target, max_shard_bytes=new_shards)

    def check(finished):
        loaded = nanoseek.from_pretrained(target).state_dict()  # loadable, whatever instant the crash came
        is_old, is_new = _same(old, loaded), _same(new, loaded)
        assert is_old or is_new, "a mix of the old and the new weights"
        assert is_new or not finished
        seen.append(is_new)
        shutil.rmtree(target)
        shutil.copytree(pristine, target)

    shutil.copytree(pristine, target)
    assert crash_everywhere(monkeypatch, save, check) > 3
    assert False in seen and seen[-1]
    save()  # saving again over the new weights (shard names alternate) keeps every file named in the index
    assert _same(new, nanoseek.from_pretrained(target).state_dict())


# ---------------------------------------------------------------------------------------------------------------
# local paths, hub ids, and what an index may point at


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Record hub downloads instead of making them."""
    import huggingface_hub

    fetched = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **_: fetched.append(name) or str(tmp_path))
    return fetched


@pytest.mark.parametrize("name", ["runs/rl", "./rl", "../rl", "/no/such/rl", "~/no-such-rl", "a/b/c", "rl", "a/../b"])
def test_a_missing_local_path_is_refused_not_fetched(hub, tmp_path, monkeypatch, name):
    from nanoseek.checkpoint import resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/rl` names a directory inside an existing local one: a typo, not a repo
    with pytest.raises(FileNotFoundError, match=r"no such directory .*; for a hub model use org/name"):
        resolve_model_path(name)
    assert hub == []


def test_hub_ids_still_go_to_the_hub(hub, tmp_path, monkeypatch):
    from nanoseek.checkpoint import resolve_model_path

    monkeypatch.chdir(tmp_path)
    for name in ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen2.5-0.5B", "org_1/model.v2"]:
        assert resolve_model_path(name) == tmp_path
    assert hub == ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen2.5-0.5B", "org_1/model.v2"]


@pytest.mark.parametrize("where", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors", ".."])
def test_an_index_pointing_outside_its_directory_is_refused(tmp_path, where):
    import shutil

    model = random_model(random_config(3))
    path = tmp_path / "ckpt"
    model.save_pretrained(path, max_shard_bytes=150_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard = next(iter(index["weight_map"].values()))
    shutil.copy(path / shard, tmp_path / "outside.safetensors")  # a readable file: only the rule can refuse it
    where = str(tmp_path / "outside.safetensors") if where == "ABSOLUTE" else where
    index["weight_map"] = {k: where if v == shard else v for k, v in index["weight_map"].items()}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"names shard .*not a plain file name"):
        nanoseek.from_pretrained(path)
