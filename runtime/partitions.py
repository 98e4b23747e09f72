"""Disjoint SM partitions of one GPU, each with a CUDA stream whose kernels run only on its SMs.

Why the driver: torch's `GreenContext.create` always takes SMs from SM 0, so two of them overlap (see H100.md). The
driver's `cuDevSmResourceSplitByCount` carves disjoint SM groups; a green context per group and a stream in it give
a stream whose kernels (cuBLAS, Triton, elementwise) stay on that group, also when captured into a CUDA graph.

    parts = make_partitions({"COMPUTE": 96, "MEMORY": 32})
    with torch.cuda.stream(parts["MEMORY"].stream): ...

Where the driver route is missing (no green-context driver, no GPU support) `make_partitions` falls back to plain
streams, warns, and says so in `PartitionStream.disjoint` / `.fallback_reason`; kernels still bound their grids by
`num_sms` (see `sm_budget`), which is a soft partition only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from . import _green_ctx


class PartitionError(ValueError):
    """An SM partition request the device cannot satisfy."""


@dataclass
class PartitionStream:
    """One SM partition: its stream, SM count, and whether the SMs are really exclusive to it."""

    name: str
    stream: torch.cuda.Stream
    num_sms: int
    disjoint: bool
    backend: str  # "cuda.bindings", "ctypes" or "plain-streams"
    fallback_reason: str | None = None
    _handles: Any = field(default=None, repr=False)  # keeps the green context alive as long as the stream


@dataclass(frozen=True)
class SmLayout:
    """What the device allows: total SMs, the smallest partition and the step between partition sizes."""

    total_sms: int
    min_partition: int
    granularity: int
    source: str  # where the granularity came from: "driver" or "compute-capability default"


_BUDGETS: dict[int, int] = {}  # cuda stream handle -> SM count, for sm_budget()


def validate_shares(shares: Mapping[str, int], layout: SmLayout) -> None:
    """Raise PartitionError naming the problem if `shares` cannot be carved out of the device."""
    if not shares:
        raise PartitionError("no partitions requested: pass e.g. {'COMPUTE': 96, 'MEMORY': 32}")
    total = 0
    for i, (name, n) in enumerate(shares.items()):
        if not isinstance(n, int) or isinstance(n, bool):
            raise PartitionError(f"partition {name!r}: SM count must be an int, got {n!r}")
        if n < layout.min_partition:
            raise PartitionError(f"partition {name!r}: {n} SMs is below the device's minimum of {layout.min_partition}")
        total += n
        takes_the_rest = i == len(shares) - 1 and total == layout.total_sms  # the driver's remainder: any size
        if n % layout.granularity and not takes_the_rest:
            lo = n // layout.granularity * layout.granularity
            raise PartitionError(f"partition {name!r}: {n} SMs is not a multiple of the device's SM granularity "
                                 f"{layout.granularity} (try {lo} or {lo + layout.granularity})")
    if total > layout.total_sms:
        raise PartitionError(f"partitions ask for {total} SMs ({dict(shares)}) but the device has {layout.total_sms}")


def sm_layout(device: int | torch.device | None = None) -> SmLayout:
    """The device's SM count and partition granularity, read from the driver where it reports them."""
    index = _device_index(device)
    total = torch.cuda.get_device_properties(index).multi_processor_count
    try:
        min_size, align = _green_ctx.sm_constraints(index)
    except _green_ctx.GreenContextUnavailable:
        min_size = align = 0
    if min_size and align:
        return SmLayout(total, min_size, max(align, 1), "driver")
    # Documented for green contexts: compute capability 9.0+ needs multiples of 8 SMs, 8.x of 2.
    major = torch.cuda.get_device_capability(index)[0]
    step = 8 if major >= 9 else 2
    return SmLayout(total, step, step, "compute-capability default")


def make_partitions(
    shares: Mapping[str, int], device: int | torch.device | None = None, allow_fallback: bool = True
) -> dict[str, PartitionStream]:
    """Carve disjoint SM partitions, in the order given, each with a non-blocking stream.

    Counts must be multiples of the device's granularity (except a last partition that takes exactly the rest of
    the device, e.g. 96 + 36 on 132 SMs) and sum to at most its SM count; an impossible request raises
    PartitionError whatever `allow_fallback` says. Only a missing driver route falls back to plain streams.
    """
    index = _device_index(device)
    layout = sm_layout(index)
    validate_shares(shares, layout)
    try:
        groups = _green_ctx.split(index, list(shares.values()))
    except _green_ctx.GreenContextUnavailable as exc:
        if not allow_fallback:
            raise PartitionError(f"disjoint SM partitions are unavailable: {exc}") from exc
        warnings.warn(f"SM partitions fall back to plain streams (kernels may share SMs): {exc}", RuntimeWarning,
                      stacklevel=2)
        parts = {name: PartitionStream(name, torch.cuda.Stream(index), n, False, "plain-streams", str(exc))
                 for name, n in shares.items()}
    else:
        parts = {}
        for (name, n), group in zip(shares.items(), groups):
            if group.num_sms != n:
                raise PartitionError(f"partition {name!r}: asked for {n} SMs, the driver gave {group.num_sms}")
            stream = torch.cuda.ExternalStream(group.stream_handle, device=torch.device("cuda", index))
            parts[name] = PartitionStream(name, stream, n, True, group.backend, None, group)
    for part in parts.values():
        _BUDGETS[part.stream.cuda_stream] = part.num_sms
    return parts


def sm_budget(stream: torch.cuda.Stream | None = None) -> int:
    """SMs that kernels launched on `stream` (default: the current stream) may use: its partition's, else all."""
    stream = stream if stream is not None else torch.cuda.current_stream()
    budget = _BUDGETS.get(stream.cuda_stream)
    if budget is not None:
        return budget
    return torch.cuda.get_device_properties(stream.device).multi_processor_count


def _device_index(device: int | torch.device | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, torch.device):
        return device.index if device.index is not None else torch.cuda.current_device()
    return int(device)


def check_disjoint(parts: Mapping[str, PartitionStream]) -> dict[str, int]:
    """Launch a probe kernel on every disjoint partition and check where it ran: each within its SM count and no
    SM shared between partitions. Returns the SMs seen per partition; raises PartitionError otherwise."""
    from .kernels.smid import sm_ids

    seen = {name: sm_ids(p.stream) for name, p in parts.items() if p.disjoint}
    for name, ids in seen.items():
        if len(ids) > parts[name].num_sms:
            raise PartitionError(f"partition {name!r} has {parts[name].num_sms} SMs but its kernels ran on {len(ids)}")
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if seen[a] & seen[b]:
                raise PartitionError(f"partitions {a!r} and {b!r} share SMs {sorted(seen[a] & seen[b])[:8]}")
    return {name: len(ids) for name, ids in seen.items()}
