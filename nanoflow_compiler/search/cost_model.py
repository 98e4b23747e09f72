"""Interference-free op costs and pairwise interference, from the profile table or from an analytical model.

`TableCostModel` interpolates measured times (piecewise linear in tokens and in SMs) and never extrapolates: a
token or SM count outside what was profiled is an error naming what exists. `AnalyticalCostModel` is the fallback
when no profile exists: a roofline over FLOPs and bytes at the op's SM share, where compute scales with the share
and memory bandwidth follows NanoFlow's measured curve for memory-bound kernels (a GEMV on a share R of the SMs gets a
fraction P of its solo performance: 0.1->0.2, 0.2->0.3, 0.8->0.85, 0.9->0.95). That curve was measured while
co-running with GEMMs, so it already holds the interference and the analytical slowdown factors are 1.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import MissingProfileError
from .layer_graph import NETWORK, OpSpec
from .profile_db import ProfileDB

NANOFLOW_MEMORY_CURVE = ((0.0, 0.0), (0.1, 0.2), (0.2, 0.3), (0.8, 0.85), (0.9, 0.95), (1.0, 1.0))


class CostModel(Protocol):
    name: str
    num_sms: int
    granularity: int

    def op_time(self, spec: OpSpec, tokens: int, sms: int) -> float:
        """Seconds for `tokens` tokens of op `spec` alone on `sms` SMs."""

    def slowdown(self, spec_a: OpSpec, sms_a: int, spec_b: OpSpec, sms_b: int) -> float:
        """Factor (>= 1 usually) on A's time while B runs beside it on its own SMs."""


@dataclass(frozen=True)
class DevicePeaks:
    flops: float  # dense GEMM FLOP/s measured on the whole device
    bandwidth: float  # HBM bytes/s on the whole device
    network: float = 0.0  # collective bytes/s (tensor parallel); 0 when the device has no peers
    launch_s: float = 4e-6  # fixed cost per kernel


# Measured numbers where we have them (H100.md); the A100 numbers are NanoFlow's.
KNOWN_PEAKS = {"H100": DevicePeaks(780e12, 3.05e12, 450e9), "H200": DevicePeaks(780e12, 4.3e12, 450e9),
               "A100": DevicePeaks(280e12, 1.8e12, 300e9)}


def peaks_for(device_name: str) -> tuple[str, DevicePeaks]:
    """Peaks of a known device family by name; unknown devices get the H100's and the caller records that."""
    for family, peaks in KNOWN_PEAKS.items():
        if family.lower() in device_name.lower():
            return family, peaks
    return "H100 (assumed)", KNOWN_PEAKS["H100"]


class AnalyticalCostModel:
    name = "analytical"

    def __init__(self, num_sms: int, peaks: DevicePeaks, granularity: int = 8,
                 memory_curve=NANOFLOW_MEMORY_CURVE):
        self.num_sms, self.peaks, self.granularity = num_sms, peaks, granularity
        self._curve = np.array(memory_curve, dtype=float).T

    def memory_fraction(self, share: float) -> float:
        return float(np.interp(share, self._curve[0], self._curve[1]))

    def op_time(self, spec: OpSpec, tokens: int, sms: int) -> float:
        share = sms / self.num_sms
        if spec.cls == NETWORK:
            if self.peaks.network <= 0:
                raise MissingProfileError(f"op {spec.kind!r} is a collective but the device has no network bandwidth")
            return self.peaks.launch_s + spec.bytes(tokens) / self.peaks.network
        compute = spec.flops(tokens) / (self.peaks.flops * share)
        memory = spec.bytes(tokens) / (self.peaks.bandwidth * self.memory_fraction(share))
        return self.peaks.launch_s + max(compute, memory)

    def slowdown(self, spec_a: OpSpec, sms_a: int, spec_b: OpSpec, sms_b: int) -> float:
        return 1.0


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return ys[i]
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] * (1 - w) + ys[i] * w


class TableCostModel:
    name = "profile"

    def __init__(self, db: ProfileDB):
        self.db = db
        self.num_sms, self.granularity = db.device.sm_count, db.device.sm_granularity
        self.missing_interference: set[tuple[str, str]] = set()
        self._pairs: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
        for (a, n, b, m), f in db.interference.items():
            self._pairs.setdefault((a, b), []).append((n, m, f))

    def _row(self, kind: str, tokens: int, sms: int) -> float:
        row = self.db.ops[kind][tokens]
        xs = sorted(row)
        if not xs[0] <= sms <= xs[-1]:
            raise MissingProfileError(f"op {kind!r} at {tokens} tokens was profiled on {xs[0]}..{xs[-1]} SMs, "
                                      f"not on {sms}")
        return _interp(xs, [row[s] for s in xs], sms)

    def op_time(self, spec: OpSpec, tokens: int, sms: int) -> float:
        if spec.kind not in self.db.ops:
            known = ", ".join(sorted(self.db.ops)) or "none"
            raise MissingProfileError(f"no profile for op kind {spec.kind!r}; profiled kinds: {known}")
        ts = self.db.token_counts(spec.kind)
        if not ts[0] <= tokens <= ts[-1]:
            raise MissingProfileError(f"op {spec.kind!r} was profiled for {ts[0]}..{ts[-1]} tokens, not {tokens}: "
                                      f"profile the bucket with `nanoflow search --buckets ...`")
        i = bisect.bisect_left(ts, tokens)
        if ts[i] == tokens:
            return self._row(spec.kind, tokens, sms)
        lo, hi = ts[i - 1], ts[i]
        w = (tokens - lo) / (hi - lo)
        return self._row(spec.kind, lo, sms) * (1 - w) + self._row(spec.kind, hi, sms) * w

    def slowdown(self, spec_a: OpSpec, sms_a: int, spec_b: OpSpec, sms_b: int) -> float:
        """Nearest measured SM pair for the kinds, else for their classes (`class:MEMORY`); 1.0 if never measured."""
        ca, cb = f"class:{spec_a.cls}", f"class:{spec_b.cls}"
        for key in ((spec_a.kind, spec_b.kind), (spec_a.kind, cb), (ca, spec_b.kind), (ca, cb)):
            entries = self._pairs.get(key)
            if entries:
                return min(entries, key=lambda e: abs(e[0] - sms_a) + abs(e[1] - sms_b))[2]
        self.missing_interference.add((spec_a.kind, spec_b.kind))
        return 1.0
