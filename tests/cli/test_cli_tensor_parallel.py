"""`--tensor-parallel-size` on the command line: generate, bench and serve over two gloo ranks, and the sizes refused.

The model is a two-layer Llama saved as a Hugging Face directory with a byte-level tokenizer (256 tokens, built
here: nothing is downloaded), so that `generate` prints text through rank 0's tokenizer and detokenizer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nanoflow_compiler import LLM, SamplingParams
from nanoflow_compiler.cli import main

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from nanoflow_compiler.models import preset_config

    path = tmp_path_factory.mktemp("tiny-text-llama")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(preset_config("llama-3-8b", **TINY))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50.0)  # larger activations: greedy answers that are not one token
    model.save_pretrained(path)
    return str(path)


def test_generate_tp2_prints_the_text_tp1_prints(tiny_text_model, capfd):
    argv = ["generate", "Tensor parallel ranks agree", "--model", tiny_text_model, "--no-compile",
            "--max-tokens", "12", "--ignore-eos"]
    assert main(argv) == 0
    one = capfd.readouterr()
    assert main([*argv, "--tensor-parallel-size", "2"]) == 0
    two = capfd.readouterr()
    assert len(set(one.out.strip())) > 2  # real text, not one repeated character
    assert two.out == one.out
    assert two.err.count("tokens in") == 1  # only rank 0 prints


def test_bench_throughput_tp2_writes_its_size_into_the_json(tiny_text_model, tmp_path, capfd):
    out = tmp_path / "tp2.json"
    assert main(["bench", "throughput", "--model", tiny_text_model, "-tp", "2", "--num-prompts", "4",
                 "--input-len", "24", "--output-len", "4", "--num-warmup-prompts", "2", "--no-compile",
                 "--tflops", "1", "--bandwidth", "0.1", "--no-telemetry", "--output-json", str(out)]) == 0
    printed = capfd.readouterr().out
    assert printed.count("Throughput:") == 1
    result = json.loads(out.read_text())
    assert result["tensor_parallel_size"] == result["options"]["tensor_parallel_size"] == 2
    assert result["optimal"]["num_gpus"] == 2
    assert result["total_num_output_tokens"] == 4 * 4
    assert result["timing"]["steps"] >= 4  # one token per request per step


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "-tp", "0"], "--tensor-parallel-size must be at least 1, got 0"),
    (["generate", "--model", "smollm2-135m", "--prompt-token-ids", "1,2", "-tp", "2"],
     "num_attention_heads (9) is not divisible by the tensor-parallel size 2"),
    (["bench", "throughput", "--model", "smollm2-135m", "--tensor-parallel-size", "2"],
     "num_attention_heads (9) is not divisible by the tensor-parallel size 2"),
    (["serve", "--model", "llama-3-8b", "--port", "0", "-tp", "3"],
     "num_attention_heads (32) is not divisible by the tensor-parallel size 3"),
    (["generate", "hi", "--artifact", "somewhere", "-tp", "2"], "cannot run with --tensor-parallel-size > 1"),
])
def test_bad_sizes_are_one_clear_line_before_any_rank_starts(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_tp2_answers_like_tp1_and_ends_when_its_launcher_is_killed(tiny_text_model):
    """SIGTERM to the launching process alone: rank 0 drains and releases its follower instead of serving on."""
    prompt = "Tensor parallel ranks agree"
    reference = LLM(tiny_text_model, compile=False).generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0].text
    cli = [sys.executable, "-c", "import sys; from nanoflow_compiler.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*cli, "serve", "--model", tiny_text_model, "-tp", "2", "--no-compile", "--port", "0",
                             "--log-level", "warning", "--drain-timeout", "2"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        banner = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", banner).group(1)
        body = {"model": Path(tiny_text_model).name, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                "ignore_eos": True}
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == reference
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # rank 0 drains, stops its follower and closes the port
            try:
                httpx.get(f"{url}/health", timeout=1)
            except httpx.TransportError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("rank 0 still serves after its launcher was killed")
    finally:
        proc.kill()
