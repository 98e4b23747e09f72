"""Grouped decode attention kernel against the reference: on CPU through Triton's interpreter (tiny shapes, fp16 and
fp32: the interpreter's bf16 dot is wrong), on the GPU in bf16 at the shapes of the kernel tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from nanoflow_compiler.runtime.attention import paged_attention_reference

pytest.importorskip("triton", reason="the decode kernels are Triton kernels")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CONFIG_ARGS = [  # DecodeConfig keyword arguments: every variant, TMA with a 2-D and a 3-D descriptor, split and not
    {},
    {"heads_per_program": 1, "tile_pages": 2},
    {"heads_per_program": 2, "tile_pages": 4, "min_split_tokens": 16},
    {"tma": True},
    {"tma": True, "heads_per_program": 2, "min_split_tokens": 16},
    {"persistent": True, "programs_per_sm": 1},
    {"persistent": True, "tma": True, "heads_per_program": 2, "min_split_tokens": 16},
]


@pytest.fixture
def interpreted():
    """The kernel module, in a process that runs Triton's CPU interpreter (test_cpu_cases_under_triton_interpreter)."""
    if not INTERPRETED:
        pytest.skip("runs inside test_cpu_cases_under_triton_interpreter's child process (TRITON_INTERPRET=1)")
    from nanoflow_compiler.runtime.kernels import decode_kernel

    return decode_kernel


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


@pytest.mark.parametrize("cfg", CONFIG_ARGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_decode_matches_reference(interpreted, cfg, dtype):
    args = decode_batch([1, 9, 40, 70], 8, 4, 16, 8, dtype)
    out = torch.full_like(args[0], 7.0)
    interpreted.launch(*args, 0.3, out, num_sms=4, config=interpreted.DecodeConfig(**cfg))
    check(out, args, 0.3)


def test_interpreted_gqa_16_pads_rows(interpreted):
    """G = 1 (query rows padded to 16) and a large group in one program."""
    args = decode_batch([5, 33], 4, 4, 16, 8, torch.float16, seed=1)
    out = torch.full_like(args[0], 7.0)
    interpreted.launch(*args, 0.25, out, num_sms=1, config=interpreted.DecodeConfig())
    check(out, args, 0.25)


def test_interpreted_bad_configs_name_the_problem(interpreted):
    args = decode_batch([5], 8, 4, 16, 8, torch.float16)
    out = torch.empty_like(args[0])
    with pytest.raises(ValueError, match="does not divide"):
        interpreted.launch(*args, 0.3, out, num_sms=1, config=interpreted.DecodeConfig(heads_per_program=3))
    with pytest.raises(ValueError, match="one page per tile"):
        interpreted.launch(*args, 0.3, out, num_sms=1, config=interpreted.DecodeConfig(tma=True, tile_pages=2))


GPU_CASES = [(32, 8, 128, 16, [1, 33, 1000, 4096]), (32, 4, 64, 32, [5, 64, 777, 2048]),
             (8, 8, 128, 16, [17, 300]), (32, 8, 128, 16, [32768])]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIG_ARGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("hq, hkv, d, page, contexts", GPU_CASES)
@pytest.mark.parametrize("num_sms", [132, 32])
def test_gpu_decode_matches_reference(cfg, hq, hkv, d, page, contexts, num_sms):
    from nanoflow_compiler.runtime.kernels import decode_kernel

    args = decode_batch(contexts, hq, hkv, d, page, torch.bfloat16, device="cuda")
    out = torch.full_like(args[0], 7.0)
    decode_kernel.launch(*args, d ** -0.5, out, num_sms=num_sms, config=decode_kernel.DecodeConfig(**cfg))
    check(out.cpu(), tuple(a.cpu() for a in args), d ** -0.5)


@pytest.mark.gpu
def test_gpu_decode_replays_in_cuda_graph():
    from nanoflow_compiler.runtime.kernels import decode_kernel, dispatch

    args = decode_batch([100, 300, 17], 32, 8, 128, 16, torch.bfloat16, device="cuda")
    q = args[0]
    cfg = decode_kernel.DecodeConfig(tma=True)
    dispatch.decode_attention(*args, 0.1, num_sms=32, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dispatch.decode_attention(*args, 0.1, num_sms=32, config=cfg)
    q.copy_(torch.randn_like(q))
    graph.replay()
    q, kc, vc, *rest = (a.cpu() for a in args)
    ref = paged_attention_reference(q, kc.nan_to_num(), vc.nan_to_num(), *rest, 0.1)
    err = ((out[:3].float().cpu() - ref[:3].float()).norm() / ref[:3].float().norm()).item()
    assert err < 1e-2
