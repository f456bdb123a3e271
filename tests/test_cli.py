"""The user commands: interns2-fast demo | check | generate (tiny models, a character tokenizer)."""
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

from interns2_fast import cli, models  # noqa: E402

hf_logging.disable_progress_bar()

@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    return models.intern_s2_remote_code_dir(tmp_path_factory.mktemp("remote"), with_tokenizer=True)


def test_demo(capsys):
    rc = cli.main(["demo", "--max-new-tokens", "6", "--reps", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for text in ("patched 22 module slot(s)", "next-token top-10", "IDENTICAL", "time per op", "per op family",
                 "end to end", "tokens/s", "backend"):
        assert text in out, text


def test_check_default_model_markdown(capsys):
    rc = cli.main(["check", "--markdown", "--prompt", "What is 2 + 3? Answer with just the number.", "hi",
                   "--prompt", "hello"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("| rank | token | id | reference p | patched p | Δp |") == 3
    assert "top-1 agreement 100.00%" in out and "KL" in out and "max |Δlogit|" in out


def test_check_with_model_path(remote_dir, capsys):
    rc = cli.main(["check", "--model-path", str(remote_dir), "--markdown", "--attn-implementation", "eager"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reference p" in out and "InternS2PreviewForCausalLM" in out


@pytest.mark.parametrize("extra", [["--no-thinking"], ["--no-patch", "--enable-thinking"]])
def test_generate_streams_and_reports(remote_dir, capsys, extra):
    rc = cli.main(["generate", "--model-path", str(remote_dir), "--prompt", "2 + 3 =", "--max-new-tokens", "5",
                   "--dtype", "fp32", "--attn-implementation", "eager", *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "devices found" in captured.err and "cpu" in captured.err
    assert "loaded InternS2PreviewForCausalLM in" in captured.err
    assert "first generation" in captured.err and "repeated generation" in captured.err
    assert captured.err.count("tokens/s") == 2
    assert ("not patched" in captured.err) == ("--no-patch" in extra)
    assert captured.out.endswith("\n")  # TextStreamer printed the (random-model) reply and its final newline


def _write_config(path, config):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case", ["missing", "no_tokenizer", "unknown_type", "not_causal", "bad_max_memory"])
def test_generate_user_errors_exit_2_with_one_sentence(tmp_path, capsys, remote_dir, case):
    if case == "missing":
        path, extra, expect = tmp_path / "nope", [], "does not exist"
    elif case == "no_tokenizer":
        path = models.intern_s2_remote_code_dir(tmp_path / "m")
        extra, expect = [], "no usable tokenizer"
    elif case == "unknown_type":
        path = _write_config(tmp_path / "u", {"model_type": "definitely_not_a_model"})
        models.write_char_tokenizer(path)
        extra, expect = [], "no model configuration transformers can read"
    elif case == "not_causal":
        from transformers import CLIPConfig

        path = tmp_path / "clip"
        CLIPConfig().save_pretrained(path)
        models.write_char_tokenizer(path)
        extra, expect = [], "not supported as a causal language model"
    else:
        path, extra, expect = remote_dir, ["--max-memory", "0=58GiB,oops"], "--max-memory expects"
    rc = cli.main(["generate", "--model-path", str(path), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("interns2-fast generate:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err


def test_bad_path_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interns2_fast.cli", "check", "--model-path",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"interns2-fast check: model path {tmp_path / 'missing'} does not exist."
