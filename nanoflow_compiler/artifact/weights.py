"""The model inside an artifact: its HF config, its weights as safetensors (tied weights stored once) and the
signatures that tell one model from another.

Two digests: the model signature hashes the config and the name, shape and dtype of every tensor (it catches a config
or a weights file of another architecture); the weights digest hashes the tensors' bytes (it catches another
checkpoint of the same architecture, e.g. when a weights-less artifact is given its weights from elsewhere).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .manifest import ArtifactError

WEIGHTS = "model.safetensors"
# keys of a config dict that name the machine or library it was read with, not the model
_VOLATILE = ("_name_or_path", "_model_name_or_path", "_commit_hash", "transformers_version")


def config_dict(config) -> dict:
    """The HF config as plain JSON, without the keys that differ between machines."""
    data = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in data.items() if k not in _VOLATILE}


def config_from_dict(data: dict):
    from transformers import AutoConfig

    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise ArtifactError("the model config in manifest.json has no model_type")
    try:
        return AutoConfig.for_model(model_type, **{k: v for k, v in data.items() if k != "model_type"})
    except (ValueError, TypeError, KeyError) as e:
        raise ArtifactError(f"the model config in manifest.json cannot be rebuilt: {e}") from None


def unique_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor kept once (safetensors refuses aliases), and {alias: kept name}."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = tensor
    return tensors, tied


def tensor_specs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[list[int], str]]:
    return {n: (list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()}


def model_signature(config: dict, specs: dict[str, tuple[list[int], str]]) -> str:
    body = {"config": config, "tensors": sorted([n, list(s), d] for n, (s, d) in specs.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def expected_specs(config, dtype: torch.dtype, tied: dict[str, str]) -> dict[str, tuple[list[int], str]]:
    """Name, shape and dtype of every stored tensor of the model `config` describes (built on meta: no memory)."""
    from ..models.loader import model_class

    with torch.device("meta"):
        model = model_class(config)(config)
    state = {n: t for n, t in model.state_dict().items() if n not in tied}
    return {n: (list(t.shape), str(dtype).removeprefix("torch.")) for n, t in state.items()}


def check_file_specs(path: Path, expected: dict[str, tuple[list[int], str]]) -> None:
    """The safetensors header against the model: every tensor present, none extra, each of its shape and dtype."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            found = {n: (list(f.get_slice(n).get_shape()), _dtype_name(f.get_slice(n).get_dtype())) for n in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path.name} is not a readable safetensors file ({e})") from None
    problems = [f"{n} is {found[n][1]} {found[n][0]} where the model needs {expected[n][1]} {expected[n][0]}"
                for n in sorted(set(found) & set(expected)) if found[n] != expected[n]]
    problems += [f"lacks {n}" for n in sorted(set(expected) - set(found))]
    problems += [f"has {n}, which the model does not" for n in sorted(set(found) - set(expected))]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArtifactError(f"{path.name} does not hold the weights of the model in manifest.json (another model's "
                            f"weights?): it {'; '.join(problems[:3])}{more}")


def _dtype_name(code: str) -> str:
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
    return names.get(code, code)


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(path),
              metadata={"format": "pt", "producer": "nanoflow export"})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path.name} is not a readable safetensors file ({e})") from None


def build_model(config, tensors: dict[str, torch.Tensor], tied: dict[str, str], dtype: torch.dtype, device):
    """Our flat-token model from its own state dict, re-tied as exported."""
    # the loader's builder takes flat names unchanged, rebuilds the rope table and empty caches, and ties lm_head
    from ..models.loader import _build

    model = _build(config, tensors, dtype, device)
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, kept in tied.items():
        if alias in params and kept in params and params[alias] is not params[kept]:
            raise ArtifactError(f"the model does not tie {alias} to {kept} as the exported one did")
    return model
