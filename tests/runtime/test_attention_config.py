"""Decode attention tile configs by name (the benchmarks' --attn-configs)."""

import pytest

pytest.importorskip("triton", reason="the attention kernel module is a Triton module")
from nanoflow_compiler.runtime.kernels.attention_kernel import DECODE, DECODE_SMALL, AttnConfig  # noqa: E402


def test_decode_configs_round_trip_through_their_names():
    assert [c.name for c in (DECODE, DECODE_SMALL)] == ["n64w4s3", "n16w1s3"]
    assert [AttnConfig.from_name(c.name) for c in (DECODE, DECODE_SMALL)] == [DECODE, DECODE_SMALL]
    assert AttnConfig.from_name("n32w2s4") == AttnConfig(block_n=32, num_warps=2, stages=4)


@pytest.mark.parametrize("bad", ["", "n16w1", "16w1s3", "n16w1s3x", "nXw1s3"])
def test_a_malformed_name_is_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match=r"expected n<tile tokens>w<warps>s<stages>"):
        AttnConfig.from_name(bad)
