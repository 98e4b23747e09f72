"""The per-layer problem the search solves: a networkx DiGraph of op kinds with their costs' shape.

Each node is one op of a decoder layer (`spec`: an `OpSpec`; `cls`: the op class whose nano-batch count applies;
`stream`: the stream it runs on). Edges carry `shift`: 0 for a data edge inside the layer, 1 for an edge into the
next layer (the last op of layer l feeds the first op of layer l+1), so that the search optimises the pipelined
layer time of the steady state, not one isolated layer. The same form works for synthetic inputs in tests and for
the compiler's DAG later (see `OpSpec.from_exprs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

import networkx as nx

COMPUTE, MEMORY, NETWORK, LIGHT = "COMPUTE", "MEMORY", "NETWORK", "LIGHT"
OP_CLASSES = (COMPUTE, MEMORY, NETWORK, LIGHT)
# Light ops (norms, rope, activations) are short; they run in-line on the compute stream unless a graph says otherwise.
DEFAULT_STREAM = {COMPUTE: COMPUTE, MEMORY: MEMORY, NETWORK: NETWORK, LIGHT: COMPUTE}


@dataclass(frozen=True)
class OpSpec:
    """One op kind: `kind` keys the profile table; FLOPs and bytes, affine in the token count, feed the analytical
    model."""

    kind: str
    cls: str
    flops_per_token: float = 0.0
    bytes_fixed: float = 0.0
    bytes_per_token: float = 0.0

    def __post_init__(self) -> None:
        if self.cls not in OP_CLASSES:
            raise ValueError(f"op {self.kind!r}: unknown op class {self.cls!r}; expected one of {OP_CLASSES}")

    def flops(self, tokens: int) -> float:
        return self.flops_per_token * tokens

    def bytes(self, tokens: int) -> float:
        return self.bytes_fixed + self.bytes_per_token * tokens

    @classmethod
    def from_exprs(cls, kind: str, op_cls: str, flops, nbytes, token_symbol) -> OpSpec:
        """From sympy expressions in the token symbol (what `annotate_shapes` gives); they must be affine in it."""
        import sympy

        coeffs = []
        for name, expr in (("FLOPs", flops), ("bytes", nbytes)):
            poly = sympy.Poly(sympy.sympify(expr), token_symbol)
            if poly.degree() > 1 or poly.free_symbols - {token_symbol}:
                raise ValueError(f"op {kind!r}: {name} {expr} is not affine in {token_symbol} alone")
            coeffs.append((float(poly.coeff_monomial(token_symbol)), float(poly.coeff_monomial(1))))
        return cls(kind, op_cls, flops_per_token=coeffs[0][0], bytes_fixed=coeffs[1][1], bytes_per_token=coeffs[1][0])


def add_op(graph: nx.DiGraph, name: str, spec: OpSpec, stream: str | None = None) -> None:
    graph.add_node(name, spec=spec, cls=spec.cls, stream=stream or DEFAULT_STREAM[spec.cls])


def validate_layer_graph(graph: nx.DiGraph) -> None:
    """A usable layer graph: every node has a spec, edges have shift 0/1 and the in-layer edges form a DAG."""
    if graph.number_of_nodes() == 0:
        raise ValueError("the layer graph is empty")
    for name, data in graph.nodes(data=True):
        if not isinstance(data.get("spec"), OpSpec):
            raise ValueError(f"layer graph node {name!r} has no OpSpec 'spec' attribute")
    for u, v, data in graph.edges(data=True):
        if data.get("shift", 0) not in (0, 1):
            raise ValueError(f"edge {u!r}->{v!r}: shift must be 0 (same layer) or 1 (next layer)")
    inner = nx.DiGraph([(u, v) for u, v, s in graph.edges(data="shift", default=0) if s == 0])
    if not nx.is_directed_acyclic_graph(inner):
        raise ValueError(f"the in-layer edges of the layer graph have a cycle: {nx.find_cycle(inner)}")


def model_key(config) -> str:
    """The name plans are stored under: the layer shapes alone, so that every model of the same layer shape
    (Llama-3-8B and Mistral-7B, any checkpoint) shares a plan, and the compiler can name it from weight shapes."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return (f"decoder-h{config.hidden_size}-i{config.intermediate_size}"
            f"-q{config.num_attention_heads}-kv{config.num_key_value_heads}-d{head_dim}")


def shapes_from_parameters(named_shapes: dict[str, tuple[int, ...]]) -> SimpleNamespace | None:
    """The config fields the layer graph needs, read from layer 0's weight and KV-cache shapes as our models name
    them (fused qkv_proj and gate_up_proj); None for models of another form (e.g. mixture of experts)."""
    def find(suffix: str) -> tuple[int, ...] | None:
        pattern = re.compile(rf"(^|\.)layers\.0\.{suffix}$")
        return next((tuple(s) for n, s in named_shapes.items() if pattern.search(n)), None)

    qkv, gate_up = find(r"self_attn\.qkv_proj\.weight"), find(r"mlp\.gate_up_proj\.weight")
    down, k_cache = find(r"mlp\.down_proj\.weight"), find(r"self_attn\.k_cache")
    if qkv is None or gate_up is None or down is None or k_cache is None or len(k_cache) != 4:
        return None
    kv, d = k_cache[2], k_cache[3]
    return SimpleNamespace(hidden_size=qkv[1], intermediate_size=down[1],
                           num_attention_heads=(qkv[0] - 2 * kv * d) // d, num_key_value_heads=kv, head_dim=d)


def decoder_layer_graph(config, context_len: int = 1024, dtype_bytes: int = 2, light_ops: bool = True) -> nx.DiGraph:
    """One Llama-family decoder layer as our models write it (fused qkv and gate_up), with decode attention over
    `context_len` cached tokens per token."""
    h, i = config.hidden_size, config.intermediate_size
    nq, nkv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // nq
    b, dt = dtype_bytes, {2: "bf16", 4: "f32"}.get(dtype_bytes, f"{dtype_bytes}B")

    def mm(k: int, n: int) -> OpSpec:
        return OpSpec(f"mm[k={k},n={n},{dt}]", COMPUTE, 2.0 * k * n, float(k * n * b), float((k + n) * b))

    g = nx.DiGraph(model_key=model_key(config), context_len=context_len)
    # Decode attention reads each token's whole K and V context: memory-bound, and the reason to overlap at all.
    attn = OpSpec(f"attn[q={nq},kv={nkv},d={d},ctx={context_len},{dt}]", MEMORY,
                  4.0 * context_len * nq * d, 0.0, float(2 * context_len * nkv * d * b + 2 * nq * d * b))
    chain = [("qkv", mm(h, (nq + 2 * nkv) * d)), ("attn", attn), ("o", mm(nq * d, h)),
             ("gate_up", mm(h, 2 * i)), ("down", mm(i, h))]
    if light_ops:
        norm = OpSpec(f"rmsnorm_residual[h={h},{dt}]", LIGHT, 4.0 * h, float(h * b), float(3 * h * b))
        rope = OpSpec(f"rope_kv_append[q={nq},kv={nkv},d={d},{dt}]", LIGHT, 6.0 * (nq + nkv) * d, 0.0,
                      float(2 * (nq + 3 * nkv) * d * b))
        act = OpSpec(f"silu_mul[i={i},{dt}]", LIGHT, 4.0 * i, 0.0, float(3 * i * b))
        chain = [("attn_norm", norm), chain[0], ("rope_kv", rope), *chain[1:3], ("ffn_norm", norm), chain[3],
                 ("act", act), chain[4]]
    for name, spec in chain:
        add_op(g, name, spec)
    for (u, _), (v, _) in zip(chain, chain[1:]):
        g.add_edge(u, v, shift=0)
    g.add_edge(chain[-1][0], chain[0][0], shift=1)
    return g
