"""Who slows whom when the layer's two streams co-run: the COMPUTE stream (nano-batched GEMMs and LIGHT ops of
layer_overlap.py) and the MEMORY stream (its paged attention), each beside the other and beside a stand-in that
keeps the other's kind but not its kernel:
- for MEMORY, torch's sum over the same KV caches on the same SMs (what a plain streaming kernel does there);
- for COMPUTE, as many FLOPs of GEMMs whose weight stays in L2 (tensor cores busy and drawing power, little DRAM);
- and beside the GEMMs, FMAs spinning in registers on the MEMORY SMs (power drawn, no memory shared), and the
  attention over in-order pages (DRAM locality).
Each pair runs on disjoint SM partitions with no cross-stream waits, in one CUDA graph; GPU timestamps give when
each stream finished, set beside its time alone. If COMPUTE slows as much beside the plain read as beside attention,
the loss belongs to the shared memory system (L2, crossbar, HBM) or to the power cap, not to our attention kernel;
if attention slows beside GEMMs that barely touch DRAM, HBM bandwidth is not what it lost; if the GEMMs slow
beside the spinning SMs, the power cap (the clock) takes it.

    python benchmarks/interference.py --ctx 512 --split 96
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from gpu_stamp import stamp
from gpu_timing import capture, environment, time_graph, write_json
from layer_overlap import D, Stack, bounds, dram_text, light_ops, stream_ms, timed
from nanoflow_compiler.runtime import partitions
from nanoflow_compiler.runtime.kernels import attention_kernel, dispatch, gemm


@triton.jit
def _spin_kernel(out_ptr, iters, BLOCK: tl.constexpr):
    """FMAs in registers, no memory traffic but the final store: SMs busy and drawing power, nothing else shared."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.arange(0, BLOCK).to(tl.float32) * 1e-3
    for _ in range(iters):
        x = x * 0.999 + 1e-3
    tl.store(out_ptr + offs, x)


L2_GEMM = (512, 2048, 4096)  # M, N, K: a 16 MiB weight, which stays in L2 (a 32 MiB one did not: 29% DRAM)


def layer_ops(stack: Stack, nano: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """The COMPUTE and MEMORY streams' ops of layer_overlap's overlapped schedule, without the waits between them;
    one eager pass in dependency order first, so that every op's inputs exist."""
    rng = bounds(nano)
    for layer, (s, e) in itertools.product(range(stack.layers), rng):
        stack.pre(layer, s, e)
        stack.attn(layer, s, e)
        stack.post(layer, s, e)

    def compute():
        for s, e in rng:
            stack.pre(0, s, e)
        for layer in range(stack.layers):
            for s, e in rng:
                stack.post(layer, s, e)
                if layer + 1 < stack.layers:
                    stack.pre(layer + 1, s, e)

    def memory():
        for layer, (s, e) in itertools.product(range(stack.layers), rng):
            stack.attn(layer, s, e)
    return compute, memory


def stand_ins(stack: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
    """L2-resident GEMMs of the COMPUTE stream's FLOPs, and a plain read of the MEMORY stream's KV bytes."""
    m, n, k = L2_GEMM
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    reps = round(stack.flops * stack.layers / (2 * m * n * k))
    sums = torch.empty(stack.layers, 2, device="cuda", dtype=torch.float32)

    def l2_gemms():
        for _ in range(reps):
            gemm.sm_gemm(a, w, out=out)

    def read_kv():
        """torch's sum over each layer's K and V caches: the attention's bytes, read by a plain streaming kernel.
        (A copy of as many bytes was tried first: between two fresh 1 GB buffers it ran at 25% of HBM's peak.)"""
        for layer, (k, v) in enumerate(stack.caches):
            torch.sum(k.view(-1), 0, dtype=torch.float32, out=sums[layer, 0])
            torch.sum(v.view(-1), 0, dtype=torch.float32, out=sums[layer, 1])
    return l2_gemms, read_kv


def attention_variant(stack: Stack, nano: int, in_order: bool = False,
                      config: attention_kernel.AttnConfig | None = None) -> Callable[[], None]:
    """The MEMORY stream's decode attention, outputs dropped, over a block table that keeps each request's blocks
    in order (as before any churn: DRAM locality) or with another tile config (how deep each program's loads run
    ahead: bytes in flight, which lengthen every co-runner's queue)."""
    tables = (torch.arange(stack.tables.numel(), device="cuda", dtype=torch.int32).view_as(stack.tables)
              if in_order else stack.tables)

    def attend():
        for layer, (s, e) in itertools.product(range(stack.layers), bounds(nano)):
            dispatch.decode_attention(stack.q[layer, s], *stack.caches[layer], tables, stack.req[s:e],
                                      stack.pos[s:e], D ** -0.5, config=config)
    return attend


def spinner(num_sms: int, ms: float) -> Callable[[], None]:
    """FMA spinning on `num_sms` SMs (16 programs each) for about `ms` milliseconds (calibrated on the partition)."""
    block, programs = 512, 16 * num_sms
    out = torch.empty(programs * block, device="cuda", dtype=torch.float32)
    probe = 20_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _spin_kernel[(programs,)](out, probe, BLOCK=block, num_warps=4)  # compile
    start.record()
    _spin_kernel[(programs,)](out, probe, BLOCK=block, num_warps=4)
    end.record()
    end.synchronize()
    iters = max(1, round(probe * ms / start.elapsed_time(end)))
    return lambda: _spin_kernel[(programs,)](out, iters, BLOCK=block, num_warps=4)


def pair(comp, mem, comp_fn, mem_fn) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A graph running `comp_fn` on the COMPUTE partition and `mem_fn` on the MEMORY one (either may be None), with
    timestamps: start, COMPUTE done, MEMORY done."""
    stamps = torch.zeros(3, dtype=torch.int64, device="cuda")

    def body():
        cur = torch.cuda.current_stream()
        stamp(stamps, 0)
        for i, part, fn in ((1, comp, comp_fn), (2, mem, mem_fn)):
            part.stream.wait_stream(cur)
            with torch.cuda.stream(part.stream):
                if fn is not None:
                    fn()
                stamp(stamps, i)
        cur.wait_stream(comp.stream)
        cur.wait_stream(mem.stream)
    return capture(body), stamps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, nargs="+", default=[512], help="decode context of the layer's batch")
    ap.add_argument("--split", type=int, default=96, help="COMPUTE SMs; MEMORY = the rest")
    ap.add_argument("--nano", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dram-seconds", type=float, default=0.3)
    ap.add_argument("--attn-configs", nargs="*", default=[], metavar="nNwWsS",
                    type=attention_kernel.AttnConfig.from_name,
                    help="decode attention tile configs to try beside the GEMMs, e.g. n16w1s2 n16w1s4 n64w4s3")
    ap.add_argument("--name", default="interference")
    args = ap.parse_args()
    total = partitions.sm_layout().total_sms
    parts = partitions.make_partitions({"COMPUTE": args.split, "MEMORY": total - args.split})
    comp, mem = parts["COMPUTE"], parts["MEMORY"]
    rows = []
    for ctx in args.ctx:
        stack = Stack(ctx, args.layers, light_ops(True))
        gemms, attention = layer_ops(stack, args.nano)
        l2_gemms, read_kv = stand_ins(stack)
        gemms_ms = time_graph(pair(comp, mem, gemms, None)[0])
        with torch.cuda.stream(mem.stream):  # calibrated where it runs: as long as the GEMMs alone, and a fifth
            spin = spinner(mem.num_sms, 1.2 * gemms_ms)
        in_order = attention_variant(stack, args.nano, in_order=True)
        cases = {"gemms": (gemms, None), "attention": (None, attention), "l2_gemms": (l2_gemms, None),
                 "read_kv": (None, read_kv), "spin": (None, spin), "attention_in_order": (None, in_order),
                 "gemms+attention": (gemms, attention), "gemms+read_kv": (gemms, read_kv),
                 "gemms+spin": (gemms, spin), "gemms+attention_in_order": (gemms, in_order),
                 "l2_gemms+attention": (l2_gemms, attention), "l2_gemms+read_kv": (l2_gemms, read_kv)}
        for cfg in args.attn_configs:
            variant = attention_variant(stack, args.nano, config=cfg)
            cases |= {f"attention[{cfg.name}]": (None, variant), f"gemms+attention[{cfg.name}]": (gemms, variant)}
        print(f"ctx {ctx}, {args.layers} layers, {comp.num_sms}/{mem.num_sms} SMs, nano={args.nano}: ms per layer",
              flush=True)
        for name, (comp_fn, mem_fn) in cases.items():
            graph, stamps = pair(comp, mem, comp_fn, mem_fn)
            ms, dram = timed(graph, args.layers, args.dram_seconds)
            done = stream_ms(graph, stamps, args.layers)
            rows.append({"ctx": ctx, "case": name, "ms_per_layer": ms, **done, "dram": dram})
            print(f"  {name:26s} {ms:.3f}  COMPUTE done {done['compute_done_ms_per_layer']:.3f}  MEMORY done "
                  f"{done['memory_done_ms_per_layer']:.3f}  ({dram_text(dram)})", flush=True)
        del stack
        torch.cuda.empty_cache()
    write_json(args.name, {"env": environment(), "compute_sms": comp.num_sms, "memory_sms": mem.num_sms,
                           "disjoint": comp.disjoint, "nano_batches": args.nano, "layers": args.layers,
                           "l2_gemm_mnk": L2_GEMM, "rows": rows})


if __name__ == "__main__":
    main()
