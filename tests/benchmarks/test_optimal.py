import pytest
import torch

from nanoflow_compiler.bench.datasets import BenchRequest, Workload
from nanoflow_compiler.bench.optimal import (
    count_parameters, kv_bytes_per_token, measure_peaks, optimal_tokens_per_second, roofline,
)
from nanoflow_compiler.models import preset_config, random_model


@pytest.mark.parametrize("name, overrides", [
    ("smollm2-135m", {}),  # tied embeddings
    ("llama-3-8b", {}),  # untied LM head
    ("qwen2-0.5b", {}),  # QKV biases
])
def test_parameter_count_matches_the_built_model(tiny_config, name, overrides):
    config = tiny_config(name, **overrides)
    model = random_model(config, torch.float32, "cpu")
    built = sum(p.numel() for p in model.parameters())  # tied weights are counted once by parameters()
    count = count_parameters(config, torch.float32)
    assert count.total == built
    assert count.embedding == config.vocab_size * config.hidden_size
    assert kv_bytes_per_token(config, torch.bfloat16) == model.kv_bytes_per_token(torch.bfloat16)


def test_llama3_8b_is_nanoflows_8_03b_and_48_6k_tokens_per_second():
    count = count_parameters(preset_config("llama-3-8b"))
    assert count.total == 8_030_261_248
    assert optimal_tokens_per_second(780e12, count.total) == pytest.approx(48_566, rel=1e-3)
    # one iteration reads every weight but the untied embedding table, in bf16
    assert count.weight_bytes_per_iteration == 2 * (count.total - count.embedding)


def _config(tiny_config):
    return tiny_config("llama-3-8b")


def test_roofline_counts_kv_reads_of_every_decode_step(tiny_config):
    config = _config(tiny_config)
    kv = kv_bytes_per_token(config, torch.bfloat16)
    # input 4, output 3: decode steps attend to 5 and 6 cached tokens
    w = Workload("t", [BenchRequest([1, 2, 3, 4], 3)], seed=0)
    roof = roofline(w, config, flops_per_second=1e12, bytes_per_second=1e9, dense_batch=7)
    assert roof["kv_read_bytes"] == kv * 11
    weights = count_parameters(config).weight_bytes_per_iteration  # 7 tokens, dense batch 7: one full read
    assert roof["weight_read_bytes"] == pytest.approx(weights)
    assert roof["t_memory_s"] == pytest.approx((kv * 11 + weights) / 1e9)
    assert roof["t_compute_s"] == pytest.approx(2 * count_parameters(config).total * 7 / 1e12)


def test_roofline_bounds_order_and_regime(tiny_config):
    config = _config(tiny_config)
    w = Workload("t", [BenchRequest(list(range(64)), 64)] * 4, seed=0)
    fast_memory = roofline(w, config, flops_per_second=1e9, bytes_per_second=1e15, dense_batch=128)
    slow_memory = roofline(w, config, flops_per_second=1e15, bytes_per_second=1e6, dense_batch=128)
    assert fast_memory["bound"] == "compute" and slow_memory["bound"] == "memory"
    for roof in (fast_memory, slow_memory):
        assert roof["overlapped_tokens_per_second"] >= roof["sequential_tokens_per_second"]
    with pytest.raises(ValueError, match="positive"):
        roofline(w, config, 0.0, 1.0, 128)


def test_peaks_measured_on_cpu_or_given():
    measured = measure_peaks("cpu", torch.float32)
    assert measured.flops_per_second > 1e8 and measured.bytes_per_second > 1e7
    assert measured.source == "measured" and "torch.mm" in measured.detail
    given = measure_peaks("cpu", tflops=780, bandwidth_tb_s=3.05)
    assert (given.flops_per_second, given.bytes_per_second, given.source) == (780e12, 3.05e12, "given")
    assert given.to_dict()["tflops"] == pytest.approx(780)
