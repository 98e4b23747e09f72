#!/usr/bin/env python
"""Tensor parallelism on N GPUs: TP=N greedy output equals TP=1, and throughput with network overlap on vs off.

    python benchmarks/tp_overlap.py --model llama-3-8b --tp 2 --output benchmarks/results/tp_overlap_llama3-8b_h100x2.json

Both parts run the model directly (flat token batch + hand-built AttnMetadata), not the serving engine, so that the
numbers isolate the schedule. Greedy equality runs in float32 without TF32 (bf16 reductions in another order could
flip near-tied argmaxes of a random-weight model). Throughput times one dense iteration (decode tokens plus one
prefill chunk, NanoFlow's batch) compiled twice in one process group: with the "off" options and the "on" options.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time

import torch

from nanoflow_compiler.bench.report import environment, write_json
from nanoflow_compiler.models import preset_config, random_model
from nanoflow_compiler.runtime import distributed
from nanoflow_compiler.runtime.attention import AttnMetadata

BLOCK = 16


def _model(name: str, overrides: dict, dtype: torch.dtype, device: str):
    """A random-weight preset; the same weights at every TP size (random_model draws full tensors, then cuts)."""
    return random_model(preset_config(name, **overrides), dtype, device)


def _batch(tokens: list[list[int]], starts: list[int], tables: torch.Tensor, device: str):
    """Request r's tokens sit at positions starts[r]...; logits for the last token of each request."""
    ids = torch.tensor([t for ts in tokens for t in ts])
    pos = torch.tensor([s + i for ts, s in zip(tokens, starts) for i in range(len(ts))])
    req = torch.tensor([r for r, ts in enumerate(tokens) for _ in ts], dtype=torch.int32)
    slots = tables[req.long(), pos // BLOCK].long() * BLOCK + pos % BLOCK
    last = torch.tensor([len(ts) for ts in tokens]).cumsum(0) - 1
    meta = AttnMetadata(slots, req, tables, last)
    return ids.to(device), pos.to(device), meta.to(device)


@torch.inference_mode()
def greedy(name: str, overrides: dict, prompts: list[list[int]], steps: int, device: str) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    model = _model(name, overrides, torch.float32, device)
    per_req = -(-(max(map(len, prompts)) + steps) // BLOCK)
    model.allocate_kv_cache(len(prompts) * per_req, BLOCK, torch.float32, device)
    tables = torch.arange(len(prompts) * per_req, dtype=torch.int32).view(len(prompts), per_req)
    logits = model(*_batch(prompts, [0] * len(prompts), tables, device))
    first = logits.cpu()
    out = [[int(t)] for t in logits.argmax(-1)]
    for step in range(steps - 1):
        last = [[ts[-1]] for ts in out]
        logits = model(*_batch(last, [len(p) + step for p in prompts], tables, device))
        for ts, t in zip(out, logits.argmax(-1).tolist()):
            ts.append(t)
    return {"tokens": out, "prefill_logits": first}


@torch.inference_mode()
def throughput(name: str, overrides: dict, dtype: str, device: str, backend: str, option_sets: dict,
               decode_tokens: int, context: int, prefill_tokens: int, warmup: int, iters: int,
               dump_stacks_after: float | None = None) -> dict:
    """Tokens/s of one dense iteration per option set, compiled with `backend`, timed between barriers."""
    if dump_stacks_after:  # a hung rank prints where it waits (the launcher's timeout kills it without a word)
        faulthandler.dump_traceback_later(dump_stacks_after, exit=False)
    model = _model(name, overrides, getattr(torch, dtype), device)
    ctx_blocks, pre_blocks = -(-context // BLOCK), -(-prefill_tokens // BLOCK)
    model.allocate_kv_cache(decode_tokens * ctx_blocks + pre_blocks, BLOCK, getattr(torch, dtype), device)
    width = max(ctx_blocks, pre_blocks)
    tables = torch.zeros(decode_tokens + 1, width, dtype=torch.int32)
    tables[:decode_tokens, :ctx_blocks] = torch.arange(decode_tokens * ctx_blocks).view(decode_tokens, ctx_blocks)
    tables[decode_tokens, :pre_blocks] = torch.arange(pre_blocks) + decode_tokens * ctx_blocks
    tokens = [[1]] * decode_tokens + [list(range(2, 2 + prefill_tokens))]
    batch = _batch(tokens, [context - 1] * decode_tokens + [0], tables, device)
    results = {}
    for label, options in option_sets.items():
        torch._dynamo.reset()
        kwargs = {"options": options} if options else {}
        compiled = torch.compile(model, backend=backend, dynamic=True, fullgraph=True, **kwargs)
        start = time.perf_counter()
        compiled(*batch)
        _sync(device)
        compile_s = time.perf_counter() - start
        if distributed.is_primary():
            print(f"{label}: compiled and ran once in {compile_s:.1f} s", flush=True)
        for i in range(warmup):
            compiled(*batch)
            if dump_stacks_after:
                _sync(device)
                print(f"rank {distributed.get_tp().rank}: {label} warm-up call {i + 1} done", flush=True)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            compiled(*batch)
        _sync(device)
        seconds = (time.perf_counter() - start) / iters
        results[label] = {"options": options, "compile_seconds": compile_s, "iteration_seconds": seconds,
                          "tokens_per_second": (decode_tokens + prefill_tokens) / seconds}
    return results


def _sync(device: str) -> None:
    """Ranks leave each timed region together (the slowest rank bounds a TP step anyway)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if distributed.get_tp().size > 1:
        torch.distributed.barrier()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tp_overlap.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-3-8b", help="a random-weight preset (default llama-3-8b)")
    p.add_argument("--num-layers", type=int, default=None, help="shrink the preset to this many layers")
    p.add_argument("--config-overrides", type=json.loads, default={}, metavar="JSON",
                   help='more preset config changes, e.g. \'{"hidden_size": 64, "vocab_size": 256}\' (CPU smoke test)')
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size compared with TP=1")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--skip-greedy", action="store_true")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the throughput part")
    p.add_argument("--backend", default="nanoflow")
    p.add_argument("--overlap-off", type=json.loads, default={"nano_batches": 1},
                   help="JSON compile options with no network overlap (one nano-batch: nothing to overlap with); "
                        "null skips that run (a probe of one configuration)")
    p.add_argument("--overlap-on", type=json.loads, default={"overlap": True},
                   help='JSON compile options with overlap (default {"overlap": true}: the fixed nano-batch split)')
    p.add_argument("--decode-tokens", type=int, default=256)
    p.add_argument("--context", type=int, default=1024, help="KV context of each decode token")
    p.add_argument("--prefill-tokens", type=int, default=768)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--output", default=None, help="write the results JSON here")
    p.add_argument("--dump-stacks-after", type=float, default=None, metavar="SECONDS",
                   help="every rank prints its Python stacks this long after the throughput part starts and "
                        "reports each warm-up call (finding where a hung run waits)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    backend = "gloo" if args.device == "cpu" else None
    overrides = {**args.config_overrides, **({} if args.num_layers is None else {"num_hidden_layers": args.num_layers})}
    result: dict = {"model": args.model, "num_layers": args.num_layers, "config_overrides": overrides,
                    "tensor_parallel_size": args.tp}
    if not args.skip_greedy:
        g = torch.Generator().manual_seed(0)
        vocab = preset_config(args.model, **overrides).vocab_size
        prompts = [torch.randint(0, vocab, (int(n),), generator=g).tolist()
                   for n in torch.randint(16, 65, (args.num_prompts,), generator=g)]
        greedy_args = (args.model, overrides, prompts, args.steps, args.device)
        one = distributed.launch(greedy, 1, *greedy_args)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # TP=1 ran in this process; its GPU memory goes back before the ranks start
        many = distributed.launch(greedy, args.tp, *greedy_args, backend=backend)
        same = [a == b for a, b in zip(one["tokens"], many["tokens"])]
        result["greedy"] = {
            "dtype": "float32", "num_prompts": len(prompts), "steps": args.steps, "tokens_equal": all(same),
            "prompts_equal": sum(same),
            "first_divergence": [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                                 for a, b in zip(one["tokens"], many["tokens"])],
            "max_abs_prefill_logit_diff": float((one["prefill_logits"] - many["prefill_logits"]).abs().max()),
        }
        print(f"greedy TP={args.tp} vs TP=1: {sum(same)}/{len(same)} prompts equal over {args.steps} tokens; "
              f"max prefill logit diff {result['greedy']['max_abs_prefill_logit_diff']:.2e}", flush=True)
        if args.output:  # a time-boxed run keeps the greedy part; "throughput" is absent until that part ends
            write_json(args.output, {**result, **environment(args.device)})
    option_sets = {"overlap_off": args.overlap_off, "overlap_on": args.overlap_on}
    option_sets = {label: options for label, options in option_sets.items() if options is not None}
    runs = distributed.launch(
        throughput, args.tp, args.model, overrides, args.dtype, args.device, args.backend, option_sets,
        args.decode_tokens, args.context, args.prefill_tokens, args.warmup, args.iters, args.dump_stacks_after,
        backend=backend,
    )
    result["throughput"] = {"dtype": args.dtype, "backend": args.backend, "decode_tokens": args.decode_tokens,
                            "context": args.context, "prefill_tokens": args.prefill_tokens, **runs}
    if len(runs) == 2:
        result["throughput"]["speedup"] = runs["overlap_on"]["tokens_per_second"] / runs["overlap_off"]["tokens_per_second"]
    for label in option_sets:
        print(f"{label}: {runs[label]['tokens_per_second']:.0f} tokens/s "
              f"({runs[label]['iteration_seconds'] * 1e3:.2f} ms per {args.decode_tokens + args.prefill_tokens}-token "
              f"iteration, options {json.dumps(runs[label]['options'])})")
    if "speedup" in result["throughput"]:
        print(f"overlap on / off: {result['throughput']['speedup']:.3f}x")
    if args.output:
        write_json(args.output, {**result, **environment(args.device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
