"""The output folder of a training run: which checkpoints are complete, which settings define the run, and whether
it has finished. Every training command goes through `RunFolder`: `beats-hf pretrain`, `beats-hf train-tokenizer`,
`beats-hf iterate` and fine-tuning (`run_finetuning`, `examples/run_audio_classification.py`).

    run = RunFolder(output_dir, "pretrain", settings, training_length(training_args))
    start = run.prepare(training_args.resume_from_checkpoint)   # RunFolderError if the folder is another run's
    if start.finished:
        return start.metrics                                     # nothing written
    ...                                                          # load the data and models (nothing written)
    run.begin()                                                  # the record, status "running"
    metrics = train_or_restore(trainer, start.checkpoint, run.length)
    ...                                                          # final files
    run.finish(metrics)

**The record.** `OUT/beats_hf_run.json` (written atomically: temporary file, then `os.replace`) holds the command, the
settings that define the run, how long it was asked to train, its status (`running` or `finished`) and, once finished,
its final metrics.

**Settings.** A rerun in a folder that holds progress of a run (a checkpoint, a finished stage, a finished run) must
give the same settings; otherwise `prepare` raises `RunFolderError` naming every changed one (the commands print it as
one line and exit with status 1). A run that stopped before leaving any progress (e.g. a wrong argument) is simply
started again with the new settings. Each command passes all its own
arguments except those it lists as free to change, plus `training_settings(training_args)`: the `TrainingArguments`
in `FIXED_TRAINING_ARGUMENTS` and the global batch size (per-device batch x accumulation steps x processes). Every
other `TrainingArguments` field may change: logging, saving and evaluation frequency (Trainer keeps the resumed
checkpoint's `logging_steps`, `save_steps` and `eval_steps`), `save_total_limit`, processes, devices and data loader
workers as long as the global batch is the same, precision, progress bars and reporting. The training length may grow:
a higher `--max_steps` (or `--num_train_epochs`) continues the run, even a finished one, from its last checkpoint; a
length below the checkpoint's progress is refused, and switching between the two units counts as a changed setting.

**Complete checkpoints.** `checkpoint-N` is complete when
1. its `trainer_state.json` parses and says `global_step` N (Trainer writes that file last, so a process killed before
   or while writing it leaves the file missing or truncated);
2. no file in it is newer than `trainer_state.json` (a checkpoint that Trainer is writing again in place, after a
   resume from an older one, is incomplete until its new state is written);
3. it holds the weights (`model.safetensors`, `pytorch_model.bin` or a shard index with all its shards),
   `optimizer.pt`, `scheduler.pt` and an RNG state (`rng_state.pth`, or `rng_state_0.pth` for several processes).
Resuming takes the newest complete checkpoint; newer incomplete ones are skipped with a printed line and left in place
(Trainer writes `checkpoint-N` again when the resumed run reaches step N). Nothing is deleted: a checkpoint folder
cannot be proved ours and incomplete rather than, say, copied in by hand. Under several processes the other processes
write their `rng_state_K.pth` without waiting for each other: one still being written after `trainer_state.json` makes
the checkpoint incomplete (rule 2); one not begun is not noticed, and that process then resumes without its RNG state
(Trainer logs it), which only matters for exactness.

**Finished.** `finish` marks the run finished after its final files are written. A rerun with the same settings and
no greater length prints that the run is complete, returns the recorded metrics and writes nothing.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass

from ..atomic_files import atomic_write_json

RECORD_NAME = "beats_hf_run.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files that say a folder already holds training output; without a record its settings are unknown.
_RUN_OUTPUTS = ("trainer_state.json", "iterations.json")
# TrainingArguments that decide what is learned: the optimiser, its schedule, the seeds and the data stream.
FIXED_TRAINING_ARGUMENTS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "label_smoothing_factor", "seed",
    "data_seed", "train_sampling_strategy", "dataloader_drop_last",
)


class RunFolderError(ValueError):
    """The folder holds another run (other settings or another command), or cannot be resumed as asked."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def setting_value(value):
    """A JSON value that identifies a setting: enums by their value, in-memory datasets by their fingerprint and models
    by a digest of their weights."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [setting_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): setting_value(item) for key, item in value.items()}
    if hasattr(value, "state_dict"):  # a model object: its weights identify it
        import torch

        digest = hashlib.sha256()
        for name, tensor in sorted(value.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return f"<{type(value).__name__} sha256:{digest.hexdigest()[:16]}>"
    fingerprint = getattr(value, "_fingerprint", None)
    return f"<{type(value).__name__} {fingerprint}>" if fingerprint else f"<{type(value).__name__}>"


def path_setting(value):
    """A data, model or tokenizer argument as a setting: an existing local path made absolute (the same folder
    named from another working directory is the same setting); a Hub id or keyword as given."""
    if isinstance(value, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(value))
        return os.path.abspath(path) if os.path.exists(path) else os.fspath(value)
    return setting_value(value)


def training_settings(training_args) -> dict:
    """The `TrainingArguments` that define a run (see the module docstring)."""
    settings = {name: setting_value(getattr(training_args, name, None)) for name in FIXED_TRAINING_ARGUMENTS}
    settings["global_train_batch_size"] = (
        training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    settings["length_unit"] = training_length(training_args)[0]
    return settings


def training_length(training_args) -> tuple[str, float]:
    """How long the run is asked to train: ("max_steps", N) when max_steps is set, else ("num_train_epochs", E)."""
    if training_args.max_steps > 0:
        return "max_steps", training_args.max_steps
    return "num_train_epochs", float(training_args.num_train_epochs)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a complete checkpoint (see the module docstring), else why it is not."""
    path = os.fspath(path)
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    if match is None or not os.path.isdir(path):
        return "not a checkpoint-N folder"
    state_path = os.path.join(path, "trainer_state.json")
    try:
        with open(state_path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "trainer_state.json is truncated or unreadable"
    if not isinstance(state, dict) or state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is for step {state.get('global_step') if isinstance(state, dict) else None}"
    names = os.listdir(path)
    state_time = os.stat(state_path).st_mtime_ns
    newer = sorted(name for name in names if os.stat(os.path.join(path, name)).st_mtime_ns > state_time)
    if newer:
        return f"{', '.join(newer)} written after trainer_state.json"
    problem = _weights_problem(path, names)
    if problem:
        return problem
    for required in ("optimizer.pt", "scheduler.pt"):
        if required not in names:
            return f"no {required}"
    if "rng_state.pth" not in names and "rng_state_0.pth" not in names:
        return "no rng_state.pth"
    return None


def _weights_problem(path: str, names: list[str]) -> str | None:
    for single in ("model.safetensors", "pytorch_model.bin"):
        if single in names:
            return None
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index_name in names:
            try:
                with open(os.path.join(path, index_name)) as handle:
                    shards = set(json.load(handle)["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError):
                return f"{index_name} is truncated or unreadable"
            missing = sorted(shards - set(names))
            return f"missing weight shards {', '.join(missing)}" if missing else None
    return "no model weights"


def checkpoint_folders(folder: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint-N folder in `folder`, oldest first."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def last_complete_checkpoint(folder: str | os.PathLike, say=None) -> str | None:
    """The newest complete checkpoint in `folder` (None if there is none); `say(line)` is told about each newer
    incomplete one that is skipped."""
    for _, path in reversed(checkpoint_folders(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if say is not None:
            say(f"skipping incomplete {os.path.basename(path)} ({problem}); it is left in place")
    return None


def _trainer_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "trainer_state.json")) as handle:
        return json.load(handle)


def finite_metrics(metrics: dict) -> dict:
    """The metrics JSON can hold: strings, booleans and finite numbers."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (str, bool, int)) or isinstance(value, float) and math.isfinite(value)}


def train_or_restore(trainer, checkpoint: str | None, length: tuple[str, float]) -> dict:
    """`trainer.train(resume_from_checkpoint=checkpoint)` and its metrics; but when `checkpoint` has already trained
    the whole `length` (a run killed after its last checkpoint, before its final files), load that checkpoint's
    weights and state instead and return no metrics: Trainer 5.24 resumed at `max_steps` would take one step more."""
    if checkpoint is not None:
        state = _trainer_state(checkpoint)
        unit, value = length
        done = state.get("global_step", 0) if unit == "max_steps" else state.get("epoch") or 0.0
        if done >= value:
            from transformers import TrainerState

            trainer._load_from_checkpoint(checkpoint)  # the loader Trainer itself resumes with
            trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
            return {}
    return dict(trainer.train(resume_from_checkpoint=checkpoint).metrics)


# ---------------------------------------------------------------------------------------------------------------------
# The run record
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RunStart:
    """What `RunFolder.prepare` decided: the run is already finished (`metrics` are its recorded final metrics), or
    it trains from `checkpoint` (None: from the start)."""

    finished: bool
    checkpoint: str | None = None
    metrics: dict | None = None


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


class RunFolder:
    """One run's output folder (see the module docstring).

    Args:
        folder: the output folder.
        command: the command that owns the folder, e.g. "pretrain" (another command's folder is refused).
        settings: the settings that define the run (JSON-able after `setting_value`).
        length: (unit, value) of how long the run is asked to train, e.g. `training_length(training_args)` or
            ("iterations", 3); a greater value continues a finished run.
        trains_with_checkpoints: False for a run made of other runs (`iterate`): it has no checkpoints of its own.
        progress: tells whether the folder holds progress that other settings would mix with (default: a checkpoint
            folder); a finished run always does.
    """

    def __init__(self, folder: str | os.PathLike, command: str, settings: dict, length: tuple[str, float],
                 trains_with_checkpoints: bool = True, progress=None):
        self.folder = os.path.abspath(os.fspath(folder))
        self.command = command
        self.settings = {name: setting_value(value) for name, value in settings.items()}
        self.length = (length[0], length[1])
        self.trains_with_checkpoints = trains_with_checkpoints
        self.progress = progress or (lambda: bool(checkpoint_folders(self.folder)))
        self.record_path = os.path.join(self.folder, RECORD_NAME)
        self.main_process = _is_main_process()

    def say(self, line: str) -> None:
        if self.main_process:
            print(f"{self.folder}: {line}", flush=True)

    def read_record(self) -> dict | None:
        try:
            with open(self.record_path) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise RunFolderError(
                f"{self.record_path} is unreadable ({error}); it was not written by beats_hf."
            ) from error

    def _check_settings(self, record: dict) -> dict | None:
        """The record again when this run may continue it; None when it left no progress (it is replaced)."""
        if record.get("command") != self.command:
            raise RunFolderError(
                f"{self.folder} holds a `{record.get('command')}` run, not a `{self.command}` run: use another "
                "--output_dir."
            )
        recorded = record.get("settings", {})
        changed = [
            f"{name}: {recorded.get(name)!r} -> {value!r}"
            for name, value in self.settings.items()
            if name not in recorded or recorded[name] != value
        ] + [f"{name}: {recorded[name]!r} -> (none)" for name in recorded if name not in self.settings]
        if changed and record.get("status") != "finished" and not self.progress():
            self.say(f"the earlier run left no checkpoint; starting again with other settings ({'; '.join(changed)})")
            return None
        if changed:
            raise RunFolderError(
                f"{self.folder} holds a run with other settings ({'; '.join(changed)}). Use another --output_dir, or "
                "the same settings to resume."
            )
        return record

    def prepare(self, resume_from_checkpoint: str | bool | None = None) -> RunStart:
        """Check the folder against this run and pick the checkpoint to resume from; writes nothing (`begin` does).

        `resume_from_checkpoint`: None or True (the newest complete checkpoint; True requires one), False (start from
        scratch; refused if the folder has checkpoints to resume from) or a checkpoint path (must be complete).
        Raises `RunFolderError` when the folder holds another run or the resume is impossible.
        """
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
            resume_from_checkpoint = resume_from_checkpoint.lower() == "true"  # as it arrives from the command line
        record = self.read_record()
        explicit = isinstance(resume_from_checkpoint, (str, os.PathLike))
        if record is not None:
            record = self._check_settings(record)
        elif not explicit and self._has_run_output():
            raise RunFolderError(
                f"{self.folder} holds training output but no {RECORD_NAME}, so the settings it was made with are "
                "unknown: use another --output_dir (or pass --resume_from_checkpoint PATH to continue from a "
                "checkpoint you trust)."
            )
        _wait_for_everyone()  # every process has read the record before `begin` rewrites it
        unit, value = self.length
        if record is not None and record.get("status") == "finished":
            done = record.get("length", [unit, value])[1]
            if value <= done:
                self.say(f"the `{self.command}` run is complete ({unit} {done:g}); nothing to do")
                return RunStart(finished=True, metrics=record.get("metrics", {}))
            self.say(f"the run finished at {unit} {done:g}; continuing to {value:g}")

        checkpoint = self._choose_checkpoint(resume_from_checkpoint, record) if self.trains_with_checkpoints else None
        self._created_at = (record or {}).get("created_at", _now())
        return RunStart(finished=False, checkpoint=checkpoint)

    def begin(self) -> None:
        """Record the run as running (after `prepare`, once its arguments have proved loadable, before training)."""
        if self.main_process:
            os.makedirs(self.folder, exist_ok=True)
            atomic_write_json(self.record_path, {
                "format_version": 1,
                "command": self.command,
                "settings": self.settings,
                "status": "running",
                "length": list(self.length),
                "created_at": getattr(self, "_created_at", _now()),
                "updated_at": _now(),
            })
        _wait_for_everyone()

    def _has_run_output(self) -> bool:
        if not os.path.isdir(self.folder):
            return False
        return bool(checkpoint_folders(self.folder)) or any(
            os.path.exists(os.path.join(self.folder, name)) for name in _RUN_OUTPUTS
        )

    def _choose_checkpoint(self, resume_from_checkpoint, record: dict | None) -> str | None:
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            checkpoint = os.fspath(resume_from_checkpoint)
            problem = checkpoint_problem(checkpoint) if os.path.isdir(checkpoint) else "no such folder"
            if problem:
                raise RunFolderError(f"Cannot resume from {checkpoint}: {problem}.")
        else:
            checkpoint = last_complete_checkpoint(self.folder, self.say)
            if resume_from_checkpoint is True and checkpoint is None:
                raise RunFolderError(f"resume_from_checkpoint=True but {self.folder} holds no complete checkpoint.")
            if resume_from_checkpoint is False and checkpoint is not None:
                raise RunFolderError(
                    f"{self.folder} holds checkpoints of this run; starting it again on top of them would mix two "
                    "runs: use another --output_dir, or resume."
                )
        if record is not None and record.get("status") == "finished" and checkpoint is None:
            raise RunFolderError(
                f"{self.folder} holds a finished run without a checkpoint to continue from (saved with "
                "--save_strategy no?): use another --output_dir to train longer."
            )
        if checkpoint is not None:
            self._check_progress(checkpoint)
        return checkpoint

    def _check_progress(self, checkpoint: str) -> None:
        unit, value = self.length
        state = _trainer_state(checkpoint)
        done = state.get("global_step", 0) if unit == "max_steps" else state.get("epoch") or 0.0
        if done > value:
            raise RunFolderError(
                f"{os.path.basename(checkpoint)} has already trained {unit} {done:g}, more than the {value:g} asked "
                f"for: pass {unit} {done:g} or more to resume it."
            )

    def finish(self, metrics: dict) -> None:
        """Mark the run finished, with its final metrics (non-finite numbers and non-JSON values are dropped)."""
        record = self.read_record() or {}
        kept = finite_metrics(metrics)
        if self.main_process:
            atomic_write_json(self.record_path, {
                **record,
                "format_version": 1,
                "command": self.command,
                "settings": self.settings,
                "status": "finished",
                "length": list(self.length),
                "metrics": kept,
                "finished_at": _now(),
            })
        _wait_for_everyone()


def refuse(program: str, error: RunFolderError, process_index: int = 0) -> int:
    """What a command does with a run its folder cannot take: one line on stderr (from the first process), exit
    status 1."""
    if process_index == 0:
        print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    return 1


__all__ = [
    "FIXED_TRAINING_ARGUMENTS",
    "RECORD_NAME",
    "RunFolder",
    "RunFolderError",
    "RunStart",
    "atomic_write_json",
    "checkpoint_folders",
    "checkpoint_problem",
    "finite_metrics",
    "last_complete_checkpoint",
    "path_setting",
    "refuse",
    "setting_value",
    "training_length",
    "train_or_restore",
    "training_settings",
]
