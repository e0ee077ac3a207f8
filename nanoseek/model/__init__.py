"""The DeepSeek-V3 architecture in plain PyTorch."""

from nanoseek.model.transformer import IGNORE_INDEX, DeepseekV3ForCausalLM, LossOutput, build_model, cross_entropy

__all__ = ["IGNORE_INDEX", "DeepseekV3ForCausalLM", "LossOutput", "build_model", "cross_entropy"]
