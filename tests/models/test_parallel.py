"""Tensor parallelism: shard specs, and TP=2 over gloo (two spawned processes, one launch for the module) against TP=1.

The two-process run covers Llama (tied and untied heads, an odd vocabulary, replicated KV heads, Qwen2 biases) and
Mixtral, through both ways weights reach a rank (random draw at full shape, and cutting a full state dict), for a
prefill of two requests plus one KV-cache decode step, and checks that the collectives are nodes of the traced graph.
A second two-process run compiles the TP=2 Llama with the nanoflow backend at 2 and 3 nano-batches: it must equal
TP=1 eager, with one all-reduce per nano-batch on the NETWORK stream, issued in the same order on both ranks.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from nanoflow_compiler.models import LlamaForCausalLM, preset_config, random_model
from nanoflow_compiler.models.loader import model_class
from nanoflow_compiler.models.parallel import ShardSpec, shard_state_dict
from nanoflow_compiler.runtime import distributed
from nanoflow_compiler.runtime.attention import AttnMetadata
from nanoflow_compiler.runtime.distributed import TPGroup

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
BLOCK = 4
PROMPTS = [[5, 17, 42, 7, 99, 3], [11, 250, 64]]


def _configs() -> dict:
    return {
        "llama3": preset_config("llama-3-8b", **TINY),
        "tied_odd_vocab": preset_config("smollm2-135m", **{**TINY, "vocab_size": 251}),
        "replicated_kv": preset_config("llama-3-8b", **{**TINY, "num_key_value_heads": 1}),
        "qwen2_bias": preset_config("qwen2-0.5b", **TINY),
        "mixtral": preset_config("mixtral-8x7b", **TINY, num_local_experts=4),
    }


# Weights reach these ranks by cutting a full state dict (the loader's path); the others by random_model's draw.
CUT_FROM_FULL = ("tied_odd_vocab", "qwen2_bias")


def _full_model(config) -> LlamaForCausalLM:
    """Default nn init (embeddings N(0, 1), non-zero biases) makes larger activations than random_model's."""
    torch.manual_seed(1)
    return model_class(config)(config, tp=TPGroup()).eval()


def _build(name: str, config) -> LlamaForCausalLM:
    if name not in CUT_FROM_FULL:
        return random_model(config, torch.float32, "cpu", seed=0)
    model = model_class(config)(config).eval()
    model.load_state_dict(shard_state_dict(model, _full_model(config).state_dict()))
    return model


def _meta(positions: list[list[int]], logits_indices: list[int]) -> tuple[torch.Tensor, AttnMetadata]:
    """Request r owns cache blocks 4r..4r+3; each token's slot follows from its position."""
    block_tables = torch.arange(4 * len(PROMPTS), dtype=torch.int32).view(len(PROMPTS), 4)
    req = torch.tensor([r for r, ps in enumerate(positions) for _ in ps], dtype=torch.int32)
    pos = torch.tensor([p for ps in positions for p in ps])
    slots = block_tables[req.long(), pos // BLOCK].long() * BLOCK + pos % BLOCK
    return pos, AttnMetadata(slots, req, block_tables, torch.tensor(logits_indices))


def _prefill_batch():
    ids = torch.tensor([t for p in PROMPTS for t in p])
    lengths = [len(p) for p in PROMPTS]
    pos, meta = _meta([list(range(n)) for n in lengths], [sum(lengths[: i + 1]) - 1 for i in range(len(lengths))])
    return ids, pos, meta


@torch.inference_mode()  # as the engine's model runner calls the model
def _prefill_then_decode(model: LlamaForCausalLM, forward=None) -> dict[str, torch.Tensor]:
    """`forward` (default: the model itself) runs the steps, e.g. the model compiled."""
    forward = model if forward is None else forward
    model.allocate_kv_cache(4 * len(PROMPTS), BLOCK, torch.float32, "cpu")
    prefill = forward(*_prefill_batch())
    pos, meta = _meta([[len(p)] for p in PROMPTS], list(range(len(PROMPTS))))
    decode = forward(prefill.argmax(-1), pos, meta)
    return {"prefill": prefill, "decode": decode}


def _collectives(model: LlamaForCausalLM) -> dict[str, int]:
    """Collective nodes in the ATen graph that torch.compile (fullgraph, dynamic tokens) hands a backend."""
    from torch._dynamo.backends.common import aot_autograd

    graphs = []
    model.allocate_kv_cache(4 * len(PROMPTS), BLOCK, torch.float32, "cpu")

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=capture), fullgraph=True, dynamic=True)
    with torch.no_grad():
        compiled(*_prefill_batch())
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    return {kind: sum(t.startswith(f"_c10d_functional.{kind}") for t in targets)
            for kind in ("all_reduce", "all_gather_into_tensor", "wait_tensor")}


def _tp_worker(configs: dict) -> dict:
    """Runs on every rank; rank 0's answer comes back to the test."""
    results = {name: _prefill_then_decode(_build(name, cfg)) for name, cfg in configs.items()}
    results["collectives"] = _collectives(_build("llama3", configs["llama3"]))
    results["tp"] = distributed.get_tp()
    return results


@pytest.fixture(scope="module")
def tp2():
    return distributed.launch(_tp_worker, 2, _configs(), backend="gloo")


NANO_BATCHES = (2, 3)


def _compiled_worker(config) -> dict:
    """Per nano-batch count: the nanoflow-compiled TP=2 Llama's logits, the NETWORK ops of the prefill's plan
    (target, token span, stream classes) in issue order, and that order as every rank has it."""
    import torch.distributed as dist

    from nanoflow_compiler import backend

    results = {}
    for k in NANO_BATCHES:
        torch._dynamo.reset()
        model = _build("llama3", config)
        with backend.capture() as compiled:
            fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True, options={"nano_batches": k})
            logits = _prefill_then_decode(model, fn)
        plan = compiled[0].ir.buckets[0]
        classes = {s.id: s.classes for s in plan.streams}
        network = [(op.target, (plan.cuts[op.seg[0]], plan.cuts[op.seg[1]]) if op.seg else None, classes[op.stream])
                   for op in plan.ops if op.cls == "NETWORK" and op.kind == "compute"]
        orders = [None] * dist.get_world_size()
        dist.all_gather_object(orders, [(op.node, op.seg) for op in plan.ops if op.cls == "NETWORK"])
        results[k] = {**logits, "network": network, "orders": orders, "nano_batches": plan.nano_batches,
                      "notes": compiled[0].ir.provenance.notes}
    return results


@pytest.fixture(scope="module")
def tp2_compiled():
    return distributed.launch(_compiled_worker, 2, _configs()["llama3"], backend="gloo")


@pytest.mark.parametrize("k", NANO_BATCHES)
def test_tp2_nanoflow_compiled_equals_tp1_eager(tp2_compiled, k):
    config = _configs()["llama3"]
    ref = _prefill_then_decode(random_model(config, torch.float32, "cpu", seed=0))
    got = tp2_compiled[k]
    for step in ("prefill", "decode"):
        torch.testing.assert_close(got[step], ref[step], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", NANO_BATCHES)
def test_tp2_nanoflow_plan_has_one_all_reduce_per_nano_batch_on_the_network_stream(tp2_compiled, k):
    got = tp2_compiled[k]
    sizes = got["nano_batches"]["NETWORK"]
    assert len(sizes) == k
    spans = [(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(k)]
    reduces = [(span, classes) for target, span, classes in got["network"]
               if target == "_c10d_functional.all_reduce_.default"]
    layers = TINY["num_hidden_layers"]  # the embedding's and each layer's o_proj and down_proj, in place
    assert reduces == [(span, ["NETWORK"]) for _ in range(1 + 2 * layers) for span in spans]
    waits = [span for target, span, _ in got["network"] if target == "_c10d_functional.wait_tensor.default"]
    assert waits.count(None) == 1 and len(waits) == 1 + (1 + 2 * layers) * k  # the LM head's gather is unsplit
    assert got["orders"][0] == got["orders"][1]  # NCCL would deadlock on ranks issuing in different orders
    assert not any("all_reduce" in note for note in got["notes"])


@pytest.mark.parametrize("name", list(_configs()))
def test_tp2_logits_equal_tp1(tp2, name):
    config = _configs()[name]
    model = _full_model(config) if name in CUT_FROM_FULL else random_model(config, torch.float32, "cpu", seed=0)
    ref = _prefill_then_decode(model)
    assert tp2["tp"] == TPGroup(0, 2, tp2["tp"].group_name)
    for step in ("prefill", "decode"):
        assert tp2[name][step].shape == ref[step].shape == (len(PROMPTS), config.vocab_size)
        assert ref[step].abs().max() > 1e-3  # the comparison below is not between two near-zero tensors
        torch.testing.assert_close(tp2[name][step], ref[step], rtol=1e-5, atol=1e-5)


def test_tp2_graph_has_functional_collectives(tp2):
    layers = TINY["num_hidden_layers"]
    # embedding + (o_proj, down_proj) per layer; the LM head gathers the vocabulary.
    assert tp2["collectives"]["all_reduce"] == 1 + 2 * layers
    assert tp2["collectives"]["all_gather_into_tensor"] == 1
    assert tp2["collectives"]["wait_tensor"] == 2 + 2 * layers


def test_tp1_graph_has_no_collectives(tiny_config):
    model = random_model(tiny_config("llama-3-8b"), torch.float32, "cpu")
    model.allocate_kv_cache(8, BLOCK, torch.float32, "cpu")
    gm = make_fx(lambda *a: model(*a))(*_prefill_batch())
    targets = {str(n.target) for n in gm.graph.nodes}
    assert not any("c10d" in t for t in targets)
    assert "aten.mm.default" in targets or "aten.addmm.default" in targets


def test_shard_spec_cuts_fused_sections_and_pads():
    full = torch.arange(10.0).view(10, 1)  # q part of 6 rows, kv part of 4 rows
    spec = ShardSpec(0, ((6, 3, 3), (4, 2, 2)))
    assert spec.shard(full).flatten().tolist() == [3, 4, 5, 8, 9]
    assert spec.full_shape(torch.Size([5, 1])) == (10, 1)
    padded = ShardSpec(0, ((5, 3, 3),)).shard(torch.arange(5.0).view(5, 1))
    assert padded.flatten().tolist() == [3, 4, 0]
    whole = torch.ones(4, 2)
    assert ShardSpec(0, ((4, 0, 4),)).shard(whole) is whole  # one rank: no copy
    with pytest.raises(ValueError, match="expects 10"):
        spec.shard(torch.zeros(9, 1))


@pytest.mark.parametrize("name", ["llama3", "replicated_kv", "mixtral"])
def test_rank_shards_fit_and_cover_the_full_weights(name):
    """Shapes of every rank's slice match that rank's model; the slices of split weights add up to the whole."""
    config = _configs()[name]
    full = _full_model(config).state_dict()
    ranks = [model_class(config)(config, tp=TPGroup(r, 2, "unused")) for r in range(2)]
    shards = [shard_state_dict(m, full) for m in ranks]
    for model, shard in zip(ranks, shards):
        assert {k: v.shape for k, v in shard.items()} == {k: v.shape for k, v in model.state_dict().items()}
    for key in ("layers.0.self_attn.o_proj.weight", "lm_head.weight"):
        assert torch.equal(torch.cat([s[key] for s in shards], dim=1 if "o_proj" in key else 0), full[key])


def test_indivisible_heads_raise_a_clear_error(tiny_config):
    config = tiny_config("llama-3-8b")
    with pytest.raises(ValueError, match=r"num_attention_heads \(4\) is not divisible by the tensor-parallel size 3"):
        LlamaForCausalLM(config, tp=TPGroup(0, 3, "unused"))
    with pytest.raises(ValueError, match="tensor-parallel-size must be at least 1"):
        distributed.launch(print, 0)



def _bad_heads(config) -> None:
    LlamaForCausalLM(config, tp=TPGroup(0, 2, "unused"))


def test_a_rank_s_value_error_goes_back_to_the_launcher(tiny_config):
    """In-process (a second launch would cost a spawn): the rank reports a ValueError, the launcher's drain keeps it."""
    import multiprocessing

    results = multiprocessing.get_context("spawn").SimpleQueue()
    config = tiny_config("smollm2-135m", num_attention_heads=3, num_key_value_heads=1, hidden_size=48)
    with pytest.raises(ValueError):
        distributed._worker(0, _bad_heads, (config,), {}, 1, "env://", "gloo", results)
    ok, error = distributed._drain(results, None)
    assert not ok and "num_attention_heads (3) is not divisible by the tensor-parallel size 2" in str(error)
