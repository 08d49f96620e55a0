"""The iterative BEATs pre-training loop (paper §3.1): `beats-hf iterate`.

    beats-hf iterate --data DATA --output_dir OUT --iterations 3 --model_preset base \
        --max_steps 400000 --tokenizer_max_steps 400000 [--teacher_finetuned_on LABELLED_DATA] [trainer args]

Iteration 1 labels patches with a random-projection tokenizer and pre-trains a student on them; iteration k > 1
first distils a tokenizer from the iteration k-1 student (optionally fine-tuned on labelled data first, the paper's
"iter3+" recipe), then pre-trains a new student on its labels. The output folder:

    OUT/beats_hf_run.json             the run record (`beats_hf.training.run_folder`): settings, status
    OUT/iterations.json               manifest: per stage its status, times, inputs and final metrics
    OUT/iteration_1/tokenizer/        random-projection tokenizer (+ feature extractor)
    OUT/iteration_1/ssl/              student (save_pretrained + feature extractor + trainer_state.json)
    OUT/iteration_k/teacher/          (with --teacher_finetuned_on) the iteration k-1 student fine-tuned on the labels
    OUT/iteration_k/tokenizer/        tokenizer distilled from the teacher (+ feature extractor, trainer_state.json)
    OUT/iteration_k/ssl/              student trained on that tokenizer's labels

A stage trains in `<stage>.work/` (its own run folder, with its `checkpoint-N/` folders) and its final folder appears,
by an atomic rename, only when it has finished; the manifest is rewritten atomically after every stage. `OUT` is a
`RunFolder` (`beats_hf.training.run_folder`, record `OUT/beats_hf_run.json`): running the same command again skips
finished stages, resumes an interrupted one from its last complete checkpoint and never overwrites a finished folder;
once every stage has finished it says that the run is complete and writes nothing. A rerun with settings that define
the stages (`FIXED_SETTINGS` and the fixed training settings) changed is refused; `--iterations` may grow (the loop
continues), `--max_steps`, `--tokenizer_max_steps` and `--teacher_max_steps` apply to the stages not finished yet, and
`--keep_checkpoints` may change. The work folders are deleted once their stage has finished unless `--keep_checkpoints`
is given.
"""

import dataclasses
import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import TrainingArguments

from ...configuration_beats import BeatsRandomProjectionConfig
from ...feature_extraction_beats import BeatsFeatureExtractor
from ...modeling_beats import BeatsRandomProjectionForAudioTokenization
from ..driver import command_main
from ..run_folder import (
    RECORD_NAME,
    RunFolder,
    atomic_write_json,
    checkpoint_folders,
    last_complete_checkpoint,
    path_setting,
    training_settings,
)
from .pretrain import (
    PRESETS,
    TOKENIZER_PRESETS,
    PretrainingArguments,
    preset_config,
    run_pretraining,
)

MANIFEST = "iterations.json"
# Settings that define what the stages compute: a rerun with other values would mix incompatible models. The fixed
# TrainingArguments (seed, learning rate, ...; `run_folder.training_settings`) are checked too.
FIXED_SETTINGS = ("data", "model_preset", "crop_seconds", "mask_ratio", "teacher_finetuned_on", "split",
                  "audio_column", "max_train_samples", "tokenizer_restart_dead_codes_after")
# Settings added later: recorded only when set, so that runs recorded before them still resume.
LATER_SETTINGS = ("streaming", "shuffle_buffer", "features_on_device")


@dataclass
class IterateArguments:
    data: str = field(metadata={"help": "Unlabelled audio: a folder of audio files, a saved dataset or a Hub id."})
    iterations: int = field(default=3, metadata={"help": "Number of iterations (tokenizer + pre-training each)."})
    model_preset: str = field(default="base", metadata={"help": f"Student and tokenizer size: {sorted(PRESETS)}."})
    tokenizer_max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of each tokenizer distillation (default: --max_steps)."}
    )
    tokenizer_restart_dead_codes_after: int | None = field(
        default=None,
        metadata={"help": "Tokenizer training: move a code unused for this many updates onto a current patch vector."},
    )
    teacher_finetuned_on: str | None = field(
        default=None,
        metadata={"help": "Labelled audio folder / dataset: fine-tune each teacher on it before distilling (iter3+)."},
    )
    teacher_max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps of each teacher fine-tuning (default: --max_steps)."}
    )
    crop_seconds: float = field(default=10.0, metadata={"help": "Random crop of each clip."})
    mask_ratio: float = field(default=0.75, metadata={"help": "Share of each clip's patches that is masked."})
    split: str = field(default="train")
    audio_column: str = field(default="audio")
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N clips."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the data lazily (needs --max_steps; tar shards: exactly once per epoch over all "
                          "processes and workers, resumed where the stream stood)."},
    )
    shuffle_buffer: int = field(
        default=0, metadata={"help": "Streaming: shuffle the clips in blocks of N, seeded by --seed. 0: stream order."}
    )
    features_on_device: bool = field(
        default=False, metadata={"help": "Pre-training stages: compute the fbank on the training device, batched."}
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep each stage's work folder once it is done."})


@dataclass
class Stage:
    name: str  # also its folder under the output dir, e.g. "iteration_2/tokenizer"
    iteration: int
    kind: str  # random_projection | tokenizer | teacher | ssl
    inputs: dict


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def plan_stages(iterations: int, finetune_teacher: bool) -> list[Stage]:
    """The stages of `iterations` iterations, in order, with the folders each one reads."""
    stages = []
    for k in range(1, iterations + 1):
        if k == 1:
            stages.append(Stage("iteration_1/tokenizer", 1, "random_projection", {}))
        else:
            teacher = f"iteration_{k - 1}/ssl"
            if finetune_teacher:
                stages.append(Stage(f"iteration_{k}/teacher", k, "teacher", {"pretrained": teacher}))
                teacher = f"iteration_{k}/teacher"
            stages.append(Stage(f"iteration_{k}/tokenizer", k, "tokenizer", {"teacher": teacher}))
        stages.append(Stage(f"iteration_{k}/ssl", k, "ssl", {"tokenizer": f"iteration_{k}/tokenizer"}))
    return stages


class IterativePretraining:
    """Runs the planned stages in order, keeping the manifest; see the module docstring."""

    def __init__(self, args: IterateArguments, training_args: TrainingArguments):
        if args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}.")
        if args.model_preset not in PRESETS:
            raise ValueError(f"Unknown model preset {args.model_preset!r}; choose one of {sorted(PRESETS)}.")
        if args.teacher_finetuned_on and not os.path.exists(args.teacher_finetuned_on):
            raise FileNotFoundError(f"--teacher_finetuned_on: no such folder {args.teacher_finetuned_on!r}.")
        self.args = args
        self.training_args = training_args
        self.output_dir = os.path.abspath(training_args.output_dir)
        self.state = PartialState()
        self.stages = plan_stages(args.iterations, bool(args.teacher_finetuned_on))
        self.manifest_path = os.path.join(self.output_dir, MANIFEST)

    # -- manifest -----------------------------------------------------------------------------------------------------

    def settings(self) -> dict:
        settings = {name: getattr(self.args, name) for name in FIXED_SETTINGS}
        settings.update({name: getattr(self.args, name) for name in LATER_SETTINGS if getattr(self.args, name)})
        settings["data"] = path_setting(self.args.data)
        settings["teacher_finetuned_on"] = path_setting(self.args.teacher_finetuned_on)
        return {**settings, **training_settings(self.training_args)}

    def run_folder(self) -> RunFolder:
        return RunFolder(self.output_dir, "iterate", self.settings(), ("iterations", self.args.iterations),
                         trains_with_checkpoints=False, progress=self.has_progress)

    def has_progress(self) -> bool:
        """A finished stage, or a checkpoint of an unfinished one: what other settings would mix with."""
        stages = self.read_manifest().get("stages", {})
        return any(entry.get("status") == "complete" for entry in stages.values()) or any(
            checkpoint_folders(os.path.join(self.output_dir, f"{stage.name}.work")) for stage in self.stages
        )

    def read_manifest(self) -> dict:
        if not os.path.exists(self.manifest_path):
            return {"format_version": 1, "created_at": _now(), "stages": {}}
        with open(self.manifest_path) as handle:
            return json.load(handle)

    def save_manifest(self, manifest: dict) -> None:
        if self.state.is_main_process:
            manifest["iterations"] = max(self.args.iterations, manifest.get("iterations", 0))
            manifest["updated_at"] = _now()
            atomic_write_json(self.manifest_path, manifest)

    # -- stages -------------------------------------------------------------------------------------------------------

    def stage_training_args(self, stage: Stage, work_dir: str, max_steps: int | None) -> TrainingArguments:
        # A user --resume_from_checkpoint would apply to every stage; each stage resumes from its own work folder.
        overrides = dict(output_dir=work_dir, resume_from_checkpoint=None)
        if max_steps is not None:
            overrides["max_steps"] = max_steps
        return dataclasses.replace(self.training_args, **overrides)

    def run_random_projection(self, stage: Stage, final_dir: str) -> dict:
        num_codes = preset_config(self.args.model_preset).num_target_codes
        if self.state.is_main_process:
            config = BeatsRandomProjectionConfig(codebook_size=num_codes, seed=self.training_args.seed)
            BeatsRandomProjectionForAudioTokenization(config).save_pretrained(final_dir)
            BeatsFeatureExtractor().save_pretrained(final_dir)
        return {"codebook_size": num_codes}

    def run_ssl(self, stage: Stage, work_dir: str, final_dir: str) -> dict:
        args = PretrainingArguments(
            data=self.args.data,
            tokenizer=os.path.join(self.output_dir, stage.inputs["tokenizer"]),
            model_preset=self.args.model_preset,
            crop_seconds=self.args.crop_seconds,
            mask_ratio=self.args.mask_ratio,
            split=self.args.split,
            audio_column=self.args.audio_column,
            max_train_samples=self.args.max_train_samples,
            streaming=self.args.streaming,
            shuffle_buffer=self.args.shuffle_buffer,
            features_on_device=self.args.features_on_device,
        )
        metrics = run_pretraining(args, self.stage_training_args(stage, work_dir, None))
        self._copy_final_files(work_dir, final_dir)
        return metrics

    def run_tokenizer(self, stage: Stage, work_dir: str, final_dir: str) -> dict:
        from .train_tokenizer import run_tokenizer_training

        # The tokenizer takes the teacher's architecture; its codebook is the size the students predict.
        overrides = {**TOKENIZER_PRESETS[self.args.model_preset],
                     "codebook_size": preset_config(self.args.model_preset).num_target_codes}
        metrics = run_tokenizer_training(
            os.path.join(self.output_dir, stage.inputs["teacher"]),
            self.args.data,
            work_dir,
            student_overrides=overrides,
            training_args=self.stage_training_args(stage, work_dir, self.args.tokenizer_max_steps),
            crop_seconds=self.args.crop_seconds,
            split=self.args.split,
            audio_column=self.args.audio_column,
            max_train_samples=self.args.max_train_samples,
            streaming=self.args.streaming,
            shuffle_buffer=self.args.shuffle_buffer,
            restart_dead_codes_after=self.args.tokenizer_restart_dead_codes_after,
        )
        self._copy_final_files(work_dir, final_dir)
        metrics.pop("tokenizer_dir", None)  # the work folder, deleted once the stage is done
        return metrics

    def run_teacher(self, stage: Stage, work_dir: str, final_dir: str) -> dict:
        from ..finetuning import DataArguments, ModelArguments, run_finetuning

        model_args = ModelArguments(model_name_or_path=os.path.join(self.output_dir, stage.inputs["pretrained"]))
        data_args = DataArguments(
            dataset=self.args.teacher_finetuned_on, eval_split=None, max_length_seconds=self.args.crop_seconds
        )
        training_args = self.stage_training_args(stage, work_dir, self.args.teacher_max_steps)
        metrics = run_finetuning(model_args, data_args, training_args)
        self._copy_final_files(work_dir, final_dir)
        return metrics

    def _copy_final_files(self, work_dir: str, final_dir: str) -> None:
        """The stage's final folder gets the files its run saved into the work folder: not the checkpoints, and not
        the work folder's run record."""
        if self.state.is_main_process:
            os.makedirs(final_dir, exist_ok=True)
            for name in os.listdir(work_dir):
                if os.path.isfile(os.path.join(work_dir, name)) and name != RECORD_NAME:
                    shutil.copy2(os.path.join(work_dir, name), os.path.join(final_dir, name))

    def run_stage(self, stage: Stage, manifest: dict, position: str) -> None:
        final_dir = os.path.join(self.output_dir, stage.name)
        work_dir, partial_dir = f"{final_dir}.work", f"{final_dir}.partial"
        entry = manifest["stages"].get(stage.name, {})
        label = f"iteration {stage.iteration}/{self.args.iterations}: {stage.kind}"
        if entry.get("status") == "complete":
            if not os.path.isdir(final_dir):
                raise FileNotFoundError(
                    f"{MANIFEST} marks {stage.name} finished but {final_dir} is missing; restore it or start a new "
                    "--output_dir (later stages were trained from it)."
                )
            self._print(f"{label} already done ({stage.name}), skipped")
            return
        if os.path.isdir(final_dir):
            # Renamed into place but the manifest was not updated (killed in between): the folder is complete.
            entry.update(status="complete", recovered_at=_now())
            results = os.path.join(final_dir, "train_results.json")
            if os.path.isfile(results):
                with open(results) as handle:
                    entry["metrics"] = json.load(handle)
            if self.state.is_main_process and not self.args.keep_checkpoints and os.path.isdir(work_dir):
                shutil.rmtree(work_dir)  # the stage's own work folder, perhaps half deleted when the kill came
            manifest["stages"][stage.name] = entry
            self.save_manifest(manifest)
            self._print(f"{label} found finished in {stage.name}, recorded")
            return

        entry = {
            **entry,
            "iteration": stage.iteration,
            "kind": stage.kind,
            "path": stage.name,
            "inputs": stage.inputs,
            "status": "running",
            "started_at": _now(),
            "attempts": entry.get("attempts", 0) + 1,
            "resumed_from": last_complete_checkpoint(work_dir),
            "max_steps": self._max_steps(stage),
        }
        manifest["stages"][stage.name] = entry
        self.save_manifest(manifest)
        resumed = entry["resumed_from"]
        resuming = f", resuming from {os.path.relpath(resumed, self.output_dir)}" if resumed else ""
        self._print(f"{label} ({position}) -> {stage.name}{resuming} ...")
        if self.state.is_main_process and os.path.isdir(partial_dir):
            shutil.rmtree(partial_dir)  # a save interrupted before its rename
        self.state.wait_for_everyone()

        started = time.time()
        try:
            if stage.kind == "random_projection":
                metrics = self.run_random_projection(stage, partial_dir)
            elif stage.kind == "ssl":
                metrics = self.run_ssl(stage, work_dir, partial_dir)
            elif stage.kind == "tokenizer":
                metrics = self.run_tokenizer(stage, work_dir, partial_dir)
            else:
                metrics = self.run_teacher(stage, work_dir, partial_dir)
        except BaseException as error:
            entry.update(status="failed", failed_at=_now(), error=f"{type(error).__name__}: {error}")
            self.save_manifest(manifest)
            raise
        self.state.wait_for_everyone()
        seconds = time.time() - started
        if self.state.is_main_process:
            os.replace(partial_dir, final_dir)
            if not self.args.keep_checkpoints and os.path.isdir(work_dir):
                shutil.rmtree(work_dir)
        entry.update(
            status="complete",
            finished_at=_now(),
            seconds=round(seconds, 1),
            metrics={key: value for key, value in metrics.items() if isinstance(value, (int, float, str))},
        )
        entry.pop("error", None)
        self.save_manifest(manifest)
        self.state.wait_for_everyone()
        self._print(f"{label} ... done in {seconds:.0f} s")

    def _max_steps(self, stage: Stage) -> int | None:
        steps = {"tokenizer": self.args.tokenizer_max_steps, "teacher": self.args.teacher_max_steps}.get(stage.kind)
        if stage.kind == "random_projection":
            return None
        return steps if steps is not None else self.training_args.max_steps

    def _print(self, message: str) -> None:
        if self.state.is_main_process:
            print(message, flush=True)

    def run(self) -> dict:
        """Runs (or resumes) every stage; returns the manifest. Raises `RunFolderError` when the output folder holds
        a run with other settings."""
        run = self.run_folder()
        if run.prepare().finished:
            return self.read_manifest()
        run.begin()
        manifest = self.read_manifest()
        self.save_manifest(manifest)
        started = time.time()
        for index, stage in enumerate(self.stages, start=1):
            self.run_stage(stage, manifest, f"stage {index}/{len(self.stages)}")
        elapsed = time.time() - started
        self._print(f"all {self.args.iterations} iteration(s) done in {elapsed:.0f} s: {self.output_dir}")
        last = manifest["stages"][self.stages[-1].name]
        run.finish({"stages": len(self.stages), **last.get("metrics", {})})
        return manifest


def run_iterations(args: IterateArguments, training_args: TrainingArguments) -> dict:
    """Python entry point of `beats-hf iterate`; returns the manifest."""
    return IterativePretraining(args, training_args).run()


def main(argv: list[str] | None = None) -> int:
    return command_main("beats-hf iterate", (IterateArguments, TrainingArguments), run_iterations, argv)


__all__ = ["IterateArguments", "IterativePretraining", "plan_stages", "run_iterations", "main"]
