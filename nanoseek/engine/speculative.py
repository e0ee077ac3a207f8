"""Speculative decoding with the model's own MTP module as the draft model.

Each step the main model reads a sequence's last token plus the draft token the MTP module proposed; one forward
pass verifies the draft and yields one more token. Greedy requests accept a draft when it is the main model's
argmax, so their output is exactly that of ordinary decoding. Sampled requests use the standard acceptance test
(accept with probability min(1, p/q), else resample from the normalised max(p - q, 0)), which leaves the output
distribution unchanged.
"""

from __future__ import annotations

import torch

from nanoseek.engine.sampling import SamplingParams, draw, filtered_probs


def propose(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[list[int], torch.Tensor | None]:
    """MTP logits [V] -> (draft tokens, their distribution if sampling)."""
    if params.greedy:
        return [int(logits.argmax())], None
    q = filtered_probs(logits.unsqueeze(0), [params])
    return [int(draw(q, [generator])[0])], q


def verify(
    logits: torch.Tensor,
    draft: list[int],
    draft_probs: torch.Tensor | None,
    params: SamplingParams,
    generator: torch.Generator,
) -> tuple[list[int], list[float]]:
    """Main-model logits [len(draft) + 1, V] for the rows fed as (last token, *draft) -> the accepted tokens
    (accepted drafts + one token from the first row that disagrees, or a bonus token) and their log-probabilities."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens: list[int] = []
    if params.greedy:
        target = logits.argmax(dim=-1).tolist()
        for j, d in enumerate(draft):
            if d != target[j]:
                break
            tokens.append(d)
        tokens.append(target[len(tokens)])
    else:
        p = filtered_probs(logits, [params] * logits.shape[0])
        assert draft_probs is not None
        for j, d in enumerate(draft):
            ratio = p[j, d] / draft_probs[j, d].clamp(min=1e-20)
            if torch.rand((), generator=generator) < ratio:
                tokens.append(d)
                continue
            residual = (p[j] - draft_probs[j]).clamp(min=0)
            residual = residual / residual.sum() if residual.sum() > 0 else p[j]
            tokens.append(int(draw(residual.unsqueeze(0), [generator])[0]))
            break
        else:
            tokens.append(int(draw(p[len(draft)].unsqueeze(0), [generator])[0]))
    return tokens, [float(logprobs[j, t]) for j, t in enumerate(tokens)]
