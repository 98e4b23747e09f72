"""Helpers of the pass tests: tiny graphs traced with make_fx in symbolic fake mode (no Dynamo), run through the
real passes, and the attention step of our models."""

from __future__ import annotations

import inspect

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from nanoflow_compiler.backend import make_context
from nanoflow_compiler.options import CompileOptions
from nanoflow_compiler.passes.context import INFO, InputInfo
from nanoflow_compiler.passes.pipeline import run_pipeline
from nanoflow_compiler.runtime import attention  # noqa: F401  (registers the nanoflow ops)


def trace_graph(fn, *args, params=(), options=None, until="emit"):
    """(gm, ctx) after running the passes up to `until` on `fn(*args)`. Sizes are symbolic (dim 0 of the first
    non-parameter input is T); `params` names arguments that are weights, not token inputs."""
    gm = make_fx(fn, tracing_mode="symbolic")(*args)
    fakes = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
    names = list(inspect.signature(fn).parameters)
    inputs = [InputInfo(n, "parameter" if n in params else "input", n) for n in names]
    ctx = make_context(gm, inputs, fakes, list(args), CompileOptions.from_dict(options))
    run_pipeline(gm, ctx, until)
    return gm, ctx


def node_info(gm, name):
    return next(n for n in gm.graph.nodes if n.name == name).meta[INFO]


def kv_layer(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
    """One attention step in our models' form: write K/V for the new tokens, then attend over the cache."""
    torch.ops.nanoflow.kv_append(k, v, k_cache, v_cache, slots)
    return torch.ops.nanoflow.paged_attention(q, k_cache, v_cache, block_tables, token_req, positions, 0.25)


def projected_attention(x, w, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
    """A GEMM (COMPUTE) producing the queries of an attention step (MEMORY)."""
    q = (x @ w).view(x.shape[0], 4, 8)
    return kv_layer(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables)
