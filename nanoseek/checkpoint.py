"""Hugging Face checkpoint directories in and out: config.json + safetensors (sharded with an index when large).

Tensors are read one at a time from memory-mapped safetensors and placed straight into the model built on the
meta device, so loading never holds two copies of the weights. Every key is accounted for: a missing, unexpected
or mis-shaped tensor, an unknown model_type, or a truncated file is an error that names the key and the file.
The same loader reads every family (config.py): their checkpoints differ only in which modules exist.

DeepSeek's FP8 releases (V3, R1) store weights as float8_e4m3fn with one float32 scale per 128x128 block in a
`*.weight_scale_inv` companion; they are dequantised on load (`dequantize_fp8`) to the requested dtype.
DeepSeek-V4 checkpoints use DeepSeek's own tensor names and FP4 experts: checkpoint_v4.py.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nanoseek import checkpoint_v4 as v4
from nanoseek.config import ModelConfig
from nanoseek.model.moe import Router
from nanoseek.model.rope import RotaryEmbedding
from nanoseek.model.transformer import DeepseekV3ForCausalLM
from nanoseek.model.v4_decoder import V4Decoder, keeps_float32

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3

_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(w_gate_up|w_down)$")
_HF_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FLOAT32_KEYS = re.compile(r"\.mlp\.gate\.(weight|e_score_correction_bias)$")  # routing stays float32
# Keys that hold nothing we need: stale rotary buffers, and the copies of the shared embedding and output head
# that DeepSeek stores inside each MTP layer.
_IGNORABLE = re.compile(r"(rotary_emb\.inv_freq$)|(^model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight$)")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is; the message says which file or key and why."""


# ---------------------------------------------------------------------------------------------------------------
# internal <-> Hugging Face keys


def _hf_tensors(
    state: dict[str, torch.Tensor], config: ModelConfig
) -> Iterator[tuple[str, Callable[[], torch.Tensor], int]]:
    """(hub key, producer, byte size) for every tensor of the checkpoint, producing tensors only on demand."""
    if config.is_v4:
        yield from v4.release_tensors(state, config)
        return
    for key, tensor in state.items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue
        match = _EXPERTS.match(key)
        if match is None:
            yield key, (lambda t=tensor: t), tensor.numel() * tensor.element_size()
            continue
        prefix, kind = match.groups()
        n_experts, size = tensor.shape[0], tensor[0].numel() * tensor.element_size()
        for e in range(n_experts):
            if kind == "w_down":
                yield f"{prefix}.{e}.down_proj.weight", (lambda t=tensor, e=e: t[e].t()), size
            else:
                half = tensor.shape[-1] // 2
                yield f"{prefix}.{e}.gate_proj.weight", (lambda t=tensor, e=e, h=half: t[e, :, :h].t()), size // 2
                yield f"{prefix}.{e}.up_proj.weight", (lambda t=tensor, e=e, h=half: t[e, :, h:].t()), size // 2
    # DeepSeek's layout repeats the shared embedding and head inside each MTP layer; vLLM/SGLang read them there.
    embed, head = state["model.embed_tokens.weight"], state.get("lm_head.weight", state["model.embed_tokens.weight"])
    for k in range(config.num_nextn_predict_layers):
        layer = f"model.layers.{config.num_hidden_layers + k}"
        yield f"{layer}.embed_tokens.weight", (lambda: embed.clone()), embed.numel() * embed.element_size()
        yield f"{layer}.shared_head.head.weight", (lambda: head.clone()), head.numel() * head.element_size()


def save_pretrained(
    model: DeepseekV3ForCausalLM,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Write config.json, generation_config.json and safetensors weights (sharded above max_shard_bytes)."""
    save_state_dict(model.state_dict(), model.config, path, dtype, max_shard_bytes)


def save_state_dict(
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """save_pretrained from a state dict (e.g. one gathered from FSDP shards) and its config.

    Over an existing checkpoint a crash at any instant leaves the old weights or the new, never a mix: new shards
    go to files the current index (or single file) does not name, and one rename switches the directory over (the
    index replaced, or the single file replaced and the index removed); files only the old weights used go last.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stored = next(t.dtype for t in state.values() if t.is_floating_point())
    shards, total = _plan_shards(state, config, dtype, stored, max_shard_bytes or DEFAULT_SHARD_BYTES)
    names = _shard_names(len(shards), in_use=_weights_in_use(path))
    weight_map = {}
    for name, shard in zip(names, shards):
        tensors = {}
        for key, produce in shard:
            t = produce().detach()
            keep = _FLOAT32_KEYS.search(key) or (config.is_v4 and v4.keeps_float32(key))
            if dtype is not None and t.is_floating_point() and not keep:
                t = t.to(dtype)
            tensors[key] = t.contiguous().cpu()
            weight_map[key] = name
        _atomic_write(path / name, lambda tmp, tensors=tensors: save_file(tensors, tmp, metadata={"format": "pt"}))
        del tensors
    if len(shards) > 1:  # the commit: the new index names the new shards
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        _atomic_write(path / INDEX_NAME, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2) + "\n"))
    else:  # the commit: the single file was replaced above; an old index would still win over it
        (path / INDEX_NAME).unlink(missing_ok=True)
    _fsync_dir(path)
    for stale in [WEIGHTS_NAME, *(p.name for p in path.glob("model-*-of-*.safetensors"))]:
        if stale not in names:
            (path / stale).unlink(missing_ok=True)
    config_json = config.to_dict()
    config_json["torch_dtype"] = str(dtype or stored).removeprefix("torch.")
    _atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config_json, indent=2) + "\n"))
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _atomic_write(
        path / "generation_config.json", lambda tmp: Path(tmp).write_text(json.dumps(generation, indent=2) + "\n")
    )


def _plan_shards(
    state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype | None, stored: torch.dtype, limit: int
) -> tuple[list[list[tuple[str, Callable[[], torch.Tensor]]]], int]:
    """The tensors grouped into shards of at most `limit` bytes (as saved, in `dtype`), and the total size."""
    scale = 1.0
    if dtype is not None:
        scale = torch.empty(0, dtype=dtype).element_size() / torch.empty(0, dtype=stored).element_size()
    shards: list[list[tuple[str, Callable[[], torch.Tensor]]]] = [[]]
    shard_bytes = total = 0
    for key, produce, size in _hf_tensors(state, config):
        size = int(size * scale)
        if shards[-1] and shard_bytes + size > limit:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((key, produce))
        shard_bytes += size
        total += size
    return shards, total


def _weights_in_use(path: Path) -> set[str]:
    """The weight files a load of `path` reads now (what a save over it must not overwrite before its commit)."""
    index = path / INDEX_NAME
    if not index.exists():
        return {WEIGHTS_NAME}
    try:
        return {str(name) for name in json.loads(index.read_text())["weight_map"].values()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return set()  # unreadable: nothing loads from it anyway


def _shard_names(count: int, in_use: set[str]) -> list[str]:
    """model.safetensors, or the usual model-0000i-of-0000n names; where those are what the current index reads,
    the same names with a suffix (-1: successive saves alternate), so no file a load reads is overwritten."""
    if count == 1:
        return [WEIGHTS_NAME]  # replaced by one atomic rename: never half old, half new
    for n in itertools.count():  # ends: `in_use` is finite
        suffix = f"-{n}" if n else ""
        names = [f"model-{i + 1:05d}-of-{count:05d}{suffix}.safetensors" for i in range(count)]
        if not in_use.intersection(names):
            return names
    raise AssertionError("unreachable")  # pragma: no cover


def _atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file under `target`; the
    data is on disk before the rename, so a power cut cannot leave the new name over missing bytes."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make the renames inside `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse fsync on a directory
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# loading


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hugging Face hub id fetched (config, tokenizer, safetensors) to the cache."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "model" / "config.json").exists():
            return path / "model"  # a training run directory: its final model
        return path
    if path.exists():
        raise FileNotFoundError(f"{name} is a file, not a checkpoint directory")
    if _looks_local(name):  # a mistyped `runs/rl` must not turn into a download of some hub repo "runs/rl"
        raise FileNotFoundError(f"no such directory {name!r}; for a hub model use org/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise FileNotFoundError(f"{name} is not a local directory and huggingface_hub is not installed") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:  # huggingface_hub shows a progress bar per file (unless HF_HUB_DISABLE_PROGRESS_BARS is set)
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated repo...
        raise FileNotFoundError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {e}); it is not a local "
            f"directory either. Without network, download it elsewhere (`huggingface-cli download {name}`) "
            f"and pass the local directory."
        ) from None


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # org/name, as the hub allows


def _looks_local(name: str) -> bool:
    """Whether a name that is not an existing directory was meant as a local path: it starts like one (./ ../ /
    ~), is not of the hub's org/name form (no slash, two slashes, other characters), or its first component is a
    local directory (`runs/rl` with a `runs/` here). Everything else, e.g. deepseek-ai/DeepSeek-R1, is a hub id."""
    if name.startswith(("./", "../", "/", "~", ".\\")) or _HUB_ID.fullmatch(name) is None or ".." in name:
        return True
    return Path(name.split("/")[0]).is_dir()


def _check_shard_name(name: object, index: Path) -> None:
    """An index names files inside its own directory: never a path that reaches elsewhere (../, /, subdirs)."""
    plain = isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    if not plain:
        raise CheckpointError(
            f"{index} names shard {name!r}, which is not a plain file name in {index.parent}: refused "
            f"(an index may only point at files next to it)"
        )


def _weight_files(path: Path) -> dict[str, str]:
    """hub key -> shard file name, from the index or the single weights file."""
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map must map tensor names to shard files")
        for name in weight_map.values():
            _check_shard_name(name, index)
        for name in sorted(set(weight_map.values())):
            if not (path / name).exists():
                raise CheckpointError(f"{index} lists shard {name}, which is missing from {path}")
        return weight_map
    single = path / WEIGHTS_NAME
    if single.exists():
        with _open_safetensors(single) as f:
            return dict.fromkeys(f.keys(), WEIGHTS_NAME)
    found = sorted(p.name for p in path.iterdir())
    hint = (
        " (.bin/.pt weights are not read: convert them to safetensors)"
        if any(n.endswith((".bin", ".pt", ".pth")) for n in found)
        else ""
    )
    raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}; found: {', '.join(found) or 'nothing'}{hint}")


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def from_pretrained(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DeepseekV3ForCausalLM:
    """Load a checkpoint directory (or hub id). dtype None keeps the stored dtype; routing stays float32."""
    path = resolve_model_path(name_or_path)
    config = ModelConfig.from_json(path / "config.json")
    weight_map = _weight_files(path)
    config = _drop_absent_mtp(config, weight_map)
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    expected = model.state_dict()
    with ExitStack() as stack:
        reader = _ShardReader(path, weight_map, stack)
        if config.is_v4:
            loaded = _load_v4(expected, weight_map, reader.read_stored, dtype, device, reader.fp8_block, path)
        else:
            loaded = _load_v3(expected, config, reader, dtype, device)
    tied = config.tie_word_embeddings
    unexpected = sorted(
        k
        for k in weight_map
        if k not in reader.used and not _IGNORABLE.search(k) and not (tied and k == "lm_head.weight")
    )
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} tensor(s) the config has no place for, e.g. {unexpected[:3]} in "
            f"{weight_map[unexpected[0]]}; does config.json match the weights?"
        )
    if tied:
        loaded["lm_head.weight"] = loaded["model.embed_tokens.weight"]
    model.load_state_dict(loaded, assign=True, strict=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    _init_buffers(model, device)
    return model.eval()


class _ShardReader:
    """Tensors of a checkpoint's safetensors shards by name, each read checked (shape, FP8 scales) and recorded in
    `used`, so tensors the config has no place for can be reported afterwards."""

    def __init__(self, path: Path, weight_map: dict[str, str], stack: ExitStack):
        self.path, self.weight_map, self.used = path, weight_map, set()
        self.fp8_block = _fp8_block_size(path)
        shards = sorted(set(weight_map.values()))
        self.handles = {name: stack.enter_context(_open_safetensors(path / name)) for name in shards}

    def handle(self, key: str):
        return self.handles[self.weight_map[key]]

    def read_stored(self, key: str) -> torch.Tensor:
        try:
            t = self.handle(key).get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            where = self.path / self.weight_map[key]
            raise CheckpointError(f"{where}: cannot read {key!r} (truncated or corrupt?): {e}") from None
        self.used.add(key)
        return t

    def read(self, key: str, shape: torch.Size) -> torch.Tensor:
        """`key` with the shape the config implies, FP8 dequantised with its block scales."""
        path, weight_map = self.path, self.weight_map
        if key not in weight_map:
            raise CheckpointError(f"{path}: missing tensor {key!r} (expected shape {tuple(shape)})")
        t = self.read_stored(key)
        if t.shape != shape:
            raise CheckpointError(
                f"{path / weight_map[key]}: {key!r} has shape {tuple(t.shape)}, the config implies {tuple(shape)}"
            )
        if t.dtype == torch.float8_e4m3fn:
            scale = f"{key}_scale_inv"
            if scale not in weight_map:
                raise CheckpointError(f"{path}: {key!r} is stored as float8 without its block scales {scale!r}")
            t = dequantize_fp8(t, self.read_stored(scale), self.fp8_block, f"{path / weight_map[scale]}: {scale!r}")
        return t


def _load_v3(
    expected: dict[str, torch.Tensor],
    config: ModelConfig,
    reader: _ShardReader,
    dtype: torch.dtype | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Our state dict from a V3-family checkpoint: one tensor per key, routed experts stacked from per-expert ones."""
    loaded = {}
    for key, meta in expected.items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue
        match = _EXPERTS.match(key)
        if match is None:
            t = reader.read(key, meta.shape)
            loaded[key] = t.to(device=device, dtype=_target_dtype(key, key, dtype, reader.handle(key)))
        else:
            loaded[key] = _stacked_experts(key, meta.shape, *match.groups(), reader, dtype, device)
    return loaded


def _stacked_experts(
    key: str,
    shape: torch.Size,
    prefix: str,
    kind: str,
    reader: _ShardReader,
    dtype: torch.dtype | None,
    device: torch.device,
) -> torch.Tensor:
    """[experts, in, out] from `prefix.{e}.(gate|up|down)_proj.weight` ([out, in] each): w_down, or gate | up."""
    probe = f"{prefix}.0.down_proj.weight"
    if probe not in reader.weight_map:
        raise CheckpointError(f"{reader.path}: missing tensor {probe!r}")
    stacked = torch.empty(shape, dtype=_target_dtype(key, probe, dtype, reader.handle(probe)), device=device)
    half = shape[-1] // 2
    for e in range(shape[0]):
        if kind == "w_down":
            stacked[e] = reader.read(f"{prefix}.{e}.down_proj.weight", shape[1:][::-1]).t()
        else:
            stacked[e, :, :half] = reader.read(f"{prefix}.{e}.gate_proj.weight", torch.Size([half, shape[1]])).t()
            stacked[e, :, half:] = reader.read(f"{prefix}.{e}.up_proj.weight", torch.Size([half, shape[1]])).t()
    return stacked


_STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _target_dtype(key: str, probe: str, dtype: torch.dtype | None, handle) -> torch.dtype:
    """float32 for routing; else the requested dtype; else the dtype `probe` is stored in (bfloat16 for FP8)."""
    if _FLOAT32_KEYS.search(key):
        return torch.float32
    if dtype is not None:
        return dtype
    stored = handle.get_slice(probe).get_dtype()
    if stored == "F8_E4M3":
        return torch.bfloat16  # what DeepSeek's FP8 weights are dequantised to by their own tools
    if stored not in _STORED_DTYPES:
        raise CheckpointError(f"tensor {probe!r} is stored as {stored}; pass dtype= to load it (e.g. torch.bfloat16)")
    return _STORED_DTYPES[stored]


def _fp8_block_size(path: Path) -> tuple[int, int]:
    """The block of DeepSeek's FP8 scales, from config.json's quantization_config (other quantisations refused)."""
    quant = json.loads((path / "config.json").read_text()).get("quantization_config")
    if not quant:
        return (128, 128)
    method, block = quant.get("quant_method"), quant.get("weight_block_size")
    if method != "fp8" or not block or len(block) != 2:
        raise CheckpointError(
            f"{path / 'config.json'}: quantization_config {quant} is not supported; only DeepSeek's block-wise fp8 "
            '({"quant_method": "fp8", "weight_block_size": [128, 128]}) is read, dequantised on load'
        )
    return int(block[0]), int(block[1])


def dequantize_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128), name: str = "scale_inv"
) -> torch.Tensor:
    """float32 W = fp8 weight [out, in] x scale_inv [ceil(out / bo), ceil(in / bi)], one scale per block (the last
    row and column of blocks may be partial)."""
    (out, inp), (bo, bi) = weight.shape, block
    grid = (-(-out // bo), -(-inp // bi))
    if tuple(scale_inv.shape) != grid:
        raise CheckpointError(
            f"{name} has shape {tuple(scale_inv.shape)}; {block} blocks of a {tuple(weight.shape)} weight need {grid}"
        )
    w = weight.float()
    rows = scale_inv.float().repeat_interleave(bo, dim=0)[:out]  # one scale per output row and column block
    full = inp // bi * bi
    if full:
        w[:, :full].unflatten(1, (-1, bi)).mul_(rows[:, : inp // bi, None])
    if full < inp:
        w[:, full:].mul_(rows[:, -1:])
    return w


def _load_v4(
    expected: dict[str, torch.Tensor],
    weight_map: dict[str, str],
    read_stored: Callable[[str], torch.Tensor],
    dtype: torch.dtype | None,
    device: torch.device,
    fp8_block: tuple[int, int],
    path: Path,
) -> dict[str, torch.Tensor]:
    """Our state dict from a V4 checkpoint under any of its spellings (checkpoint_v4.py), dequantising FP8/FP4."""

    def find(names: list[str], shape: torch.Size) -> tuple[torch.Tensor, torch.dtype]:
        """The tensor (dequantised) and the dtype to load it in when none is requested: as stored, bfloat16 for
        FP8/FP4 (what DeepSeek's own tools dequantise to)."""
        stored = next((n for n in names if n in weight_map), None)
        if stored is None:
            raise CheckpointError(f"{path}: missing tensor {names[0]!r} (expected shape {tuple(shape)})")
        t = read_stored(stored)
        natural = t.dtype
        if t.dtype == torch.float8_e4m3fn or v4.is_fp4(t):
            scale = next((n for n in v4.scale_names(stored) if n in weight_map), None)
            if scale is None:
                raise CheckpointError(
                    f"{path}: {stored!r} is stored as {t.dtype} without its scales {v4.scale_names(stored)[0]!r}"
                )
            where = f"{path / weight_map[scale]}: {scale!r}"
            if v4.is_fp4(t):
                try:
                    t = v4.dequantize_fp4(t, read_stored(scale), where)
                except ValueError as e:
                    raise CheckpointError(str(e)) from None
            else:
                t = dequantize_fp8(t, read_stored(scale), fp8_block, where)
            natural = torch.bfloat16
        if t.shape != shape:
            raise CheckpointError(
                f"{path / weight_map[stored]}: {stored!r} has shape {tuple(t.shape)}, the config implies {tuple(shape)}"
            )
        return t, natural

    loaded: dict[str, torch.Tensor] = {}
    for key, meta in expected.items():
        match = v4.STACKED_EXPERTS.match(key)
        if match is None:
            t, natural = find(v4.stored_names(key), meta.shape)
            if not t.is_floating_point():
                loaded[key] = t.to(device=device, dtype=torch.long)  # hash-routing tables (int32 or int64 stored)
            else:
                keep = keeps_float32(key)
                loaded[key] = t.to(device=device, dtype=torch.float32 if keep else dtype or natural)
            continue
        layer, kind = match.groups()
        hidden = meta.shape[-1] if kind == "w_down" else meta.shape[1]
        stacked: torch.Tensor | None = None
        for e in range(meta.shape[0]):
            names = v4.expert_names(layer, e)
            if kind == "w_down":
                parts = [find([names["down"], f"model.{names['down']}"], meta.shape[1:][::-1])]
            else:
                half = torch.Size([meta.shape[-1] // 2, hidden])
                parts = [find([names[p], f"model.{names[p]}"], half) for p in ("gate", "up")]
            if stacked is None:  # the first expert tells the dtype when none is requested
                stacked = torch.empty(meta.shape, dtype=dtype or parts[0][1], device=device)
            stacked[e] = torch.cat([t.t() for t, _ in parts], dim=-1)
        assert stacked is not None
        loaded[key] = stacked
    return loaded


def _drop_absent_mtp(config: ModelConfig, weight_map: dict[str, str]) -> ModelConfig:
    """transformers' DeepseekV3ForCausalLM (and V4) saves no MTP weights yet keeps num_nextn_predict_layers in its
    config: such a checkpoint loads without MTP. Partly present MTP weights are an error (found later as missing
    keys)."""
    n = config.num_nextn_predict_layers
    if n == 0:
        return config
    if config.is_v4:  # DeepSeek's V4 layout: mtp.{k}.* (transformers' own save prefixes model.)
        has_mtp = any(k.startswith(("mtp.0.", "model.mtp.0.")) for k in weight_map)
    else:
        first_mtp = f"model.layers.{config.num_hidden_layers}."
        has_mtp = any(k.startswith(first_mtp) and not _IGNORABLE.search(k) for k in weight_map)
    return config if has_mtp else config.replace(num_nextn_predict_layers=0)


def _init_buffers(model: DeepseekV3ForCausalLM, device: torch.device) -> None:
    """Non-persistent buffers are not in checkpoints: rebuild them on the real device."""
    if isinstance(model.model, V4Decoder):
        model.model.rebuild_buffers(model.config, device)
    else:
        model.model.rotary = RotaryEmbedding(model.config).to(device)
    for module in model.modules():
        if isinstance(module, Router):
            module.load = torch.zeros(module.num_experts, device=device)
