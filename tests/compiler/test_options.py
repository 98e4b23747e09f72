"""Bad compile options fail before tracing, with a message that names the problem."""

import pytest
import torch

from nanoflow_compiler.options import CompileOptions, NanoflowOptionsError


@pytest.mark.parametrize("options,message", [
    ({"nano_batch": 2}, r"unknown nanoflow option 'nano_batch'; did you mean 'nano_batches'\? valid options: "
                        r"nano_batches, split, executor"),
    ({"nano_batches": 4, "token_buckets": [16, 2]}, "4 nano-batches for COMPUTE is more than the 2 tokens of token bucket 2"),
    ({"split": {8: [3, 3, 3]}}, r"sizes \[3, 3, 3\] add up to 9, not 8 tokens"),
    ({"sm_plan": {"COMPUTE": 104, "MEMORY": 40}}, "asks for 144 SMs but the device has 132"),
    ({"sm_plan": {"COMPUTE": 100}}, "SM shares must be multiples of 8"),
    ({"sm_plan": {"COMPUTE": 96, "GEMV": 36}}, "sm_plan names unknown op class 'GEMV'; valid classes: COMPUTE, MEMORY, NETWORK"),
    ({"sm_plan": {"COMPUTE": 96, "LIGHT": 8}}, "LIGHT ops run on the COMPUTE stream"),
    ({"nano_batches": {"ATTENTION": 2}}, "nano_batches names unknown op class 'ATTENTION'"),
    ({"nano_batches": 0}, "nano_batches must be an integer >= 1, got 0"),
    ({"split": [0.5, 0.6]}, r"fractions \[0.5, 0.6\] must add up to 1"),
    ({"nano_batches": 3, "split": [0.5, 0.5]}, "split gives 2 nano-batches for COMPUTE but nano_batches says 3"),
    ({"executor": "cuda"}, "executor must be one of"),
    ({"plan": "fast"}, "plan must be None or 'auto'"),
    ({"fuse_light": "yes"}, "fuse_light must be True, False or None, got 'yes'"),
    ({"token_inputs": "input_ids"}, "token_inputs must be a non-empty list of input names"),
    ({"min_overlap_tokens": 0}, "min_overlap_tokens must be an integer >= 1, got 0"),
])
def test_bad_options_are_rejected_clearly(options, message):
    with pytest.raises(NanoflowOptionsError, match=message):
        CompileOptions.from_dict(options)


def test_remainder_share_and_defaults_are_accepted():
    options = CompileOptions.from_dict({"sm_plan": {"COMPUTE": 96, "MEMORY": 36}, "device_sms": 132})
    assert options.streams({"COMPUTE", "MEMORY", "LIGHT"}) == [(["COMPUTE", "NETWORK", "LIGHT"], 96), (["MEMORY"], 36)]
    defaults = CompileOptions.from_dict(None)
    assert defaults.count("COMPUTE") == defaults.count("MEMORY") == 2
    assert defaults.streams({"COMPUTE", "MEMORY"}) == [(["COMPUTE", "NETWORK", "LIGHT"], 96), (["MEMORY"], 36)]
    assert CompileOptions.from_dict({"overlap": False}).count("MEMORY") == 1


def test_buckets_below_min_overlap_tokens_run_unsplit_on_the_whole_device():
    """Below the GEMMs' ridge point every op is memory-bound: partitions would split bandwidth, not overlap work."""
    options = CompileOptions.from_dict({"min_overlap_tokens": 64, "token_buckets": [16, 64], "device_sms": 132})
    assert options.sizes(16, "MEMORY") == [16] and options.sizes(64, "MEMORY") == [32, 32]
    assert options.streams({"COMPUTE", "MEMORY"}, 16) == [(["COMPUTE", "MEMORY", "NETWORK", "LIGHT"], 132)]
    assert len(options.streams({"COMPUTE", "MEMORY"}, 64)) == 2
    assert CompileOptions.from_dict({"nano_batches": 4, "min_overlap_tokens": 8, "token_buckets": [2, 8]})


def test_backend_reports_option_errors_at_compile_time():
    torch._dynamo.reset()
    fn = torch.compile(torch.nn.Linear(4, 4), backend="nanoflow", options={"nano_batches": 8, "token_buckets": [4]})
    with pytest.raises(Exception, match="8 nano-batches for COMPUTE is more than the 4 tokens of token bucket 4"):
        fn(torch.randn(4, 4))
