"""Fine-tuning BEATs for audio classification with `Trainer`: the paper's recipe as options.

Used by `examples/run_audio_classification.py`, the demo and the iterative loop's iter3+ teacher. Options:
mixup, SpecAugment-style time/frequency masking (both applied to the batch on the training device), layer-wise
learning-rate decay, a frozen encoder for linear probing, a head initialised by a logistic-regression linear probe
(LP-FT), a weighted sum of layers, and training from random initialisation (for baselines with the same budget).

The output dir is a `RunFolder` (`beats_hf.training.run_folder`): a rerun resumes from the last complete checkpoint,
refuses other settings, and does nothing once the run has finished.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, Trainer, TrainingArguments

from ..audio_data import AudioClips, AudioFeatureCollator, load_audio_dataset
from ..sources import resolve_source
from .driver import TrainingJob, clip_count, command_main, metrics_starting_with, run_training, training_clips
from .linear_probe import initialise_head_from_linear_probe
from .metrics import load_metric
from .run_folder import atomic_write_json, finite_metrics, path_setting, training_settings

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "A beats_hf folder or Hub repo: pre-trained, pre-training or fine-tuned."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the Hub (repos pushed by beats_hf)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random initialisation."})
    freeze_feature_encoder: bool = field(default=False, metadata={"help": "Freeze the patch embedding."})
    freeze_base_model: bool = field(default=False, metadata={"help": "Freeze the whole encoder (linear probing)."})
    use_weighted_layer_sum: bool = field(default=False, metadata={"help": "Classify from a learned mix of all layers."})
    classifier_pooling: str = field(
        default="mean",
        metadata={"help": "Head input: 'mean' over patches (official) or 'frequency_bands' (per-band mean and std)."},
    )
    layer_decay: float = field(default=1.0, metadata={"help": "Layer-wise learning-rate decay (1.0 = off; paper: 0.75-0.9)."})
    linear_probe_head: bool = field(
        default=False,
        metadata={"help": "Start from a head fitted as a logistic regression on the frozen clip embeddings (LP-FT)."},
    )
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before the head."})


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "An audio folder (class sub-folders), a saved dataset or a Hub dataset id."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default="test", metadata={"help": "Evaluation split; empty to skip evaluation."})
    audio_column: str = field(default="audio")
    label_column: str = field(default="label", metadata={"help": "Class index (single-label) or list of indices."})
    multi_label: bool = field(default=False, metadata={"help": "Multi-label (AudioSet-style) targets, sigmoid + BCE."})
    max_length_seconds: float = field(default=10.0, metadata={"help": "Random crop length of training clips."})
    eval_max_length_seconds: float | None = field(default=None, metadata={"help": "Crop of evaluation clips (None: whole)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta(alpha, alpha); 0 disables (paper: 0.8)."})
    time_mask_frames: int = field(default=0, metadata={"help": "Max width of each time mask, in frames (0 = off)."})
    num_time_masks: int = field(default=2)
    freq_mask_bins: int = field(default=0, metadata={"help": "Max width of each frequency mask, in mel bins (0 = off)."})
    num_freq_masks: int = field(default=2)
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


def label_names(dataset, label_column: str, multi_label: bool) -> list[str]:
    """Class names from the dataset's ClassLabel feature (or indices as names when the column is plain ints)."""
    feature = dataset.features[label_column]
    inner = getattr(feature, "feature", feature) if multi_label else feature
    names = getattr(inner, "names", None)
    if names:
        return list(names)
    values = dataset[label_column]
    if multi_label:
        values = [index for row in values for index in row]
    return [str(index) for index in range(int(max(values)) + 1)]


def layer_id(parameter_name: str, num_layers: int) -> int:
    """0 for the patch embedding and position convolution, i + 1 for encoder layer i, num_layers + 1 for the head."""
    if "encoder.layers." in parameter_name:
        return int(parameter_name.split("encoder.layers.")[1].split(".")[0]) + 1
    if parameter_name.startswith("beats.") and "encoder.layer_norm" not in parameter_name:
        return 0
    return num_layers + 1


def layer_wise_parameter_groups(model, learning_rate: float, weight_decay: float, decay: float) -> list[dict]:
    """AdamW groups with lr * decay ** (num_layers + 1 - layer_id); no weight decay on biases, norms and scalars."""
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = layer_id(name, num_layers)
        no_decay = parameter.ndim < 2 or "layer_norm" in name or name.endswith("gru_rel_pos_const")
        group = groups.setdefault(
            (depth, no_decay),
            {"params": [], "lr": learning_rate * decay ** (num_layers + 1 - depth),
             "weight_decay": 0.0 if no_decay else weight_decay},
        )
        group["params"].append(parameter)
    return list(groups.values())


def spec_augment(features, attention_mask, max_time, num_time, max_freq, num_freq, generator=None):
    """Zero random time and frequency bands of each clip (time masks only inside the clip's valid frames)."""
    batch_size, num_frames, num_bins = features.shape
    device = features.device
    keep = torch.ones_like(features, dtype=torch.bool)
    frames = torch.arange(num_frames, device=device)
    bins = torch.arange(num_bins, device=device)
    lengths = attention_mask.sum(-1) if attention_mask is not None else torch.full((batch_size,), num_frames, device=device)

    def bands(count, max_width, limits, positions):
        for _ in range(count):
            width = (torch.rand(batch_size, device=device, generator=generator) * (max_width + 1)).long()
            start = (torch.rand(batch_size, device=device, generator=generator) * (limits - width).clamp(min=1)).long()
            yield (positions[None] >= start[:, None]) & (positions[None] < (start + width)[:, None])

    for band in bands(num_time if max_time else 0, max_time, lengths, frames):
        keep &= ~band[:, :, None]
    for band in bands(num_freq if max_freq else 0, max_freq, torch.full_like(lengths, num_bins), bins):
        keep &= ~band[:, None, :]
    return features * keep


class AudioClassificationTrainer(Trainer):
    """Trainer with the fine-tuning recipe: batch augmentation in `compute_loss` and layer-wise lr decay."""

    def __init__(self, *args, data_args: DataArguments, layer_decay: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_args = data_args
        self.layer_decay = layer_decay

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.layer_decay != 1.0:
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            groups = layer_wise_parameter_groups(
                self.model, self.args.learning_rate, self.args.weight_decay, self.layer_decay
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer
        return super().create_optimizer()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.data_args
        if not model.training or (args.mixup_alpha <= 0 and not args.time_mask_frames and not args.freq_mask_bins):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        features, mask = inputs["input_features"], inputs.get("attention_mask")
        if args.time_mask_frames or args.freq_mask_bins:
            features = spec_augment(
                features, mask, args.time_mask_frames, args.num_time_masks, args.freq_mask_bins, args.num_freq_masks
            )
        num_labels = model.config.num_labels
        targets = labels.float() if args.multi_label else F.one_hot(labels, num_labels).float()
        if args.mixup_alpha > 0:
            lam = float(np.random.beta(args.mixup_alpha, args.mixup_alpha))
            permutation = torch.randperm(features.shape[0], device=features.device)
            features = lam * features + (1 - lam) * features[permutation]
            targets = lam * targets + (1 - lam) * targets[permutation]
            if mask is not None:
                inputs["attention_mask"] = torch.maximum(mask, mask[permutation])
        inputs["input_features"] = features
        outputs = model(**inputs)
        logits = outputs.logits.float()
        if args.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            loss = -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        return (loss, outputs) if return_outputs else loss


def metrics_function(multi_label: bool):
    metric = load_metric("mean_average_precision" if multi_label else "accuracy")

    def compute_metrics(eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        if multi_label:
            scores = 1.0 / (1.0 + np.exp(-logits))
            return metric.compute(predictions=scores.tolist(), references=eval_prediction.label_ids.astype(int).tolist())
        return metric.compute(predictions=logits.argmax(-1), references=eval_prediction.label_ids)

    return compute_metrics


def _subset(dataset, limit: int | None):
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


# How the model is computed or loaded, not what it learns: these may change when a run is resumed.
_FREE_MODEL_ARGUMENTS = ("trust_remote_code", "attn_implementation")
PROBE_RESULTS = "linear_probe_results.json"


def finetuning_settings(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> dict:
    """The settings that define a fine-tuning run: the model and data arguments (but how the model is computed), what
    the run does (train, evaluate) and the fixed training settings."""
    settings = {key: value for key, value in asdict(model_args).items() if key not in _FREE_MODEL_ARGUMENTS}
    settings.update(asdict(data_args), do_train=training_args.do_train, do_eval=training_args.do_eval)
    settings.update(training_settings(training_args))
    settings["model_name_or_path"] = path_setting(model_args.model_name_or_path)
    settings["dataset"] = path_setting(data_args.dataset)
    return settings


def run_finetuning(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Fine-tune, evaluate and save to `training_args.output_dir`; returns the final metrics (the recorded ones, with
    nothing written, when the run in that folder has already finished). Raises `RunFolderError` when the folder holds
    another run."""
    output_dir = training_args.output_dir

    def build(start) -> TrainingJob:
        train_data = load_audio_dataset(
            data_args.dataset, split=data_args.train_split, audio_column=data_args.audio_column
        )
        eval_data = None
        if data_args.eval_split:
            eval_data = load_audio_dataset(
                data_args.dataset, split=data_args.eval_split, audio_column=data_args.audio_column
            )
        names = label_names(train_data, data_args.label_column, data_args.multi_label)
        model, feature_extractor = _classifier(model_args, data_args, names)
        train_clips = training_clips(
            train_data, training_args, crop_seconds=data_args.max_length_seconds,
            audio_column=data_args.audio_column, label_column=data_args.label_column,
            max_train_samples=data_args.max_train_samples,
        )
        eval_clips = None
        if eval_data is not None:
            # Scored sets never substitute a clip for an unreadable one: bad files are left out and counted.
            eval_clips = AudioClips(
                _subset(eval_data, data_args.max_eval_samples),
                crop_seconds=data_args.eval_max_length_seconds,
                label_column=data_args.label_column,
                audio_column=data_args.audio_column,
                seed=0,
                replace_bad=False,
            ).without_unreadable(description=f"checking the {data_args.eval_split} clips")
        if training_args.push_to_hub:
            # The pushed repo carries our source files so that it loads with trust_remote_code=True anywhere.
            model.config.register_for_auto_class()
            model.register_for_auto_class("AutoModelForAudioClassification")
            feature_extractor.register_for_auto_class()
        trainer = AudioClassificationTrainer(
            model=model,
            args=training_args,
            train_dataset=train_clips,
            eval_dataset=eval_clips,
            data_collator=AudioFeatureCollator(feature_extractor, num_labels=len(names)),
            processing_class=feature_extractor,
            compute_metrics=metrics_function(data_args.multi_label),
            data_args=data_args,
            layer_decay=model_args.layer_decay,
        )

        def linear_probe_head() -> dict:
            """LP-FT's first step, once per run: a resumed run starts from a checkpoint's head and keeps the scores
            recorded when the probe was fitted."""
            probe_path = os.path.join(output_dir, PROBE_RESULTS)
            if start.checkpoint is not None:
                if not os.path.isfile(probe_path):
                    return {}
                with open(probe_path) as handle:
                    return json.load(handle)
            model.to(training_args.device)
            probe = initialise_head_from_linear_probe(model, train_clips, trainer.data_collator)
            metrics = dict(
                linear_probe_weight_decay=probe.weight_decay, linear_probe_train_accuracy=probe.train_accuracy
            )
            if eval_clips is not None:  # the probe alone, before any fine-tuning
                metrics.update(trainer.evaluate(metric_key_prefix="linear_probe"))
            if trainer.is_world_process_zero():
                atomic_write_json(probe_path, finite_metrics(metrics), sort_keys=True)
            return metrics

        def finish(metrics: dict) -> dict:
            added = {}
            if eval_clips is not None:
                added.update(trainer.evaluate())
                added["eval_unreadable_files_left_out"] = sum(eval_clips.dropped.values())
            if training_args.dataloader_num_workers == 0:  # with workers, each worker counts in its own copy
                added["train_unreadable_files_replaced"] = train_clips.skipped
            return added

        source = "random initialisation" if model_args.from_scratch else model_args.model_name_or_path
        banner = (
            f"fine-tuning {model.num_parameters() / 1e6:.2f}M parameters from {source} for {len(names)} classes on "
            f"{clip_count(train_clips)}"
        )
        return TrainingJob(
            trainer,
            banner,
            train=training_args.do_train or not training_args.do_eval,
            before_training=linear_probe_head if model_args.linear_probe_head else None,
            finish=finish,
            results_name="all_results.json",
            after_results=trainer.push_to_hub if training_args.push_to_hub else None,
        )

    settings = finetuning_settings(model_args, data_args, training_args)
    return run_training("finetune", settings, training_args, build)


def _classifier(model_args: ModelArguments, data_args: DataArguments, names: list[str]):
    """The classifier to fine-tune (pre-trained, or the same architecture from random initialisation) with
    `len(names)` classes, and its feature extractor."""
    id2label = dict(enumerate(names))
    model_source = resolve_source(model_args.model_name_or_path)
    feature_extractor = AutoFeatureExtractor.from_pretrained(
        model_source, trust_remote_code=model_args.trust_remote_code
    )
    overrides = dict(
        num_labels=len(names),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        problem_type="multi_label_classification" if data_args.multi_label else "single_label_classification",
        use_weighted_layer_sum=model_args.use_weighted_layer_sum,
        classifier_pooling=model_args.classifier_pooling,
    )
    if model_args.classifier_dropout is not None:
        overrides["classifier_dropout"] = model_args.classifier_dropout
    if model_args.from_scratch:
        config = AutoConfig.from_pretrained(
            model_source, trust_remote_code=model_args.trust_remote_code, **overrides
        )
        config._attn_implementation = model_args.attn_implementation
        model = AutoModelForAudioClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)
    else:
        model = AutoModelForAudioClassification.from_pretrained(
            model_source,
            trust_remote_code=model_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            ignore_mismatched_sizes=True,  # a fine-tuned checkpoint's head has another number of classes
            **overrides,
        )
    if model_args.freeze_base_model:
        model.freeze_base_model()
    elif model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model, feature_extractor


def main(argv: list[str] | None = None) -> int:
    """The fine-tuning command line (`examples/run_audio_classification.py`)."""
    return command_main(
        "run_audio_classification.py", (ModelArguments, DataArguments, TrainingArguments), run_finetuning, argv,
        summary=metrics_starting_with("eval_", "linear_probe_"),
    )


__all__ = [
    "ModelArguments", "DataArguments", "AudioClassificationTrainer", "finetuning_settings", "run_finetuning", "main"
]
