"""`load`: an `LLM` that serves an exported artifact: no search, and the stored schedule instead of the passes.

Checks run cheapest first and stop at the first failure, each naming what failed: the manifest's format version
and layout, then every file's size and SHA-256, then the model signature (config and tensor shapes) and the weights
digest, then the device. A schedule made for another device is re-planned for this one with a warning (the passes
run, as for a model compiled from scratch), or refused with `strict=True`. Once Dynamo traces the model, the stored
schedule is bound only if the traced graph is the one it was made for (see schedule.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..llm import LLM
from ..models import LoadedModel, load_model
from .manifest import ArtifactError, device_mismatch, read_manifest, verify_files, version_drift
from .weights import (build_model, check_file_specs, config_dict, config_from_dict, expected_specs, model_signature,
                      read_weights, tensor_specs, unique_state, weights_digest)

# engine settings a loader may change; the others shape the compiled graph and come from the artifact
ADJUSTABLE = ("max_num_seqs", "max_model_len", "kv_cache_memory_fraction", "enable_prefix_caching",
              "max_num_batched_tokens")
FIXED = ("token_buckets", "block_size", "num_kv_blocks", "compile_options", "compile", "backend", "dtype")


class ArtifactWarning(UserWarning):
    """The artifact is used, but not exactly as exported (another device, other library versions)."""


class ArtifactLLM(LLM):
    """An `LLM` served from an artifact; `replanned` says why the stored schedule was not used (None if it was)."""

    def __init__(self, loaded: LoadedModel, artifact: Path, manifest: dict, replanned: str | None, **engine_kwargs):
        super().__init__(loaded, **engine_kwargs)
        self.artifact, self.manifest, self.replanned = artifact, manifest, replanned


def load(path: str | Path, *, strict: bool = False, model: str | LoadedModel | None = None,
         device: str | None = None, **engine_kwargs) -> ArtifactLLM:
    """Serve the artifact at `path`. `model` gives the weights of an artifact exported without them (default: where
    the export took them from); `engine_kwargs` may change the settings in ADJUSTABLE."""
    _check_engine_kwargs(engine_kwargs)
    root = Path(path)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    drift = version_drift(manifest["versions"])
    if drift:
        warnings.warn(f"{root}: other library versions than at export: {', '.join(drift)}", ArtifactWarning,
                      stacklevel=2)
    info = manifest["model"]
    config = config_from_dict(info["config"])
    dtype = _dtype(info["dtype"])
    expected = expected_specs(config, dtype, info["tied"])
    if model_signature(info["config"], expected) != info["signature"]:
        raise ArtifactError(f"{root}: the model config in manifest.json does not match the model signature recorded at "
                            "export (the config was edited, or belongs to another model)")
    recorded = manifest["device"]
    here = torch.device(device or ("cuda" if recorded["type"] == "cuda" and torch.cuda.is_available() else "cpu"))
    mismatch = device_mismatch(recorded, here)
    if mismatch is not None and strict:
        raise ArtifactError(f"{root}: {mismatch}; refusing it under --strict (without it the model is re-planned "
                            "for this device)")
    loaded = _model(root, manifest, config, expected, dtype, here, model)
    engine = manifest["engine"]
    kwargs = dict(token_buckets=engine["token_buckets"], max_num_batched_tokens=engine["max_num_batched_tokens"],
                  block_size=engine["block_size"], num_kv_blocks=engine["num_kv_blocks"], compile=True,
                  backend="nanoflow", dtype=dtype, device=str(here))
    stored = dict(engine["compile_options"])
    if mismatch is None:
        options = {k: v for k, v in stored.items() if k not in ("plan", "profile_db")}
        options["schedule"] = str(root.resolve() / manifest["schedule"]["file"])
    else:
        warnings.warn(f"{root}: {mismatch}: re-planning for this device (the compiler passes run and the stored "
                      "schedule is not used; the KV cache is sized for this device)", ArtifactWarning, stacklevel=2)
        options = {k: v for k, v in stored.items() if k not in ("device_sms", "sm_plan", "profile_db")}
        kwargs["num_kv_blocks"] = None
    try:
        return ArtifactLLM(loaded, root, manifest, mismatch, compile_options=options, **{**kwargs, **engine_kwargs})
    except Exception as e:  # Dynamo wraps what the backend raises; the artifact's own error is the one to show
        cause = _artifact_cause(e)
        if cause is not None:
            raise cause from None
        raise


def _check_engine_kwargs(engine_kwargs: dict) -> None:
    for key in engine_kwargs:
        if key in FIXED:
            raise ArtifactError(f"{key} is fixed by the artifact (it shapes the compiled graph); export again to "
                                "change it")
        if key not in ADJUSTABLE:
            raise ArtifactError(f"unknown engine setting {key!r} for a loaded artifact; adjustable: "
                                f"{', '.join(ADJUSTABLE)}")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"manifest.json names an unknown dtype {name!r}")
    return dtype


def _model(root: Path, manifest: dict, config, expected: dict, dtype, device, model) -> LoadedModel:
    info = manifest["model"]
    if model is None and info.get("weights"):
        path = root / info["weights"]
        check_file_specs(path, expected)
        tensors = read_weights(path)
        if weights_digest(tensors) != info["weights_sha256"]:
            raise ArtifactError(f"{path.name} holds other weights than the ones exported (same tensors, other "
                                "values): another checkpoint of the same model?")
        built = build_model(config, tensors, info["tied"], dtype, device)
        return LoadedModel(built, _tokenizer(root, manifest), info["name"], "artifact")
    spec = model if model is not None else info.get("spec")
    if spec is None:
        raise ArtifactError(f"{root} holds no weights and does not say where they come from; pass the model "
                            "(load(..., model=...) or --model)")
    loaded = spec if isinstance(spec, LoadedModel) else load_model(spec, dtype=dtype, device=device)
    tensors, _ = unique_state(loaded.model)
    if model_signature(config_dict(loaded.model.config), tensor_specs(tensors)) != info["signature"]:
        raise ArtifactError(f"model {loaded.name!r} is not the model {root} was exported for (its config or tensor "
                            "shapes differ)")
    if weights_digest(tensors) != info["weights_sha256"]:
        raise ArtifactError(f"model {loaded.name!r} has other weights than the model {root} was exported for")
    return LoadedModel(loaded.model, _tokenizer(root, manifest) or loaded.tokenizer, info["name"], "artifact")


def _tokenizer(root: Path, manifest: dict):
    if not manifest.get("tokenizer"):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root / manifest["tokenizer"]), local_files_only=True)
    except Exception as e:  # transformers raises many kinds on a damaged tokenizer directory
        raise ArtifactError(f"{root}: cannot rebuild the tokenizer from {manifest['tokenizer']}/: "
                            f"{type(e).__name__}: {e}") from None


def _artifact_cause(error: BaseException) -> ArtifactError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ArtifactError):
            return error
        seen.add(id(error))
        error = getattr(error, "inner_exception", None) or error.__cause__ or error.__context__
    return None
