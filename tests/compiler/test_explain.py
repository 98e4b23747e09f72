from nanoflow_compiler.cli import main


def test_explain_prints_classes_plan_and_schedule(capsys):
    assert main(["explain", "--model", "smollm2-135m", "--tokens", "48", "--num-layers", "2",
                 "--options", '{"nano_batches": {"COMPUTE": 2, "MEMORY": 3}}']) == 0
    out = capsys.readouterr().out
    assert "nanoflow explain: smollm2-135m, 48 tokens" in out
    assert "COMPUTE" in out and "MEMORY" in out and "LIGHT" in out
    assert "nano-batches: COMPUTE 2 x [24, 24]; LIGHT 2 x [24, 24]; MEMORY 3 x [16, 16, 16]" in out
    assert "cut points: [0, 16, 24, 32, 48]" in out
    assert "stream 1 (MEMORY, 36 SMs)" in out and "nanoflow.paged_attention.default" in out
    assert "layer 0, per stream in issue order:" in out
    assert "waits for #" in out
    assert "layer 1:" in out or "layers 0-1:" in out


def test_explain_rejects_a_single_token(capsys):
    assert main(["explain", "--model", "smollm2-135m", "--tokens", "1"]) == 2
    assert "--tokens must be at least 2" in capsys.readouterr().err
