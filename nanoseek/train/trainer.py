"""The training loop behind `nanoseek train` (pretraining) and `nanoseek sft`: one loop, two data sources.

Per optimizer step: `grad_accum` micro-batches of next-token + MTP (+ optional balance) loss, gradient clipping,
the optimizer step with the scheduled learning rate, then DeepSeek-V3's auxiliary-loss-free balancing (router
biases nudged by each expert's load over the step, summed over ranks). Logged as JSON lines, validated every
`eval_every` steps, checkpointed every `save_every` steps; `--resume` continues from the newest checkpoint and,
on CPU in float32, reproduces the uninterrupted run bit for bit.

A DeepSeek-V3.2 model can first spend `indexer_warmup_steps` on its indexers' dense warm-up, then train sparse
(`set_indexer_warmup`); a resumed run picks up in the stage its step belongs to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nanoseek.config import ModelConfig, preset
from nanoseek.configargs import arg
from nanoseek.model import IGNORE_INDEX, DeepseekV3ForCausalLM, LossOutput, build_model, cross_entropy
from nanoseek.model.sizes import flops_per_token, parameter_counts
from nanoseek.runtime import keep_freed_memory, matmul_peak
from nanoseek.train import distributed
from nanoseek.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from nanoseek.train.state import RunDir, rng_state, set_rng_state


@dataclass
class TrainConfig:
    out: str = arg(help="run directory (metrics, checkpoints, final model)")
    data: list[str] = arg(
        help=".txt/.jsonl/.parquet files, hf://NAME datasets, a tokenised shard directory; sft: chat JSONL",
        metavar="SOURCE",
    )
    mode: str = "pretrain"  # "pretrain" (token shards) or "sft" (chat JSONL, loss on assistant tokens)
    preset: str = arg("tiny", "model size of a fresh model (see `nanoseek info`)")
    init_from: str | None = arg(None, "start from this checkpoint (model or run directory), not a fresh --preset")
    tokenizer: str | None = arg(None, "tokenizer directory (default: the --init-from checkpoint's)")
    model_overrides: dict[str, Any] = arg({}, "model config overrides", flag="--set")
    steps: int = 500
    batch_size: int = arg(16, "sequences per micro-batch per process")
    grad_accum: int = 1
    seq_len: int = 256
    optim: OptimConfig = field(default_factory=OptimConfig)
    grad_clip: float = 1.0
    mtp_weight: float = arg(0.3, "MTP loss weight (DeepSeek-V3's lambda: 0.3, later 0.1)")
    bias_update_speed: float = arg(1e-3, "aux-loss-free balancing speed, DeepSeek-V3's gamma (0: off)")
    aux_loss_alpha: float | None = arg(None, "sequence-wise balance loss weight (default: the model config's)")
    indexer_warmup_steps: int = arg(
        0, "V3.2: the first N steps attend densely and train only the lightning indexers (on their KL), then sparse"
    )
    teacher: str | None = arg(None, "also distil this checkpoint's logits (it must share the student's tokenizer)")
    distill_weight: float = arg(0.5, "share of the KL-to-teacher term in the loss")
    distill_temperature: float = 1.0
    precision: str = arg("fp32", "bf16: autocast", choices=("fp32", "bf16"))
    compile: bool = arg(False, "torch.compile the model")
    fp8: bool = arg(False, "float8 linear layers via torchao (GPUs with FP8, sm89+)")
    threads: int | None = arg(None, "CPU threads (tiny models can be faster on 1)")
    device: str | None = arg(None, "where to train: cpu, cuda, cuda:1 (default: a GPU if any; torchrun: one per rank)")
    eval_every: int = 100
    eval_batches: int = 4
    save_every: int = 250
    keep: int = 2
    log_every: int = 10
    val_fraction: float = 0.02
    seed: int = 0
    resume: bool = arg(False, "continue the run in --out from its newest checkpoint")
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.mode in ("pretrain", "sft"), f"mode must be pretrain or sft, got {self.mode!r}"),
            (
                self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1 and self.seq_len >= 2,
                "steps, batch_size and grad_accum must be >= 1 and seq_len >= 2",
            ),
            (self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}"),
            (self.data, "no training data: pass --data FILE [FILE ...] (or a tokenised shard directory)"),
            (self.mtp_weight >= 0 and self.bias_update_speed >= 0, "mtp_weight and bias_update_speed must be >= 0"),
            (self.indexer_warmup_steps >= 0, f"indexer_warmup_steps must be >= 0, got {self.indexer_warmup_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that may change between a run and its resumption (everything else must match)
_RESUMABLE = {
    *("resume", "progress", "steps", "eval_every", "save_every", "log_every", "keep", "threads", "eval_batches"),
    "device",  # a run may move between machines
}


class Trainer:
    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.dist = distributed.setup(config.device)
        if config.fp8:  # refused before any data is read or tokenised, not minutes into setup
            _check_fp8(self.dist.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        keep_freed_memory()
        torch.manual_seed(config.seed + self.dist.rank)
        self.run = RunDir(config.out)
        self.checkpoint = self.run.checkpoint_to_resume(config.to_json(), config.resume, _RESUMABLE)
        self.tokenizer = self._load_tokenizer()
        self.model = self._build_model()
        if config.indexer_warmup_steps and not self.model.sparse_attentions():  # before any data is tokenised
            raise ValueError(
                "--indexer-warmup-steps trains DeepSeek-V3.2's lightning indexers, and this "
                f"{self.model.config.model_type} model has none: train a deepseek_v32 model (--preset nano-v32, "
                "tiny-v32 or bench-18m-v32, or --init-from a V3.2 checkpoint), or drop --indexer-warmup-steps"
            )
        self.train_loader, self.val_loader = self._loaders()
        self.model_config: ModelConfig = self.model.config
        if config.fp8:
            _enable_fp8(self.model)
        if self.dist.enabled:
            distributed.shard(self.model)
        # the stage of the last update made before this run's first step: a checkpoint holds that stage's optimizer
        self._enter_stage(self._in_warmup(max(self._checkpoint_step() - 1, 0)))
        self.teacher = self._load_teacher() if config.teacher else None
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.step = 0
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        elif self.dist.main:
            self.run.write_settings(
                {**config.to_json(), "model": self.model_config.to_dict(), "command": " ".join(sys.argv)}
            )
        self.flops = flops_per_token(self.model_config, config.seq_len, training=True, mtp=config.mtp_weight > 0)
        self.peak = matmul_peak("bfloat16" if config.precision == "bf16" else "float32", self.dist.device.type)
        self.byte_lengths = self._byte_lengths()

    # ---- setup ----
    def _load_tokenizer(self):
        from nanoseek.checkpoint import resolve_model_path
        from nanoseek.tokenizer import Tokenizer

        source = self.config.tokenizer or self.config.init_from
        if self.checkpoint is not None:
            source = str(self.checkpoint / "model")
        if source is None:
            raise ValueError(
                "no tokenizer: pass --tokenizer DIR (train one with `nanoseek tokenizer train`) "
                "or --init-from a checkpoint that has one"
            )
        path = Path(source) if Path(source).is_dir() else resolve_model_path(source)
        if not (path / "tokenizer.json").exists() and (path / "model" / "tokenizer.json").exists():
            path = path / "model"
        return Tokenizer.from_pretrained(path)

    def _build_model(self) -> DeepseekV3ForCausalLM:
        from nanoseek.checkpoint import from_pretrained

        overrides = dict(self.config.model_overrides)
        if self.config.aux_loss_alpha is not None:
            overrides["aux_loss_alpha"] = self.config.aux_loss_alpha
        source = str(self.checkpoint / "model") if self.checkpoint is not None else self.config.init_from
        if source is not None:
            model = from_pretrained(source, dtype=torch.float32, device=self.dist.device)
            if overrides:
                model.config = model.config.replace(**overrides)
                for m in model.moe_modules():
                    m.aux_loss_alpha = model.config.aux_loss_alpha
        else:
            tok = self.tokenizer
            from_tokenizer = dict(
                vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
            )
            config = preset(self.config.preset, **{**from_tokenizer, **overrides})  # --set wins (e.g. a padded vocab)
            model = build_model(config, device=self.dist.device, seed=self.config.seed)
        if model.config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(
                f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                f"({self.tokenizer.vocab_size})"
            )
        return model.train()

    def _load_teacher(self) -> DeepseekV3ForCausalLM:
        from nanoseek.checkpoint import from_pretrained, resolve_model_path
        from nanoseek.tokenizer import Tokenizer

        path = resolve_model_path(self.config.teacher)
        if Tokenizer.from_pretrained(path).fingerprint != self.tokenizer.fingerprint:
            raise ValueError(
                f"logit distillation needs the teacher ({path}) and the student to share a tokenizer; "
                f"train the student on traces only (drop --teacher)"
            )
        return from_pretrained(path, dtype=torch.float32, device=self.dist.device).eval().requires_grad_(False)

    def _loaders(self):
        if self.config.mode == "sft":
            return self._sft_loaders()
        from nanoseek.data import TokenLoader

        shards = self._shards()
        c, d = self.config, self.dist
        common = dict(  # batches are made where the model is (a single GPU, too: not only under torchrun)
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            rank=d.rank,
            world_size=d.world_size,
            tokenizer=self.tokenizer,
            device=d.device,
        )
        train = TokenLoader(shards, "train", seed=c.seed, **common)
        try:
            val = TokenLoader(shards, "val", shuffle=False, **common)
        except ValueError as e:  # too little validation text for one batch
            warnings.warn(f"no validation: {e}", stacklevel=2)
            val = None
        return train, val

    def _shards(self) -> Path:
        """A tokenised shard directory: given directly, or made from the data files in RUN_DIR/data (once)."""
        from nanoseek.data import load_manifest, read_documents, tokenize_to_shards

        data = [Path(p) for p in self.config.data]
        if len(data) == 1 and (data[0] / "manifest.json").exists():
            return data[0]
        out = self.run.path / "data"
        if self.dist.main:
            try:
                load_manifest(out, self.tokenizer)
            except (FileNotFoundError, ValueError):
                documents = (doc for source in self.config.data for doc in read_documents(source))
                tokenize_to_shards(
                    documents, self.tokenizer, out, val_fraction=self.config.val_fraction, progress=self.config.progress
                )
        self.dist.barrier()
        return out

    def _sft_loaders(self):
        from nanoseek.data import SFTLoader, sft_examples, split_of

        examples = []
        for source in self.config.data:
            examples += sft_examples(source, self.tokenizer)
        if not examples:
            raise ValueError(f"no SFT examples in {', '.join(self.config.data)}")
        splits = {"train": [], "val": []}
        for ids, mask in examples:
            splits[split_of(repr(ids), self.config.val_fraction)].append((ids, mask))
        c, d = self.config, self.dist
        common = dict(
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            rank=d.rank,
            world_size=d.world_size,
            pad_id=self.tokenizer.pad_id,
            device=d.device,  # batches are made where the model is
        )
        train = SFTLoader(splits["train"], seed=c.seed, **common)
        try:
            val = SFTLoader(splits["val"], seed=c.seed, **common) if splits["val"] else None
        except ValueError as e:
            warnings.warn(f"no validation: {e}", stacklevel=2)
            val = None
        return train, val

    def _byte_lengths(self) -> torch.Tensor:
        tok = self.tokenizer
        lengths = [0 if tok.is_special(i) else len(tok.token_bytes(i)) for i in range(tok.vocab_size)]
        lengths += [0] * (self.model_config.vocab_size - len(lengths))
        return torch.tensor(lengths, dtype=torch.float64)

    # ---- V3.2's two stages ----
    def _in_warmup(self, step: int) -> bool:
        return step < self.config.indexer_warmup_steps

    def _enter_stage(self, warmup: bool) -> None:
        """Freeze or unfreeze for the stage, then a fresh optimizer over exactly the parameters that now train.

        A new optimizer per stage rather than one holding every parameter with the frozen ones idle: a checkpoint
        of either stage then holds an optimizer whose parameters are exactly the trainable ones, which loads back
        as it was saved (torch.distributed.checkpoint would otherwise have to invent state for the idle ones). The
        indexers' Adam moments restart at the switch, as does the learning-rate schedule (`_lr`)."""
        self.indexer_warmup = warmup
        if self.config.indexer_warmup_steps:
            set_indexer_warmup(self.model, warmup)
        self.optimizer = build_optimizer(self.model, self.config.optim)

    def _lr(self) -> float:
        """Each stage runs the configured schedule over its own steps (each starts with a fresh optimizer, so
        each warms up again); the warm-up's does not depend on --steps, so a run stopped after it resumes exactly."""
        c, warmup = self.config, self.config.indexer_warmup_steps
        if self.step < warmup:
            return lr_at(self.step, warmup, c.optim)
        return lr_at(self.step - warmup, c.steps - warmup, c.optim)

    # ---- checkpoints ----
    def _checkpoint_step(self) -> int:
        if self.checkpoint is None:
            return 0
        return int(json.loads((self.checkpoint / "trainer_state" / "state.json").read_text())["step"])

    def _state_dicts(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def save(self) -> Path:
        """Checkpoint: the model as a Hugging Face directory (rank 0) and the sharded training state (all ranks,
        torch.distributed.checkpoint), committed atomically."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from nanoseek.checkpoint import save_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dist.main:
            tmp = self.run.begin(self.step)
        self.dist.barrier()
        tmp = self.run.staging(self.step)
        with warnings.catch_warnings():  # single-process runs save without a process group, as intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
            dcp.save(self._state_dicts(), checkpoint_id=tmp / "trainer_state" / "dcp")
        if self.dist.main:
            save_state_dict(full, self.model_config, tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            state = {
                "step": self.step,
                "train_loader": self.train_loader.state_dict(),
                "rng": rng_state(),
                "world_size": self.dist.world_size,
            }
            self.run.commit(self.step, state, keep=self.config.keep)
        self.dist.barrier()
        return self.run.checkpoints / f"step_{self.step:06d}"

    def _restore(self, checkpoint: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = json.loads((checkpoint / "trainer_state" / "state.json").read_text())
        dicts = self._state_dicts()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
            dcp.load(dicts, checkpoint_id=checkpoint / "trainer_state" / "dcp")
        set_state_dict(self.model, self.optimizer, model_state_dict=dicts["model"], optim_state_dict=dicts["optimizer"])
        self.train_loader.load_state_dict(state["train_loader"])
        if state.get("world_size", 1) == self.dist.world_size:
            set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.dist.main:
            self.run.truncate_metrics(self.step)

    # ---- the loop ----
    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(self) -> Path:
        c = self.config
        counts = parameter_counts(self.model_config)
        if self.dist.main:
            print(
                f"nanoseek {c.mode}: {counts.total / 1e6:.2f}M parameters ({counts.active / 1e6:.2f}M active), "
                f"{c.steps} steps of {c.batch_size * c.grad_accum * self.dist.world_size} x {c.seq_len} tokens, "
                f"{self.dist.world_size} process(es), {torch.get_num_threads()} threads -> {self.run.path}",
                flush=True,
            )
        bar = _progress(c.steps, self.step, self.dist.main and c.progress)
        window = {"tokens": 0, "seconds": 0.0}
        while self.step < c.steps:
            record = self.train_step()
            window["tokens"] += record.pop("tokens")
            window["seconds"] += record.pop("seconds")
            self.step += 1
            bar.update(1)
            if self.step % c.log_every == 0 or self.step == c.steps:
                tps = window["tokens"] / max(window["seconds"], 1e-9)
                record.update(
                    tokens_per_s=round(tps, 1), mfu=round(tps * self.flops / (self.peak * self.dist.world_size), 4)
                )
                self._log({"kind": "train", "step": self.step, **record})
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tps:,.0f}")
                window = {"tokens": 0, "seconds": 0.0}
            if self.val_loader is not None and (self.step % c.eval_every == 0 or self.step == c.steps):
                self._log({"kind": "val", "step": self.step, **self.evaluate()})
            if self.step % c.save_every == 0 and self.step < c.steps:
                self.save()
        bar.close()
        final = self.save()
        model_dir = self.run.publish(final) if self.dist.main else self.run.path / "model"
        self.dist.barrier()
        return model_dir

    def train_step(self) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        if self.indexer_warmup != self._in_warmup(self.step):  # the first sparse step: unfreeze, full optimizer
            self._enter_stage(self._in_warmup(self.step))
        set_lr(self.optimizer, lr := self._lr())
        sums = torch.zeros(5)  # loss, main, mtp, balance, indexer KL
        tokens = 0
        for _ in range(c.grad_accum):
            inputs, targets = next(self.train_loader)
            with self.autocast():
                if self.teacher is None:
                    out = self.forward(inputs, labels=targets, mtp_weight=c.mtp_weight)
                else:
                    out = self._distill_loss(inputs, targets)
            (out.loss / c.grad_accum).backward()
            mtp = torch.stack(out.mtp).mean() if out.mtp else torch.zeros(())
            kl = out.indexer if out.indexer is not None else torch.zeros(())
            parts = [out.loss, out.main, mtp, out.balance, kl]
            sums += torch.stack([t.detach().float().cpu() for t in parts])
            tokens += inputs.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        balance = self._balance_experts()
        sums = distributed.all_reduce_(sums) / (c.grad_accum * self.dist.world_size)
        record = {
            "loss": sums[0].item(),
            "main_loss": sums[1].item(),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": tokens * self.dist.world_size,
            "seconds": time.perf_counter() - start,
            **balance,
        }
        if self.model_config.num_nextn_predict_layers:
            record["mtp_loss"] = sums[2].item()
        if self.model_config.aux_loss_alpha:
            record["balance_loss"] = sums[3].item()
        if self.model_config.has_indexer:
            record["indexer_kl"] = sums[4].item()
            record["stage"] = "indexer_warmup" if self.indexer_warmup else "sparse"
        return record

    def _distill_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        """(1 - w) * cross-entropy + w * T^2 * KL(teacher_T || student_T) over the scored tokens (Hinton et al.)."""
        c = self.config
        with torch.no_grad():
            teacher = self.teacher(inputs).float() / c.distill_temperature
        logits = self.forward(inputs).float()
        ce = cross_entropy(logits, targets)
        scored = targets != IGNORE_INDEX
        kl = F.kl_div(
            F.log_softmax(logits[scored] / c.distill_temperature, -1),
            F.log_softmax(teacher[scored], -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = (1 - c.distill_weight) * ce + c.distill_weight * c.distill_temperature**2 * kl
        indexer = self.model.indexer_loss()  # V3.2: the indexers learn from their KL here too
        if indexer is not None:
            loss = loss + indexer
        return LossOutput(loss, ce, [], torch.zeros(()), indexer)

    def _balance_experts(self) -> dict[str, float]:
        """Sum each router's load over ranks, log max/mean per layer, then apply the bias update (gamma)."""
        routers = [m.gate for m in self.model.moe_modules()]
        if not routers:
            return {}
        ratios = []
        for gate in routers:
            distributed.all_reduce_(gate.load)
            if gate.load.sum() > 0:
                ratios.append((gate.load.max() / gate.load.mean()).item())
            # the warm-up leaves everything but the indexers as it was, the routers' biases too (0: reset the load)
            gate.update_bias(0.0 if self.indexer_warmup else self.config.bias_update_speed)
        return (
            {"balance_max_over_mean": sum(ratios) / len(ratios), "balance_worst_layer": max(ratios)} if ratios else {}
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss (nats/token) and bits per byte of the scored text, over eval_batches batches."""
        self.model.eval()
        loader = self.val_loader
        loader.epoch, loader.step = 0, 0
        totals = torch.zeros(3, dtype=torch.float64)  # summed nats, scored tokens, scored bytes
        for _ in range(min(self.config.eval_batches, loader.steps_per_epoch())):
            inputs, targets = next(loader)
            with self.autocast():
                # eager: a compiled forward would compile a second (eval, no-grad) graph, a long stall for a rare pass
                out = self.model(inputs, labels=targets, mtp_weight=0.0)
            scored = targets != -100
            totals += torch.tensor(
                [
                    out.main.item() * scored.sum().item(),
                    scored.sum().item(),
                    self.byte_lengths[targets[scored].cpu()].sum().item(),
                ],
                dtype=torch.float64,
            )
        distributed.all_reduce_(totals)
        self.model.train()
        for m in self.model.moe_modules():  # evaluation must not steer the routers
            m.gate.load.zero_()
        nats, count, nbytes = totals.tolist()
        result = {"val_loss": nats / max(count, 1)}
        if nbytes > 0:
            result["val_bpb"] = nats / math.log(2) / nbytes
        return result

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            self.run.log({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()})


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", disable=not enabled, dynamic_ncols=True)


def _check_fp8(device: torch.device) -> None:
    """FP8 training runs on CUDA devices with FP8 tensor cores only: say so plainly instead of failing in torchao."""
    on_fp8_gpu = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    if not on_fp8_gpu:
        raise ValueError(
            "--fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9+: Ada, Hopper); "
            f"this run is on {device}: drop --fp8 (or use --precision bf16)"
        )


def _enable_fp8(model: DeepseekV3ForCausalLM) -> None:
    """Float8 matmuls for the large linear layers (torchao's float8 training), on GPUs that have FP8."""
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise ValueError("--fp8 needs torchao: pip install torchao") from None

    def eligible(module: torch.nn.Module, name: str) -> bool:  # FP8 GEMMs want dims divisible by 16
        return (
            isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
            and "gate" not in name.split(".")[-1]
            and name != "lm_head"
        )

    convert_to_float8_training(model, module_filter_fn=eligible)


def set_indexer_warmup(model: DeepseekV3ForCausalLM, warmup: bool) -> None:
    """DeepSeek-V3.2's two stages (report 2.1.1). Dense warm-up (True): attention reads every past token and only
    the lightning indexers train, learning from their KL to it what attention looks at; sparse training (False):
    top-k attention, every parameter trains (the indexers still by their KL only, their inputs being detached)."""
    attentions = model.sparse_attentions()
    if not attentions:
        raise ValueError(f"a {model.config.model_type} model has no lightning indexer to warm up (V3.2 only)")
    model.set_sparse_attention(not warmup)
    indexers = {id(p) for a in attentions for p in a.indexer.parameters()}  # type: ignore[union-attr]
    for p in model.parameters():
        p.requires_grad_(not warmup or id(p) in indexers)


def train(config: TrainConfig) -> Path:
    """Run training to completion; returns the final model directory (RUN_DIR/model)."""
    try:
        return Trainer(config).train()
    finally:
        distributed.teardown()
