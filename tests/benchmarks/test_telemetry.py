import time
from types import SimpleNamespace

from nanoflow_compiler.bench.telemetry import METRICS, Telemetry


class FakeNVML:
    """Just enough of pynvml: a clock that rises by 100 MHz per query."""

    NVML_CLOCK_SM = 1

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, h):
        return b"Fake H100"

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("not supported")
        return SimpleNamespace(gpu=90, memory=40)

    def nvmlDeviceGetClockInfo(self, h, which):
        assert which == self.NVML_CLOCK_SM
        return 1000 + 100 * self.calls

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=2 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return 350_000  # milliwatts


def test_samples_and_summarises():
    nvml = FakeNVML()
    with Telemetry(interval_s=0.01, nvml=nvml) as t:
        time.sleep(0.1)
    s = t.summary()
    assert s["available"] and s["device"] == "Fake H100"
    assert s["num_samples"] >= 3 and nvml.shut
    assert set(s["stats"]) == set(METRICS)
    assert s["stats"]["power_w"] == {"mean": 350.0, "min": 350.0, "max": 350.0}
    assert s["stats"]["memory_used_mib"]["max"] == 2048.0
    clocks = [x["sm_clock_mhz"] for x in s["samples"]]
    assert clocks == sorted(clocks) and s["stats"]["sm_clock_mhz"]["max"] == 1000 + 100 * nvml.calls
    assert s["samples"][0]["t"] == 0.0


def test_failing_query_is_recorded_not_raised():
    with Telemetry(interval_s=0.01, nvml=FakeNVML(fail_after=2)) as t:
        time.sleep(0.05)
    s = t.summary()
    assert s["available"] and s["num_samples"] == 2
    assert "not supported" in s["warning"]


def test_no_gpu_is_reported_unavailable():
    class NoDriver(FakeNVML):
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

    with Telemetry(nvml=NoDriver()) as t:
        pass
    s = t.summary()
    assert s == {"available": False, "reason": "NVML unavailable: OSError: NVML Shared Library Not Found"}


def test_disabled_takes_no_samples():
    nvml = FakeNVML()
    with Telemetry(nvml=nvml, enabled=False) as t:
        pass
    assert t.summary() == {"available": False, "reason": "disabled (--no-telemetry)"} and nvml.calls == 0
