"""`nanoflow serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one engine loop."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import tensor_parallel
from .argtypes import json_object

DTYPES = ("auto", "bfloat16", "float16", "float32")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /metrics)",
        description="Serve a model over OpenAI's HTTP API: /v1/completions and /v1/chat/completions (both with "
                    "stream=true as server-sent events), /v1/models, /health and Prometheus /metrics. All "
                    "connections share one engine loop (continuous batching). SIGINT/SIGTERM drain: new requests "
                    "get 503, running ones finish for --drain-timeout seconds, then end with finish_reason 'abort'.",
    )
    m = p.add_argument_group("model and engine")
    m.add_argument("--model", default=None, metavar="M",
                   help="preset name, .gguf file or Hugging Face directory (default: SmolLM2-135M-Instruct)")
    m.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the name clients put in 'model' and /v1/models lists (default: the model's name)")
    m.add_argument("--dtype", choices=DTYPES, default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    m.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")
    m.add_argument("--max-model-len", type=_positive, default=None, metavar="N",
                   help="context length: prompt plus output tokens (default: the model's)")
    m.add_argument("--max-num-seqs", type=_positive, default=None, metavar="N",
                   help="most requests in the running batch (default: the engine's, 256)")
    m.add_argument("--max-num-batched-tokens", type=_positive, default=None, metavar="N",
                   help="tokens per engine iteration, decode and prefill together (default: the engine's, 512)")
    m.add_argument("--num-kv-blocks", type=_positive, default=None, metavar="N",
                   help="KV-cache blocks (default: sized from free memory)")
    m.add_argument("--no-compile", dest="compile", action="store_false", help="run the model eagerly")
    m.add_argument("--compile-options", type=json_object, default=None, metavar="JSON",
                   help="JSON options for the nanoflow torch.compile backend")
    m.add_argument("--artifact", default=None, metavar="DIR",
                   help="serve `nanoflow export`'s artifact (stored schedule, no search); --model then gives the "
                        "weights of one exported with --no-weights")
    m.add_argument("--strict", action="store_true",
                   help="refuse an artifact made for another device (default: re-plan)")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all interfaces)")
    s.add_argument("--port", type=_non_negative, default=8000,
                   help="TCP port (default: 8000; 0 picks a free one and prints it)")
    s.add_argument("--api-key", default=os.environ.get("NANOFLOW_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $NANOFLOW_API_KEY; none = open)")
    s.add_argument("--max-queued", type=_positive, default=256, metavar="N",
                   help="requests that may wait for their first token; more get 429 with Retry-After (default: 256)")
    s.add_argument("--max-tokens-limit", type=_positive, default=None, metavar="N",
                   help="largest max_tokens a request may ask for (default: only the context length limits it)")
    s.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long running requests may take to finish on shutdown (default: 30)")
    s.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                   help="uvicorn and engine log level (default: info)")
    tensor_parallel.add_argument(m)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.distributed import under_torchrun
    from ..server.launch import bind_socket

    size = args.tensor_parallel_size
    if args.artifact and size != 1:
        raise ValueError("--artifact holds a single-process schedule; it cannot run with --tensor-parallel-size > 1")
    # Bound before the slow imports and load, so that a taken port fails at once.
    if size == 1:
        return _serve(args, bind_socket(args.host, args.port))
    if not under_torchrun() or os.environ["RANK"] == "0":  # under torchrun every rank runs this; one probe is enough
        bind_socket(args.host, args.port).close()  # rank 0 binds it again: a socket does not travel to a new process
    tensor_parallel.check(size, args.model, None if args.device == "auto" else args.device)
    return tensor_parallel.launch(_serve, size, args, None, device=args.device)


def _serve(args: argparse.Namespace, sock) -> int:
    """Every rank builds the engine; rank 0 serves HTTP while the others follow its batches."""
    from ..runtime.distributed import is_primary
    from ..runtime.tp_channel import leading
    from ..server.launch import bind_socket

    if sock is None and is_primary():
        sock = bind_socket(args.host, args.port)

    import torch

    from ..models import load_model
    from ..runtime.engine import EngineConfig, LLMEngine

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    knobs = {k: getattr(args, k) for k in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "num_kv_blocks")
             if getattr(args, k) is not None}
    if args.artifact:
        from ..artifact import load

        loaded = load(args.artifact, strict=args.strict, model=args.model,
                      device=None if args.device == "auto" else args.device, **knobs)
        engine = loaded.engine
    else:
        loaded = load_model(args.model, dtype=dtype, device=device)
        config = EngineConfig(compile=args.compile, compile_options=args.compile_options, dtype=dtype, device=device,
                              **knobs)
        engine = LLMEngine(loaded.model, loaded.tokenizer, config)
    if not is_primary():
        tensor_parallel.follow(engine)
        return 0
    with leading():
        _serve_http(args, sock, engine, loaded)
    return 0


def _serve_http(args: argparse.Namespace, sock, engine, loaded) -> None:
    from ..server import create_app
    from ..server.launch import serve

    name = args.served_model_name or loaded.name
    app = create_app(engine, loaded.tokenizer, model_name=name, api_key=args.api_key, max_queued=args.max_queued,
                     max_tokens_limit=args.max_tokens_limit, drain_timeout_s=args.drain_timeout)
    host, port = sock.getsockname()[:2]
    print(f"nanoflow serve: '{name}' on http://{_url_host(host)}:{port}/v1 (context {engine.max_model_len} tokens"
          f"{', API key required' if args.api_key else ''})", file=sys.stderr, flush=True)
    serve(app, sock, log_level=args.log_level)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value
