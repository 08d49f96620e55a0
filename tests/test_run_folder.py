"""`beats_hf.training.run_folder`: complete checkpoints, the settings record, finished runs (the commands' end-to-end behaviour
under kills is in test_fault_injection.py)."""

import json
import os
from pathlib import Path

import pytest
from transformers import TrainingArguments

from beats_hf.training.run_folder import (
    RECORD_NAME,
    RunFolder,
    RunFolderError,
    checkpoint_problem,
    last_complete_checkpoint,
    path_setting,
    training_length,
    training_settings,
)

FILES = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def make_checkpoint(folder: Path, step: int, files=FILES, state: str | None = None) -> Path:
    """A checkpoint-N folder as Trainer writes it: every file, then trainer_state.json last."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in files:
        (checkpoint / name).write_bytes(b"x")
    (checkpoint / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    stamp = os.stat(checkpoint / "trainer_state.json").st_mtime_ns
    for name in files:  # written before the state
        os.utime(checkpoint / name, ns=(stamp - 10**9, stamp - 10**9))
    return checkpoint


def test_a_complete_checkpoint_and_what_makes_one_incomplete(tmp_path):
    assert checkpoint_problem(make_checkpoint(tmp_path / "a", 4)) is None
    assert checkpoint_problem(make_checkpoint(tmp_path / "b", 4, FILES[:-2] + ("rng_state_0.pth",))) is None
    cases = {
        "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
        "trainer_state.json is truncated or unreadable": lambda c: (c / "trainer_state.json").write_text('{"glo'),
        "no optimizer.pt": lambda c: (c / "optimizer.pt").unlink(),
        "no scheduler.pt": lambda c: (c / "scheduler.pt").unlink(),
        "no rng_state.pth": lambda c: (c / "rng_state.pth").unlink(),
        "no model weights": lambda c: (c / "model.safetensors").unlink(),
        # Trainer writing the same checkpoint again (after a resume from an older one): new weights, old state.
        "model.safetensors written after trainer_state.json": lambda c: os.utime(
            c / "model.safetensors", ns=(os.stat(c / "trainer_state.json").st_mtime_ns + 10**9,) * 2
        ),
    }
    for index, (reason, damage) in enumerate(cases.items()):
        checkpoint = make_checkpoint(tmp_path / f"case{index}", 8)
        damage(checkpoint)
        assert checkpoint_problem(checkpoint) == reason
    wrong_step = make_checkpoint(tmp_path / "c", 8, state=json.dumps({"global_step": 7}))
    assert checkpoint_problem(wrong_step) == "trainer_state.json is for step 7"
    sharded = make_checkpoint(tmp_path / "d", 4, ("optimizer.pt", "scheduler.pt", "rng_state.pth",
                                                   "model-00001-of-00002.safetensors", "model.safetensors.index.json"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    os.utime(sharded / "model.safetensors.index.json", ns=(0, 0))
    assert checkpoint_problem(sharded) == "missing weight shards model-00002-of-00002.safetensors"


def test_the_newest_complete_checkpoint_is_chosen_and_newer_incomplete_ones_are_left(tmp_path):
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 8)
    make_checkpoint(tmp_path, 12, FILES[:2])  # killed while saving: weights only
    (tmp_path / "checkpoint-16").mkdir()
    lines = []
    assert last_complete_checkpoint(tmp_path, lines.append) == str(tmp_path / "checkpoint-8")
    assert lines == ["skipping incomplete checkpoint-16 (no trainer_state.json); it is left in place",
                     "skipping incomplete checkpoint-12 (no optimizer.pt); it is left in place"]
    assert (tmp_path / "checkpoint-12").is_dir() and (tmp_path / "checkpoint-16").is_dir()
    assert last_complete_checkpoint(tmp_path / "missing") is None


def run_folder(folder: Path, steps: int = 8, **settings) -> RunFolder:
    return RunFolder(folder, "pretrain", {"data": "d", "mask_ratio": 0.75, **settings}, ("max_steps", steps))


def test_settings_are_recorded_and_a_resume_with_other_ones_is_refused_naming_each(tmp_path, capsys):
    first = run_folder(tmp_path)
    assert first.prepare().checkpoint is None
    assert not (tmp_path / RECORD_NAME).exists()  # nothing written until the run begins
    first.begin()
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert record["status"] == "running" and record["settings"] == {"data": "d", "mask_ratio": 0.75}
    make_checkpoint(tmp_path, 4)
    assert run_folder(tmp_path).prepare().checkpoint == str(tmp_path / "checkpoint-4")
    with pytest.raises(RunFolderError, match=r"other settings \(data: 'd' -> 'e'; mask_ratio: 0.75 -> 0.5\)"):
        run_folder(tmp_path, data="e", mask_ratio=0.5).prepare()
    with pytest.raises(RunFolderError, match="new: None -> 1"):
        run_folder(tmp_path, new=1).prepare()
    with pytest.raises(RunFolderError, match="holds a `pretrain` run, not a `train-tokenizer` run"):
        RunFolder(tmp_path, "train-tokenizer", {}, ("max_steps", 8)).prepare()
    with pytest.raises(RunFolderError, match="would mix two runs"):
        run_folder(tmp_path).prepare(resume_from_checkpoint=False)
    with pytest.raises(RunFolderError, match="checkpoint-4 has already trained max_steps 4, more than the 2"):
        run_folder(tmp_path, steps=2).prepare()
    with pytest.raises(RunFolderError, match="Cannot resume from .*checkpoint-9: no such folder"):
        run_folder(tmp_path).prepare(str(tmp_path / "checkpoint-9"))


def test_a_run_that_left_no_checkpoint_starts_again_with_new_settings(tmp_path, capsys):
    run_folder(tmp_path).begin()
    start = run_folder(tmp_path, mask_ratio=0.5).prepare()
    assert not start.finished and start.checkpoint is None
    output = capsys.readouterr().out
    assert "left no checkpoint; starting again with other settings (mask_ratio: 0.75 -> 0.5)" in output


def test_training_output_without_a_record_is_refused(tmp_path):
    make_checkpoint(tmp_path, 4)
    with pytest.raises(RunFolderError, match="no beats_hf_run.json"):
        run_folder(tmp_path).prepare()
    # ... unless the user names the checkpoint to continue from.
    assert run_folder(tmp_path).prepare(str(tmp_path / "checkpoint-4")).checkpoint == str(tmp_path / "checkpoint-4")


def test_a_finished_run_is_complete_unless_asked_to_train_longer(tmp_path, capsys):
    run = run_folder(tmp_path)
    run.prepare()
    run.begin()
    make_checkpoint(tmp_path, 8)
    run.finish({"loss": 1.5, "nan": float("nan"), "name": "x"})
    before = (tmp_path / RECORD_NAME).read_bytes()
    start = run_folder(tmp_path).prepare()
    assert start.finished and start.metrics == {"loss": 1.5, "name": "x"}
    assert "the `pretrain` run is complete (max_steps 8); nothing to do" in capsys.readouterr().out
    assert run_folder(tmp_path, steps=4).prepare().finished  # a shorter length is done too
    longer = run_folder(tmp_path, steps=12).prepare()
    assert not longer.finished and longer.checkpoint == str(tmp_path / "checkpoint-8")
    assert "the run finished at max_steps 8; continuing to 12" in capsys.readouterr().out
    assert (tmp_path / RECORD_NAME).read_bytes() == before
    with pytest.raises(RunFolderError, match="other settings"):  # finished is progress, whatever the checkpoints
        run_folder(tmp_path, data="e").prepare()


def test_training_settings_fix_what_is_learned_and_leave_how_it_is_computed(tmp_path):
    def settings(**overrides):
        return training_settings(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **overrides))

    base = settings()
    assert base["global_train_batch_size"] == 8 and base["length_unit"] == "num_train_epochs"
    assert base["optim"] == "adamw_torch_fused" and base["lr_scheduler_type"] == "linear"
    assert settings(learning_rate=1e-3) != base and settings(seed=1) != base
    assert settings(per_device_train_batch_size=4, gradient_accumulation_steps=2) == base  # same global batch
    free = dict(logging_steps=3, save_steps=7, save_total_limit=2, dataloader_num_workers=2, disable_tqdm=True,
                num_train_epochs=9, report_to="none")
    assert settings(**free) == base
    assert training_length(TrainingArguments(output_dir=str(tmp_path), max_steps=5)) == ("max_steps", 5)
    assert settings(max_steps=5)["length_unit"] == "max_steps"


def test_paths_are_settings_wherever_they_are_named_from(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert path_setting("data") == path_setting(str(tmp_path / "data")) == str(tmp_path / "data")
    assert path_setting("random_projection") == "random_projection"  # not a local path: as given
    assert path_setting("user/dataset") == "user/dataset"
