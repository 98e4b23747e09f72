"""Export, then serve from the artifact in a new process: same greedy output, same schedule, no planning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from artifact_helpers import GREEDY, tiny_model

from nanoflow_compiler import LLM, load
from nanoflow_compiler.artifact import ArtifactLLM, read_manifest, read_schedule
from nanoflow_compiler.backend import capture
from nanoflow_compiler.cli import main
from nanoflow_compiler.runtime.ir import ScheduleIR

# A fresh interpreter: the compiler passes and the search are booby-trapped, so only the stored schedule can serve.
_LOADER = """
import json, sys
import nanoflow_compiler.backend as backend
import nanoflow_compiler.search.auto as auto
from artifact_helpers import GREEDY, prompt_ids
from nanoflow_compiler import load

def planned(*args, **kwargs):
    raise AssertionError("a loaded artifact ran the compiler passes or the search")

backend.run_pipeline = auto.auto_options = planned
with backend.capture() as compiled:
    llm = load(sys.argv[1])
outs = llm.generate(prompt_ids(llm.tokenizer), GREEDY, use_tqdm=False)
print(json.dumps({"answers": [[o.prompt_token_ids, o.token_ids, o.text] for o in outs],
                  "schedules": [c.ir.to_json() for c in compiled], "replanned": llm.replanned,
                  "backend": llm.engine.stats()["compile_backend"]}))
"""


def test_a_new_process_serves_the_stored_schedule_with_the_same_greedy_output(smol):
    path, exported_ir, answers = smol
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                               os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _LOADER, str(path)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replanned"] is None and result["backend"] == "nanoflow"
    assert result["answers"] == [[a.prompt_token_ids, a.token_ids, a.text] for a in answers]
    assert "Paris" in result["answers"][0][2]
    (loaded_ir,) = [ScheduleIR.from_json(s) for s in result["schedules"]]
    assert loaded_ir == exported_ir
    assert read_schedule(path) == [exported_ir]


def test_manifest_records_versions_device_model_and_every_file(smol):
    path, exported_ir, _ = smol
    manifest = read_manifest(path)
    assert manifest["versions"]["torch"] == torch.__version__
    # None where triton is not installed (a fresh CPU venv: torch's CPU wheel does not bring it)
    assert manifest["versions"]["triton"] == _installed("triton")
    assert manifest["device"] == {"type": "cpu", "name": manifest["device"]["name"], "sm_count": 132}
    config = manifest["model"]["config"]
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert manifest["model"]["tied"] == {"lm_head.weight": "embed_tokens.weight"}
    assert manifest["engine"]["token_buckets"] == [16, 64] and manifest["engine"]["num_kv_blocks"] == 64
    assert manifest["schedule"]["graphs"][0]["graph_hash"] == exported_ir.signature.graph_hash
    files = set(manifest["files"])
    assert {"schedule.json", "model.safetensors", "tokenizer/tokenizer.json"} <= files
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert on_disk - files == {"manifest.json"}
    assert [b.tokens for b in exported_ir.buckets] == [16, 64]


def test_explain_shows_the_stored_schedule(smol, capsys):
    path, exported_ir, _ = smol
    assert main(["explain", "--artifact", str(path), "--tokens", "16", "--layer", "3"]) == 0
    out = capsys.readouterr().out
    bucket = exported_ir.bucket(16)
    assert f"graph {exported_ir.signature.graph_hash}: buckets [16, 64]" in out
    assert f"bucket 16: {len(bucket.ops)} ops" in out
    assert f"cut points: {bucket.cuts}" in out
    assert "layer 3, per stream in issue order:" in out and "nanoflow.paged_attention.default" in out
    assert "layers 0-28: each" in out and "layer 29:" in out  # the last layer also holds the final norm and head


def test_tied_weights_are_stored_once_and_tied_again(tiny):
    from safetensors import safe_open

    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert "embed_tokens.weight" in names and "lm_head.weight" not in names
    llm = load(tiny)
    assert isinstance(llm, ArtifactLLM) and llm.replanned is None
    model = llm.engine.model
    assert model.lm_head.weight is model.embed_tokens.weight


def test_no_weights_artifact_takes_them_from_the_model_and_checks_them(tmp_path):
    from nanoflow_compiler import export

    source = tiny_model()
    with pytest.warns(UserWarning, match="given in memory"):
        out = export(source, tmp_path / "bare", buckets=[8, 32], num_kv_blocks=16, with_weights=False)
    assert not (out / "model.safetensors").exists()
    llm = load(out, model=source)
    reference = LLM(source, compile=False, num_kv_blocks=16)
    params = GREEDY.__class__(temperature=0.0, max_tokens=6, ignore_eos=True)
    assert [o.token_ids for o in llm.generate([[1, 2, 3], [7] * 9], params, use_tqdm=False)] == \
           [o.token_ids for o in reference.generate([[1, 2, 3], [7] * 9], params, use_tqdm=False)]


def test_cli_export_then_generate_from_the_artifact(tmp_path, capsys):
    """An HF safetensors directory through `nanoflow export`, then `nanoflow generate --artifact` against the same
    model served without the artifact."""
    from transformers import LlamaForCausalLM

    hf_dir = tmp_path / "hf"
    loaded = tiny_model(seed=3)
    hf = LlamaForCausalLM(loaded.config)
    hf.model.embed_tokens.weight.data.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    hf.save_pretrained(hf_dir)
    out = tmp_path / "art"
    assert main(["export", "--model", str(hf_dir), "--out", str(out), "--buckets", "8", "32",
                 "--num-kv-blocks", "16"]) == 0
    assert "exported hf to" in capsys.readouterr().err
    args = ["--prompt-token-ids", "1,2,3,4", "--max-tokens", "6", "--ignore-eos"]
    with capture() as compiled:
        assert main(["generate", "--artifact", str(out), *args]) == 0
    from_artifact = capsys.readouterr().out
    assert compiled and compiled[0].ir == read_schedule(out)[0]
    assert main(["generate", "--model", str(hf_dir), "--no-compile", *args]) == 0
    assert capsys.readouterr().out == from_artifact and len(from_artifact.split()) == 6


def test_cli_export_refuses_a_directory_that_is_not_an_artifact(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["export", "--model", "smollm2-135m", "--out", str(tmp_path), "--force"]) == 2
    assert "is not an artifact" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()


def test_serve_artifact_answers_over_http(tiny):
    """`nanoflow serve --artifact` in a subprocess (token-id prompts: the small model has no tokenizer)."""
    import re

    import httpx

    reference = LLM(tiny_model(), compile=False, num_kv_blocks=16)
    params = GREEDY.__class__(temperature=0.0, max_tokens=5, ignore_eos=True)
    (expected,) = reference.generate([[5, 6, 7]], params, use_tqdm=False)
    cli = [sys.executable, "-c", "import sys; from nanoflow_compiler.cli import main; sys.exit(main())", "serve"]
    proc = subprocess.Popen([*cli, "--artifact", str(tiny), "--port", "0", "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        banner = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", banner)
        assert url, banner + proc.stderr.read()
        with httpx.Client(base_url=url.group(1), timeout=60) as client:
            assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
            body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0, "ignore_eos": True}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
            # the answer carries text only (no tokenizer here): stopping at the reference's last token checks it
            last = expected.token_ids[-1]
            r = client.post("/v1/completions", json={**body, "stop_token_ids": [last]})
        assert r.json()["usage"]["completion_tokens"] == expected.token_ids.index(last) + 1
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_serve_generate_and_explain_take_an_artifact():
    from nanoflow_compiler.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    for command in ("serve", "generate", "explain"):
        assert "--artifact" in choices[command].format_help()
    assert "--strict" in choices["serve"].format_help() and "--no-weights" in choices["export"].format_help()


def _installed(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
