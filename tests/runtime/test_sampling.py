import pytest
import torch

from nanoflow_compiler.runtime.sampling import Sampler, SamplingParams, apply_top_k_top_p, make_generator


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(seed=1.5), "seed"),
    (dict(stop=[""]), "stop"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
])
def test_validate_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs).validate()


def test_defaults_are_valid_and_a_lone_stop_string_becomes_a_list():
    SamplingParams().validate()
    assert SamplingParams(stop="\n").stop == ["\n"]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert out[0, 1] == 5.0 and out[0, 3] == 4.0


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()

    def kept(p):
        return torch.isfinite(apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([p]))).tolist()[0]

    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]  # the top token always stays


def test_masks_apply_per_row():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = apply_top_k_top_p(logits, torch.tensor([1, 3]), torch.tensor([1.0, 1.0]))
    assert torch.isfinite(out).tolist() == [[False, False, True], [True, True, True]]


def test_greedy_is_argmax():
    logits = torch.randn(4, 100)
    params = [SamplingParams(temperature=0)] * 4
    assert Sampler()(logits, params, [None] * 4) == logits.argmax(-1).tolist()


def test_seeded_requests_reproduce_whatever_shares_their_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 1000)
    seeded = SamplingParams(temperature=1.0, seed=123)
    sampler = Sampler()

    def draw(batch_rows):
        gen = make_generator(123, "cpu")
        rows = [logits[0:1]] + [logits[i : i + 1] for i in batch_rows]
        params = [seeded] + [SamplingParams(temperature=0.7, top_k=50)] * len(batch_rows)
        gens = [gen] + [None] * len(batch_rows)
        return [sampler(torch.cat(rows), params, gens)[0] for _ in range(20)]

    alone, batched = draw([]), draw([1, 2])
    assert alone == batched
    assert len(set(alone)) > 1  # it really samples
    assert draw([2]) == alone


def test_sampling_follows_the_distribution_inside_the_nucleus():
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = probs.log().expand(4000, 4).contiguous()
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=None)] * 4000
    torch.manual_seed(1)
    tokens = torch.tensor(Sampler()(logits, params, [None] * 4000))
    freq = torch.bincount(tokens, minlength=4).float() / 4000
    assert freq[3] == 0  # outside the 0.9 nucleus
    assert torch.allclose(freq[:3], probs[:3] / 0.95, atol=0.03)


def test_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(3000, 3).contiguous()
    torch.manual_seed(2)
    cold = Sampler()(logits, [SamplingParams(temperature=0.2)] * 3000, [None] * 3000)
    hot = Sampler()(logits, [SamplingParams(temperature=5.0)] * 3000, [None] * 3000)
    assert cold.count(0) > 2900
    assert hot.count(0) < 1500
