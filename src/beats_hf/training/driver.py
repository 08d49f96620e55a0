"""The one skeleton that every training command runs on: `beats-hf pretrain`, `beats-hf train-tokenizer`, fine-tuning
(and, through them, every stage of `beats-hf iterate`).

A command says only what differs: the settings that define its run and a `build(start)` that makes its models, data
and `Trainer` and returns them as a `TrainingJob`. `run_training` does the rest, in this order:

1. checks the launch (the processes torch.distributed started are the processes Trainer uses);
2. `RunFolder.prepare`: refuses a folder of another run, picks the checkpoint to resume from, or returns the recorded
   metrics of a run that has already finished (nothing written);
3. `build(start)`, then the start banner (first process only): what is trained, on how many processes, from where;
4. `RunFolder.begin`, the job's `before_training` (e.g. LP-FT's linear probe), training (`train_or_restore`) and
   `trainer.save_state()`;
5. the job's `finish` (its final files, extra metrics such as an evaluation), then the results file, written
   atomically by the first process, then `after_results` (e.g. a Hub upload) and `RunFolder.finish`.

`command_main` is the command-line half: one `HfArgumentParser`, the one "--output_dir is required" check, logging,
a refused folder as one line and exit status 1, and a JSON summary of the metrics on the first process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from ..audio_data import AudioClips, ClipEpochCallback, StreamingAudioClips, load_audio_dataset
from ..audio_shards import ShardedAudioClips, find_shards
from .run_folder import (
    RunFolder,
    RunFolderError,
    RunStart,
    atomic_write_json,
    finite_metrics,
    refuse,
    train_or_restore,
    training_length,
)


@dataclass
class TrainingJob:
    """What a command built for one run; see the module docstring for when each part is used.

    Args:
        trainer: the `Trainer`, with its model, data and collator.
        banner: what is trained, e.g. "pre-training small (9.6M parameters, 1024 codes) on 1200 clips".
        logged: training-log entries reported as `last_<name>`, taken from the last log that holds the first one.
        train: False for a job that only evaluates (fine-tuning with --do_eval alone).
        before_training: runs after `RunFolder.begin`, before training; returns metrics to keep.
        save: writes the trained model (default: `trainer.save_model()`, the model and its feature extractor).
        finish: runs after training and saving, on every process; returns metrics to add.
        results_name: the results file in the output folder.
        after_results: runs once the results file is written (e.g. `trainer.push_to_hub`).
    """

    trainer: Trainer
    banner: str
    logged: tuple[str, ...] = ()
    train: bool = True
    before_training: Callable[[], dict] | None = None
    save: Callable[[], None] | None = None
    finish: Callable[[dict], dict] | None = None
    results_name: str = "train_results.json"
    after_results: Callable[[], None] | None = None


def check_launch(training_args: TrainingArguments) -> None:
    """Refuse a launch where each process would train alone (and all would write the same folder)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() != training_args.world_size:
        # e.g. an FSDP or multi-GPU launch config on a machine without GPUs
        raise RuntimeError(
            f"{torch.distributed.get_world_size()} processes were launched but Trainer uses "
            f"{training_args.world_size}; check the accelerate config (on CPU: --multi_gpu with --use_cpu works)."
        )


def last_logged(log_history: Sequence[dict], names: Sequence[str]) -> dict:
    """`last_<name>` for each of `names` in the last training log that holds `names[0]`."""
    if not names:
        return {}
    last = next((entry for entry in reversed(log_history) if names[0] in entry), {})
    return {f"last_{name}": last[name] for name in names if name in last}


def run_training(
    command: str, settings: dict, training_args: TrainingArguments, build: Callable[[RunStart], TrainingJob]
) -> dict:
    """Run (or resume, or report) the `command` run that `settings` define in `training_args.output_dir`; returns
    its final metrics. Raises `RunFolderError` when the folder holds another run."""
    check_launch(training_args)
    output_dir = training_args.output_dir
    run = RunFolder(output_dir, command, settings, training_length(training_args))
    start = run.prepare(training_args.resume_from_checkpoint)
    if start.finished:
        return start.metrics
    # Items are raw waveforms that the collators turn into features: nothing for Trainer to prune.
    training_args.remove_unused_columns = False
    job = build(start)
    trainer = job.trainer
    # Fresh random crops every epoch (a shard stream runs through its epochs by itself).
    if hasattr(trainer.train_dataset, "set_epoch") and not isinstance(trainer.train_dataset, ShardedAudioClips):
        trainer.add_callback(ClipEpochCallback(trainer.train_dataset))
    if trainer.is_world_process_zero():
        resuming = f", resuming from {start.checkpoint}" if start.checkpoint else ""
        print(f"{job.banner}, {training_args.world_size} process(es){resuming}", flush=True)

    run.begin()
    metrics = job.before_training() if job.before_training else {}
    if job.train:
        started = time.time()
        metrics.update(train_or_restore(trainer, start.checkpoint, run.length))
        metrics.update(last_logged(trainer.state.log_history, job.logged))
        metrics["train_wall_seconds"] = round(time.time() - started, 1)
        if job.save is not None:
            job.save()
        else:
            trainer.save_model()
        trainer.save_state()
    if job.finish:
        metrics.update(job.finish(metrics))
    if trainer.is_world_process_zero():
        atomic_write_json(os.path.join(output_dir, job.results_name), finite_metrics(metrics), sort_keys=True)
    trainer.accelerator.wait_for_everyone()
    if job.after_results:
        job.after_results()
    run.finish(metrics)
    return finite_metrics(metrics)


def training_clips(
    data,
    training_args: TrainingArguments,
    *,
    crop_seconds: float | None,
    split: str = "train",
    audio_column: str = "audio",
    label_column: str | None = None,
    streaming: bool = False,
    max_train_samples: int | None = None,
    return_index: bool = False,
    shuffle_buffer: int = 0,
) -> AudioClips | StreamingAudioClips | ShardedAudioClips:
    """The training clips of a run: `data` is a folder of audio files, a saved dataset, a Hub dataset id, tar shards
    (a folder of `*.tar`, a glob, a `beats-hf pack-shards` folder) or a loaded `datasets` dataset (an
    `IterableDataset` streams). Random crops and the shuffling are seeded by `training_args.seed`.

    Shards with `streaming` give a `ShardedAudioClips` (exactly once per epoch over all processes and workers, a
    resumable position: `beats_hf.training.streaming`), shuffled in blocks of `shuffle_buffer` clips. Another stream
    with `shuffle_buffer` goes through `datasets.IterableDataset.shuffle` (reshuffled every epoch)."""
    if streaming and training_args.max_steps <= 0:
        raise ValueError("Streaming data needs --max_steps (a stream has no length to count epochs with).")
    shards = None if isinstance(data, (datasets.Dataset, datasets.IterableDataset)) else find_shards(os.fspath(data))
    if shards is not None and streaming:
        if max_train_samples:
            raise ValueError("--max_train_samples does not apply to tar shards: pack fewer clips instead.")
        return ShardedAudioClips(shards, crop_seconds=crop_seconds, shuffle_buffer=shuffle_buffer,
                                 seed=training_args.seed, label_column=label_column)
    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        dataset, streaming = data, isinstance(data, datasets.IterableDataset)
    else:
        dataset = load_audio_dataset(os.fspath(data), split=split, audio_column=audio_column, streaming=streaming)
        if shards is not None:  # a shard's audio column is named by its members' extension
            audio_column = next(name for name, feature in dataset.features.items()
                                if isinstance(feature, datasets.Audio))
    if streaming and shuffle_buffer:
        dataset = dataset.shuffle(seed=training_args.seed, buffer_size=shuffle_buffer)
    if max_train_samples:
        dataset = dataset.take(max_train_samples) if streaming else dataset.select(
            range(min(max_train_samples, len(dataset)))
        )
    clip_class = StreamingAudioClips if streaming else AudioClips
    return clip_class(dataset, crop_seconds=crop_seconds, label_column=label_column, audio_column=audio_column,
                      seed=training_args.seed, return_index=return_index)


def clip_count(clips) -> str:
    """"1200 clips", "streamed clips from 12 tar shards" or "streamed clips", for the start banner."""
    if isinstance(clips, ShardedAudioClips):
        return f"streamed clips from {clips.n_shards} tar shards"
    return f"{len(clips)} clips" if isinstance(clips, AudioClips) else "streamed clips"


def command_main(
    program: str,
    argument_classes: Sequence[type],
    run: Callable[..., dict],
    argv: Sequence[str] | None = None,
    summary: Callable[[dict], dict] | None = None,
) -> int:
    """Parse `argv` into `argument_classes` (the last one `TrainingArguments`), call `run(*parsed)` and print
    `summary(metrics)` as one JSON line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(tuple(argument_classes))
    # TrainingArguments would silently default to ./trainer_output.
    asks_for_help = any(arg in ("-h", "--help") for arg in argv)
    if not asks_for_help and not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv):
        parser.error("--output_dir is required (checkpoints and the trained model go there).")
    parsed = parser.parse_args_into_dataclasses(args=argv)
    training_args = parsed[-1]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        metrics = run(*parsed)
    except RunFolderError as error:
        return refuse(program, error, training_args.process_index)
    if summary is not None and training_args.process_index == 0:
        print(json.dumps(summary(metrics)))
    return 0


def metrics_starting_with(*prefixes: str) -> Callable[[dict], dict]:
    """A `command_main` summary: the metrics whose names start with one of `prefixes`, sorted."""
    return lambda metrics: {key: metrics[key] for key in sorted(metrics) if key.startswith(prefixes)}


__all__ = [
    "TrainingJob",
    "check_launch",
    "clip_count",
    "command_main",
    "last_logged",
    "metrics_starting_with",
    "run_training",
    "training_clips",
]
