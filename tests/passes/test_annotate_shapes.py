import sympy
import torch
from passes_graphs import kv_layer, node_info
from torch.fx.experimental.proxy_tensor import make_fx

from nanoflow_compiler.backend import make_context
from nanoflow_compiler.options import CompileOptions
from nanoflow_compiler.passes import annotate_shapes
from nanoflow_compiler.passes.annotate_shapes import CONTEXT
from nanoflow_compiler.passes.context import InputInfo
from nanoflow_compiler.passes.symbolic import TOKEN


def test_sizes_and_costs_are_expressions_in_T(trace, mlp):
    fn, args = mlp
    gm, ctx = trace(fn, *args, params=("w1", "w2"), until="annotate_shapes")
    assert ctx.token is TOKEN
    mm = node_info(gm, "mm")
    tokens, inner = mm.shapes[0]
    hidden = node_info(gm, "mm_1").shapes[0][1]
    assert tokens == TOKEN
    assert sympy.expand(mm.flops - 2 * TOKEN * hidden * inner) == 0
    assert sympy.expand(mm.bytes - 4 * (TOKEN * hidden + hidden * inner + TOKEN * inner)) == 0
    assert node_info(gm, "relu").flops == TOKEN * inner


def test_static_shapes_give_numbers():
    x, w = torch.randn(4, 8), torch.randn(8, 2)
    gm = make_fx(lambda x, w: x @ w)(x, w)
    ctx = make_context(gm, [InputInfo("x", "input", "x"), InputInfo("w", "parameter", "w")], [x, w], [x, w],
                       CompileOptions.from_dict(None))
    annotate_shapes.run(gm, ctx)
    assert ctx.token == 4
    assert node_info(gm, "mm").flops == 2 * 4 * 8 * 2


def test_paged_attention_costs_depend_on_context_length(trace, kv_inputs):
    gm, _ = trace(kv_layer, *kv_inputs, until="annotate_shapes")
    attn = node_info(gm, "paged_attention")
    assert {TOKEN, CONTEXT} <= attn.flops.free_symbols
    assert CONTEXT in attn.bytes.free_symbols
    append = node_info(gm, "kv_append")
    assert append.flops == 0 and TOKEN in append.bytes.free_symbols and CONTEXT not in append.bytes.free_symbols
