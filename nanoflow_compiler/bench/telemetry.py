"""GPU telemetry during a benchmark: a background thread samples NVML (nvidia-ml-py) at a fixed interval.

SM clock, memory used, power and utilisation explain a throughput number (a throttled clock, a power cap, a GPU that
sat idle waiting for the CPU). Where NVML is missing (no nvidia-ml-py, no driver, a CPU run) the run still goes on
and the result records telemetry as unavailable, with the reason.
"""

from __future__ import annotations

import threading
import time

MAX_KEPT_SAMPLES = 600  # keeps the JSON small on long runs; summaries use every sample

METRICS = ("sm_clock_mhz", "memory_used_mib", "power_w", "gpu_util_pct", "memory_util_pct")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here; the message says why (for the result JSON)."""


def open_nvml(device_index: int = 0, nvml=None):
    """(the pynvml module, the device's handle), or NvmlUnavailable with the reason: no nvidia-ml-py, no driver."""
    try:
        if nvml is None:
            import pynvml as nvml  # provided by the nvidia-ml-py package
        nvml.nvmlInit()
        return nvml, nvml.nvmlDeviceGetHandleByIndex(device_index)
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: a machine without an NVIDIA GPU
        raise NvmlUnavailable(f"NVML unavailable: {type(e).__name__}: {e}") from e


class Telemetry:
    """Use as a context manager around the timed region; `summary()` afterwards gives what the JSON stores."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.1, nvml=None, enabled: bool = True):
        self.enabled = enabled
        self.device_index = device_index
        self.interval_s = interval_s
        self._nvml = nvml
        self._handle = None
        self._samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.unavailable_reason: str | None = None
        self.device_name: str | None = None

    def __enter__(self) -> Telemetry:
        self._open()
        if self._handle is not None:
            self._thread = threading.Thread(target=self._loop, name="nanoflow-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()  # one last sample so that short runs have at least two
        if self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down a library that is already gone is not worth failing a benchmark over
                pass

    def _open(self) -> None:
        if not self.enabled:
            self.unavailable_reason = "disabled (--no-telemetry)"
            return
        try:
            nvml, handle = open_nvml(self.device_index, self._nvml)
            name = nvml.nvmlDeviceGetName(handle)
        except NvmlUnavailable as e:
            self.unavailable_reason = str(e)
            return
        except Exception as e:  # the name query failed: the device is not usable either
            self.unavailable_reason = f"NVML unavailable: {type(e).__name__}: {e}"
            return
        self._nvml, self._handle = nvml, handle
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            self._samples.append({
                "t": time.perf_counter(),
                "sm_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                "memory_used_mib": nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                "power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "gpu_util_pct": float(util.gpu),
                "memory_util_pct": float(util.memory),
            })
        except Exception as e:  # a query the device does not support: stop sampling, say why
            self.unavailable_reason = f"NVML query failed: {type(e).__name__}: {e}"
            self._stop.set()

    def summary(self) -> dict:
        if not self._samples:
            return {"available": False, "reason": self.unavailable_reason or "no samples taken"}
        t0 = self._samples[0]["t"]
        stats = {}
        for m in METRICS:
            values = [s[m] for s in self._samples]
            stats[m] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        step = max(1, len(self._samples) // MAX_KEPT_SAMPLES)
        kept = [{**s, "t": s["t"] - t0} for s in self._samples[::step]]
        out = {"available": True, "device": self.device_name, "interval_s": self.interval_s,
               "num_samples": len(self._samples), "stats": stats, "samples": kept}
        if self.unavailable_reason:
            out["warning"] = self.unavailable_reason
        return out
