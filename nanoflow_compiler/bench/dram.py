"""DRAM bandwidth the GPU delivered while a piece of work ran, from NVML's GPU Performance Monitoring (Hopper on),
with the SM clock and board power it ran at.

Why: two streams co-running on disjoint SM partitions slow each other. Whether their DRAM traffic grew (tiles missing
in L2) or HBM delivered the same bytes less efficiently (mixed streams) shows in the utilisation it reports while
they run, set beside each stream alone: utilisation x time is proportional to the bytes moved. The third
explanation, a power cap that lowers the clock when tensor cores and HBM are busy at once, shows in the clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .telemetry import NvmlUnavailable, open_nvml

SAMPLE_S = 0.005


def dram_utilisation(work: Callable[[], None], seconds: float = 0.3, device_index: int = 0, nvml=None) -> dict:
    """Run `work` (which must finish its GPU work before returning) again and again for about `seconds`, and return
    {"dram_bw_util_pct", "sm_clock_mhz", "power_w", "clock_event_reasons", "seconds", "runs"}: the DRAM bandwidth
    used, in percent of the peak, over that time; the SM clock and power sampled while it ran (means), and the
    reasons NVML gave for holding the clock down (bitmask, OR of every sample). Where NVML or its GPM metrics are
    missing: {"unavailable": reason}, and `work` does not run."""
    try:
        nvml, handle = open_nvml(device_index, nvml)
    except NvmlUnavailable as e:
        return {"unavailable": str(e)}
    try:
        return _measure(nvml, handle, work, seconds)
    finally:
        nvml.nvmlShutdown()  # nvmlInit counts its callers


def _measure(nvml, handle, work: Callable[[], None], seconds: float) -> dict:
    try:
        if not nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            return {"unavailable": "this GPU has no NVML GPM metrics (Hopper or later has)"}
        first, second = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    except Exception as e:  # NVMLError_NotSupported and the like: an older driver
        return {"unavailable": f"NVML GPM unavailable: {type(e).__name__}: {e}"}
    try:
        nvml.nvmlGpmSampleGet(handle, first)
        stop, clocks = threading.Event(), {"mhz": [], "w": [], "reasons": 0}
        sampler = threading.Thread(target=_sample_clocks, args=(nvml, handle, stop, clocks), daemon=True)
        start, runs = time.perf_counter(), 0
        sampler.start()
        while runs == 0 or time.perf_counter() - start < seconds:
            work()
            runs += 1
        stop.set()
        sampler.join()
        elapsed = time.perf_counter() - start
        nvml.nvmlGpmSampleGet(handle, second)
        query = nvml.c_nvmlGpmMetricsGet_t()
        query.version = nvml.NVML_GPM_METRICS_GET_VERSION
        query.numMetrics = 1
        query.sample1, query.sample2 = first, second
        query.metrics[0].metricId = nvml.NVML_GPM_METRIC_DRAM_BW_UTIL
        nvml.nvmlGpmMetricsGet(query)
        n = len(clocks["mhz"])
        return {"dram_bw_util_pct": float(query.metrics[0].value), "sm_clock_mhz": sum(clocks["mhz"]) / n,
                "power_w": sum(clocks["w"]) / n, "clock_event_reasons": hex(clocks["reasons"]), "seconds": elapsed,
                "runs": runs}
    except Exception as e:  # a metric the driver refuses: the benchmark's timings still stand
        return {"unavailable": f"NVML GPM query failed: {type(e).__name__}: {e}"}
    finally:
        for sample in (first, second):
            nvml.nvmlGpmSampleFree(sample)


def _sample_clocks(nvml, handle, stop: threading.Event, out: dict) -> None:
    """SM clock, power and clock-event reasons every SAMPLE_S until `stop`, at least once: reads taken while the
    work runs, not after it (a read after each run sees the end of a run, where one stream may run alone)."""
    while True:
        out["mhz"].append(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        out["w"].append(nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        out["reasons"] |= nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
        if stop.wait(SAMPLE_S):
            return
