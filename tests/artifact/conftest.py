"""Artifacts exported once per test package: SmolLM2 (the real round trip) and a two-layer model (fast loads)."""

from __future__ import annotations

import pytest
from artifact_helpers import GREEDY, SMOL_BUCKETS, SMOL_ENGINE, TINY_ENGINE, prompt_ids, tiny_model


@pytest.fixture(scope="package")
def smol(smollm2, tmp_path_factory):
    """SmolLM2 exported for buckets 16 and 64, the IR compiled at export, and the greedy answers of the same engine
    un-exported (compiled with the nanoflow backend, same buckets and cache)."""
    from nanoflow_compiler import LLM, export
    from nanoflow_compiler.backend import capture

    out = tmp_path_factory.mktemp("artifacts") / "smollm2"
    with capture() as compiled:
        export(smollm2, out, buckets=SMOL_BUCKETS, num_kv_blocks=SMOL_ENGINE["num_kv_blocks"])
    # Equal compile options: Dynamo serves this engine with the compilation the export just made (no second compile).
    reference = LLM(smollm2, compile=True, **SMOL_ENGINE)
    answers = reference.generate(prompt_ids(smollm2.tokenizer), GREEDY, use_tqdm=False)
    return out, compiled[0].ir, answers


@pytest.fixture(scope="package")
def tiny(tmp_path_factory):
    from nanoflow_compiler import export

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    export(tiny_model(), out, buckets=TINY_ENGINE["token_buckets"], num_kv_blocks=TINY_ENGINE["num_kv_blocks"])
    return out
