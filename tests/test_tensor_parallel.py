"""`tensor_parallel.check`: the sizes refused before any process starts, each with the dimension or device at fault."""

from __future__ import annotations

import pytest
import torch

from nanoflow_compiler import tensor_parallel


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--tensor-parallel-size 2 needs 2 GPUs, but 1 are visible"):
        tensor_parallel.check(2, "llama-3-8b", "cuda")


def test_one_named_gpu_is_refused_for_several_ranks():
    with pytest.raises(ValueError, match="--device cuda:1 names one GPU"):
        tensor_parallel.check(2, "llama-3-8b", "cuda:1")


def test_kv_heads_that_do_not_divide_are_named(tiny_config):
    config = tiny_config("llama-3-8b", num_attention_heads=6, num_key_value_heads=4, hidden_size=96)
    with pytest.raises(ValueError, match=r"num_key_value_heads \(4\) and the tensor-parallel size \(3\) must divide"):
        tensor_parallel.check_divisible(config, 3)


def test_mlp_width_that_does_not_divide_is_named(tiny_config):
    with pytest.raises(ValueError, match=r"intermediate_size \(130\) is not divisible by the tensor-parallel size 4"):
        tensor_parallel.check_divisible(tiny_config("mixtral-8x7b", intermediate_size=130), 4)


def test_sizes_that_divide_pass_on_cpu(tiny_config):
    tensor_parallel.check(1, "no-such-model", "cuda:3")  # one rank: the current path, nothing to check
    tensor_parallel.check(8, "llama-3-8b", "cpu")  # 8 KV heads, 32 heads; a vocabulary that does not divide is padded
    tensor_parallel.check_divisible(tiny_config("llama-3-8b", vocab_size=251), 2)
