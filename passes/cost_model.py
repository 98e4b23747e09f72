"""The analytical cost of a nano-op on an SM partition, for ordering streams when no measured plan exists.

GEMM throughput scales with the SMs a stream gets; memory-bound ops saturate HBM with about a third of an H100
(H100.md: 48-64 SMs), so their bandwidth share grows faster. Peaks default to the H100 we measured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeaks:
    flops: float = 780e12  # dense bf16 GEMM, measured
    bandwidth: float = 3.05e12  # HBM, measured
    saturating_share: float = 0.36  # fraction of the SMs that saturates HBM
    launch_s: float = 4e-6


H100 = DevicePeaks()


def op_seconds(flops: float, nbytes: float, sms: int, device_sms: int, peaks: DevicePeaks = H100) -> float:
    compute_share = sms / device_sms
    memory_share = min(1.0, sms / (device_sms * peaks.saturating_share))
    return peaks.launch_s + max(flops / (peaks.flops * compute_share), nbytes / (peaks.bandwidth * memory_share))
