"""Masked audio modeling with `Trainer`: `beats-hf pretrain` and `run_pretraining`.

A frozen acoustic tokenizer (the iteration-1 random projection, or a trained `BeatsForAudioTokenization`) labels
every patch inside `compute_loss`, on the training device and without gradients; the student
(`BeatsForMaskedAudioModeling`) predicts the labels of the masked patches. The tokenizer is an attribute of the
Trainer, never part of the saved student.

    beats-hf pretrain --data DATA --output_dir OUT --tokenizer random_projection --model_preset tiny \
        --max_steps 1000 --per_device_train_batch_size 8 --learning_rate 5e-4 --save_steps 200 [trainer args]

Works unchanged under `accelerate launch` / `torchrun`. Rerunning with the same `--output_dir` resumes from its last
complete `checkpoint-N` folder, refuses other settings and does nothing once the run has finished
(`beats_hf.run_folder`). The finished folder holds the student (`save_pretrained`), the feature extractor,
`trainer_state.json` and `train_results.json`; `AutoModel.from_pretrained(OUT)` gives its encoder.
"""

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AutoModel, HfArgumentParser, Trainer, TrainingArguments, set_seed

from ..audio_data import AudioClips, ClipEpochCallback, StreamingAudioClips, load_audio_dataset
from ..configuration_beats import BeatsConfig, BeatsRandomProjectionConfig
from ..feature_extraction_beats import BeatsFeatureExtractor
from ..modeling_beats import BeatsForMaskedAudioModeling, BeatsRandomProjectionForAudioTokenization
from ..run_folder import (
    RunFolder,
    RunFolderError,
    atomic_write_json,
    finite_metrics,
    path_setting,
    refuse,
    train_or_restore,
    training_length,
    training_settings,
)
from ..sources import is_local_path
from .collator import MaskedAudioModelingCollator

logger = logging.getLogger(__name__)

RANDOM_PROJECTION = "random_projection"

# Encoder sizes. Anything not listed keeps the BeatsConfig default (the released base model). `num_target_codes` is
# the codebook size of the iteration-1 random projection; a trained tokenizer imposes its own.
PRESETS: dict[str, dict] = {
    "tiny": dict(  # seconds per step on a laptop CPU: for tests and smoke runs
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, patch_embedding_dim=64,
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, predictor_num_layers=1, num_target_codes=64,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, patch_embedding_dim=256,
        num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8, predictor_num_layers=2, num_target_codes=1024,
    ),
    # The paper's encoder (12 x 768, 1024 codes) with a 3-layer label predictor 512 wide (MAE-style narrower decoder:
    # ~2.3x fewer predictor FLOPs than a 768-wide one, which keeps a step at under half a full-sequence step).
    "base": dict(predictor_hidden_size=512, predictor_num_attention_heads=8, predictor_intermediate_size=2048),
}
# What the distilled tokenizers of `beats-hf iterate` change from their teacher's architecture (codebook size: the
# preset's num_target_codes; codebook dimension 256 and a 3-layer estimator unless listed).
TOKENIZER_PRESETS: dict[str, dict] = {
    "tiny": dict(codebook_dim=32, estimator_num_layers=1),
    "small": dict(estimator_num_layers=2),
    "base": {},
}


def preset_config(name: str, **overrides) -> BeatsConfig:
    """The `BeatsConfig` of a preset, with `overrides` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return BeatsConfig(**{**PRESETS[name], **overrides})


@dataclass
class PretrainingArguments:
    data: str = field(metadata={"help": "Audio folder, saved dataset or Hub dataset id (the audio column is used)."})
    tokenizer: str = field(
        default=RANDOM_PROJECTION,
        metadata={"help": "'random_projection' (iteration 1) or a folder/Hub id of a saved acoustic tokenizer."},
    )
    model_preset: str = field(default="base", metadata={"help": f"Student size: one of {sorted(PRESETS)}."})
    crop_seconds: float = field(default=10.0, metadata={"help": "Random crop of each clip (paper: 10 s)."})
    mask_ratio: float = field(default=0.75, metadata={"help": "Share of each clip's patches that is masked."})
    split: str = field(default="train")
    audio_column: str = field(default="audio")
    streaming: bool = field(default=False, metadata={"help": "Read the data lazily (needs --max_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N clips."})


def load_acoustic_tokenizer(spec: str, codebook_size: int, seed: int) -> nn.Module:
    """`'random_projection'` -> a fresh random-projection tokenizer drawn from `seed`; else a saved tokenizer folder
    or Hub id (anything `AutoModel` loads whose output has `token_ids`)."""
    if spec == RANDOM_PROJECTION:
        config = BeatsRandomProjectionConfig(codebook_size=codebook_size, seed=seed)
        return BeatsRandomProjectionForAudioTokenization(config)
    if is_local_path(spec) and not os.path.isdir(os.path.expanduser(spec)):
        raise FileNotFoundError(f"No tokenizer folder {spec!r} (pass a folder, a Hub id or 'random_projection').")
    return AutoModel.from_pretrained(os.path.expanduser(spec) if is_local_path(spec) else spec)


def tokenizer_codebook_size(tokenizer: nn.Module) -> int:
    size = getattr(getattr(tokenizer, "config", None), "codebook_size", None)
    if not isinstance(size, int):
        raise TypeError(
            f"{type(tokenizer).__name__} has no `config.codebook_size`: the tokenizer must be a "
            "BeatsForAudioTokenization or BeatsRandomProjectionForAudioTokenization (or expose the same)."
        )
    return size


class MaskedAudioModelingTrainer(Trainer):
    """Trainer for `BeatsForMaskedAudioModeling` that makes the labels with a frozen acoustic tokenizer.

    Logs, at every logging step and over all processes, besides the loss: `masked_accuracy` (share of masked patches
    whose predicted code is the label), `target_codebook_coverage` and `prediction_codebook_coverage` (share of the
    codebook seen among the labels / predictions of the masked patches since the previous log).
    """

    def __init__(self, *args, acoustic_tokenizer: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        num_codes = self.model.config.num_target_codes
        if tokenizer_codebook_size(acoustic_tokenizer) != num_codes:
            raise ValueError(
                f"The tokenizer has {tokenizer_codebook_size(acoustic_tokenizer)} codes but the student predicts "
                f"{num_codes} (config.num_target_codes): they must match."
            )
        self.acoustic_tokenizer = acoustic_tokenizer.to(self.args.device).eval().requires_grad_(False)
        # [correct, counted, target histogram (K), prediction histogram (K)], summed between two logs.
        self._metric_sums = torch.zeros(2 + 2 * num_codes, device=self.args.device)

    @torch.no_grad()
    def make_labels(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Code of every patch (-100 at padded patches), computed in float32 whatever the mixed-precision setting so
        that the targets do not depend on it."""
        with torch.autocast(self.args.device.type, enabled=False):
            output = self.acoustic_tokenizer(
                input_features=inputs["input_features"].float(), attention_mask=inputs.get("attention_mask")
            )
        token_ids = getattr(output, "token_ids", None)
        if token_ids is None:
            raise TypeError(f"The tokenizer {type(self.acoustic_tokenizer).__name__} returned no `token_ids`.")
        return token_ids

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**inputs, "labels": self.make_labels(inputs)}
        outputs = model(**inputs)
        if model.training:
            self._accumulate_metrics(inputs, outputs.logits.detach())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @torch.no_grad()
    def _accumulate_metrics(self, inputs: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        labels = inputs["labels"]
        selected = inputs["bool_masked_pos"].bool() & (labels != -100)
        targets, predictions = labels[selected], logits.argmax(-1)[selected]
        num_codes = logits.shape[-1]
        self._metric_sums[0] += (predictions == targets).sum()
        self._metric_sums[1] += targets.numel()
        self._metric_sums[2 : 2 + num_codes] += torch.bincount(targets, minlength=num_codes)
        self._metric_sums[2 + num_codes :] += torch.bincount(predictions, minlength=num_codes)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Only the periodic training logs carry "loss"; every process calls log() with them, so the reduce is safe.
        if "loss" in logs:
            sums = self.accelerator.reduce(self._metric_sums, reduction="sum")
            num_codes = (sums.numel() - 2) // 2
            if sums[1] > 0:
                logs["masked_accuracy"] = round((sums[0] / sums[1]).item(), 4)
                logs["target_codebook_coverage"] = round((sums[2 : 2 + num_codes] > 0).float().mean().item(), 4)
                logs["prediction_codebook_coverage"] = round((sums[2 + num_codes :] > 0).float().mean().item(), 4)
            self._metric_sums.zero_()
        super().log(logs, start_time)


def _clips(args: PretrainingArguments, seed: int) -> AudioClips | StreamingAudioClips:
    dataset = load_audio_dataset(args.data, split=args.split, audio_column=args.audio_column, streaming=args.streaming)
    if args.max_train_samples:
        dataset = dataset.take(args.max_train_samples) if args.streaming else dataset.select(
            range(min(args.max_train_samples, len(dataset)))
        )
    clip_class = StreamingAudioClips if args.streaming else AudioClips
    # Items carry (epoch, index): the collator's masks are a function of them, so a resumed run continues the stream.
    return clip_class(dataset, crop_seconds=args.crop_seconds, label_column=None, audio_column=args.audio_column,
                      seed=seed, return_index=True)


def pretraining_settings(args: PretrainingArguments, training_args: TrainingArguments) -> dict:
    """The settings that define a pre-training run (all of `PretrainingArguments` and the fixed training settings)."""
    settings = {**asdict(args), **training_settings(training_args)}
    settings["data"] = path_setting(args.data)
    settings["tokenizer"] = path_setting(args.tokenizer)
    return settings


def run_pretraining(
    args: PretrainingArguments,
    training_args: TrainingArguments,
    callbacks: list | None = None,
) -> dict:
    """Pre-train a student by masked audio modeling and save it to `training_args.output_dir`.

    The folder is a `RunFolder`: training resumes from `training_args.resume_from_checkpoint`, or else from the last
    complete `checkpoint-N` there; a rerun with other settings raises `RunFolderError`; a finished run is not
    trained again (its recorded metrics are returned and nothing is written). The finished model, feature extractor,
    `trainer_state.json` and `train_results.json` go to the output dir. Returns the training metrics plus the last
    logged masked accuracy and codebook coverages.
    """
    if args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a stream has no length to count epochs with).")
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() != training_args.world_size:
        # e.g. an FSDP or multi-GPU launch config on a machine without GPUs: each process would train alone and all
        # would write the same folder.
        raise RuntimeError(
            f"{torch.distributed.get_world_size()} processes were launched but Trainer uses "
            f"{training_args.world_size}; check the accelerate config (on CPU: --multi_gpu with --use_cpu works)."
        )
    output_dir = training_args.output_dir
    run = RunFolder(output_dir, "pretrain", pretraining_settings(args, training_args), training_length(training_args))
    start = run.prepare(training_args.resume_from_checkpoint)
    if start.finished:
        return start.metrics
    set_seed(training_args.seed)  # before the student is built, so its initialisation is reproducible
    # Items are raw waveforms that the collator turns into features: nothing for Trainer to prune.
    training_args.remove_unused_columns = False

    num_codes = PRESETS.get(args.model_preset, {}).get("num_target_codes", BeatsConfig().num_target_codes)
    acoustic_tokenizer = load_acoustic_tokenizer(args.tokenizer, num_codes, training_args.seed)
    config = preset_config(
        args.model_preset,
        num_target_codes=tokenizer_codebook_size(acoustic_tokenizer),
        mask_ratio=args.mask_ratio,
        # Trainer's own label smoother never sees this loss: the model applies the smoothing itself.
        label_smoothing=training_args.label_smoothing_factor,
    )
    model = BeatsForMaskedAudioModeling(config)
    feature_extractor = BeatsFeatureExtractor()
    clips = _clips(args, training_args.seed)
    collator = MaskedAudioModelingCollator(
        feature_extractor,
        mask_ratio=args.mask_ratio,
        patch_size=config.patch_size,
        num_frequency_patches=config.num_frequency_patches,
        seed=training_args.seed,
    )
    trainer = MaskedAudioModelingTrainer(
        model=model,
        args=training_args,
        train_dataset=clips,
        data_collator=collator,
        processing_class=feature_extractor,
        acoustic_tokenizer=acoustic_tokenizer,
        callbacks=[ClipEpochCallback(clips), *(callbacks or [])],
    )

    checkpoint = start.checkpoint
    if trainer.is_world_process_zero():
        size = f"{len(clips)} clips" if isinstance(clips, AudioClips) else "streamed clips"
        print(
            f"pre-training {args.model_preset} ({model.num_parameters() / 1e6:.2f}M parameters, "
            f"{config.num_target_codes} codes) on {size} with tokenizer {args.tokenizer!r}, "
            f"{training_args.world_size} process(es)" + (f", resuming from {checkpoint}" if checkpoint else ""),
            flush=True,
        )
    run.begin()
    started = time.time()
    metrics = train_or_restore(trainer, checkpoint, run.length)

    trainer.save_model(output_dir)  # the student (save_pretrained) and the feature extractor
    last_log = next((log for log in reversed(trainer.state.log_history) if "masked_accuracy" in log), {})
    for key in ("loss", "masked_accuracy", "target_codebook_coverage", "prediction_codebook_coverage"):
        if key in last_log:
            metrics[f"last_{key}"] = last_log[key]
    metrics["train_wall_seconds"] = round(time.time() - started, 1)
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
        atomic_write_json(os.path.join(output_dir, "train_results.json"), finite_metrics(metrics), sort_keys=True)
    trainer.accelerator.wait_for_everyone()
    run.finish(metrics)
    return finite_metrics(metrics)


def require_output_dir(parser: HfArgumentParser, argv: list[str]) -> None:
    # TrainingArguments would silently default to ./trainer_output.
    if not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv):
        parser.error("--output_dir is required (checkpoints and the trained model go there).")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((PretrainingArguments, TrainingArguments))
    require_output_dir(parser, argv)
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        metrics = run_pretraining(args, training_args)
    except RunFolderError as error:
        return refuse("beats-hf pretrain", error, training_args.process_index)
    if training_args.process_index == 0:
        print(json.dumps({key: metrics[key] for key in sorted(metrics) if key.startswith(("last_", "train_"))}))
    return 0


__all__ = [
    "PRESETS",
    "TOKENIZER_PRESETS",
    "PretrainingArguments",
    "MaskedAudioModelingTrainer",
    "load_acoustic_tokenizer",
    "preset_config",
    "pretraining_settings",
    "run_pretraining",
    "main",
]
