"""`nanoflow generate`: the README's first command, and its errors."""

import subprocess
import sys
from pathlib import Path

from nanoflow_compiler.cli import main


def nanoflow_command() -> list[str]:
    script = Path(sys.executable).with_name("nanoflow")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from nanoflow_compiler.cli import main; sys.exit(main())"]


def test_readme_command_answers_paris():
    result = subprocess.run([*nanoflow_command(), "generate", "What is the capital of France?"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout
    assert "tokens in" in result.stderr  # the timing line goes to stderr, the answer alone to stdout


def test_no_prompt_is_an_error(capsys):
    assert main(["generate"]) == 2
    assert "give a prompt" in capsys.readouterr().err


def test_bad_sampling_value_fails_before_loading(capsys):
    assert main(["generate", "hi", "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_preset_needs_token_ids(capsys):
    assert main(["generate", "hi", "--model", "smollm2-135m", "--no-compile", "--max-model-len", "64"]) == 2
    assert "--prompt-token-ids" in capsys.readouterr().err
    assert main(["generate", "--model", "smollm2-135m", "--no-compile", "--max-model-len", "64",
                 "--prompt-token-ids", "1,2,3", "--max-tokens", "3", "--ignore-eos"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and all(t.isdigit() for t in printed)


def test_unknown_model_is_one_clear_line(capsys):
    assert main(["generate", "hi", "--model", "/no/such/model.gguf"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "Traceback" not in err
