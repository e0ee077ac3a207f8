"""Cross-entropy fused with the output projection, computed a chunk of tokens at a time.

The unfused path writes [tokens, vocab] logits, reads them back for log-softmax, writes the log-probabilities,
and repeats all of it in backward. Here each chunk's logits stay in cache: the loss and the gradient
softmax - onehot are formed in place, and the gradients of the hidden states and of the head are accumulated
immediately (backward then only scales them). Same FLOPs, a fraction of the memory traffic, and the full
logits never exist, which matters with DeepSeek's 129k vocabulary.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # targets the loss skips (torch's cross_entropy default); data/sft.py writes them
CHUNK_TOKENS = 512


@torch.library.custom_op("nanoseek::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (sum of token losses, d sum / d hidden, d sum / d weight); gradients empty when need_grad is False."""
    tokens = hidden.shape[0]
    acc = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)  # softmax precision
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_grad else hidden.new_empty(0)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_grad else weight.new_empty(0)
    buffer = torch.empty(min(CHUNK_TOKENS, tokens), weight.shape[0], dtype=acc, device=hidden.device)
    for start in range(0, tokens, CHUNK_TOKENS):
        h, y = hidden[start : start + CHUNK_TOKENS], labels[start : start + CHUNK_TOKENS]
        logits = buffer[: h.shape[0]]
        if hidden.dtype == acc and weight.dtype == acc:
            torch.mm(h, weight.t(), out=logits)
        else:
            logits.copy_(h @ weight.t())
        valid = y != IGNORE_INDEX
        target = y.clamp(min=0).unsqueeze(1)
        logits.sub_(logits.amax(dim=-1, keepdim=True))  # everything in place: the chunk stays in cache
        target_logit = logits.gather(1, target).squeeze(1)
        probs = logits.exp_()
        total = probs.sum(dim=-1)
        loss += ((total.log() - target_logit) * valid).sum()
        if need_grad:
            probs.div_(total.unsqueeze(1))  # softmax
            probs.scatter_add_(1, target, -valid.to(probs.dtype).unsqueeze(1))
            probs.mul_(valid.unsqueeze(1))
            grad_hidden[start : start + CHUNK_TOKENS] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight.addmm_(probs.t(), h.to(acc))
    return loss, grad_hidden, grad_weight.to(weight.dtype) if need_grad else grad_weight


@_linear_cross_entropy.register_fake
def _(hidden, weight, labels, need_grad):
    loss = hidden.new_empty(
        (), dtype=torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    )
    if not need_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


def _setup(ctx, inputs, output):
    _, grad_hidden, grad_weight = output
    ctx.save_for_backward(grad_hidden, grad_weight)


def _backward(ctx, grad_loss, _grad_hidden, _grad_weight):
    grad_hidden, grad_weight = ctx.saved_tensors
    return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) against labels (IGNORE_INDEX skipped; 0 if none left).

    hidden [..., H], weight [V, H], labels [...]. Under autocast the matmuls run in the autocast dtype; the
    softmax and the loss always in float32.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total, _, _ = torch.ops.nanoseek.linear_cross_entropy(hidden, weight, labels, need_grad)
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
