import numpy as np
import pytest

from nanoflow_compiler.bench.datasets import DATASETS, MAX_TRACE_INPUT, MAX_TRACE_OUTPUT, TRACE_STATS, make_workload


def test_random_has_exact_lengths_and_totals():
    w = make_workload("random", 8, vocab_size=1000, input_len=32, output_len=16)
    assert [r.prompt_len for r in w.requests] == [32] * 8
    assert [r.output_len for r in w.requests] == [16] * 8
    assert (w.num_prompt_tokens, w.num_output_tokens) == (256, 128)
    d = w.describe()
    assert d["total_prompt_tokens"] == 256 and d["num_requests"] == 8 and d["dataset"] == "random"


def test_random_defaults_are_vllms():
    w = make_workload("random", 2, vocab_size=1000)
    assert (w.requests[0].prompt_len, w.requests[0].output_len) == (1024, 128)


def test_seeded_and_seed_sensitive():
    a = make_workload("sharegpt-like", 50, vocab_size=5000, seed=3)
    b = make_workload("sharegpt-like", 50, vocab_size=5000, seed=3)
    c = make_workload("sharegpt-like", 50, vocab_size=5000, seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests


def test_tokens_in_range_and_excluded_ids_absent():
    w = make_workload("random", 20, vocab_size=10, input_len=200, output_len=1, exclude_token_ids=(0, 2))
    ids = np.concatenate([r.prompt_token_ids for r in w.requests])
    assert ids.min() >= 0 and ids.max() < 10
    assert not np.isin(ids, [0, 2]).any()
    assert set(ids.tolist()) == {1, 3, 4, 5, 6, 7, 8, 9}


@pytest.mark.parametrize("name", list(TRACE_STATS))
def test_trace_shaped_means_match_the_paper_and_respect_caps(name):
    stats = TRACE_STATS[name]
    w = make_workload(name, 2000, vocab_size=32000, seed=0, max_model_len=8192)
    ins = np.array([r.prompt_len for r in w.requests])
    outs = np.array([r.output_len for r in w.requests])
    assert ins.mean() == pytest.approx(stats.input_mean, rel=0.01)
    assert outs.mean() == pytest.approx(stats.output_mean, rel=0.01)
    assert ins.min() >= 1 and ins.max() <= MAX_TRACE_INPUT
    assert outs.min() >= 1 and outs.max() <= MAX_TRACE_OUTPUT
    assert ins.std() > 0.3 * stats.input_std  # a distribution, not a constant


def test_trace_shaped_lengths_fit_a_short_context():
    w = make_workload("splitwise-like", 200, vocab_size=100, max_model_len=512, output_len=8)
    assert max(r.prompt_len + r.output_len for r in w.requests) <= 512
    assert all(r.output_len == 8 for r in w.requests)


def test_given_lengths_override_a_trace_side():
    w = make_workload("lmsys-like", 30, vocab_size=100, output_len=5, max_model_len=4096)
    assert {r.output_len for r in w.requests} == {5}
    assert len({r.prompt_len for r in w.requests}) > 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="nope"), "unknown dataset"),
    (dict(num_prompts=0), "--num-prompts"),
    (dict(input_len=0), "--input-len"),
    (dict(input_len=500, output_len=20, max_model_len=512), "exceed the model's context"),
])
def test_bad_requests_are_named(kwargs, message):
    args = dict(dataset="random", num_prompts=2, vocab_size=100) | kwargs
    with pytest.raises(ValueError, match=message):
        make_workload(**args)


def test_all_datasets_listed():
    assert DATASETS == ("random", "splitwise-like", "lmsys-like", "sharegpt-like")
