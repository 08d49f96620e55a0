"""Pre-training with Trainer (`beats-hf pretrain`), 2-process DDP, and the iterative loop (`beats-hf iterate`),
on a tiny preset and short generated audio."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_wav
from safetensors import safe_open
from transformers import AutoModel, TrainingArguments

from beats_hf import BeatsForAudioTokenization, BeatsModel, BeatsTokenizationConfig
from beats_hf.cli import main as cli
from beats_hf.training.pretraining.pretrain import PretrainingArguments, run_pretraining

REPO = Path(__file__).resolve().parents[1]
TINY_CODES = 64  # the tiny preset's random-projection codebook
FAST = ["--use_cpu", "--per_device_train_batch_size", "4", "--crop_seconds", "1.5", "--disable_tqdm", "true",
        "--report_to", "none", "--dataloader_num_workers", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """32 clips of 0.5-1.5 s: tones, chirps and noise bursts."""
    root = tmp_path_factory.mktemp("pretraining_audio")
    rng = np.random.default_rng(0)
    for index in range(32):
        t = np.arange(int(16000 * rng.uniform(0.5, 1.5))) / 16000
        kind = index % 3
        if kind == 0:
            signal = np.sin(2 * np.pi * rng.uniform(150, 3000) * t)
        elif kind == 1:
            signal = np.sin(2 * np.pi * (rng.uniform(200, 500) + rng.uniform(500, 3000) * t) * t)
        else:
            signal = rng.standard_normal(t.size) * (np.sin(2 * np.pi * rng.uniform(2, 8) * t) > 0)
        write_wav(root / f"clip{index:02d}.wav", 0.3 * signal)
    return root


def run(command: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


def logged(folder: Path) -> list[dict]:
    return [log for log in json.loads((folder / "trainer_state.json").read_text())["log_history"] if "loss" in log]


# ---------------------------------------------------------------------------------------------------------------------
# beats-hf pretrain
# ---------------------------------------------------------------------------------------------------------------------


def test_pretrain_saves_the_student_logs_metrics_and_resumes(audio, tmp_path, capsys):
    out = tmp_path / "ssl"
    common = ["pretrain", "--data", str(audio), "--output_dir", str(out), "--model_preset", "tiny",
              "--logging_steps", "2", "--save_steps", "4", "--learning_rate", "2e-3", *FAST]
    assert cli([*common, "--max_steps", "4"]) == 0
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    with safe_open(out / "model.safetensors", "pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}
    assert prefixes == {"beats", "label_predictor", "mask_embedding"}  # nothing of the tokenizer
    first = logged(out)
    assert [log["step"] for log in first] == [2, 4]
    for log in first:
        assert 0.0 <= log["masked_accuracy"] <= 1.0
        assert 0.0 < log["target_codebook_coverage"] <= 1.0 and 0.0 < log["prediction_codebook_coverage"] <= 1.0
    # Random initialisation: about uniform over the 64 codes.
    assert first[0]["loss"] == pytest.approx(math.log(TINY_CODES), rel=0.15)
    assert type(AutoModel.from_pretrained(out)) is BeatsModel

    # A second run with more steps resumes from checkpoint-4 instead of starting over.
    capsys.readouterr()
    assert cli([*common, "--max_steps", "8"]) == 0
    assert "resuming from" in capsys.readouterr().out
    second = logged(out)
    assert [log["step"] for log in second] == [2, 4, 6, 8]
    assert second[:2] == first


def test_pretrain_with_a_trained_tokenizer_takes_its_codebook(audio, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    config = BeatsTokenizationConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                     patch_embedding_dim=32, num_conv_pos_embeddings=16,
                                     num_conv_pos_embedding_groups=4, codebook_size=24, codebook_dim=16)
    torch.manual_seed(0)
    BeatsForAudioTokenization(config).save_pretrained(tokenizer_dir)
    args = PretrainingArguments(data=str(audio), tokenizer=str(tokenizer_dir), model_preset="tiny", crop_seconds=1.5)
    training_args = TrainingArguments(output_dir=str(tmp_path / "ssl"), max_steps=2, per_device_train_batch_size=4,
                                      use_cpu=True, logging_steps=1, disable_tqdm=True, report_to="none",
                                      label_smoothing_factor=0.1)
    metrics = run_pretraining(args, training_args)
    saved = json.loads((tmp_path / "ssl" / "config.json").read_text())
    assert saved["num_target_codes"] == 24 and saved["label_smoothing"] == 0.1
    assert math.isfinite(metrics["train_loss"])
    assert logged(tmp_path / "ssl")[0]["loss"] == pytest.approx(math.log(24), rel=0.15)


def test_pretrain_errors_are_clear(audio, tmp_path):
    base = ["pretrain", "--data", str(audio), "--output_dir", str(tmp_path / "x"), *FAST, "--max_steps", "1"]
    with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
        cli([*base, "--model_preset", "huge"])
    with pytest.raises(FileNotFoundError, match="No tokenizer folder"):
        cli([*base, "--model_preset", "tiny", "--tokenizer", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):  # --output_dir is required
        cli(["pretrain", "--data", str(audio), *FAST])
    with pytest.raises(FileNotFoundError, match="No such folder"):
        cli(["pretrain", "--data", str(tmp_path / "no_audio_here"), "--output_dir", str(tmp_path / "y"), *FAST])


def test_two_process_ddp_pretraining(audio, tmp_path):
    out = tmp_path / "ddp"
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  str(REPO / "examples" / "run_pretraining.py"), "--data", str(audio), "--output_dir", str(out),
                  "--model_preset", "tiny", "--max_steps", "4", "--logging_steps", "1", *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    losses = [log["loss"] for log in logged(out)]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    # A plain mean loss that Trainer mistook for a sum over items would be doubled under 2 processes (~8.3).
    assert losses[0] == pytest.approx(math.log(TINY_CODES), rel=0.15)
    assert type(AutoModel.from_pretrained(out)) is BeatsModel


# ---------------------------------------------------------------------------------------------------------------------
# beats-hf iterate
# ---------------------------------------------------------------------------------------------------------------------


def iterate_command(audio: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "beats_hf.cli", "iterate", "--data", str(audio), "--output_dir", str(out),
            "--iterations", "2", "--model_preset", "tiny", "--max_steps", "4", "--tokenizer_max_steps", "4",
            "--save_steps", "2", "--logging_steps", "2", *FAST, *extra]


def manifest(out: Path) -> dict:
    return json.loads((out / "iterations.json").read_text())


def file_times(out: Path, stages: list[str]) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for stage in stages for path in sorted((out / stage).iterdir())}


def test_plan_of_stages():
    from beats_hf.training.pretraining.iterate import plan_stages

    assert [(s.name, s.inputs) for s in plan_stages(2, finetune_teacher=True)] == [
        ("iteration_1/tokenizer", {}),
        ("iteration_1/ssl", {"tokenizer": "iteration_1/tokenizer"}),
        ("iteration_2/teacher", {"pretrained": "iteration_1/ssl"}),
        ("iteration_2/tokenizer", {"teacher": "iteration_2/teacher"}),
        ("iteration_2/ssl", {"tokenizer": "iteration_2/tokenizer"}),
    ]
    assert [s.inputs for s in plan_stages(3, finetune_teacher=False)][4] == {"teacher": "iteration_2/ssl"}


def test_iterate_end_to_end_with_a_fine_tuned_teacher(audio, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    rng = np.random.default_rng(1)
    for kind in ("tone", "noise"):
        (labelled / kind).mkdir(parents=True)
        for index in range(6):
            t = np.arange(12000) / 16000
            signal = np.sin(2 * np.pi * rng.uniform(200, 2000) * t) if kind == "tone" else rng.standard_normal(t.size)
            write_wav(labelled / kind / f"{index}.wav", 0.3 * signal)
    out = tmp_path / "run"
    result = run(iterate_command(audio, out, "--teacher_finetuned_on", str(labelled)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"iteration 2/2: tokenizer \.\.\. done in \d+ s", result.stdout), result.stdout

    stages = ["iteration_1/tokenizer", "iteration_1/ssl", "iteration_2/teacher", "iteration_2/tokenizer",
              "iteration_2/ssl"]
    for stage in stages:
        files = {path.name for path in (out / stage).iterdir()}
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files, stage
        # Every trained stage keeps its trainer state; the random projection is drawn, not trained.
        assert ("trainer_state.json" in files) == (stage != "iteration_1/tokenizer"), stage
    leftovers = [path.name for path in out.glob("iteration_*/*") if path.name.endswith((".work", ".partial"))]
    assert not leftovers

    record = manifest(out)
    assert list(record["stages"]) == stages
    assert record["iterations"] == 2
    run_record = json.loads((out / "beats_hf_run.json").read_text())
    assert run_record["settings"]["model_preset"] == "tiny" and run_record["status"] == "finished"
    assert all(entry["status"] == "complete" and entry["attempts"] == 1 for entry in record["stages"].values())
    assert record["stages"]["iteration_2/tokenizer"]["inputs"] == {"teacher": "iteration_2/teacher"}
    ssl_metrics = record["stages"]["iteration_2/ssl"]["metrics"]
    assert math.isfinite(ssl_metrics["last_loss"]) and 0 < ssl_metrics["last_target_codebook_coverage"] <= 1
    assert type(AutoModel.from_pretrained(out / "iteration_1/tokenizer")).__name__ == (
        "BeatsRandomProjectionForAudioTokenization"
    )
    tokenizer = AutoModel.from_pretrained(out / "iteration_2/tokenizer")
    assert type(tokenizer) is BeatsForAudioTokenization and tokenizer.config.codebook_size == TINY_CODES
    assert type(AutoModel.from_pretrained(out / "iteration_2/ssl")) is BeatsModel

    # Running again finds the run complete and rewrites nothing.
    before = file_times(out, stages)
    again = run(iterate_command(audio, out, "--teacher_finetuned_on", str(labelled)))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the `iterate` run is complete (iterations 2); nothing to do" in again.stdout
    assert file_times(out, stages) == before
    assert manifest(out)["stages"] == record["stages"]

    # Other settings in the same folder would mix incompatible models: refused, naming the setting.
    command = iterate_command(audio, out, "--teacher_finetuned_on", str(labelled))[3:]
    assert cli([*command, "--model_preset", "small"]) == 1
    assert "model_preset: 'tiny' -> 'small'" in capsys.readouterr().err
