"""The decode launch of the paged-attention kernel against the reference, in both tile configs (DECODE for the whole
device, DECODE_SMALL for small partitions): on CPU through Triton's interpreter (tiny shapes, fp16 and fp32: the
interpreter's bf16 dot is wrong), on the GPU in bf16 at the shapes of the kernel tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from nanoflow_compiler.runtime.attention import paged_attention_reference

pytest.importorskip("triton", reason="the decode kernels are Triton kernels")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CONFIGS = ["DECODE", "DECODE_SMALL"]  # attention_kernel's decode tile configs, by name


@pytest.fixture
def interpreted():
    """The kernel module, in a process that runs Triton's CPU interpreter (test_cpu_cases_under_triton_interpreter)."""
    if not INTERPRETED:
        pytest.skip("runs inside test_cpu_cases_under_triton_interpreter's child process (TRITON_INTERPRET=1)")
    from nanoflow_compiler.runtime.kernels import attention_kernel

    return attention_kernel


@pytest.mark.skipif(INTERPRETED, reason="this is the parent of the interpreted run")
def test_cpu_cases_under_triton_interpreter():
    """Triton reads TRITON_INTERPRET when it decorates functions, its own library functions included, at import:
    the interpreted cases run in a child process that sets it from the start."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
                            "-k", "interpreted"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1], child.stdout[-2000:]


def decode_batch(contexts, hq, hkv, d, page, dtype, device="cpu", seed=0):
    """One decode token per context, a 2-token run (not decode: left alone) and a padding token; cache slots that no
    context covers hold NaN, as never-written blocks may."""
    g = torch.Generator().manual_seed(seed)
    width = max(-(-c // page) for c in [*contexts, 3])
    nblocks = (len(contexts) + 1) * width + 1
    tables = torch.randperm(nblocks, generator=g)[: (len(contexts) + 1) * width].view(-1, width).int()
    kc, vc = torch.randn(2, nblocks, page, hkv, d, generator=g)
    written = torch.zeros(nblocks * page, dtype=torch.bool)
    for r, ctx in enumerate([*contexts, 3]):
        p = torch.arange(ctx)
        written[tables[r, p // page].long() * page + p % page] = True
    kc.view(-1, hkv, d)[~written] = float("nan")
    vc.view(-1, hkv, d)[~written] = float("nan")
    req = list(range(len(contexts))) + [len(contexts)] * 2 + [-1]
    pos = [c - 1 for c in contexts] + [1, 2, 0]
    q = torch.randn(len(req), hq, d, generator=g)
    to = {"device": device, "dtype": dtype}
    return (q.to(**to), kc.to(**to), vc.to(**to), tables.to(device),
            torch.tensor(req, dtype=torch.int32, device=device), torch.tensor(pos, device=device))


def check(launch_out, args, scale):
    """Decode rows match the reference, padding is zero, the 2-token run's rows are untouched."""
    q, kc, vc, *rest = args
    ref = paged_attention_reference(q, kc.nan_to_num(), vc.nan_to_num(), *rest, scale)  # NaN slots are masked anyway
    decode = slice(0, args[0].shape[0] - 3)
    err = ((launch_out[decode].float() - ref[decode].float()).norm() / ref[decode].float().norm()).item()
    assert err < 1e-2, err
    assert torch.equal(launch_out[-1], torch.zeros_like(launch_out[-1]))
    assert (launch_out[-3:-1] == 7.0).all()


def launch(kernel, args, scale: float, num_sms: int, config):
    """The decode launch into an output pre-filled with 7.0 (rows it does not own must keep it)."""
    out = torch.full_like(args[0], 7.0)
    kernel.launch(*args, scale, out, prefill=False, num_sms=num_sms, config=config)
    return out


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_decode_matches_reference(interpreted, cfg, dtype):
    args = decode_batch([1, 9, 40, 70], 8, 4, 16, 8, dtype)
    check(launch(interpreted, args, 0.3, 4, getattr(interpreted, cfg)), args, 0.3)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_interpreted_gqa_1_pads_rows(interpreted, cfg):
    """G = 1: one query row per program, padded to 16."""
    args = decode_batch([5, 33], 4, 4, 16, 8, torch.float16, seed=1)
    check(launch(interpreted, args, 0.25, 1, getattr(interpreted, cfg)), args, 0.25)


GPU_CASES = [(32, 8, 128, 16, [1, 33, 1000, 4096]), (32, 4, 64, 32, [5, 64, 777, 2048]),
             (8, 8, 128, 16, [17, 300]), (32, 8, 128, 16, [32768])]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("hq, hkv, d, page, contexts", GPU_CASES)
@pytest.mark.parametrize("num_sms", [132, 32])
def test_gpu_decode_matches_reference(cfg, hq, hkv, d, page, contexts, num_sms):
    from nanoflow_compiler.runtime.kernels import attention_kernel

    args = decode_batch(contexts, hq, hkv, d, page, torch.bfloat16, device="cuda")
    out = launch(attention_kernel, args, d ** -0.5, num_sms, getattr(attention_kernel, cfg))
    check(out.cpu(), tuple(a.cpu() for a in args), d ** -0.5)


@pytest.mark.gpu
def test_gpu_small_budget_decode_replays_in_cuda_graph():
    from nanoflow_compiler.runtime.kernels import dispatch

    args = decode_batch([100, 300, 17], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    q = args[0]
    dispatch.decode_attention(*args, 0.1, num_sms=32)  # compile outside the capture (DECODE_SMALL on 32 SMs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dispatch.decode_attention(*args, 0.1, num_sms=32)
    q.copy_(torch.randn_like(q))
    graph.replay()
    q, kc, vc, *rest = (a.cpu() for a in args)
    ref = paged_attention_reference(q, kc.nan_to_num(), vc.nan_to_num(), *rest, 0.1)
    err = ((out[:3].float().cpu() - ref[:3].float()).norm() / ref[:3].float().norm()).item()
    assert err < 1e-2
