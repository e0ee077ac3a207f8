"""The model of every supported family (DeepSeek-V3/V2 with MLA + DeepSeekMoE, Qwen2/Llama with GQA), plain PyTorch."""

from nanoseek.model.transformer import IGNORE_INDEX, DeepseekV3ForCausalLM, LossOutput, build_model, cross_entropy

__all__ = ["IGNORE_INDEX", "DeepseekV3ForCausalLM", "LossOutput", "build_model", "cross_entropy"]
