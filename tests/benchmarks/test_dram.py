"""The DRAM-utilisation meter around a piece of GPU work (NVML GPM), with a stand-in for pynvml."""

from types import SimpleNamespace

from nanoflow_compiler.bench.dram import dram_utilisation


class FakeGPM:
    """Just enough of pynvml's GPM calls: a device that reports 62.5% DRAM bandwidth between two samples."""

    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10
    NVML_CLOCK_SM = 1

    def __init__(self, supported: bool = True, fail_query: bool = False):
        self.supported, self.fail_query = supported, fail_query
        self.samples_taken, self.freed, self.open = [], [], 0

    def nvmlInit(self):
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_SM
        return 1755 if len(self.samples_taken) == 1 else 1980  # the clock while the work runs

    def nvmlDeviceGetPowerUsage(self, handle):
        return 650_000  # milliwatts

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x4  # software power cap

    def nvmlGpmQueryDeviceSupport(self, handle):
        return SimpleNamespace(isSupportedDevice=int(self.supported))

    def nvmlGpmSampleAlloc(self):
        return object()

    def nvmlGpmSampleFree(self, sample):
        self.freed.append(sample)

    def nvmlGpmSampleGet(self, handle, sample):
        self.samples_taken.append(sample)

    def c_nvmlGpmMetricsGet_t(self):
        return SimpleNamespace(metrics=[SimpleNamespace(metricId=None, value=None)])

    def nvmlGpmMetricsGet(self, query):
        if self.fail_query:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        assert query.version == 1 and query.numMetrics == 1 and query.sample1 is not query.sample2
        assert query.sample1 is self.samples_taken[0] and query.sample2 is self.samples_taken[1]
        if query.metrics[0].metricId == self.NVML_GPM_METRIC_DRAM_BW_UTIL:
            query.metrics[0].value = 62.5
        return query


def test_runs_the_work_for_the_time_asked_between_two_samples_and_frees_them():
    nvml, runs = FakeGPM(), []
    res = dram_utilisation(lambda: runs.append(1), seconds=0.02, nvml=nvml)
    assert res["dram_bw_util_pct"] == 62.5 and res["runs"] == len(runs) >= 1 and res["seconds"] >= 0.02
    assert res["sm_clock_mhz"] == 1755 and res["power_w"] == 650 and res["clock_event_reasons"] == "0x4"
    assert len(nvml.samples_taken) == 2 and nvml.freed == nvml.samples_taken and nvml.open == 0


def test_a_gpu_without_gpm_metrics_is_reported_and_the_work_not_run():
    runs = []
    res = dram_utilisation(lambda: runs.append(1), nvml=FakeGPM(supported=False))
    assert "no NVML GPM metrics" in res["unavailable"] and runs == []


def test_a_refused_query_is_reported_and_the_samples_are_still_freed():
    nvml = FakeGPM(fail_query=True)
    res = dram_utilisation(lambda: None, seconds=0.0, nvml=nvml)
    assert "query failed: RuntimeError: NVML_ERROR_NOT_SUPPORTED" in res["unavailable"] and len(nvml.freed) == 2


def test_without_a_driver_the_reason_is_returned():
    res = dram_utilisation(lambda: None, seconds=0.0)  # a CPU machine: no NVIDIA driver (or no pynvml)
    assert set(res) == {"unavailable"} and ("NVML" in res["unavailable"] or "nvidia-ml-py" in res["unavailable"])
