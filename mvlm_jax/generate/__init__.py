"""Text and image-conditioned generation: KV-cache engine, sampling, prompts, CLI (`mvlm generate`, `mvlm chat`)."""
from mvlm_jax.generate.engine import Completion, DecodeState, Generator, Request
from mvlm_jax.generate.sampling import SamplingConfig

__all__ = ["Completion", "DecodeState", "Generator", "Request", "SamplingConfig"]
