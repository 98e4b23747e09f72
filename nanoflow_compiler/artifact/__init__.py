"""Compiled serving artifacts: `export` a model compiled (and tuned) once, `load` it to serve without planning again.

An artifact is a directory: manifest.json (format version, library versions, device, model config and signature,
engine settings, SHA-256 of every file), schedule.json (the Schedule IR of every token bucket), profile.json (the
search's profile database and plans, when one was used), model.safetensors (optional) and tokenizer/ (the tokenizer's
own files). Everything is JSON or safetensors: loading never unpickles.
"""

from .exporter import export
from .loader import ArtifactLLM, ArtifactWarning, load
from .manifest import FORMAT_VERSION, ArtifactError, read_manifest, verify_files
from .schedule import read_schedule

__all__ = ["FORMAT_VERSION", "ArtifactError", "ArtifactLLM", "ArtifactWarning", "export", "load", "read_manifest",
           "read_schedule", "verify_files"]
