"""MTP speculative decoding on the static step: verify a draft and propose the next one in one graph call.

Eager speculation (engine.py + speculative.py) costs two passes a step: the main model over each sequence's last
token and its draft, then the MTP module over the accepted rows. Once a step is a compiled graph (step.py), a second
graph call and the Python between them would eat most of the gain. So for greedy requests, where accepting a
draft needs only the main model's argmax, one graph does everything:

- the main model over 2 rows per sequence: its last token at position p and its draft at p + 1 (both write their
  cache entries before attending, so the draft row sees the token's entry, as in one eager pass);
- the greedy choices t0 (after the token) and t1 (after the draft); the draft is accepted when it equals t0;
- the MTP module over both rows, each reading its row's hidden state and the token after it: t0 and t1. For an
  accepted draft both rows are right; for a rejected one row 0 is (the token at p + 1 is t0) and row 1 is thrown
  away: its MTP cache entry at p + 1 is rewritten by the next step, which feeds t0 at p + 1;
- the next draft: the argmax of the MTP logits of the last valid row (1 if accepted, else 0). On CPU those logits
  come from an int8 copy of the lm_head (per-row scales, a quarter of the bytes): a draft is only a guess, checked
  by the next step's full-precision argmax, so its head need not be exact, and at batch 1 this second pass over the
  vocabulary is one of the largest reads of the step (bench-300m: 100 of ~540 MB). The main model's logits, which
  decide the output, stay in the model's precision.

Output is exactly ordinary greedy decoding (a draft is only ever accepted when it is the main model's argmax); the
engine's `_advance` turns the accepted tokens into output the same way as the eager path's verification.

Sampled requests do not speculate on a compiled engine (the engine logs it once): their verification draws from
the main model's distribution on the host, so the MTP rows of a rejected draft would need the resampled token before
the graph ends, and a second graph call per step would cost more than it saves on CPU (a second row costs almost a
first: see the README). They decode with the plain compiled step, several times faster than eager speculation on
small models. A step that mixes drafting and plain sequences runs eagerly.
"""

from __future__ import annotations

import logging

import torch

from nanoseek.engine.quant import Int8Linear, pack_int8, unpack_int8
from nanoseek.engine.step import BATCH_BUCKETS, FUSED_MAX_ROWS, StaticDecodeStep, _norm, _Padding
from nanoseek.engine.step_ops import _dequantized


class SpeculativeDecodeStep(StaticDecodeStep):
    """The static step of an engine that drafts with the model's first MTP module (see the module docstring)."""

    def __init__(
        self, model, cache, undecodable: torch.Tensor | None, compiled: bool = True, int8_draft: bool | None = None
    ):
        super().__init__(model, cache, undecodable, compiled)
        # the drafting head (module docstring): int8 by default where the compiled step runs on CPU and the lm_head
        # is not int8 already. Uncompiled ("static") steps keep the exact head: the tests' reference for the drafts
        if int8_draft is None:
            int8_draft = compiled and self.device.type == "cpu"
        int8_draft = int8_draft and not isinstance(model.lm_head, Int8Linear)
        self.draft_head = self._quantized_head() if int8_draft else ()  # (int8 weight [V, hidden], scale [V]) or ()
        self._verify_fn = self._compile(self._verify_and_draft) if compiled else self._verify_and_draft
        self._told = False  # whether the log said that sampled requests do not speculate here

    def _extra_layers(self) -> list:
        return self.model.mtp_layers[:1]  # the graph also runs the MTP layer (its expert copies, its cache pool)

    @staticmethod
    def verifies(batch) -> bool:
        """A step this graph can run: every sequence is greedy (the only ones that draft here: `speculates`) and
        feeds its last token plus one draft."""
        return all(w.completes and len(w.draft) == 1 and w.seq.request.params.greedy for w in batch)

    def speculates(self, params) -> bool:
        """Whether a request with these sampling parameters drafts. Sampled ones do not: they decode through the
        plain compiled step, which is faster here than eager speculation (see the module docstring)."""
        if params.greedy:
            return True
        if not self._told:  # visible once
            logging.getLogger("nanoseek.engine").warning(
                "sampled requests do not speculate on the compiled step (it verifies greedy drafts only): they decode "
                "with the plain compiled step"
            )
            self._told = True
        return False

    def _quantized_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The lm_head as (int8 weight, float32 scale per row), quantized as quant.py quantizes every int8 weight."""
        return unpack_int8(pack_int8(self.model.lm_head.weight))

    @torch.no_grad()
    def refresh(self) -> None:
        super().refresh()
        if self.draft_head:  # the int8 copy follows weight updates too
            for copy, fresh in zip(self.draft_head, self._quantized_head()):
                copy.copy_(fresh)

    @torch.inference_mode()
    def warmup(self, sizes: tuple[int, ...] = BATCH_BUCKETS) -> None:
        """The plain step's graphs (step.py), then the verifying one of each bucket (writes only into block 0)."""
        super().warmup(sizes)
        for size in sizes:
            self.verify([_Padding(self.table_blocks(2))] * size)

    def verify(self, batch) -> list[tuple[list[int], list[float], int]]:
        """-> per sequence: (its new tokens: the accepted draft and the token after it, or the main model's own
        token after a rejected draft; their log-probabilities; the next draft)."""
        n, most = len(batch), BATCH_BUCKETS[-1]
        if n > most:
            return [out for i in range(0, n, most) for out in self.verify(batch[i : i + most])]
        size, ids, positions, tables = self._inputs(batch, ahead=1)
        drafts = torch.tensor([w.draft[0] for w in batch] + [0] * (size - n), device=self.device)
        graph = len(self.graph_layers)
        index_pools = self.cache.index_pools[:graph] or [None] * graph
        pools = self.cache.pools[:graph]
        args = (ids, drafts, positions, tables, pools, index_pools, self.experts, self._buffers(), self.draft_head)
        target, logprobs, drafted = (t.tolist() for t in self._run(self._verify_fn, "verify", size, args))
        out = []
        for work, chosen, chosen_logprobs, draft in zip(batch, target, logprobs, drafted):
            kept = 2 if chosen[0] == work.draft[0] else 1
            out.append((chosen[:kept], chosen_logprobs[:kept], draft))
        return out

    # ---- the graph ----
    def _verify_and_draft(self, ids, drafts, positions, tables, pools, index_pools, experts, buffers, draft_head):
        """The graph: `_verify_and_draft_rows` reading the model's weights from the packed buffers (packed.py)."""
        with self._weights_from(buffers):
            return self._verify_and_draft_rows(ids, drafts, positions, tables, pools, index_pools, experts, draft_head)

    def _verify_and_draft_rows(self, ids, drafts, positions, tables, pools, index_pools, experts, draft_head):
        """ids, drafts, positions [B] (each sequence's last token, its draft, the token's position: the draft's is
        one more); tables [B, blocks]; pools, index_pools, experts: of the main layers, then of the MTP layer;
        draft_head: the int8 lm_head copy the draft is chosen with, or () for the model's own.
        -> (the main model's greedy choices after the token and after the draft [B, 2], their log-probabilities
        [B, 2], the next draft [B]). Rows: 2 per sequence, r = 2 b + j (j = 0 the token, 1 the draft)."""
        batch, main = ids.shape[0], len(self.layers)
        row_ids = torch.stack([ids, drafts], dim=1).flatten()  # [2B]
        row_positions = torch.stack([positions, positions + 1], dim=1).flatten()
        where = self._where(row_positions, tables.repeat_interleave(2, dim=0))
        hidden = self._trunk(row_ids, where, pools, index_pools, experts)  # [2B, hidden]
        logits = self._logits(hidden)
        target = logits.argmax(dim=-1)  # [2B]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).view(batch, 2)
        # the MTP module at each row: its hidden state and the (greedy) token after it, as engine._draft feeds it
        mtp = self.graph_layers[main]
        embeds = self.model.model.embed_tokens.weight.index_select(0, target)
        x = self._linear(torch.cat([_norm(mtp.enorm, embeds), _norm(mtp.hnorm, hidden)], dim=-1), mtp.eh_proj)
        x = self._layer(mtp, x, where, pools[main], index_pools[main], experts[main], self.small_experts[main])
        x = _norm(mtp.shared_head.norm, x)
        target = target.view(batch, 2)
        last = torch.arange(batch, device=ids.device) * 2 + (target[:, 0] == drafts).long()  # last valid row
        return target, logprobs, self._draft_logits(x.index_select(0, last), draft_head).argmax(dim=-1)

    def _draft_logits(self, x: torch.Tensor, draft_head: tuple) -> torch.Tensor:
        """The MTP logits the next draft is the argmax of: through the int8 head where there is one and the rows fit
        a fused product (past FUSED_MAX_ROWS the unfused path would dequantize the whole head each call)."""
        if not draft_head or (self.compiled and x.shape[0] > FUSED_MAX_ROWS):
            return self._logits(x)
        weight, scale = draft_head
        return self._decodable(_dequantized("bi,oi->bo", x, weight, scale, self.compiled))
