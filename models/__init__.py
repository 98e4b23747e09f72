"""Model definitions in the flat-token form, presets of real shapes, and weight loaders."""

from .llama import LlamaForCausalLM
from .loader import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model, random_model
from .mixtral import MixtralForCausalLM
from .presets import PRESETS, preset_config

__all__ = [
    "DEFAULT_MODEL", "PRESETS", "LlamaForCausalLM", "LoadedModel", "MixtralForCausalLM", "ModelLoadError", "load_model",
    "preset_config", "random_model",
]
