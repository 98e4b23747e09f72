#!/usr/bin/env python
"""Hugging Face transformers as a peer: `generate()` with a static KV cache and its torch.compile'd decode step.

    python benchmarks/peers/hf_transformers.py --model llama-3-8b --device cuda --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 256 --batch-size 64 --output-json results/hf.json

Same prompts as our benchmark (same seed). Requests run in fixed batches, in order, each padded on the left to its
longest prompt and generating its longest output with EOS ignored (static batching: HF has no continuous batching);
the count is the tokens the workload asked for, as vLLM's `hf` backend counts. Presets get HF's own random init.
The first (and a smaller last) batch run once untimed, so compile time stays out of the throughput and is reported
apart; with a trace-shaped dataset every batch has its own shape, so recompiles land in the timed run: use HF on
the fixed-length workloads.
"""

from __future__ import annotations

import sys
import time

import torch

from _common import finish, parser, workload
from nanoflow_compiler.bench.args import options_from_args, script_main


def build_parser():
    p = parser("hf_transformers.py", __doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64, help="requests per generate() call")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile (eager decode)")
    return p


def hf_model(spec: str | None, dtype: torch.dtype, device: str):
    """The HF model of a spec: a preset (random init, real shape), an HF directory, or the default GGUF."""
    from transformers import AutoModelForCausalLM

    from nanoflow_compiler.models import PRESETS, preset_config
    from nanoflow_compiler.models.loader import DEFAULT_MODEL, default_gguf_path

    if spec in PRESETS:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(preset_config(spec), dtype=dtype)
    elif spec is None or spec == DEFAULT_MODEL:
        path = default_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    return model.to(device).eval()


def generate_batch(model, batch, device: str, compile: bool) -> int:
    """Generate for one batch; returns the tokens generated, batch padding included."""
    from transformers import CompileConfig

    width = max(r.prompt_len for r in batch)
    pad = 0
    ids = torch.tensor([[pad] * (width - r.prompt_len) + r.prompt_token_ids for r in batch], device=device)
    mask = torch.tensor([[0] * (width - r.prompt_len) + [1] * r.prompt_len for r in batch], device=device)
    new = max(r.output_len for r in batch)
    compile_kwargs = {"compile_config": CompileConfig(fullgraph=True)} if compile else {"disable_compile": True}
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, cache_implementation="static", pad_token_id=pad, **compile_kwargs)
    return (out.shape[1] - width) * len(batch)


def run(args) -> int:
    opts = options_from_args(args)
    device, dtype = opts.resolved_device(), opts.resolved_dtype()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    compiled = args.compile and device.startswith("cuda")
    if args.compile and not compiled:  # transformers auto-compiles generate() on accelerators only
        print("note: transformers compiles generate() only on GPUs; this run is eager")
    model = hf_model(opts.model, dtype, device)
    w = workload(args, model.config.vocab_size, model.config.max_position_embeddings)
    batches = [w.requests[i: i + args.batch_size] for i in range(0, len(w.requests), args.batch_size)]
    with torch.inference_mode():
        start = time.perf_counter()
        for batch in {len(b): b for b in (batches[0], batches[-1])}.values():  # compiles each batch shape once
            generate_batch(model, batch, device, compiled)
        _sync(device)
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        generated = 0
        for i, batch in enumerate(batches, 1):  # a line per batch: a run cut off by a time box shows how far it got
            generated += generate_batch(model, batch, device, compiled)
            print(f"batch {i}/{len(batches)} done at {time.perf_counter() - start:.1f} s "
                  f"(warm-up took {warmup:.1f} s)", file=sys.stderr, flush=True)
        _sync(device)
        elapsed = time.perf_counter() - start
    wanted = sum(len(b) * max(r.output_len for r in b) for b in batches)
    if generated != wanted:
        raise RuntimeError(f"generate() made {generated} tokens where {wanted} were asked for")
    return finish("hf_transformers", args, elapsed, len(w.requests), w.num_prompt_tokens, w.num_output_tokens, {
        "model": opts.model, "workload": w.describe(),
        "options": {"dtype": str(dtype).removeprefix("torch."), "device": device, "batch_size": args.batch_size,
                    "static_cache": True, "torch_compile": compiled},
        "timing": {"warmup_seconds": warmup},
        "generated_tokens_including_batch_padding": generated,
        "transformers_version": __import__("transformers").__version__,
    })


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(script_main(run, build_parser()))
