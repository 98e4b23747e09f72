"""`LLM`, the front door: prompts in every accepted form, chat, and bad input that leaves it serving."""


import pytest
import torch

from nanoflow_compiler import LLM, SamplingParams
from nanoflow_compiler.models import ModelLoadError, random_model
from nanoflow_compiler.models.loader import default_gguf_path

GREEDY = SamplingParams(temperature=0.0, max_tokens=3)


@pytest.fixture
def llm(smollm2):
    return LLM(smollm2, compile=False, num_kv_blocks=32)


def test_generate_takes_text_batches_and_token_ids_in_order(llm):
    one = llm.generate("The capital of France is", GREEDY, use_tqdm=False)
    assert len(one) == 1 and "Paris" in one[0].text and one[0].finished
    ids = llm.tokenizer("The capital of France is").input_ids
    batch = llm.generate(["1, 2, 3, 4,", "The capital of France is"], GREEDY, use_tqdm=False)
    assert batch[1].token_ids == one[0].token_ids
    assert batch[0].text != batch[1].text
    by_ids = llm.generate([ids], GREEDY, use_tqdm=False)
    assert by_ids[0].token_ids == one[0].token_ids and by_ids[0].prompt_token_ids == ids
    per_prompt = llm.generate(["a", "b"], [GREEDY, SamplingParams(temperature=0.0, max_tokens=2)], use_tqdm=False)
    assert len(per_prompt[1].token_ids) == 2 and per_prompt[0].finish_reason in ("stop", "length")


def test_chat_applies_the_template(llm):
    (out,) = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    assert "Paris" in out.text
    assert out.prompt_token_ids[0] == llm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    two = llm.chat([[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a color."}]],
                   GREEDY, use_tqdm=False)
    assert len(two) == 2 and all(o.finished for o in two)


def test_bad_input_is_refused_and_the_llm_keeps_serving(smollm2):
    llm = LLM(smollm2, compile=False, num_kv_blocks=16)  # 256 tokens of context
    (reference,) = llm.generate("The capital of France is", GREEDY, use_tqdm=False)
    assert "Paris" in reference.text
    bad = [
        ("", GREEDY, "empty"),
        ("word " * 300, GREEDY, "context holds 256"),
        ("hi", SamplingParams(temperature=-1.0), "temperature"),
        ("hi", SamplingParams(top_p=0.0), "top_p"),
        ("hi", SamplingParams(top_p=1.5), "top_p"),
        ("hi", SamplingParams(top_k=0), "top_k"),
        ("hi", SamplingParams(top_k=-3), "top_k"),
        ("hi", SamplingParams(max_tokens=0), "max_tokens"),
    ]
    for prompt, params, message in bad:
        with pytest.raises(ValueError, match=message):  # the good prompt beside it is refused with the batch
            llm.generate(["The capital of France is", prompt], params, use_tqdm=False)
        (out,) = llm.generate("The capital of France is", GREEDY, use_tqdm=False)
        assert out.token_ids == reference.token_ids


def test_unknown_models_are_refused_clearly(tmp_path):
    for spec, message in [("no-such-preset", "unknown model"), (str(tmp_path / "missing.gguf"), "unknown model"),
                          (str(tmp_path), "neither a .gguf file nor a directory")]:
        with pytest.raises(ModelLoadError, match=message):
            LLM(spec)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_gguf_is_refused_clearly(smollm2, tmp_path, damage):
    bad = tmp_path / "broken.gguf"
    if damage == "garbage":
        bad.write_bytes(b"this is not a gguf file" * 100)
    else:
        with open(default_gguf_path(), "rb") as src, open(bad, "wb") as dst:
            dst.write(src.read(2_000_000))
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        LLM(str(bad))
    (out,) = LLM(smollm2, compile=False, num_kv_blocks=16).generate("The capital of France is", GREEDY,
                                                                    use_tqdm=False)
    assert "Paris" in out.text


def test_models_without_a_tokenizer_take_token_ids(tiny_config):
    from nanoflow_compiler.models import LoadedModel

    loaded = LoadedModel(random_model(tiny_config(), torch.float32, "cpu"), None, "tiny", "preset")
    llm = LLM(loaded, compile=False, num_kv_blocks=16)
    (out,) = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert len(out.token_ids) == 4 and out.text == ""
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.generate("text", use_tqdm=False)
    with pytest.raises(ValueError, match="no chat template"):
        llm.chat([{"role": "user", "content": "hi"}])
