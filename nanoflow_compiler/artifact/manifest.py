"""manifest.json: what an artifact holds, what it was made with and for, and the SHA-256 of every other file.

The manifest is read first and checked before anything else is touched: its format version (a newer one is refused,
not guessed at), its shape, then every file it lists (present, of the recorded size, of the recorded hash). Loading
reads plain JSON and safetensors only, never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

FORMAT = "nanoflow-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 22
# key -> type of the value; nested sections are checked by the modules that read them
_SCHEMA = {"format": str, "format_version": int, "versions": dict, "device": dict, "model": dict, "engine": dict,
           "schedule": dict, "files": dict}
_SECTIONS = {
    "device": {"type": str, "name": str, "sm_count": int},
    "model": {"name": str, "config": dict, "dtype": str, "signature": str, "weights_sha256": str, "tied": dict},
    "engine": {"token_buckets": list, "max_num_batched_tokens": int, "block_size": int, "num_kv_blocks": int,
               "compile_options": dict},
    "schedule": {"file": str, "graphs": list},
}


class ArtifactError(ValueError):
    """An artifact that cannot be exported or loaded as asked; the message names the file or check that failed."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file under `root` but the manifest itself."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name != MANIFEST:
            files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return files


def write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(root: Path) -> dict:
    """The parsed manifest of the artifact at `root`, its format version and layout checked."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory (expected an artifact made by `nanoflow export`)")
    if not path.is_file():
        raise ArtifactError(f"{root} is not a nanoflow artifact: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a nanoflow artifact manifest (its 'format' is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {version} is newer than this nanoflow reads "
                            f"(version {FORMAT_VERSION}); upgrade nanoflow-compiler to load it")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {version} is older than this nanoflow reads "
                            f"(version {FORMAT_VERSION}); export the model again")
    _check_types(path.name, manifest, _SCHEMA)
    for section, schema in _SECTIONS.items():
        _check_types(f"{path.name} [{section}]", manifest[section], schema)
    return manifest


def _check_types(where: str, data: dict, schema: dict) -> None:
    for key, kind in schema.items():
        if key not in data:
            raise ArtifactError(f"{where} lacks the entry {key!r}")
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ArtifactError(f"{where}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")


def verify_files(root: Path, manifest: dict, names: list[str] | None = None) -> None:
    """Every file the manifest lists (or just `names`) is present, of its recorded size and SHA-256; the schedule and
    the weights must be among them."""
    files = manifest["files"]
    for name in (manifest["schedule"]["file"], manifest["model"].get("weights")):
        if name is not None and name not in files:
            raise ArtifactError(f"{MANIFEST} records no hash for {name}")
    for name in names if names is not None else sorted(files):
        entry = files.get(name) if isinstance(files.get(name), dict) else {}
        if not (isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
            raise ArtifactError(f"{MANIFEST} records no hash and size for {name}")
        path = root / name
        if not path.resolve().is_relative_to(root.resolve()):
            raise ArtifactError(f"{MANIFEST} lists {name}, which lies outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"{root}: file {name} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            what = "truncated" if size < entry["bytes"] else "larger than exported"
            raise ArtifactError(f"{root}: {name} is {what}: {size} bytes, {MANIFEST} records {entry['bytes']}")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ArtifactError(f"{root}: {name} changed after export: its SHA-256 is {digest[:16]}..., "
                                f"{MANIFEST} records {entry['sha256'][:16]}...")


def versions() -> dict[str, str | None]:
    """The software the artifact was made with; a graph traced by another torch may differ (checked at bind)."""
    import torch

    from .. import __version__

    return {"nanoflow": __version__, "torch": torch.__version__, "triton": _version("triton"),
            "transformers": _version("transformers"), "safetensors": _version("safetensors"),
            "python": platform.python_version()}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def version_drift(recorded: dict[str, Any]) -> list[str]:
    """'torch 2.13.0 (artifact made with 2.12.0)' for each package whose version differs from the recorded one."""
    here = versions()
    return [f"{name} {here.get(name)} (artifact made with {was})" for name, was in sorted(recorded.items())
            if name != "python" and here.get(name) != was]


def device_info(device, planned_sms: int) -> dict:
    """The device the schedule was made for: its kind, name and the SM count the plan divided."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_properties(device).name
    else:
        name = f"{device.type} ({platform.machine() or 'unknown machine'})"
    return {"type": device.type, "name": name, "sm_count": int(planned_sms)}


def device_mismatch(recorded: dict, device) -> str | None:
    """Why a schedule made for the `recorded` device does not fit `device` (None if it does). On CPU only the kind
    counts (SM shares are a plan for a GPU that is not there); on CUDA the model and the SM count must match."""
    import torch

    device = torch.device(device)
    made_for = f"{recorded['name']} with {recorded['sm_count']} SMs"
    if device.type != recorded["type"]:
        return f"the artifact was made for {recorded['type']} ({made_for}) and this is {device.type}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        if props.name != recorded["name"] or props.multi_processor_count != recorded["sm_count"]:
            return f"the artifact was made for {made_for} and this is {props.name} with " \
                   f"{props.multi_processor_count} SMs"
    return None


def partial_dir(out: Path) -> Path:
    """Where an export is written before it is renamed into place, beside `out` (same file system)."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"
