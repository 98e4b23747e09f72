"""A damaged, edited or mismatched artifact is refused with an ArtifactError that names the problem."""

from __future__ import annotations

import json

import pytest
from artifact_helpers import TINY_ENGINE, clone, edit_manifest, rewrite, tiny_model

from nanoflow_compiler import SamplingParams, load
from nanoflow_compiler.artifact import ArtifactError, ArtifactWarning, export
from nanoflow_compiler.artifact.manifest import file_sha256
from nanoflow_compiler.cli import main


def _rehash(root, name):
    """Record a changed file's size and hash in the manifest, as if the change had been exported."""
    def change(manifest):
        manifest["files"][name] = {"sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size}
    edit_manifest(root, change)


def test_tampered_schedule_is_refused(smol, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    data = (root / "schedule.json").read_bytes()
    assert b'"tokens":16' in data
    rewrite(root / "schedule.json", data.replace(b'"tokens":16', b'"tokens":17', 1))  # same size, other plan
    with pytest.raises(ArtifactError, match=r"schedule\.json changed after export: its SHA-256 is"):
        load(root)
    rewrite(root / "schedule.json", data + b" ")
    with pytest.raises(ArtifactError, match=r"schedule\.json is larger than exported"):
        load(root)


def test_missing_file_is_named(smol, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    (root / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"file tokenizer/tokenizer\.json is missing \(listed in manifest\.json\)"):
        load(root)


def test_missing_manifest_and_not_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="is not a nanoflow artifact: it has no manifest.json"):
        load(tmp_path)
    with pytest.raises(ArtifactError, match="is not a directory"):
        load(tmp_path / "nothing")


def test_newer_format_version_is_refused(smol, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    edit_manifest(root, lambda m: m.update(format_version=2))
    with pytest.raises(ArtifactError, match="artifact format version 2 is newer than this nanoflow reads"):
        load(root)


def test_manifest_without_a_section_is_refused(smol, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    edit_manifest(root, lambda m: m.pop("engine"))
    with pytest.raises(ArtifactError, match="manifest.json lacks the entry 'engine'"):
        load(root)


def test_a_schedule_without_a_recorded_hash_is_refused(tiny, tmp_path):
    root = clone(tiny, tmp_path / "a")
    edit_manifest(root, lambda m: m["files"].pop("schedule.json"))
    with pytest.raises(ArtifactError, match="manifest.json records no hash for schedule.json"):
        load(root)


def test_truncated_weights_are_named(smol, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    weights = root / "model.safetensors"
    data = weights.read_bytes()
    rewrite(weights, data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"model\.safetensors is truncated: \d+ bytes, manifest\.json records"):
        load(root)
    _rehash(root, "model.safetensors")  # recorded as exported: the file itself must still be refused
    with pytest.raises(ArtifactError, match=r"model\.safetensors is not a readable safetensors file"):
        load(root)


def test_weights_of_another_model_are_refused(smol, tiny, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    rewrite(root / "model.safetensors", (tiny / "model.safetensors").read_bytes())
    _rehash(root, "model.safetensors")
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not hold the weights of the model in manifest"
                                            r"\.json \(another model's weights\?\): it embed_tokens\.weight is "
                                            r"float32 \[256, 64\] where the model needs float32 \[49152, 576\]"):
        load(root)


def test_config_of_another_model_is_refused(smol, tiny, tmp_path):
    root = clone(smol[0], tmp_path / "a")
    other = json.loads((tiny / "manifest.json").read_text())["model"]["config"]
    edit_manifest(root, lambda m: m["model"].update(config=other))
    with pytest.raises(ArtifactError, match="the model config in manifest.json does not match the model signature"):
        load(root)


def test_same_shapes_other_values_are_refused(tiny, tmp_path):
    """Another checkpoint of the same architecture, its hash recorded: the weights digest still tells them apart."""
    other = tmp_path / "other"
    export(tiny_model(seed=7), other, buckets=[8, 32], num_kv_blocks=16)
    root = clone(tiny, tmp_path / "a")
    rewrite(root / "model.safetensors", (other / "model.safetensors").read_bytes())
    _rehash(root, "model.safetensors")
    with pytest.raises(ArtifactError, match="holds other weights than the ones exported"):
        load(root)
    with pytest.raises(ArtifactError, match="has other weights than the model"):
        load(tiny, model=tiny_model(seed=7))


def test_no_weights_and_no_source_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="cannot say where its weights come from"):
        out = export(tiny_model(), tmp_path / "bare", buckets=[8, 32], num_kv_blocks=16, with_weights=False)
    with pytest.raises(ArtifactError, match="holds no weights and does not say where they come from"):
        load(out)


def test_graph_that_differs_from_the_stored_one_is_refused(tiny, tmp_path):
    """A KV cache of another size makes another graph: the stored schedule is not bound to it."""
    root = clone(tiny, tmp_path / "a")
    edit_manifest(root, lambda m: m["engine"].update(num_kv_blocks=8))
    with pytest.raises(ArtifactError, match=r"not the graph the stored schedule was made for: input \d+ is layers\.0\."
                                            r"self_attn\.k_cache \(buffer, float32 \['8', '16', '2', '16'\]\)"):
        load(root)


def test_schedule_option_must_be_a_path():
    from nanoflow_compiler.options import CompileOptions, NanoflowOptionsError

    with pytest.raises(NanoflowOptionsError, match="schedule must be a path string, got 3"):
        CompileOptions.from_dict({"schedule": 3})


def test_settings_that_shape_the_graph_are_fixed(tiny):
    with pytest.raises(ArtifactError, match="num_kv_blocks is fixed by the artifact"):
        load(tiny, num_kv_blocks=8)
    with pytest.raises(ArtifactError, match="unknown engine setting 'max_num_seq'"):
        load(tiny, max_num_seq=8)


def test_another_device_replans_with_a_warning_or_is_refused_when_strict(tiny, tmp_path, capsys):
    root = clone(tiny, tmp_path / "a")
    edit_manifest(root, lambda m: m["device"].update(type="cuda", name="NVIDIA H100 80GB HBM3"))
    with pytest.raises(ArtifactError, match=r"made for cuda \(NVIDIA H100 80GB HBM3 with 132 SMs\) and this is "
                                            r"cpu; refusing it under --strict"):
        load(root, strict=True)
    assert main(["generate", "--artifact", str(root), "--strict", "--prompt-token-ids", "1,2"]) == 2
    assert "refusing it under --strict" in capsys.readouterr().err
    with pytest.warns(ArtifactWarning, match="re-planning for this device"):
        llm = load(root, max_num_batched_tokens=TINY_ENGINE["max_num_batched_tokens"])
    assert llm.replanned is not None and "made for cuda" in llm.replanned
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    ref = load(tiny)
    assert [o.token_ids for o in llm.generate([[3, 4, 5]], params, use_tqdm=False)] == \
           [o.token_ids for o in ref.generate([[3, 4, 5]], params, use_tqdm=False)]


def test_export_refuses_to_overwrite_without_force(tiny):
    before = (tiny / "manifest.json").read_bytes()
    with pytest.raises(ArtifactError, match="already exists and is not empty"):
        export(tiny_model(), tiny, buckets=[8, 32], num_kv_blocks=16)
    assert (tiny / "manifest.json").read_bytes() == before
