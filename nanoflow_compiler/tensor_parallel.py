"""`--tensor-parallel-size N` (`-tp N`) for generate, serve and bench: its checks, and one process per rank.

Every rank loads its weight shard and builds the same engine; rank 0 then does the command's work (scheduling,
sampling, printing, HTTP, JSON) while the others follow its batches (`runtime.tp_channel`). N = 1 calls the command
in this process, as before. Bad sizes fail before any process starts, with the model dimension that does not divide.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                        help="shard the model over N processes, one GPU each (gloo on CPU); default 1")


def check(size: int, model: str | None, device: str | None) -> None:
    """Refuse a size that cannot work: below 1, more ranks than visible GPUs, a device index (each rank takes its
    own GPU), or a model whose heads / KV heads / MLP width the size does not divide."""
    if size < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {size}")
    if size == 1:
        return
    import torch

    on_cuda = _on_cuda(device)
    if on_cuda and device is not None and ":" in str(device):
        raise ValueError(f"--device {device} names one GPU, but with --tensor-parallel-size {size} rank r uses GPU r; "
                         "pass --device cuda")
    if on_cuda and torch.cuda.device_count() < size:
        raise ValueError(f"--tensor-parallel-size {size} needs {size} GPUs, but {torch.cuda.device_count()} "
                         "are visible (CUDA_VISIBLE_DEVICES)")
    config = _model_config(model)
    if config is not None:
        check_divisible(config, size, model)


def check_divisible(config, size: int, model: str | None = None) -> None:
    """Build rank 0 of the sharded model on the meta device (no memory): the layers raise for any dimension that does
    not split, naming it."""
    import torch

    from .models.loader import model_class
    from .runtime.distributed import TPGroup

    cls = model_class(config)  # an unsupported model type says so itself
    try:
        with torch.device("meta"):
            cls(config, tp=TPGroup(0, size, "check"))
    except ValueError as e:
        raise ValueError(f"model {model or 'default'!r} cannot be split over --tensor-parallel-size {size}: {e}") \
            from None


def launch(fn: Callable[..., Any], size: int, *args, device: str | None = None) -> Any:
    """`fn(*args)` on every rank; rank 0's result (a follower's own under torchrun). Size 1 calls `fn` here."""
    from .runtime import distributed

    if size == 1:
        return fn(*args)
    backend = "nccl" if _on_cuda(device) else "gloo"
    return distributed.launch(_rank_main, size, fn, warnings.showwarning, *args, backend=backend)


def follow(engine) -> None:
    """A follower rank's part after its engine is built: run rank 0's batches until it says stop."""
    from .runtime.tp_channel import follow as follow_batches

    follow_batches(engine.runner)


def _rank_main(fn: Callable[..., Any], showwarning: Callable[..., None], *args) -> Any:
    """Warnings look as they do in the parent (the CLI's one-line form), and only rank 0 shows them: every rank runs
    the same start-up, so a follower's warnings would repeat rank 0's."""
    from .runtime.distributed import is_primary

    warnings.showwarning = showwarning
    if is_primary():
        _terminate_with_parent()
    else:
        warnings.simplefilter("ignore")
    return fn(*args)


def _terminate_with_parent() -> None:
    """Rank 0 gets SIGTERM when the launching process dies (Linux), so that `kill <launcher>` drains a server and
    releases the followers rather than leaving the ranks serving without a parent. Followers need no such signal:
    rank 0 stops them, or its death ends their wait."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _on_cuda(device: str | None) -> bool:
    import torch

    if device in (None, "auto"):
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def _model_config(spec: str | None):
    """The config of a model spec without its weights; None where the spec is not resolved here (the ranks'
    loader then reports it)."""
    from transformers import AutoConfig

    from .models import DEFAULT_MODEL, PRESETS, preset_config
    from .models.loader import default_gguf_path

    if spec in PRESETS:
        return preset_config(spec)
    path = default_gguf_path() if spec in (None, DEFAULT_MODEL) else Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    return None
