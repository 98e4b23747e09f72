import networkx as nx
import pytest
import torch

from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.errors import ProfilingUnavailableError
from nanoflow_compiler.search.plan_runner import PlanTimer, plan_dag, unrolled_issue_order
from nanoflow_compiler.search.search import search_bucket


def test_unrolled_order_respects_data_stream_and_layer_edges(make_db, make_chain):
    layer = make_chain(["qkv", "attn", "o"])
    plan = search_bucket(layer, 1024, TableCostModel(make_db(2, kinds=("attn", "o", "qkv"))), model="m",
                         granularity=64)
    nano, orders = plan_dag(layer, plan)
    g = unrolled_issue_order(nano, orders, 3)
    assert g.number_of_nodes() == 3 * nano.number_of_nodes()
    topo = list(nx.topological_sort(g))
    pos = {n: i for i, n in enumerate(topo)}
    last_o = max((n for n in nano if n.startswith("o#")), key=lambda n: nano.nodes[n]["hi"])
    first_qkv = min((n for n in nano if n.startswith("qkv#")), key=lambda n: nano.nodes[n]["lo"])
    assert pos[(0, first_qkv)] < pos[(1, first_qkv)] and pos[(0, last_o)] < pos[(1, first_qkv)]


def test_sequential_plan_runs_on_one_stream(make_db, make_chain):
    layer = make_chain(["gemm", "attn"])
    plan = search_bucket(layer, 512, TableCostModel(make_db(0)), model="m", granularity=64,
                         confirm=lambda p: 1.0 if p.sequential else 2.0)
    nano, orders = plan_dag(layer, plan)
    assert plan.sequential and {d["stream"] for _, d in nano.nodes(data=True)} == {"main"}
    assert list(orders) == ["main"] and len(orders["main"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_timing_needs_a_gpu(make_chain):
    with pytest.raises(ProfilingUnavailableError, match="needs a CUDA GPU"):
        PlanTimer(make_chain(["gemm", "attn"]))
