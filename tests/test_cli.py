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
    for text in ("patched 23 module slot(s)", "next-token top-10", "IDENTICAL", "time per op", "per op family",
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
    assert "reference p" in out and "InternS2PreviewForConditionalGeneration" in out  # the checkpoint's class


@pytest.mark.parametrize("extra", [["--no-thinking"], ["--no-patch", "--enable-thinking"]])
def test_generate_streams_and_reports(remote_dir, capsys, extra):
    rc = cli.main(["generate", "--model-path", str(remote_dir), "--prompt", "2 + 3 =", "--max-new-tokens", "5",
                   "--dtype", "fp32", "--attn-implementation", "eager", *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "devices found" in captured.err and "cpu" in captured.err
    assert "loaded InternS2PreviewForConditionalGeneration in" in captured.err
    assert "first generation" in captured.err and "repeated generation" in captured.err
    assert captured.err.count("tokens/s") == 2
    assert ("not patched" in captured.err) == ("--no-patch" in extra)
    assert captured.out.endswith("\n")  # TextStreamer printed the (random-model) reply and its final newline


def test_generate_on_the_vision_language_stand_in_streams_the_unpatched_reply(remote_dir, capsys):
    """The folder holds InternS2PreviewForConditionalGeneration (as the checkpoint): the patched model
    (static decode on its [4, B, T] positions) streams the same greedy reply as the unpatched one."""
    replies = []
    for extra in ([], ["--no-patch"]):
        rc = cli.main(["generate", "--model-path", str(remote_dir), "--prompt", "1 + 1 =", "--max-new-tokens", "10",
                       "--dtype", "fp32", "--attn-implementation", "eager", "--repeat", "0", *extra])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        replies.append(captured.out)
    assert replies[0] == replies[1]


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


# --- argument validation: one sentence, exit status 2, no traceback --------------------------------

@pytest.mark.parametrize("argv, expect", [
    (["check", "--prompt", ""], "argument --prompt: expects non-empty text, got an empty prompt"),
    (["check", "--prompt", "hi", ""], "argument --prompt: expects non-empty text"),
    (["generate", "--model-path", "x", "--prompt", ""], "argument --prompt: expects non-empty text"),
    (["generate", "--model-path", "x", "--max-new-tokens", "0"], "argument --max-new-tokens: expects a positive integer, got 0"),
    (["generate", "--model-path", "x", "--max-new-tokens", "-1"], "argument --max-new-tokens: expects a positive integer, got -1"),
    (["demo", "--max-new-tokens", "0"], "argument --max-new-tokens: expects a positive integer, got 0"),
    (["demo", "--max-new-tokens", "-1"], "argument --max-new-tokens: expects a positive integer, got -1"),
    (["demo", "--reps", "0"], "argument --reps: expects a positive integer, got 0"),
    (["check", "--top-k", "-3"], "argument --top-k: expects a positive integer, got -3"),
    (["check", "--top-k", "0"], "argument --top-k: expects a positive integer, got 0"),
    (["check", "--top-k", "three"], "argument --top-k: expects a positive integer, got 'three'"),
    (["generate", "--model-path", "x", "--repeat", "-1"], "argument --repeat: expects an integer >= 0, got -1"),
    (["generate"], "the following arguments are required: --model-path"),
    (["check", "--backend", "bogus"],
     "argument --backend: expects auto or one of triton, torch, reference, npu_native, pto, got 'bogus'"),
    (["generate", "--model-path", "x", "--backend", "bogus"],
     "argument --backend: expects auto or one of triton, torch, reference, npu_native, pto, got 'bogus'"),
    (["demo", "--backend", "bogus"], "argument --backend: expects auto or one of "),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, expect):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"interns2-fast {argv[0]}: {expect}"), lines[0]
    assert lines[0].endswith(f"See interns2-fast {argv[0]} --help.")
    assert "usage:" not in captured.err and "Traceback" not in captured.err


def test_backend_names_still_parse():
    from interns2_fast.ops import BACKENDS

    for command in (["check"], ["demo"], ["generate", "--model-path", "m"]):
        assert cli.build_parser().parse_args(command).backend == "auto"
        for name in BACKENDS:
            assert cli.build_parser().parse_args(command + ["--backend", name]).backend == name


def test_good_numbers_still_parse():
    args = cli.build_parser().parse_args(["check", "--top-k", "3", "--prompt", " ", "x"])
    assert args.top_k == 3 and args.prompt == [" ", "x"]
    args = cli.build_parser().parse_args(["generate", "--model-path", "m", "--max-new-tokens", "1", "--repeat", "0"])
    assert args.max_new_tokens == 1 and args.repeat == 0


def _one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"interns2-fast {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_top_k_larger_than_the_vocabulary(capsys):
    rc = cli.main(["check", "--top-k", "100000", "--prompt", "hi"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert "--top-k 100000 is larger than the model's vocabulary (512 tokens)" in line


@pytest.mark.parametrize("command", ["check", "generate"])
def test_unknown_attn_implementation_is_named_not_reported_as_an_unsupported_model(remote_dir, capsys, command):
    rc = cli.main([command, "--model-path", str(remote_dir), "--attn-implementation", "bogus"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert "--attn-implementation 'bogus' is not an attention implementation transformers knows" in line
    assert "eager" in line and "sdpa" in line and "not supported as a causal language model" not in line


def test_attn_implementation_rejected_at_load_time_is_named_too(remote_dir, capsys, monkeypatch):
    # the early check passes a name (a newer transformers registers more); transformers' own ValueError
    # at load time must still be reported as the attention option's problem, not the model's
    from interns2_fast import usercmds

    monkeypatch.setattr(usercmds, "check_attn_implementation", lambda name: None)
    rc = cli.main(["check", "--model-path", str(remote_dir), "--attn-implementation", "bogus"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert "--attn-implementation 'bogus' is not supported for the model in" in line
    assert "not supported as a causal language model" not in line


@pytest.mark.stand_in
@pytest.mark.parametrize("command", ["check", "generate"])
def test_model_folder_without_tokenizer_files(tmp_path, capsys, command):
    path = models.intern_s2_remote_code_dir(tmp_path / "m")  # config, code and weights; no tokenizer
    rc = cli.main([command, "--model-path", str(path)])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, command)
    assert f"no usable tokenizer in {path}: it has none of tokenizer.json" in line


def test_prompt_that_encodes_to_no_tokens(remote_dir, capsys, monkeypatch):
    from interns2_fast import usercmds

    class Empty:
        chat_template = None

        def __call__(self, text, return_tensors=None):
            import torch

            return {"input_ids": torch.zeros(1, 0, dtype=torch.long)}

    monkeypatch.setattr(usercmds, "load_tokenizer", lambda path: Empty())
    rc = cli.main(["check", "--model-path", str(remote_dir), "--no-chat-template", "--prompt", " "])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert "gives no tokens for the prompt ' '" in line


def test_bad_argument_from_the_shell_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "interns2_fast.cli", "check", "--top-k", "-3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("interns2-fast check: argument --top-k: expects a positive integer, got -3. "
                                   "See interns2-fast check --help.")


def test_tokenizer_precheck_leaves_custom_tokenizers_to_transformers(tmp_path):
    from interns2_fast.usercmds import _may_hold_a_tokenizer

    bare = _write_config(tmp_path / "bare", {"model_type": "qwen3_5_moe_text"})
    assert not _may_hold_a_tokenizer(str(bare))
    remote = _write_config(tmp_path / "remote", {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}})
    assert _may_hold_a_tokenizer(str(remote))  # remote-code tokenizer: AutoTokenizer decides
    custom = _write_config(tmp_path / "custom", {})
    (custom / "qwen.tiktoken").write_text("")
    assert _may_hold_a_tokenizer(str(custom))


@pytest.mark.parametrize("argv", [["info"], ["lower"], ["check"]])
def test_kernels_mismatch_stops_every_command(capsys, monkeypatch, argv):
    """A transformers / kernels pair that cannot import the Qwen3.5 modeling: its sentence, exit status 2."""
    from interns2_fast import device

    sentence = ("transformers 5.2.0 cannot import its Qwen3.5 modeling with kernels 0.19.1 installed (ValueError: "
                "Either a revision or a version must be specified.): run `pip uninstall -y kernels`")
    monkeypatch.setattr(device, "kernels_install_problem", lambda: sentence)
    assert cli.main(argv) == 2
    assert f"interns2-fast {argv[0]}: {sentence}" in capsys.readouterr().err.splitlines()
