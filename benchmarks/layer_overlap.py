"""Llama-3-8B decoder layers at 1024 tokens, nano-batched by hand: GEMMs (+ norms, rotary, KV append) on a
COMPUTE partition stream, paged attention on a MEMORY partition stream, events between them; against the same ops
in one stream. Everything is captured in CUDA graphs; each stream alone and both together are timed in one run.

Batch: 1008 decode tokens (one per request, context `--ctx`, jittered +-64) and one 16-token prefill chunk of a
request with a 1008-token cached prefix: a mostly-decode dense batch as NanoFlow's steady state has.

`--layers N` runs N such layers (shared weights, one KV cache each) and reports time per layer: as in NanoFlow,
nano-batch i of layer l+1 starts as soon as its own layer-l output exists, so the pipeline fill and drain of a lone
layer (attention of the first nano-batch with an idle COMPUTE stream, the last MLP with an idle MEMORY stream) is
paid once per N layers, not once per layer. `--layers 1` measures the lone layer. Each timed graph also replays
for `--dram-seconds` under NVML's DRAM-bandwidth meter: utilisation x time, set beside each stream alone, shows
whether co-running moved more bytes or moved them slower. `--fuse-light` runs the LIGHT ops (RMSNorm with its
residual add, rotary, SiLU * mul) as torch.compile'd kernels, one launch each, as the runtime's fused LIGHT groups
do, in both schedules.

    python benchmarks/layer_overlap.py --ctx 1024 512 --splits 96 88 --nano 2 4 --layers 1 4
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from types import SimpleNamespace

import torch
from decode_batch import PAGE, mostly_decode_batch
from gpu_stamp import stamp
from gpu_timing import capture, environment, time_graph, write_json

from nanoflow_compiler.bench.dram import dram_utilisation
from nanoflow_compiler.runtime import partitions
from nanoflow_compiler.runtime.kernels import dispatch, gemm
from nanoflow_compiler.runtime.kernels.attention_kernel import AttnConfig

H, HQ, HKV, D, FF, EPS = 4096, 32, 8, 128, 14336, 1e-5
T, N_DECODE, CHUNK = 1024, 1008, 16


class Stack:
    """Weights (shared by the layers), one KV cache per layer, one batch; `pre`/`attn`/`post` run one layer's ops
    on one nano-batch's token range [s, e). Activations are kept per (layer, nano-batch start)."""

    def __init__(self, ctx: int, layers: int, light: SimpleNamespace, seed: int = 0):
        self.attn_config: AttnConfig | None = None  # the decode launch's tiles; None: the budget's default
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.light = light
        bf = dict(device="cuda", dtype=torch.bfloat16)
        self.layers = layers
        self.wqkv = torch.randn(HQ * D + 2 * HKV * D, H, generator=g, **bf) / H ** 0.5
        self.wo = torch.randn(H, HQ * D, generator=g, **bf) / H ** 0.5
        self.wgu = torch.randn(2 * FF, H, generator=g, **bf) / H ** 0.5
        self.wd = torch.randn(H, FF, generator=g, **bf) / FF ** 0.5
        self.ln1 = torch.ones(H, **bf)
        self.ln2 = torch.ones(H, **bf)
        batch = mostly_decode_batch(ctx, g, T, CHUNK, page=PAGE)
        self.tables, self.req, self.pos, self.slots = batch.tables, batch.req, batch.pos, batch.slots
        self.caches = [(torch.randn(batch.num_blocks, PAGE, HKV, D, generator=g, **bf),
                        torch.randn(batch.num_blocks, PAGE, HKV, D, generator=g, **bf)) for _ in range(layers)]
        inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D))
        ang = self.pos.float()[:, None] * inv[None]
        self.cos, self.sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        self.x = torch.randn(T, H, generator=g, **bf)
        self.kv_bytes = batch.kv_tokens * HKV * D * 2 * 2  # per layer
        self.flops = 2 * T * H * (self.wqkv.shape[0] + self.wo.shape[0] + self.wgu.shape[0]) + 2 * T * FF * H
        self.q, self.attn_out, self.out = {}, {}, {}

    def mm(self, a, w, use_cublas):
        return torch.mm(a, w.t()) if use_cublas else gemm.sm_gemm(a, w)

    def pre(self, layer, s, e, use_cublas=False):
        x = self.x[s:e] if layer == 0 else self.out[layer - 1, s]
        qkv = self.mm(self.light.rmsnorm(x, self.ln1), self.wqkv, use_cublas)
        n = e - s
        q = self.light.rope(qkv[:, : HQ * D].view(n, HQ, D), self.cos[s:e], self.sin[s:e])
        k = self.light.rope(qkv[:, HQ * D: (HQ + HKV) * D].view(n, HKV, D), self.cos[s:e], self.sin[s:e])
        v = qkv[:, (HQ + HKV) * D:].view(n, HKV, D)
        dispatch.kv_append(k, v, *self.caches[layer], self.slots[s:e])
        self.q[layer, s] = q

    def attn(self, layer, s, e):
        self.attn_out[layer, s] = dispatch.paged_attention(self.q[layer, s], *self.caches[layer], self.tables,
                                                           self.req[s:e], self.pos[s:e], D ** -0.5,
                                                           decode_config=self.attn_config)

    def post(self, layer, s, e, use_cublas=False):
        x = self.x[s:e] if layer == 0 else self.out[layer - 1, s]
        x1, h = self.light.add_rmsnorm(x, self.mm(self.attn_out[layer, s].view(e - s, HQ * D), self.wo, use_cublas),
                                       self.ln2)
        gu = self.mm(h, self.wgu, use_cublas)
        self.out[layer, s] = x1 + self.mm(self.light.silu_mul(gu), self.wd, use_cublas)


def rmsnorm(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w


def add_rmsnorm(x, y, w):
    s = x + y
    return s, rmsnorm(s, w)


def rope(x, cos, sin):
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    c, s = cos[:, None], sin[:, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def silu_mul(gu):
    return torch.nn.functional.silu(gu[:, :FF]) * gu[:, FF:]


def light_ops(fuse: bool) -> SimpleNamespace:
    """The LIGHT ops, eager (several kernels each) or torch.compile'd (one kernel each)."""
    ops = {"rmsnorm": rmsnorm, "add_rmsnorm": add_rmsnorm, "rope": rope, "silu_mul": silu_mul}
    return SimpleNamespace(**{k: torch.compile(f, dynamic=False) if fuse else f for k, f in ops.items()})


def bounds(nano: int) -> list[tuple[int, int]]:
    step = T // nano
    return [(i * step, (i + 1) * step) for i in range(nano)]


def sequential(stack: Stack, use_cublas: bool, nano: int = 1):
    """One stream; `nano` > 1 runs the overlapped schedule's nano-batched ops one after another (what nano-batching
    costs by itself: weights read once per nano-batch, smaller GEMMs)."""
    def body():
        for layer, (s, e) in itertools.product(range(stack.layers), bounds(nano)):
            stack.pre(layer, s, e, use_cublas)
            stack.attn(layer, s, e)
            stack.post(layer, s, e, use_cublas)
    return body


def overlapped(stack: Stack, comp, mem, nano: int, which: str = "both", stamps: torch.Tensor | None = None):
    """COMPUTE: pre(0, all i); then per layer l and nano-batch i: post(l, i) once attn(l, i) is done, then
    pre(l+1, i) right away. MEMORY: attn(l, i) once pre(l, i) is done. `which` = compute|memory runs one stream's
    ops alone (no cross-stream waits; inputs from an earlier full run), `free` both streams' ops at once without the
    waits: together against `free` is what the dependencies cost, `free` against each alone what interference costs.
    `stamps` (int64 [3]) gets GPU timestamps: start, COMPUTE's last op done, MEMORY's last op done."""
    rng = bounds(nano)

    def body():
        cur = torch.cuda.current_stream()
        if stamps is not None:
            stamp(stamps, 0)
        comp.stream.wait_stream(cur)
        mem.stream.wait_stream(cur)
        if which in ("memory", "free"):
            with torch.cuda.stream(mem.stream):
                for layer in range(stack.layers):
                    for s, e in rng:
                        stack.attn(layer, s, e)
                if stamps is not None:
                    stamp(stamps, 2)
        if which != "memory":
            pre_done, attn_done = {}, {}

            def pre(layer, s, e):
                stack.pre(layer, s, e)
                pre_done[layer, s] = torch.cuda.Event()
                pre_done[layer, s].record(comp.stream)

            def attn(layer):
                if which != "both":
                    return
                with torch.cuda.stream(mem.stream):
                    for s, e in rng:
                        mem.stream.wait_event(pre_done[layer, s])
                        stack.attn(layer, s, e)
                        attn_done[layer, s] = torch.cuda.Event()
                        attn_done[layer, s].record(mem.stream)

            with torch.cuda.stream(comp.stream):
                for s, e in rng:
                    pre(0, s, e)
                for layer in range(stack.layers):
                    attn(layer)  # issue order only: MEMORY runs these as soon as their events fire
                    for s, e in rng:
                        if attn_done:
                            comp.stream.wait_event(attn_done[layer, s])
                        stack.post(layer, s, e)
                        if layer + 1 < stack.layers:
                            pre(layer + 1, s, e)
                if stamps is not None:
                    stamp(stamps, 1)
            if stamps is not None and which == "both":
                with torch.cuda.stream(mem.stream):
                    stamp(stamps, 2)
        cur.wait_stream(comp.stream)
        cur.wait_stream(mem.stream)
    return body


def timed(graph: torch.cuda.CUDAGraph, layers: int, dram_seconds: float) -> tuple[float, dict]:
    """Milliseconds per layer, and the DRAM bandwidth used while the graph replays back to back (NVML GPM)."""
    ms = time_graph(graph) / layers
    if dram_seconds <= 0:
        return ms, {"unavailable": "--dram-seconds 0"}
    return ms, dram_utilisation(lambda: (graph.replay(), torch.cuda.synchronize()), dram_seconds)


def stream_ms(graph: torch.cuda.CUDAGraph, stamps: torch.Tensor, layers: int, replays: int = 9) -> dict:
    """Per layer, when each stream finished its last op after the graph started (median over replays): which
    stream co-running slowed, and by how much against its time alone."""
    ends = []
    for _ in range(replays):
        graph.replay()
        torch.cuda.synchronize()
        t0, comp_end, mem_end = stamps.tolist()
        ends.append(((comp_end - t0) / 1e6 / layers, (mem_end - t0) / 1e6 / layers))
    return {"compute_done_ms_per_layer": statistics.median(c for c, _ in ends),
            "memory_done_ms_per_layer": statistics.median(m for _, m in ends)}


def dram_text(dram: dict) -> str:
    if "dram_bw_util_pct" not in dram:
        return "DRAM n/a"
    return f"DRAM {dram['dram_bw_util_pct']:.0f}%, {dram['sm_clock_mhz']:.0f} MHz, {dram['power_w']:.0f} W"


def check_equal(stack: Stack, comp, mem, nano: int) -> float:
    """Overlapped and sequential runs must compute the same output of the last layer."""
    last = stack.layers - 1
    sequential(stack, False)()
    ref = stack.out[last, 0].clone()
    overlapped(stack, comp, mem, nano)()
    torch.cuda.synchronize()
    out = torch.cat([stack.out[last, s] for s, _ in bounds(nano)])
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ctx", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--splits", type=int, nargs="+", default=[96, 88, 80, 72, 64],
                    help="COMPUTE SMs; MEMORY = the rest")
    ap.add_argument("--nano", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--attn-configs", nargs="+", default=[None], metavar="nNwWsS",
                    type=AttnConfig.from_name, help="MEMORY stream's decode tiles to try (default: the budget's)")
    ap.add_argument("--fuse-light", action="store_true", help="torch.compile the LIGHT ops (one kernel each)")
    ap.add_argument("--dram-seconds", type=float, default=0.3, help="replay time under the DRAM meter (0: off)")
    ap.add_argument("--name", default="layer_overlap")
    args = ap.parse_args()
    total = partitions.sm_layout().total_sms
    split_parts = {c: partitions.make_partitions({"COMPUTE": c, "MEMORY": total - c}) for c in args.splits}
    runs = []
    for ctx, layers in itertools.product(args.ctx, args.layers):
        stack = Stack(ctx, layers, light_ops(args.fuse_light))
        seq, seq_dram = {}, {}
        for k in ("triton", "cublas"):
            seq[k], seq_dram[k] = timed(capture(sequential(stack, k == "cublas")), layers, args.dram_seconds)
        best_seq = min(seq.values())
        # the nano-batched ops on one stream (whole device, default tiles): one timing per nano-batch count, shared
        # by every split and attention config below
        same_ops = {n: time_graph(capture(sequential(stack, False, n))) / layers for n in args.nano}
        print(f"ctx {ctx}, {layers} layer(s): sequential one stream, per layer: triton GEMMs {seq['triton']:.3f} ms "
              f"({dram_text(seq_dram['triton'])}), cuBLAS {seq['cublas']:.3f} ms", flush=True)
        runs.append({"ctx": ctx, "layers": layers, "kv_bytes_per_layer": stack.kv_bytes,
                     "gemm_flops_per_layer": stack.flops, **{f"seq_{k}_ms_per_layer": v for k, v in seq.items()},
                     **{f"seq_{k}_dram": v for k, v in seq_dram.items()}})
        for comp_sms, nano, attn_config in itertools.product(args.splits, args.nano, args.attn_configs):
            comp, mem = split_parts[comp_sms]["COMPUTE"], split_parts[comp_sms]["MEMORY"]
            stack.attn_config = attn_config
            err = check_equal(stack, comp, mem, nano)
            t, dram, done = {}, {}, {}
            for w in ("compute", "memory", "free", "both"):
                stamps = torch.zeros(3, dtype=torch.int64, device="cuda") if w in ("free", "both") else None
                graph = capture(overlapped(stack, comp, mem, nano, w, stamps))
                t[w], dram[w] = timed(graph, layers, args.dram_seconds)
                if stamps is not None:
                    done[w] = stream_ms(graph, stamps, layers)
            row = {"ctx": ctx, "layers": layers, "compute_sms": comp_sms, "memory_sms": mem.num_sms,
                   "nano_batches": nano, "attn_config": attn_config.name if attn_config else "default",
                   "disjoint": comp.disjoint, "seq_best_ms_per_layer": best_seq,
                   "compute_alone_ms_per_layer": t["compute"], "memory_alone_ms_per_layer": t["memory"],
                   "free_ms_per_layer": t["free"], "overlapped_ms_per_layer": t["both"],
                   "speedup_vs_best_sequential": best_seq / t["both"], "seq_same_ops_ms_per_layer": same_ops[nano],
                   "speedup_vs_same_ops_sequential": same_ops[nano] / t["both"],
                   "together_over_slowest_alone": t["both"] / max(t["compute"], t["memory"]),
                   "rel_err_vs_sequential": err, **{f"{w}_dram": v for w, v in dram.items()},
                   **{f"{w}_streams": v for w, v in done.items()}}
            runs.append(row)
            print(f"  {comp_sms:3d}/{mem.num_sms:3d} nano={nano} attention {row['attn_config']}: per layer "
                  f"compute alone {t['compute']:.3f} "
                  f"({dram_text(dram['compute'])})  memory alone {t['memory']:.3f} ({dram_text(dram['memory'])})  "
                  f"without waits {t['free']:.3f} ({dram_text(dram['free'])})  "
                  f"together {t['both']:.3f} ms ({dram_text(dram['both'])}) -> "
                  f"{row['speedup_vs_best_sequential']:.2f}x; the same nano-batched ops on one stream "
                  f"{same_ops[nano]:.3f} (err {err:.1e})", flush=True)
            for w, d in done.items():
                print(f"      {w}: COMPUTE done at {d['compute_done_ms_per_layer']:.3f}, MEMORY done at "
                      f"{d['memory_done_ms_per_layer']:.3f} ms per layer", flush=True)
        del stack
        torch.cuda.empty_cache()
    best = {}
    for r in runs:
        key = f"ctx{r['ctx']}_layers{r['layers']}"
        if "overlapped_ms_per_layer" in r and r["speedup_vs_best_sequential"] > best.get(key, {}).get(
                "speedup_vs_best_sequential", 0):
            best[key] = r
    write_json(args.name, {"env": environment(), "tokens": T, "decode_tokens": N_DECODE, "prefill_chunk": CHUNK,
                           "route": "disjoint SM partitions (driver green contexts) + SM-aware Triton kernels",
                           "light_ops": "torch.compile'd" if args.fuse_light else "eager",
                           "runs": runs, "best": best})
    print("== best per (context, layers) ==")
    for key, r in best.items():
        print(f"  {key}: {r['compute_sms']}/{r['memory_sms']} nano={r['nano_batches']}: sequential "
              f"{r['seq_best_ms_per_layer']:.3f} -> overlapped {r['overlapped_ms_per_layer']:.3f} ms/layer = "
              f"{r['speedup_vs_best_sequential']:.2f}x; alone: compute {r['compute_alone_ms_per_layer']:.3f}, "
              f"memory {r['memory_alone_ms_per_layer']:.3f}")


if __name__ == "__main__":
    main()
