"""`export`: compile a model once with the nanoflow backend and write what a serving fleet needs to skip that work.

The engine is built exactly as `LLM` builds it (its runner hands the buckets it pads to to the compiler), so that the
graph a loader traces later is the one whose schedule is stored. The KV-cache size is part of that graph (the caches
are module buffers, traced at their size), so it is fixed here and recorded.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from .manifest import (FORMAT, FORMAT_VERSION, MANIFEST, ArtifactError, device_info, hash_files, partial_dir, versions,
                       write_manifest)
from .schedule import SCHEDULE, write_schedule
from .weights import WEIGHTS, config_dict, model_signature, save_weights, tensor_specs, unique_state, weights_digest

PROFILE = "profile.json"
TOKENIZER = "tokenizer"
DEFAULT_MAX_BATCHED_TOKENS = 512


def default_buckets(max_num_batched_tokens: int) -> list[int]:
    """Powers of two from 16 up to the iteration's token budget (which is always one of them)."""
    buckets = [16]
    while buckets[-1] * 2 < max_num_batched_tokens:
        buckets.append(buckets[-1] * 2)
    return sorted({b for b in buckets if b < max_num_batched_tokens} | {max_num_batched_tokens})


def export(model=None, out: str | Path = "nanoflow-artifact", *, buckets: list[int] | None = None,
           with_weights: bool = True, dtype: torch.dtype | None = None, device: str | None = None,
           compile_options: dict | None = None, profile_db: str | None = None,
           max_num_batched_tokens: int | None = None, num_kv_blocks: int | None = None, block_size: int = 16,
           overwrite: bool = False) -> Path:
    """Compile `model` (None = SmolLM2-135M-Instruct, a preset, a .gguf file, an HF directory or a `LoadedModel`)
    for `buckets` and write the artifact directory `out`; returns its path.

    `profile_db` plans with the search (`plan='auto'`) from that profile database and stores it in the artifact.
    """
    from ..backend import capture
    from ..models import LoadedModel, load_model
    from ..runtime.engine import EngineConfig, LLMEngine

    out = Path(out)
    _check_out(out, overwrite)
    if isinstance(model, LoadedModel):  # the engine runs the model where and as it is
        first = next(model.model.parameters())
        device, dtype = device or first.device, dtype or first.dtype
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokens = max_num_batched_tokens or (max(buckets) if buckets else DEFAULT_MAX_BATCHED_TOKENS)
    buckets = sorted(set(buckets or default_buckets(tokens)))
    options = dict(compile_options or {})
    if profile_db is not None:
        if not Path(profile_db).is_file():
            raise ArtifactError(f"no profile database at {profile_db}")
        options.update(plan="auto", profile_db=str(Path(profile_db).resolve()))
    if "schedule" in options:
        raise ArtifactError("compile option 'schedule' binds a stored schedule; export plans a new one")

    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    if getattr(getattr(loaded.model, "tp", None), "size", 1) > 1:
        raise ArtifactError("cannot export a tensor-parallel rank's model: artifacts hold one device's schedule and "
                            "unsharded weights")
    config = EngineConfig(max_num_batched_tokens=tokens, block_size=block_size, num_kv_blocks=num_kv_blocks,
                          compile=True, compile_options=options, token_buckets=buckets, dtype=dtype, device=device,
                          backend="nanoflow")
    # Dynamo reuses an earlier compilation of this forward with equal options without calling the backend again,
    # and the export needs the schedule the backend makes: start from empty caches (others recompile when called).
    torch._dynamo.reset()
    with capture() as compiled:
        engine = LLMEngine(loaded.model, loaded.tokenizer, config)
    if engine.runner.compile_fallback is not None:
        raise ArtifactError(f"cannot export: {engine.runner.compile_fallback}")
    irs = [c.ir for c in compiled]
    if not irs:
        raise ArtifactError("cannot export: the nanoflow backend compiled no graph")
    if any(ir is None for ir in irs):
        reasons = "; ".join(c.reason for c in compiled if c.ir is None)
        raise ArtifactError(f"cannot export: the nanoflow passes could not compile the model ({reasons})")

    work = partial_dir(out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        manifest = _write(work, loaded, engine, irs, options, with_weights, model)
        write_manifest(work, manifest)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier artifact (or an empty directory)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
    if any(out.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{out} already exists and is not empty; choose another --out or pass --force")
        if not (out / MANIFEST).is_file():
            raise ArtifactError(f"{out} is not an artifact (no {MANIFEST}); refusing to replace it")


def _write(root: Path, loaded, engine, irs: list, options: dict, with_weights: bool, spec) -> dict:
    runner = engine.runner
    write_schedule(root / SCHEDULE, irs)
    tensors, tied = unique_state(loaded.model)
    cfg = config_dict(loaded.model.config)
    if with_weights:
        save_weights(tensors, root / WEIGHTS)
        shutil.copymode(root / SCHEDULE, root / WEIGHTS)  # safetensors writes 0600; ship it as readable as the rest
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(root / TOKENIZER))
    stored_options = dict(options)
    if options.get("profile_db"):
        shutil.copyfile(options["profile_db"], root / PROFILE)
        stored_options["profile_db"] = PROFILE  # relative to the artifact
    provenance = irs[0].provenance
    model = {"name": loaded.name, "source": loaded.source, "spec": _source_spec(spec, loaded, with_weights),
             "config": cfg, "dtype": str(runner.dtype).removeprefix("torch."),
             "signature": model_signature(cfg, tensor_specs(tensors)), "weights": WEIGHTS if with_weights else None,
             "weights_sha256": weights_digest(tensors), "tied": tied}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "device": device_info(runner.device, provenance.options["device_sms"]),
        "model": model,
        "engine": {"token_buckets": list(runner.buckets), "block_size": runner.block_size,
                   "max_num_batched_tokens": engine.config.max_num_batched_tokens,
                   "num_kv_blocks": runner.num_kv_blocks, "compile_options": stored_options},
        "schedule": {"file": SCHEDULE, "graphs": [_summary(ir) for ir in irs]},
        "search": {"plan_source": provenance.plan_source, "profile_db": PROFILE if options.get("profile_db") else None,
                   "resolved_options": provenance.options, "notes": list(provenance.notes)},
        "tokenizer": TOKENIZER if loaded.tokenizer is not None else None,
        "files": hash_files(root),
    }


def _summary(ir) -> dict:
    return {"graph_hash": ir.signature.graph_hash, "buckets": [b.tokens for b in ir.buckets],
            "executor": ir.provenance.executor, "ops": sum(len(b.ops) for b in ir.buckets)}


def _source_spec(spec, loaded, with_weights: bool) -> str | None:
    """How to load the same weights again (for artifacts without weights): a preset or the default by name, a file
    or directory by absolute path; None when the model was handed over in memory and its origin is unknown."""
    from ..models import DEFAULT_MODEL, PRESETS

    if isinstance(spec, str) and Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    if isinstance(spec, str) or spec is None:
        return spec or DEFAULT_MODEL
    if loaded.name == DEFAULT_MODEL or (loaded.source == "preset" and loaded.name in PRESETS):
        return loaded.name
    if not with_weights:
        warnings.warn(f"export: model {loaded.name!r} was given in memory, so an artifact without weights cannot say "
                      "where its weights come from; load it with load(..., model=...)", stacklevel=4)
    return None


def describe(root: Path) -> str:
    """One line about an exported artifact, for the CLI."""
    manifest = json.loads((root / MANIFEST).read_text())
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    graphs = manifest["schedule"]["graphs"]
    return (f"exported {manifest['model']['name']} to {root}: {len(graphs)} graph(s), buckets "
            f"{graphs[0]['buckets']}, plan from the {manifest['search']['plan_source']} model, "
            f"{len(manifest['files'])} files, {size / 1e6:.1f} MB")
