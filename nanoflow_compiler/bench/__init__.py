"""Benchmark core: workloads, the engine runner, vLLM-format reports, NanoFlow's optimal throughput, telemetry, plots.

Installed with the package so that `nanoflow bench` works after `pip install`; `benchmarks/*.py` in the repository
are thin scripts over these modules.
"""
