"""The DeepSeek-V4 decoder: embedding -> hc_mult residual streams -> layers -> HyperHead -> norm.

Each layer (transformers' DeepseekV4DecoderLayer):

    post, comb, x = attn_hc(streams);  streams = post (x) attention(input_layernorm(x)) + comb^T @ streams
    post, comb, x = ffn_hc(streams);   streams = post (x) moe(post_attention_layernorm(x), token ids) + comb^T @ streams

(hyper_connections.py). The embedding is copied into every stream at the start; `hc_head` collapses them at the end.
Module names are transformers' (`model.layers.3.attn_hc.fn`, `model.layers.3.self_attn.kv_proj.weight`, ...);
checkpoint_v4.py maps them to the names DeepSeek's checkpoints use.

Multi-token prediction (`V4MTPLayer`, in `model.mtp` as the checkpoints keep it under `mtp.{k}.*`), as DeepSeek's
reference inference code (inference/model.py, MTPBlock) computes it: depth k reads the *streams* of the depth
before (the main model's last layer output, before hc_head), not a collapsed state:

    x = e_proj(enorm(Emb(t_{i+k}))) (broadcast over streams) + h_proj(hnorm(streams^{k-1}_i))   (norm per stream)
    streams^k = layer(x)   (a sliding-window, learned-routed V4 layer)
    logits = lm_head(norm(hc_head(streams^k)))   (its own hc_head and norm, the shared lm_head)

The pair (state at i, token i + k) sits at position i, as in our V3 (transformer.py). transformers does not model
the MTP (it skips `mtp.*`), so this part is checked against nothing but that description.

The engine's inference cache: engine/cache_v4.py (windows, compressed entries, compressor rows), read by
V4Attention's cached path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.config_v4 import SLIDING
from nanoseek.model.hyper_connections import HyperConnection, HyperHead, merge_streams
from nanoseek.model.v4_attention import V4Attention, V4RMSNorm, V4Rotary
from nanoseek.model.v4_moe import V4MoE

# Weights transformers keeps in float32 whatever the load dtype (its `_keep_in_fp32_modules_strict`); we do too.
FLOAT32_PARTS = (
    "attn_hc.",
    "ffn_hc.",
    "hc_head.",
    ".sinks",
    "position_bias",
    "e_score_correction_bias",
    "q_a_norm.",
    "kv_norm.",
    "input_layernorm.",
    "post_attention_layernorm.",
    ".norm.weight",  # the final norm (and the MTP module's)
    "mlp.gate.weight",  # routing stays float32 in every family
)


def keeps_float32(name: str) -> bool:
    return any(part in name for part in FLOAT32_PARTS)


class V4DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, attention: str, mlp: str):
        super().__init__()
        hc = (config.hc_mult, config.hidden_size, config.hc_sinkhorn_iters, config.hc_eps, config.rms_norm_eps)
        self.self_attn = V4Attention(config, layer_idx, attention)
        self.mlp = V4MoE(config, hashed=mlp == "hash_moe")
        self.input_layernorm = V4RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = V4RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn_hc = HyperConnection(*hc)
        self.ffn_hc = HyperConnection(*hc)

    def forward(
        self,
        streams: torch.Tensor,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        main: V4Rotary,
        compress: V4Rotary,
        cache: object = None,
    ) -> torch.Tensor:
        """streams [B, S, hc_mult, hidden] -> the same shape (cache: the engine's V4Cache, see V4Attention)."""
        post, comb, x = self.attn_hc(streams)
        attended = self.self_attn(self.input_layernorm(x), positions, main, compress, cache)
        streams = merge_streams(streams, attended, post, comb)
        post, comb, x = self.ffn_hc(streams)
        return merge_streams(streams, self.mlp(self.post_attention_layernorm(x), token_ids), post, comb)


class V4MTPLayer(V4DecoderLayer):
    """One multi-token-prediction depth (module docstring): a sliding-window layer fed by the previous depth's
    streams and the next token's embedding, with its own final collapse and norm."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx, attention=SLIDING, mlp="moe")  # as released: compress ratio 0, not hashed
        h = config.hidden_size
        self.e_proj = nn.Linear(h, h, bias=False)
        self.h_proj = nn.Linear(h, h, bias=False)
        self.enorm = V4RMSNorm(h, config.rms_norm_eps)
        self.hnorm = V4RMSNorm(h, config.rms_norm_eps)
        self.norm = V4RMSNorm(h, config.rms_norm_eps)
        self.hc_head = HyperHead(config.hc_mult, h, config.hc_eps, config.rms_norm_eps)

    def forward(  # type: ignore[override]
        self,
        streams: torch.Tensor,
        next_embeds: torch.Tensor,
        next_ids: torch.Tensor,
        positions: torch.Tensor,
        main: V4Rotary,
        compress: V4Rotary,
    ) -> torch.Tensor:
        """streams [B, S, N, hidden] of the depth before, the next tokens' embeddings [B, S, hidden] and ids
        -> this depth's streams [B, S, N, hidden] (logits: lm_head(self.output(result)))."""
        x = self.e_proj(self.enorm(next_embeds)).unsqueeze(2) + self.h_proj(self.hnorm(streams))
        return super().forward(x, next_ids, positions, main, compress)

    def output(self, streams: torch.Tensor) -> torch.Tensor:
        """streams -> the normalised hidden state lm_head reads [B, S, hidden]."""
        return self.norm(self.hc_head(streams))


class V4Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hc_mult = config.hc_mult
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        assert config.layer_types is not None and config.mlp_layer_types is not None  # validated in config_v4
        kinds = zip(config.layer_types, config.mlp_layer_types)
        self.layers = nn.ModuleList([V4DecoderLayer(config, i, *kind) for i, kind in enumerate(kinds)])
        n = config.num_hidden_layers
        self.mtp = nn.ModuleList([V4MTPLayer(config, n + k) for k in range(config.num_nextn_predict_layers)])
        self.norm = V4RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hc_head = HyperHead(config.hc_mult, config.hidden_size, config.hc_eps, config.rms_norm_eps)
        self.rotary_main = V4Rotary(config, compress=False)
        self.rotary_compress = V4Rotary(config, compress=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: object = None) -> torch.Tensor:
        """input_ids [B, S], positions [S] -> final normalised hidden states [B, S, hidden]. With the engine's cache
        (engine/cache_v4.py, planned for this step): input_ids and positions [1, T], the step's new tokens."""
        return self.norm(self.hc_head(self.streams(input_ids, positions, cache)))

    def streams(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: object = None) -> torch.Tensor:
        """The last layer's output streams [B, S, hc_mult, hidden] (what hc_head collapses and MTP reads)."""
        x = self.embed_tokens(input_ids)
        streams = x.unsqueeze(2).expand(-1, -1, self.hc_mult, -1).contiguous()  # [B, S, hc_mult, hidden]
        for layer in self.layers:
            streams = layer(streams, input_ids, positions, self.rotary_main, self.rotary_compress, cache)
        return streams

    def with_mtp(
        self, input_ids: torch.Tensor, positions: torch.Tensor, depths: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final normalised hidden states [B, S, hidden] and those of the first `depths` MTP depths (depth k
        at position i reads token i + k + 1; ids past the end are 0, their labels are to be ignored)."""
        streams = self.streams(input_ids, positions)
        final = self.norm(self.hc_head(streams))
        mtp = []
        for k, layer in enumerate(list(self.mtp)[:depths]):
            next_ids = F.pad(input_ids[:, k + 1 :], (0, k + 1), value=0)
            embeds = self.embed_tokens(next_ids)
            streams = layer(streams, embeds, next_ids, positions, self.rotary_main, self.rotary_compress)
            mtp.append(layer.output(streams))
        return final, mtp

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """After the generic init (normal matrices, unit norms): transformers' values for V4's special weights,
        and a random hash table (a zero one, as transformers starts with, would send every token to expert 0 k
        times)."""
        for name, p in self.named_parameters():
            if name.endswith((".sinks", "position_bias", ".base", "hc_base")):
                p.zero_()
            elif name.endswith((".scale", "hc_scale")):
                p.fill_(1.0)
        for m in self.modules():
            table = getattr(m, "tid2eid", None)
            if table is not None:
                experts = m.weight.shape[0]
                ranks = torch.rand(table.shape[0], experts, generator=generator, device=table.device)
                table.copy_(ranks.argsort(dim=-1)[:, : table.shape[1]])  # k distinct experts per token

    def keep_float32(self) -> None:
        """Put the weights transformers keeps in float32 back to it (after model.to(dtype))."""
        for name, p in self.named_parameters():
            if keeps_float32(f"model.{name}"):
                p.data = p.data.float()
        for name, b in self.named_buffers():
            if b.is_floating_point() and keeps_float32(f"model.{name}"):
                b.data = b.data.float()

    def rebuild_buffers(self, config: ModelConfig, device: torch.device) -> None:
        """Non-persistent buffers (rope tables) on the real device after a meta-device load."""
        self.rotary_main = V4Rotary(config, compress=False).to(device)
        self.rotary_compress = V4Rotary(config, compress=True).to(device)
