"""Masked audio modeling with `Trainer`: `beats-hf pretrain` and `run_pretraining`.

A frozen acoustic tokenizer (the iteration-1 random projection, or a trained `BeatsForAudioTokenization`) labels
every patch inside `compute_loss`, on the training device and without gradients; the student
(`BeatsForMaskedAudioModeling`) predicts the labels of the masked patches. The tokenizer is an attribute of the
Trainer, never part of the saved student.

    beats-hf pretrain --data DATA --output_dir OUT --tokenizer random_projection --model_preset tiny \
        --max_steps 1000 --per_device_train_batch_size 8 --learning_rate 5e-4 --save_steps 200 [trainer args]

Works unchanged under `accelerate launch` / `torchrun`. Rerunning with the same `--output_dir` resumes from its last
complete `checkpoint-N` folder, refuses other settings and does nothing once the run has finished
(`beats_hf.training.run_folder`). The finished folder holds the student (`save_pretrained`), the feature extractor,
`trainer_state.json` and `train_results.json`; `AutoModel.from_pretrained(OUT)` gives its encoder.
"""

import inspect
import logging
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AutoModel, Trainer, TrainingArguments, set_seed

from ...configuration_beats import BeatsConfig, BeatsRandomProjectionConfig
from ...feature_extraction_beats import BeatsFeatureExtractor
from ...modeling_beats import BeatsForMaskedAudioModeling, BeatsRandomProjectionForAudioTokenization
from ...sources import is_local_path
from ..driver import TrainingJob, clip_count, command_main, metrics_starting_with, run_training, training_clips
from ..run_folder import path_setting, training_settings
from ..streaming import ShardStreamTrainerMixin
from .collator import MaskedAudioModelingCollator

logger = logging.getLogger(__name__)

RANDOM_PROJECTION = "random_projection"
# What MaskedAudioModelingTrainer logs, reported as last_<name> in the results.
LOGGED_METRICS = ("masked_accuracy", "loss", "target_codebook_coverage", "prediction_codebook_coverage")

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
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the data lazily (needs --max_steps). Tar shards stream exactly once per epoch over "
                          "all processes and workers, and a resumed run continues the stream where it stood."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N clips."})
    shuffle_buffer: int = field(
        default=0,
        metadata={"help": "Streaming: shuffle the clips in blocks of N (tar shards: and the shard order every epoch), "
                          "seeded by --seed. 0: stream order."},
    )
    features_on_device: bool = field(
        default=False,
        metadata={"help": "Compute the fbank on the training device, batched, instead of in the data loader "
                          "workers (which then only decode and crop). Same features on CPU."},
    )


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


@torch.no_grad()
def masked_prediction_sums(logits: torch.Tensor, labels: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
    """What the masked-prediction metrics are made of, summable over batches and processes: [correct, counted,
    histogram of the target codes (K), histogram of the predicted codes (K)] over the masked, labelled patches (labels
    are -100 at padded patches)."""
    selected = bool_masked_pos.bool() & (labels != -100)
    targets, predictions = labels[selected], logits.argmax(-1)[selected]
    num_codes = logits.shape[-1]
    return torch.cat([
        torch.stack([(predictions == targets).sum(), torch.tensor(targets.numel(), device=logits.device)]),
        torch.bincount(targets, minlength=num_codes),
        torch.bincount(predictions, minlength=num_codes),
    ]).float()


class MaskedAudioModelingTrainer(ShardStreamTrainerMixin, Trainer):
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
        # The collator's patch validity goes to the tokenizers that take it (ours do; another AutoModel may not).
        self._tokenizer_takes_patch_mask = "patch_mask" in inspect.signature(acoustic_tokenizer.forward).parameters
        # [correct, counted, target histogram (K), prediction histogram (K)], summed between two logs.
        self._metric_sums = torch.zeros(2 + 2 * num_codes, device=self.args.device)

    @torch.no_grad()
    def make_labels(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Code of every patch (-100 at padded patches), computed in float32 whatever the mixed-precision setting so
        that the targets do not depend on it."""
        with torch.autocast(self.args.device.type, enabled=False):
            output = self.acoustic_tokenizer(
                input_features=inputs["input_features"].float(),
                attention_mask=inputs.get("attention_mask"),
                **self._patch_mask_argument(inputs),
            )
        token_ids = getattr(output, "token_ids", None)
        if token_ids is None:
            raise TypeError(f"The tokenizer {type(self.acoustic_tokenizer).__name__} returned no `token_ids`.")
        return token_ids

    def _patch_mask_argument(self, inputs: dict[str, torch.Tensor]) -> dict:
        if "patch_mask" in inputs and self._tokenizer_takes_patch_mask:
            return {"patch_mask": inputs["patch_mask"]}
        return {}

    def device_features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batches of padded waveforms (`MaskedAudioModelingCollator(features_on_device=True)`: `input_values` and
        `lengths`) get their `input_features` and `attention_mask` here, on the training device, in one batched pass
        of the feature extractor (`processing_class`); other batches pass unchanged."""
        if "input_values" not in inputs:
            return inputs
        inputs = dict(inputs)
        waveforms, lengths = inputs.pop("input_values"), inputs.pop("lengths")
        with torch.autocast(self.args.device.type, enabled=False):
            features, attention_mask = self.processing_class.featurize_padded(waveforms.float(), lengths)
        return {**inputs, "input_features": features, "attention_mask": attention_mask}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.device_features(inputs)
        inputs = {**inputs, "labels": self.make_labels(inputs)}
        outputs = model(**inputs)
        if model.training:
            self._accumulate_metrics(inputs, outputs.logits.detach())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @torch.no_grad()
    def _accumulate_metrics(self, inputs: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        self._metric_sums += masked_prediction_sums(logits, inputs["labels"], inputs["bool_masked_pos"])

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


def pretraining_settings(args: PretrainingArguments, training_args: TrainingArguments) -> dict:
    """The settings that define a pre-training run (all of `PretrainingArguments` and the fixed training settings)."""
    settings = {**asdict(args), **training_settings(training_args)}
    settings["data"] = path_setting(args.data)
    settings["tokenizer"] = path_setting(args.tokenizer)
    # Options added later: recorded only when used, so that runs recorded before them still resume.
    for name in ("shuffle_buffer", "features_on_device"):
        if not settings[name]:
            del settings[name]
    return settings


def run_pretraining(
    args: PretrainingArguments,
    training_args: TrainingArguments,
    callbacks: list | None = None,
) -> dict:
    """Pre-train a student by masked audio modeling and save it to `training_args.output_dir`.

    The folder is a `RunFolder` (`beats_hf.training.driver.run_training`): training resumes from
    `training_args.resume_from_checkpoint`, or else from the last complete `checkpoint-N` there; a rerun with other
    settings raises `RunFolderError`; a finished run is not trained again (its recorded metrics are returned and
    nothing is written). The finished model, feature extractor, `trainer_state.json` and `train_results.json` go to
    the output dir. Returns the training metrics plus the last logged masked accuracy and codebook coverages.
    """

    def build(start) -> TrainingJob:
        set_seed(training_args.seed)  # before the student is built, so its initialisation is reproducible
        num_codes = PRESETS.get(args.model_preset, {}).get("num_target_codes", BeatsConfig().num_target_codes)
        acoustic_tokenizer = load_acoustic_tokenizer(args.tokenizer, num_codes, training_args.seed)
        config = preset_config(
            args.model_preset,
            num_target_codes=tokenizer_codebook_size(acoustic_tokenizer),
            # Trainer's own label smoother never sees this loss: the model applies the smoothing itself.
            label_smoothing=training_args.label_smoothing_factor,
        )
        model = BeatsForMaskedAudioModeling(config)
        feature_extractor = BeatsFeatureExtractor()
        # Items carry (epoch, index): the collator's masks are a function of them, so a resumed run continues the
        # stream.
        clips = training_clips(
            args.data, training_args, crop_seconds=args.crop_seconds, split=args.split,
            audio_column=args.audio_column, streaming=args.streaming, max_train_samples=args.max_train_samples,
            return_index=True, shuffle_buffer=args.shuffle_buffer,
        )
        collator = MaskedAudioModelingCollator(
            feature_extractor,
            mask_ratio=args.mask_ratio,
            patch_size=config.patch_size,
            num_frequency_patches=config.num_frequency_patches,
            seed=training_args.seed,
            features_on_device=args.features_on_device,
        )
        trainer = MaskedAudioModelingTrainer(
            model=model,
            args=training_args,
            train_dataset=clips,
            data_collator=collator,
            processing_class=feature_extractor,
            acoustic_tokenizer=acoustic_tokenizer,
            callbacks=callbacks,
        )
        banner = (
            f"pre-training {args.model_preset} ({model.num_parameters() / 1e6:.2f}M parameters, "
            f"{config.num_target_codes} codes) on {clip_count(clips)} with tokenizer {args.tokenizer!r}"
        )
        return TrainingJob(trainer, banner, logged=LOGGED_METRICS)

    return run_training("pretrain", pretraining_settings(args, training_args), training_args, build)


def main(argv: list[str] | None = None) -> int:
    return command_main(
        "beats-hf pretrain", (PretrainingArguments, TrainingArguments), run_pretraining, argv,
        summary=metrics_starting_with("last_", "train_"),
    )


__all__ = [
    "PRESETS",
    "TOKENIZER_PRESETS",
    "PretrainingArguments",
    "MaskedAudioModelingTrainer",
    "masked_prediction_sums",
    "load_acoustic_tokenizer",
    "preset_config",
    "pretraining_settings",
    "run_pretraining",
    "main",
]
