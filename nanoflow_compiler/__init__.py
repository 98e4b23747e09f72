"""nanoflow: NanoFlow's intra-device parallelism as a torch.compile backend and a serving runtime."""

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__", "export", "load"]


def __getattr__(name: str):
    # Lazy, so that `import nanoflow_compiler` (and `nanoflow --help`) does not pay for torch and transformers.
    if name == "LLM":
        from .llm import LLM

        return LLM
    if name == "SamplingParams":
        from .runtime.sampling import SamplingParams

        return SamplingParams
    if name in ("export", "load"):
        from . import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
