"""The `beats-hf` console command's errors, and the one rule that tells a local path from a Hub id."""

import os
import subprocess
import sys

import pytest

from beats_hf.cli import main
from beats_hf.sources import is_local_path, resolve_source


def beats_hf(*args: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "beats_hf.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **environment},
    )


def test_an_error_is_one_line_and_a_non_zero_exit(tmp_path):
    missing = tmp_path / "no_such_corpus"
    result = beats_hf("pretrain", "--data", str(missing), "--output_dir", str(tmp_path / "out"), "--use_cpu")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("beats-hf pretrain: error: No such folder") and str(missing) in lines[-1]
    assert "Traceback" not in result.stderr and "--traceback" in lines[-1]


@pytest.mark.parametrize("command", ["pretrain", "train-tokenizer", "iterate"])
def test_help_needs_no_output_dir_and_a_run_does(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--output_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--data", "somewhere"])
    assert exit_info.value.code == 2 and "--output_dir is required" in capsys.readouterr().err


def test_the_old_module_paths_still_import_with_a_warning():
    import beats_hf.training.pretraining.distillation as distillation

    with pytest.warns(FutureWarning, match="moved to `beats_hf.training.pretraining.distillation`"):
        from beats_hf.pretraining import tokenizer_training
    assert tokenizer_training is distillation  # one module, one state
    import beats_hf.pretraining.pretrain
    import beats_hf.training.pretraining.pretrain

    assert beats_hf.pretraining.pretrain is beats_hf.training.pretraining.pretrain
    with pytest.raises(ImportError):
        from beats_hf.pretraining import no_such_module  # noqa: F401


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_traceback_on_request(tmp_path, how):
    args = ["pretrain", "--data", str(tmp_path / "no_such_corpus"), "--output_dir", str(tmp_path / "out"), "--use_cpu"]
    result = beats_hf(*args, "--traceback") if how == "flag" else beats_hf(*args, BEATS_HF_TRACEBACK="1")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr


@pytest.mark.parametrize(
    ("source", "local"),
    [
        ("microsoft/beats", False),  # namespace/name: a Hub id
        ("beats-base", False),
        ("./beats-base", True),
        ("../runs/beats", True),
        ("/abs/path", True),
        ("~/models/beats", True),
        ("runs/iteration_1/ssl", True),  # more than one "/": never a Hub id
        ("C:\\models\\beats", True),
    ],
)
def test_local_path_rule(source, local):
    assert is_local_path(source) is local


def test_an_existing_two_part_folder_is_local_and_a_missing_local_path_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "model").mkdir(parents=True)
    assert is_local_path("runs/model") and resolve_source("runs/model") == "runs/model"
    assert resolve_source("user/model") == "user/model"  # not on disk: left to the Hub
    with pytest.raises(FileNotFoundError, match=r"No such teacher folder: './runs/other'"):
        resolve_source("./runs/other", what="teacher")


def test_embed_with_a_mistyped_local_model_folder_names_it_at_once(tmp_path):
    result = beats_hf("embed", "--model", "./no_such_model", "--data", str(tmp_path), "--output_dir",
                      str(tmp_path / "out"))
    assert result.returncode == 1
    assert "No such model folder: './no_such_model'" in result.stderr.strip().splitlines()[-1]
