import pytest
import torch
import torch.distributed._functional_collectives  # noqa: F401  (registers the _c10d_functional ops)
from passes_graphs import kv_layer, node_info

from nanoflow_compiler.passes.classify_ops import op_class, register_op_class


@torch.library.custom_op("nanoflow_test::my_gemm", mutates_args=())
def my_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def test_gemms_attention_and_the_rest(trace, kv_inputs, mlp):
    fn, args = mlp
    gm, _ = trace(fn, *args, params=("w1", "w2"), until="classify_ops")
    assert node_info(gm, "mm").cls == "COMPUTE"
    assert node_info(gm, "relu").cls == "LIGHT"
    gm, _ = trace(kv_layer, *kv_inputs, until="classify_ops")
    assert node_info(gm, "kv_append").cls == "MEMORY"
    assert node_info(gm, "paged_attention").cls == "MEMORY"


def test_registry_by_overload_packet_and_namespace():
    aten = torch.ops.aten
    assert op_class(aten.addmm.default) == op_class(aten.bmm.default) == "COMPUTE"
    assert op_class(aten._scaled_dot_product_flash_attention_for_cpu.default) == "MEMORY"
    assert op_class(aten.add.Tensor) == "LIGHT"
    assert op_class(torch.ops._c10d_functional.all_reduce.default) == "NETWORK"


def test_users_extend_the_registry():
    op = torch.ops.nanoflow_test.my_gemm.default
    assert op_class(op) == "LIGHT"
    register_op_class(torch.ops.nanoflow_test.my_gemm, "COMPUTE")
    assert op_class(op) == "COMPUTE"
    with pytest.raises(ValueError, match="unknown op class 'GEMM'"):
        register_op_class(op, "GEMM")
