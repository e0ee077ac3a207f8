"""The DeepSeek-V4 decoder: embedding -> hc_mult residual streams -> layers -> HyperHead -> norm.

Each layer (transformers' DeepseekV4DecoderLayer):

    post, comb, x = attn_hc(streams);  streams = post (x) attention(input_layernorm(x)) + comb^T @ streams
    post, comb, x = ffn_hc(streams);   streams = post (x) moe(post_attention_layernorm(x), token ids) + comb^T @ streams

(hyper_connections.py). The embedding is copied into every stream at the start; `hc_head` collapses them at the end.
Module names are transformers' (`model.layers.3.attn_hc.fn`, `model.layers.3.self_attn.kv_proj.weight`, ...);
checkpoint_v4.py maps them to the names DeepSeek's checkpoints use.

Not here yet: the MTP module (released checkpoints keep it under `mtp.0.*`; transformers does not model it
either, so there is nothing to check it against) and the inference cache.
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
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
    "model.norm.",
    "mlp.gate.weight",  # routing stays float32 in every family
)


def keeps_float32(name: str) -> bool:
    return any(part in name for part in FLOAT32_PARTS)


class V4DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        hc = (config.hc_mult, config.hidden_size, config.hc_sinkhorn_iters, config.hc_eps, config.rms_norm_eps)
        self.self_attn = V4Attention(config, layer_idx)
        self.mlp = V4MoE(config, layer_idx)
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
    ) -> torch.Tensor:
        """streams [B, S, hc_mult, hidden] -> the same shape."""
        post, comb, x = self.attn_hc(streams)
        streams = merge_streams(streams, self.self_attn(self.input_layernorm(x), positions, main, compress), post, comb)
        post, comb, x = self.ffn_hc(streams)
        return merge_streams(streams, self.mlp(self.post_attention_layernorm(x), token_ids), post, comb)


class V4Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hc_mult = config.hc_mult
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([V4DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = V4RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hc_head = HyperHead(config.hc_mult, config.hidden_size, config.hc_eps, config.rms_norm_eps)
        self.rotary_main = V4Rotary(config, compress=False)
        self.rotary_compress = V4Rotary(config, compress=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: object = None) -> torch.Tensor:
        """input_ids [B, S], positions [S] -> final normalised hidden states [B, S, hidden]."""
        if cache is not None:
            raise NotImplementedError("deepseek_v4 has no inference cache yet: call the model without one")
        x = self.embed_tokens(input_ids)
        streams = x.unsqueeze(2).expand(-1, -1, self.hc_mult, -1).contiguous()  # [B, S, hc_mult, hidden]
        for layer in self.layers:
            streams = layer(streams, input_ids, positions, self.rotary_main, self.rotary_compress)
        return self.norm(self.hc_head(streams))

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
