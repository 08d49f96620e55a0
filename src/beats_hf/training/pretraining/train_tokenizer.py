"""Train a BEATs acoustic tokenizer by distillation from a frozen teacher: `beats-hf train-tokenizer` and
`run_tokenizer_training`.

Command line (also `python -m beats_hf.training.pretraining.train_tokenizer`, and unchanged under `accelerate launch`
or `torchrun` for several processes):

    beats-hf train-tokenizer --teacher TEACHER --data DATA --output_dir OUT [--crop_seconds 10] \
        [--student_hidden_size 768 --student_codebook_size 1024 ...] [any TrainingArguments, e.g. --max_steps 400000
        --per_device_train_batch_size 8 --learning_rate 5e-4 --save_steps 5000 --logging_steps 100 --bf16]

Python (what the iterative pre-training loop calls):

    metrics = run_tokenizer_training(
        teacher,                # str | os.PathLike | nn.Module: a folder saved with save_pretrained (or a Hub id) of
                                #   any beats_hf model -- BeatsModel, BeatsForAudioClassification (the iter3+ teacher:
                                #   its `.beats` encoder is used), BeatsForMaskedAudioModeling... -- or such a model
        data,                   # str | datasets.Dataset | datasets.IterableDataset: a folder of audio files, a saved
                                #   dataset or a Hub dataset id (read with audio_data.load_audio_dataset)
        output_dir,             # str | os.PathLike: checkpoints (checkpoint-N/) and, at the end, the tokenizer
        student_overrides=None, # dict of BeatsTokenizationConfig fields applied on top of the teacher's architecture,
                                #   e.g. {"codebook_size": 1024, "codebook_dim": 256, "num_hidden_layers": 12}
        training_args=None,     # transformers.TrainingArguments (its output_dir is replaced by `output_dir`)
        *,
        crop_seconds=10.0,      # random crop of each clip, in seconds (None: whole clips)
        split="train", audio_column="audio", streaming=False, max_train_samples=None,
        kmeans_iterations=10,   # spherical k-means iterations of the codebook initialisation (first batch)
        restart_dead_codes_after=None,  # int: move codes unused for this many updates onto current patch vectors
        callbacks=None,         # extra TrainerCallbacks
    ) -> dict                   # Trainer metrics + last_distillation_loss, last_commitment_loss, last_codebook_usage,
                                #   last_codebook_perplexity, last_dead_codes, (last_restarted_codes,) codebook_sha256,
                                #   tokenizer_dir

The finished `output_dir` holds the student only (`BeatsForAudioTokenization`, loadable with
`AutoModel.from_pretrained(output_dir)`), the feature extractor and `trainer_state.json`. The estimator and the
codebook's EMA statistics are only in the `checkpoint-N/` folders. `output_dir` is a `RunFolder`
(`beats_hf.training.run_folder`): training resumes from `training_args.resume_from_checkpoint` (a path, or True for the
last complete checkpoint) and, when that is unset, from the last complete checkpoint already there; a rerun with other
settings raises `RunFolderError`; a finished run is not trained again (its recorded metrics are returned and nothing
is written).
"""

import copy
import logging
import os
import sys
from dataclasses import dataclass, field, fields

import datasets
import torch
from torch import nn
from transformers import AutoModel, TrainerCallback, TrainingArguments, set_seed

from ...audio_data import AudioFeatureCollator
from ...feature_extraction_beats import BeatsFeatureExtractor
from ...modeling_beats import BeatsModel
from ...sources import is_local_path
from ..driver import TrainingJob, clip_count, command_main, metrics_starting_with, run_training, training_clips
from ..run_folder import path_setting, training_settings
from .distillation import (
    BeatsTokenizationDistillationModel,
    TokenizationDistillationTrainer,
    codebook_checksum,
    student_config_from_teacher,
    teacher_encoder,
)
from .quantization import is_distributed

logger = logging.getLogger(__name__)

# What TokenizationDistillationTrainer logs, reported as last_<name> in the results.
LOGGED_METRICS = (
    "distillation_loss", "commitment_loss", "codebook_usage", "codebook_perplexity", "dead_codes", "restarted_codes"
)


@dataclass
class DistillationArguments:
    teacher: str = field(
        metadata={"help": "Folder saved with save_pretrained (or Hub id) of a beats_hf model: its encoder teaches."}
    )
    data: str = field(metadata={"help": "Folder of audio files, saved dataset or Hub dataset id (its audio column)."})
    crop_seconds: float | None = field(default=10.0, metadata={"help": "Random crop of each clip, in seconds."})
    split: str = field(default="train")
    audio_column: str = field(default="audio")
    streaming: bool = field(default=False, metadata={"help": "Read the data lazily (needs --max_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N clips."})
    shuffle_buffer: int = field(
        default=0,
        metadata={"help": "Streaming: shuffle the clips in blocks of N (tar shards: and the shard order every epoch), "
                          "seeded by --seed. 0: stream order."},
    )
    kmeans_iterations: int = field(default=10, metadata={"help": "k-means iterations of the codebook initialisation."})
    restart_dead_codes_after: int | None = field(
        default=None,
        metadata={"help": "Move a code unused for this many updates onto a current patch vector (default: never)."},
    )


@dataclass
class StudentArguments:
    """Overrides of the student's configuration; anything left unset is the teacher's (codebook: 1024 x 256)."""

    student_hidden_size: int | None = None
    student_num_hidden_layers: int | None = None
    student_num_attention_heads: int | None = None
    student_intermediate_size: int | None = None
    student_patch_embedding_dim: int | None = None
    student_num_conv_pos_embeddings: int | None = None
    student_num_conv_pos_embedding_groups: int | None = None
    student_layerdrop: float | None = None
    student_codebook_size: int | None = None
    student_codebook_dim: int | None = None
    student_codebook_decay: float | None = None
    student_commitment_weight: float | None = None
    student_estimator_num_layers: int | None = None

    def overrides(self) -> dict:
        """The fields that were set, without the `student_` prefix."""
        return {
            item.name.removeprefix("student_"): getattr(self, item.name)
            for item in fields(self)
            if getattr(self, item.name) is not None
        }



def load_teacher(teacher: str | os.PathLike | nn.Module) -> BeatsModel:
    """The frozen teacher encoder from a model or a saved folder / Hub id, with clear errors when it is missing."""
    if isinstance(teacher, nn.Module):
        return teacher_encoder(teacher)
    source = os.fspath(teacher)
    folder = os.path.expanduser(source)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"The teacher folder {source!r} has no config.json: pass a folder written by save_pretrained (convert "
                "official BEATs checkpoints first with conversion/convert_beats_original_to_hf.py)."
            )
    elif is_local_path(source):
        raise FileNotFoundError(
            f"No teacher model folder at {source!r}: pass a folder written by save_pretrained of a beats_hf model "
            "(BeatsModel, BeatsForAudioClassification, ...) or a Hub model id."
        )
    try:
        model = AutoModel.from_pretrained(folder if os.path.isdir(folder) else source)
    except OSError as error:
        raise FileNotFoundError(f"Could not load the teacher {source!r}: {error}") from error
    return teacher_encoder(model)


def _check_codebooks_in_sync(checksum: str) -> None:
    """Raise if the processes ended with different codebooks (the EMA all-reduce must keep them bit-identical)."""
    if not is_distributed():
        return
    checksums = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(checksums, checksum)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"The processes ended with different codebooks: checksums {checksums}.")


def run_tokenizer_training(
    teacher: str | os.PathLike | nn.Module,
    data: str | os.PathLike | datasets.Dataset | datasets.IterableDataset,
    output_dir: str | os.PathLike,
    student_overrides: dict | None = None,
    training_args: TrainingArguments | None = None,
    *,
    crop_seconds: float | None = 10.0,
    split: str = "train",
    audio_column: str = "audio",
    streaming: bool = False,
    max_train_samples: int | None = None,
    shuffle_buffer: int = 0,
    kmeans_iterations: int = 10,
    restart_dead_codes_after: int | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> dict:
    """Train an acoustic tokenizer by distillation from `teacher` and save it to `output_dir`; see the module
    docstring for the arguments and the returned metrics."""
    output_dir = os.fspath(output_dir)
    training_args = copy.copy(training_args) if training_args is not None else TrainingArguments(output_dir=output_dir)
    training_args.output_dir = output_dir
    settings = {
        "teacher": path_setting(teacher), "data": path_setting(data), "student_overrides": student_overrides or {},
        "crop_seconds": crop_seconds, "split": split, "audio_column": audio_column, "streaming": streaming,
        "max_train_samples": max_train_samples, "kmeans_iterations": kmeans_iterations,
        "restart_dead_codes_after": restart_dead_codes_after, **training_settings(training_args),
    }
    if shuffle_buffer:  # recorded only when used, so that runs recorded before the option still resume
        settings["shuffle_buffer"] = shuffle_buffer

    def build(start) -> TrainingJob:
        teacher_model = load_teacher(teacher)  # first: a missing teacher should fail before any data is read
        set_seed(training_args.seed)  # before the student is built, so its initialisation is reproducible
        config = student_config_from_teacher(teacher_model.config, **(student_overrides or {}))
        model = BeatsTokenizationDistillationModel(
            config,
            teacher_hidden_size=teacher_model.config.hidden_size,
            kmeans_iterations=kmeans_iterations,
            seed=training_args.seed,
            restart_dead_codes_after=restart_dead_codes_after,
        )
        clips = training_clips(
            data, training_args, crop_seconds=crop_seconds, split=split, audio_column=audio_column,
            streaming=streaming, max_train_samples=max_train_samples, shuffle_buffer=shuffle_buffer,
        )
        feature_extractor = BeatsFeatureExtractor()
        trainer = TokenizationDistillationTrainer(
            model=model,
            args=training_args,
            train_dataset=clips,
            data_collator=AudioFeatureCollator(feature_extractor),
            processing_class=feature_extractor,
            teacher=teacher_model,
            callbacks=callbacks,
        )
        student = model.student

        def save() -> None:
            if trainer.is_world_process_zero():  # the tokenizer alone: no estimator, no EMA statistics
                trainer.accelerator.unwrap_model(trainer.model).student.save_pretrained(output_dir)
                feature_extractor.save_pretrained(output_dir)

        def finish(metrics: dict) -> dict:
            checksum = codebook_checksum(trainer.accelerator.unwrap_model(trainer.model).student.quantizer.codebook)
            _check_codebooks_in_sync(checksum)
            return {"codebook_sha256": checksum, "tokenizer_dir": output_dir}

        teacher_name = teacher if isinstance(teacher, (str, os.PathLike)) else type(teacher).__name__
        banner = (
            f"training a tokenizer ({student.num_parameters() / 1e6:.2f}M parameters, {config.codebook_size} x "
            f"{config.codebook_dim} codebook, {config.estimator_num_layers}-layer estimator) from teacher "
            f"{teacher_name!s} ({teacher_model.num_parameters() / 1e6:.2f}M) on {clip_count(clips)}"
        )
        return TrainingJob(trainer, banner, logged=LOGGED_METRICS, save=save, finish=finish)

    return run_training("train-tokenizer", settings, training_args, build)


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> int:
    def run(args: DistillationArguments, student_args: StudentArguments, training_args: TrainingArguments) -> dict:
        return run_tokenizer_training(
            args.teacher,
            args.data,
            training_args.output_dir,
            student_overrides=student_args.overrides(),
            training_args=training_args,
            crop_seconds=args.crop_seconds,
            split=args.split,
            audio_column=args.audio_column,
            streaming=args.streaming,
            max_train_samples=args.max_train_samples,
            shuffle_buffer=args.shuffle_buffer,
            kmeans_iterations=args.kmeans_iterations,
            restart_dead_codes_after=args.restart_dead_codes_after,
            callbacks=callbacks,
        )

    return command_main(
        "beats-hf train-tokenizer", (DistillationArguments, StudentArguments, TrainingArguments), run, argv,
        summary=metrics_starting_with("last_", "train_", "codebook"),
    )


__all__ = [
    "DistillationArguments",
    "StudentArguments",
    "load_teacher",
    "main",
    "run_tokenizer_training",
]


if __name__ == "__main__":
    sys.exit(main())
