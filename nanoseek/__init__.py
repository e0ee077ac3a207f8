"""nanoseek: the DeepSeek-V3 / R1 stack (model, training, RL, distillation, serving) as one readable project."""

from nanoseek.checkpoint import from_pretrained
from nanoseek.config import ModelConfig, preset
from nanoseek.engine import Completion, Engine, SamplingParams
from nanoseek.model import DeepseekV3ForCausalLM, build_model

__version__ = "0.1.0"
__all__ = [
    "Completion",
    "DeepseekV3ForCausalLM",
    "Engine",
    "ModelConfig",
    "SamplingParams",
    "build_model",
    "from_pretrained",
    "preset",
]
