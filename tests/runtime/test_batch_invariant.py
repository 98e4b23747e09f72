"""The `batch_invariant` compile option: validation, the host-side kernel choices it fixes (matmul routing, attention
splits), and, under Triton's CPU interpreter, one token's attention bitwise equal across SM budgets and batches."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from nanoflow_compiler.options import CompileOptions, NanoflowOptionsError
from nanoflow_compiler.runtime.attention import paged_attention_reference

triton = pytest.importorskip("triton", reason="the kernels are Triton kernels")
from nanoflow_compiler.runtime.executors import routing
from nanoflow_compiler.runtime.kernels import attention_kernel, dispatch, gemm

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BUDGETS = (1, 8, 36, 96, 132)


def step(target: str):
    def own(*args, **kwargs):
        return ("own", args, kwargs)
    return SimpleNamespace(op=SimpleNamespace(target=target), fn=own)


@pytest.mark.skipif(INTERPRETED, reason="host-side checks run in the parent process")
class TestHostSide:
    def test_option_is_validated(self):
        assert CompileOptions.from_dict({}).batch_invariant is None
        assert CompileOptions.from_dict({"batch_invariant": True}).batch_invariant is True
        with pytest.raises(NanoflowOptionsError, match="batch_invariant must be True, False or None"):
            CompileOptions.from_dict({"batch_invariant": "yes"})

    def test_full_device_matmul_goes_to_the_triton_gemm_only_when_invariant(self, monkeypatch):
        calls = []
        monkeypatch.setattr(gemm, "mm", lambda a, b, num_sms=None, out=None: calls.append((num_sms, out)) or "gemm")
        for target in routing.MM_TARGETS:
            s = step(target)
            assert routing.routed(s, None, 132, invariant=False) is s.fn  # cuBLAS: the default performance path
            assert routing.routed(s, 132, 132, invariant=False) is s.fn
            kwargs = {"out": "o"} if target.endswith(".out") else {}
            assert routing.routed(s, None, 132, invariant=True)("a", "b", **kwargs) == "gemm"
            assert routing.routed(s, 132, 132, invariant=True)("a", "b", **kwargs) == "gemm"
            assert routing.routed(s, 96, 132, invariant=False)("a", "b", **kwargs) == "gemm"  # partitions as before
        assert [n for n, _ in calls] == [132, 132, 96] * 2

    def test_invariant_attention_takes_one_split_on_cuda(self, monkeypatch):
        seen = {}
        monkeypatch.setattr(dispatch, "paged_attention", lambda *a, **k: seen.update(k) or "invariant")
        s = step(routing.ATTENTION_TARGET)
        assert routing.routed(s, 36, 132, invariant=False) is s.fn
        fn = routing.routed(s, 36, 132, invariant=True)
        cuda_q, cpu_q = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
        assert fn(cuda_q, 1, 2, 3, 4, 5, 0.1) == "invariant" and seen == {"batch_invariant": True}
        assert fn(cpu_q, 1, 2, 3, 4, 5, 0.1)[0] == "own"  # the custom op's CPU reference path
        other = step("aten.add.Tensor")
        assert routing.routed(other, 36, 132, invariant=True) is other.fn

    def test_splits_depend_on_nothing_when_invariant(self):
        for cfg in (attention_kernel.DECODE, attention_kernel.PREFILL):
            chosen = {attention_kernel.choose_splits(p, n, cfg, True) for p in (1, 8, 64, 4096) for n in BUDGETS}
            assert chosen == {1}
            default = {attention_kernel.choose_splits(p, n, cfg) for p in (1, 8, 64, 4096) for n in BUDGETS}
            assert len(default) > 1  # without the option the split follows the budget and the token count

    def test_decode_tile_shape_follows_the_budget_unless_invariant(self):
        small, full = attention_kernel.DECODE_SMALL, attention_kernel.DECODE
        assert [attention_kernel.decode_config(n) for n in (1, 32, 64, 65, 132)] == [small] * 3 + [full] * 2
        assert {attention_kernel.decode_config(n, batch_invariant=True) for n in BUDGETS} == {full}

    def test_gemm_configs_share_the_k_loop(self):
        """A row's sum order is the config's K loop: configs may differ only in tile M/N, stages, warps, epilogue."""
        assert len({c.bk for c in gemm.CONFIGS}) == 1
        picks = {gemm.choose_config(m, 4096, 4096, n).bk for m in (1, 17, 256, 1024, 8192) for n in BUDGETS}
        assert picks == {gemm.CONFIGS[0].bk}

    def test_cpu_cases_under_triton_interpreter(self):
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        child = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
                                "-k", "interpreted"], env=env, capture_output=True, text=True, timeout=600,
                               check=False)
        assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
        assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1], child.stdout[-2000:]


PAGE, HQ, HKV, D = 16, 4, 2, 16
CONTEXTS = {0: 600, 1: 300, 2: 45, 3: 90}  # request -> context length; 600 splits without the option


def cache(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    width = -(-max(CONTEXTS.values()) // PAGE)
    tables = torch.randperm(len(CONTEXTS) * width, generator=g).view(len(CONTEXTS), width).int()
    kc, vc = torch.randn(2, len(CONTEXTS) * width, PAGE, HKV, D, generator=g).to(dtype)
    q = {r: torch.randn(8, HQ, D, generator=g).to(dtype) for r in CONTEXTS}  # the last 8 positions' queries
    return kc, vc, tables, q


def launch(parts: list[tuple[int, int]], num_sms: int, dtype: torch.dtype, invariant: bool = True):
    """One paged-attention call over `parts` = (request, number of its last tokens) runs, plus one padding token."""
    kc, vc, tables, q = cache(dtype)
    rows, req, pos = [], [], []
    for r, n in parts:
        rows.append(q[r][-n:])
        req += [r] * n
        pos += range(CONTEXTS[r] - n, CONTEXTS[r])
    rows.append(torch.zeros(1, HQ, D, dtype=dtype))
    req.append(-1)
    pos.append(0)
    args = (torch.cat(rows), kc, vc, tables, torch.tensor(req, dtype=torch.int32), torch.tensor(pos))
    out = dispatch.paged_attention(*args, 0.25, num_sms=num_sms, batch_invariant=invariant)
    ref = paged_attention_reference(*args, 0.25)
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2
    return out


@pytest.fixture
def interpreted():
    if not INTERPRETED:
        pytest.skip("runs inside test_cpu_cases_under_triton_interpreter (TRITON_INTERPRET=1)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_decode_token_is_bitwise_equal_across_budgets_and_batches(interpreted, dtype):
    """Request 0's decode token (context 600) alone, among other decode tokens, and next to a prefill run."""
    batches = [[(0, 1)], [(1, 1), (0, 1), (2, 1)], [(2, 1), (3, 1), (0, 1), (1, 5)]]
    rows = []
    for parts in batches:
        at = sum(n for _, n in parts[:[r for r, _ in parts].index(0)])
        rows += [launch(parts, sms, dtype)[at] for sms in (1, 36, 132)]
    assert all(torch.equal(rows[0], r) for r in rows[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_prefill_run_is_bitwise_equal_across_budgets_and_batches(interpreted, dtype):
    """Request 1's last 5 tokens as a prefill run, alone and with decode tokens before it."""
    runs = []
    for parts in ([(1, 5)], [(0, 1), (2, 1), (1, 5)], [(3, 1), (1, 5), (0, 1)]):
        at = sum(n for _, n in parts[:[r for r, _ in parts].index(1)])
        runs += [launch(parts, sms, dtype)[at:at + 5] for sms in (1, 132)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_decode_matches_the_reference_on_small_and_full_budgets(interpreted, dtype):
    """Without the option a small budget runs DECODE_SMALL (one warp, 16-token tiles) and the full device DECODE;
    both match the reference (`launch` checks), with a split context (600 tokens) and a prefill run beside them."""
    for sms in (8, 64, 132):
        launch([(0, 1), (1, 1), (2, 1), (3, 4)], sms, dtype, invariant=False)
