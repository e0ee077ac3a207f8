"""The one generation engine: latent cache, continuous batching, prefix reuse, sampling, MTP speculation."""

from nanoseek.engine.engine import Completion, Engine, StreamDelta
from nanoseek.engine.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams", "StreamDelta"]
