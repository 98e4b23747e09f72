"""`nanoflow export --model M --out DIR`: compile (and tune) once, write an artifact that serves without planning."""

from __future__ import annotations

import argparse
import sys

from .argtypes import json_object


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="compile a model once and write a serving artifact (schedule, weights, tokenizer)",
        description="Compile the model with the nanoflow backend for the given token buckets and write a directory "
                    "that `nanoflow serve --artifact DIR`, `nanoflow generate --artifact DIR` and "
                    "nanoflow_compiler.load(DIR) start from without search or scheduling: manifest.json (versions, "
                    "device, model config, SHA-256 of every file), schedule.json (the Schedule IR of every bucket), "
                    "the profile database used, the weights as safetensors and the tokenizer files.",
    )
    p.add_argument("--model", default=None,
                   help="preset name, safetensors directory or .gguf file (default: smollm2-135m-instruct)")
    p.add_argument("--out", required=True, metavar="DIR", help="the artifact directory to write")
    p.add_argument("--buckets", type=int, nargs="+", default=None, metavar="N",
                   help="token buckets to plan for (default: powers of two from 16 to --max-num-batched-tokens)")
    p.add_argument("--with-weights", dest="with_weights", action="store_true", default=True,
                   help="store the weights as safetensors (default)")
    p.add_argument("--no-weights", dest="with_weights", action="store_false",
                   help="store no weights: the loader takes them from the model's source (or --model)")
    p.add_argument("--profile-db", default=None, metavar="PATH",
                   help="plan with the search from this profile database (plan='auto') and store it in the artifact")
    p.add_argument("--compile-options", type=json_object, default=None, metavar="JSON",
                   help='compile options for the nanoflow backend, e.g. \'{"nano_batches": 2}\'')
    p.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                   help="tokens per engine iteration (default: the largest bucket, else 512)")
    p.add_argument("--num-kv-blocks", type=int, default=None, metavar="N",
                   help="KV-cache blocks; fixed by the artifact (default: sized from free memory)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block (default 16)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = args.compile_options
    if args.buckets is not None and min(args.buckets) < 1:
        raise ValueError(f"--buckets must be token counts >= 1, got {args.buckets}")
    import torch

    from ..artifact import export
    from ..artifact.exporter import describe

    out = export(args.model, args.out, buckets=args.buckets, with_weights=args.with_weights,
                 dtype=getattr(torch, args.dtype) if args.dtype else None, device=args.device,
                 compile_options=options, profile_db=args.profile_db,
                 max_num_batched_tokens=args.max_num_batched_tokens, num_kv_blocks=args.num_kv_blocks,
                 block_size=args.block_size, overwrite=args.force)
    print(describe(out), file=sys.stderr)
    return 0
