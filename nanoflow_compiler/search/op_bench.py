"""Runnable CUDA instances of the layer graph's op kinds, for the profiler to time.

The kind string is the contract (see layer_graph.py): `mm[k=4096,n=6144,bf16]` runs the SM-aware Triton GEMM
the executor uses on partitions, `attn[...]` the paged decode attention kernel, light kinds the eager torch ops.
Every op sizes its grid from the SM budget of the stream it is launched on, so the same callable is timed on
each partition.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import MissingProfileError
from .layer_graph import OpSpec

_KIND = re.compile(r"^(?P<name>[a-z_]+)\[(?P<args>[^\]]*)\]$")


def parse_kind(kind: str) -> tuple[str, dict[str, int], str]:
    """`mm[k=4096,n=6144,bf16]` -> ("mm", {"k": 4096, "n": 6144}, "bf16")."""
    m = _KIND.match(kind)
    if not m:
        raise MissingProfileError(f"op kind {kind!r} is not of the form name[key=value,...,dtype]")
    params, dtype = {}, "bf16"
    for part in m["args"].split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            params[key] = int(value)
        elif part:
            dtype = part
    return m["name"], params, dtype


def make_cuda_op(spec: OpSpec, tokens: int, device: str = "cuda", block_size: int = 16) -> Callable[[], None]:
    """A closure that launches one instance of the op on the current stream, with its buffers preallocated.

    The buffers are filled on the current stream and the timers launch the op on partition streams that do not
    wait for it, so this waits for them: an op that ran first read a block table still being written (an illegal
    address on the H200 whenever launches were not serialised)."""
    import torch

    op = _cuda_op(spec, tokens, device, block_size)
    torch.cuda.synchronize(device)
    return op


def _cuda_op(spec: OpSpec, tokens: int, device: str, block_size: int) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    from ..runtime.kernels import dispatch, gemm

    name, p, dt = parse_kind(spec.kind)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dt]

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype) * 0.1

    if name == "mm":
        x, w, out = rand(tokens, p["k"]), rand(p["n"], p["k"]), torch.empty(tokens, p["n"], device=device, dtype=dtype)
        return lambda: gemm.sm_gemm(x, w, out=out)
    if name == "attn":
        nq, nkv, d, ctx = p["q"], p["kv"], p["d"], p["ctx"]
        per_req = -(-ctx // block_size)
        k_cache, v_cache = rand(tokens * per_req, block_size, nkv, d), rand(tokens * per_req, block_size, nkv, d)
        # Scattered blocks, as a long-running block manager leaves them.
        tables = torch.randperm(tokens * per_req, device=device).to(torch.int32).view(tokens, per_req)
        q = rand(tokens, nq, d)
        token_req = torch.arange(tokens, device=device, dtype=torch.int32)
        positions = torch.full((tokens,), ctx - 1, device=device, dtype=torch.int64)
        return lambda: dispatch.decode_attention(q, k_cache, v_cache, tables, token_req, positions, d**-0.5)
    if name == "rmsnorm_residual":
        x, r, w = rand(tokens, p["h"]), rand(tokens, p["h"]), rand(p["h"])

        def norm() -> None:
            h = (x + r).float()
            (w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype))
        return norm
    if name == "rope_kv_append":
        nq, nkv, d = p["q"], p["kv"], p["d"]
        q, k, v = rand(tokens, nq, d), rand(tokens, nkv, d), rand(tokens, nkv, d)
        cos, sin = rand(tokens, 1, d // 2), rand(tokens, 1, d // 2)
        blocks = -(-tokens // block_size)
        k_cache, v_cache = rand(blocks, block_size, nkv, d), rand(blocks, block_size, nkv, d)
        slots = torch.arange(tokens, device=device, dtype=torch.int64)

        def rope(x):
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        return lambda: (rope(q), dispatch.kv_append(rope(k), v, k_cache, v_cache, slots))
    if name == "silu_mul":
        gu = rand(tokens, 2 * p["i"])

        def act() -> None:
            g, u = gu.chunk(2, dim=-1)
            F.silu(g) * u
        return act
    raise MissingProfileError(f"no GPU benchmark for op kind {spec.kind!r}: extend search/op_bench.py")
