"""Optimizers and learning-rate schedules: AdamW, or Muon for hidden matrices with AdamW for the rest (Moonlight).

Weight decay is decoupled and applies only to matrices (Linear weights, stacked expert weights, the router);
norms, biases, embeddings and the output head are not decayed. With Muon, the orthogonalised update is rescaled
to the RMS of a typical AdamW update (Moonlight: 0.2 * sqrt(max(rows, cols))), so both share one learning rate
and one weight decay, and a single schedule drives every group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nanoseek.configargs import arg

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("wsd", "cosine", "constant")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: fast, lands singular values in ~[0.7, 1.2]
MUON_RMS_MATCH = 0.2  # Moonlight: AdamW updates have RMS ~0.2-0.4; scale Muon's to match


@dataclass
class OptimConfig:
    optimizer: str = arg("adamw", choices=OPTIMIZERS)
    lr: float = arg(3e-3, "peak learning rate, shared by AdamW and Muon")
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5
    schedule: str = arg("wsd", "wsd: warmup-stable-decay", choices=SCHEDULES)
    warmup_steps: int = 0  # or a fraction of the run via warmup_fraction (not both)
    warmup_fraction: float = 0.0
    decay_fraction: float = arg(0.2, "WSD: the last fraction of steps decays linearly to min_lr_ratio * lr")
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))  # a list from JSON becomes the tuple torch expects
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (also called on use, in case a field was changed)."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        _check(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(all(0 <= b < 1 for b in self.betas), f"betas must both be in [0, 1), got {self.betas}")
        _check(self.eps >= 0, f"eps must be >= 0, got {self.eps}")
        _check(0 <= self.muon_momentum < 1, f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        _check(self.muon_ns_steps >= 1, f"muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.warmup_fraction <= 1, f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        _check(
            not (self.warmup_steps and self.warmup_fraction),
            f"set warmup_steps ({self.warmup_steps}) or warmup_fraction ({self.warmup_fraction}), not both",
        )
        _check(0 <= self.decay_fraction <= 1, f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---- parameter groups ----


def _kind(name: str, param: nn.Parameter, module: nn.Module) -> str:
    """'vector' (norms, biases), 'embedding' (token embeddings, output head), 'router', or 'matrix'."""
    if param.ndim < 2:
        return "vector"
    if isinstance(module, nn.Embedding) or name.endswith(("lm_head.weight", ".head.weight")):
        return "embedding"
    if name.endswith(".gate.weight"):  # the MoE router (not `gate_proj`, the SwiGLU gate)
        return "router"
    return "matrix"


def _classified(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by kind, each once (a tied lm_head is the embedding's Parameter: seen once)."""
    kinds: dict[str, list[nn.Parameter]] = {"matrix": [], "router": [], "embedding": [], "vector": []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for local_name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            name = f"{module_name}.{local_name}" if module_name else local_name
            kinds[_kind(name, p, module)].append(p)
    return kinds


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Optimizer groups, each with a "name" for logging; empty groups are left out. Frozen parameters are skipped.

    adamw: "decay" (matrices and router) and "no_decay" (embeddings, output head, norms, biases).
    muon:  "muon" (hidden matrices: Linear weights in the blocks, stacked experts) plus the AdamW groups above,
           where "decay" then holds only the router (its few rows are not a matrix worth orthogonalising).
    """
    kinds = _classified(model)
    wd = config.weight_decay
    if config.optimizer == "muon":
        groups = [
            dict(name="muon", params=kinds["matrix"], weight_decay=wd, use_muon=True),
            dict(name="decay", params=kinds["router"], weight_decay=wd, use_muon=False),
            dict(name="no_decay", params=kinds["embedding"] + kinds["vector"], weight_decay=0.0, use_muon=False),
        ]
    else:
        groups = [
            dict(name="decay", params=kinds["matrix"] + kinds["router"], weight_decay=wd),
            dict(name="no_decay", params=kinds["embedding"] + kinds["vector"], weight_decay=0.0),
        ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (fused where supported), or Muon for hidden matrices + AdamW for the rest, as one optimizer."""
    config.validate()
    groups = param_groups(model, config)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    common = dict(lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    if config.optimizer == "muon":
        return Muon(groups, momentum=config.muon_momentum, ns_steps=config.muon_ns_steps, **common)
    params = [p for g in groups for p in g["params"]]
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **common)
        except (RuntimeError, ValueError, TypeError):  # a dtype/device this build's fused kernel lacks
            pass
    return torch.optim.AdamW(groups, **common)


# ---- Muon ----


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalise the last two dims (U S V^T -> ~U V^T), batched over any leading dims.

    The quintic iteration pushes every singular value into roughly [0.7, 1.2] rather than exactly 1: that is
    as good for optimisation and converges in 5 steps. Runs on the wide orientation so X @ X^T is the small Gram.
    """
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1: inside the basin
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, with AdamW for the groups that set use_muon=False.

    Muon groups (matrices, or stacks of them [experts, in, out], each orthogonalised on its own):
        buf = momentum * buf + grad
        update = grad + momentum * buf                 (nesterov; buf when nesterov=False)
        p = p * (1 - lr * weight_decay) - lr * 0.2 * sqrt(max(rows, cols)) * newton_schulz(update)
    AdamW groups: torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments).
    `ns_dtype`: Newton-Schulz precision; None = bfloat16 on GPUs, float32 on CPUs (bf16 matmul is slow there).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 3e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        ns_dtype: torch.dtype | None = None,
    ):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        defaults.update(betas=betas, eps=eps, use_muon=True)  # betas/eps: for the AdamW groups
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"] if group["use_muon"] else []:
                if p.ndim < 2:
                    raise ValueError(
                        f"Muon updates matrices; got a parameter of shape {tuple(p.shape)}: "
                        "put vectors (norms, biases) in a group with use_muon=False (AdamW)"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon_step(group, params)
            else:
                self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        updates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.mul_(momentum).add_(p.grad)
            updates.append(p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf)
        # Matrices of one shape are orthogonalised in one batched Newton-Schulz (each still on its own, same bits
        # on CPU): a small model's ~50 matrices cost more in calls than in arithmetic one by one (the speedrun
        # student's optimizer step: 7.5 -> 4.5 ms at 2 threads; its teacher's, mostly expert stacks, 32 -> 31 ms).
        for indices in _same_shape(params, updates):
            first = params[indices[0]]
            dtype = self.ns_dtype or (torch.bfloat16 if first.device.type == "cuda" else torch.float32)
            if len(indices) == 1:
                orthos = [newton_schulz(updates[indices[0]], group["ns_steps"], dtype)]
            else:  # [matrices, rows, cols]: 2-D weights and stacks of experts alike
                stacked = torch.cat([updates[i].reshape(-1, *first.shape[-2:]) for i in indices])
                counts = [updates[i].numel() // (first.size(-2) * first.size(-1)) for i in indices]
                parts = newton_schulz(stacked, group["ns_steps"], dtype).split(counts)
                orthos = [part.view(params[i].shape) for i, part in zip(indices, parts)]
            scale = MUON_RMS_MATCH * math.sqrt(max(first.size(-2), first.size(-1)))
            for i, ortho in zip(indices, orthos):
                params[i].mul_(1 - lr * wd)
                params[i].add_(ortho.to(params[i].dtype), alpha=-lr * scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in params:
            grad = p.grad
            state = self.state[p]
            if not state:
                state["step"] = 0  # a plain int: saved and restored exactly, no device to match
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
            denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
            p.mul_(1 - lr * wd)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)


def _same_shape(params: list[torch.Tensor], updates: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the parameters whose Newton-Schulz can run as one batch: plain tensors with the same matrix
    shape, dtype and device. A sharded (DTensor, FSDP2) update goes alone: its products gather whole matrices."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, u) in enumerate(zip(params, updates)):
        key = (tuple(p.shape[-2:]), p.dtype, p.device) if type(u) is torch.Tensor else ("alone", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


# ---- learning-rate schedules ----


def _warmup_steps(total_steps: int, config: OptimConfig) -> int:
    return config.warmup_steps or int(config.warmup_fraction * total_steps + 0.5)


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """The learning rate for 0-based `step` of a `total_steps` run.

    Warmup: lr * (step + 1) / warmup, so the last warmup step is at the full lr and step 0 is not wasted at 0.
    Decay ends at min_lr_ratio * lr at step == total_steps (after the last update), so no update is spent at
    lr 0 when min_lr_ratio is 0. WSD decays linearly over the last round(decay_fraction * total_steps) steps;
    cosine decays from the end of warmup. Steps past the end stay at the minimum.
    """
    config.validate()
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = _warmup_steps(total_steps, config)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    floor = config.min_lr_ratio
    if config.schedule == "constant":
        mult = 1.0
    elif config.schedule == "wsd":
        decay = int(config.decay_fraction * total_steps + 0.5)
        left = total_steps - step  # steps still to run, this one included
        mult = 1.0 if decay == 0 or left >= decay else floor + (1 - floor) * max(left, 0) / decay
    else:  # cosine
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        mult = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * mult


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (a tensor lr, as capturable optimizers keep, is filled in place)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
