"""The decode step's weights, packed into one flat buffer per dtype (a few graph inputs instead of hundreds).

A CPU graph call pays per tensor input (~0.5-0.9 us each, in dynamo's prologue and the compiled wrapper: a toy graph
reading 136 module weights took 121 us a call, reading one buffer 7 us). bench-18m's graph took ~140 inputs; packed,
a batch-1 token took 1.27 ms instead of 1.55 (790 vs 646 tok/s, 1 thread, alternating in one process).
So the step (step.py) keeps the model's parameters and buffers copied into one flat buffer per dtype, passes those
buffers to its graph, and the graph swaps each module's tensors for views of them while it runs (views are free
inside the graph). The copies follow in-place weight updates through `refresh()`, which the step calls from
`Engine.reset_prefix_cache()`, as it does for its expert copies.
"""

from __future__ import annotations

import torch

# past this size a copy costs more memory than the per-input time is worth (a step of such a model takes tens of ms)
PACKED_WEIGHTS_MAX_BYTES = 512 * 1024**2


class PackedWeights:
    """The model's parameters and buffers copied into one flat buffer per dtype (see PACKED_WEIGHTS_MAX_BYTES).
    slots: (name, buffer, offset, shape) for every name, tied names sharing one slot; each offset 64-byte aligned."""

    ALIGN = 64  # bytes

    def __init__(self, model: torch.nn.Module):
        first: dict[int, tuple[int, int, torch.Size]] = {}  # id(tensor) -> its slot
        sizes: dict[torch.dtype, list[int]] = {}  # dtype -> [buffer index, elements so far]
        self.slots: list[tuple[str, int, int, torch.Size]] = []
        for name, tensor in _named_tensors(model):
            if id(tensor) not in first:
                index_and_size = sizes.setdefault(tensor.dtype, [len(sizes), 0])
                step = max(self.ALIGN // tensor.element_size(), 1)
                offset = -(-index_and_size[1] // step) * step
                first[id(tensor)] = (index_and_size[0], offset, tensor.shape)
                index_and_size[1] = offset + tensor.numel()
            self.slots.append((name, *first[id(tensor)]))
        device = next(model.parameters()).device
        self.buffers = tuple(torch.empty(n, dtype=dtype, device=device) for dtype, (_, n) in sizes.items())
        self.refresh(model)

    @classmethod
    def of(cls, model: torch.nn.Module) -> PackedWeights | None:
        """Packed copies of the model's tensors, or None when they would take more than PACKED_WEIGHTS_MAX_BYTES."""
        tensors = {id(t): t for _, t in _named_tensors(model)}.values()
        return cls(model) if sum(t.nbytes for t in tensors) <= PACKED_WEIGHTS_MAX_BYTES else None

    def views(self, buffers: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """name -> that tensor as a view of `buffers` (this packing's, or the graph's inputs standing for them)."""
        return {
            name: buffers[index].narrow(0, offset, shape.numel()).view(shape)
            for name, index, offset, shape in self.slots
        }

    @torch.no_grad()
    def refresh(self, model: torch.nn.Module) -> None:
        """Copy the model's current values in (after in-place weight updates)."""
        current = dict(_named_tensors(model))
        for name, view in self.views(self.buffers).items():
            view.copy_(current[name])


def _named_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer under every name it has (a tied weight appears once per name)."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
