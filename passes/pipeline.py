"""The passes in the order they run; each is `run(gm, ctx) -> gm` and only annotates the graph or fills `ctx`."""

from __future__ import annotations

from torch import fx

from . import (annotate_shapes, build_dag, classify_ops, emit, find_token_dim, fuse_light_ops, schedule,
               split_nanobatches)
from .context import PassContext

PASSES = (annotate_shapes, classify_ops, find_token_dim, split_nanobatches, build_dag, schedule, fuse_light_ops, emit)


def run_pipeline(gm: fx.GraphModule, ctx: PassContext, until: str | None = None) -> fx.GraphModule:
    """Run every pass (or those up to and including `until`, e.g. 'split_nanobatches' for inspection)."""
    for module in PASSES:
        gm = module.run(gm, ctx)
        if until is not None and module.__name__.rpartition(".")[2] == until:
            break
    return gm
