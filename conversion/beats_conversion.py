"""Turn official BEATs checkpoints (`{'cfg', 'model'[, 'label_dict']}` files, microsoft/unilm) into beats_hf models.

Small importable functions; `convert_beats_original_to_hf.py` is the command line on top of them. Files are read with
`torch.load(weights_only=True)` only: a checkpoint can never run code here.
"""

import csv
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError

from beats_hf import (
    BeatsConfig,
    BeatsForAudioClassification,
    BeatsForAudioTokenization,
    BeatsModel,
    BeatsTokenizationConfig,
)

AUDIOSET_LABELS_CSV = Path(__import__("beats_hf").__file__).parent / "data" / "audioset_class_labels_indices.csv"

# Official cfg key -> BeatsConfig argument.
_CONFIG_KEYS = {
    "input_patch_size": "patch_size",
    "embed_dim": "patch_embedding_dim",
    "conv_bias": "patch_embedding_bias",
    "encoder_layers": "num_hidden_layers",
    "encoder_embed_dim": "hidden_size",
    "encoder_ffn_embed_dim": "intermediate_size",
    "encoder_attention_heads": "num_attention_heads",
    "activation_fn": "hidden_act",
    "layer_wise_gradient_decay_ratio": "layer_wise_gradient_decay_ratio",
    "layer_norm_first": "layer_norm_first",
    "deep_norm": "deep_norm",
    "dropout": "hidden_dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "encoder_layerdrop": "layerdrop",
    "dropout_input": "input_dropout",
    "conv_pos": "num_conv_pos_embeddings",
    "conv_pos_groups": "num_conv_pos_embedding_groups",
    "relative_position_embedding": "relative_position_bias",
    "num_buckets": "num_buckets",
    "max_distance": "max_bucket_distance",
    "gru_rel_pos": "gated_relative_position_bias",
    "predictor_dropout": "classifier_dropout",
    "quant_n": "codebook_size",
    "quant_dim": "codebook_dim",
}
# Keys that carry no architecture information for us.
_IGNORED_CONFIG_KEYS = {"finetuned_model", "predictor_class"}
# Defaults of the official BEATsConfig/TokenizersConfig, applied before the checkpoint's cfg (as the official code).
_OFFICIAL_DEFAULTS = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 1.0, "layer_norm_first": False, "deep_norm": False, "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": False, "num_buckets": 320,
    "max_distance": 1280, "gru_rel_pos": False, "predictor_dropout": 0.1, "quant_n": 1024, "quant_dim": 256,
}
# Official tokenizer training state: read and checked, not part of the inference model.
_TOKENIZER_TRAINING_STATE = (
    "quantize.embedding.cluster_size",
    "quantize.embedding.embed_avg",
    "quantize.embedding.initted",
    "quantize.cluster_size",
)

# (official regex, beats_hf replacement) applied in order; the encoder keys get the head's prefix afterwards.
_ENCODER_KEY_RULES = [
    (r"^patch_embedding\.", "patch_embeddings.projection."),
    (r"^layer_norm\.", "patch_embeddings.layer_norm."),
    (r"^post_extract_proj\.", "patch_embeddings.post_projection."),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.layers\.0\.self_attn\.relative_attention_bias\.weight$",
     "encoder.relative_position_bias.rel_attn_embed.weight"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", r"encoder.layers.\1.self_attn.gru_rel_pos_linear."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", r"encoder.layers.\1.self_attn.gru_rel_pos_const"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.", r"encoder.layers.\1.self_attn.\2."),
    (r"^encoder\.layers\.(\d+)\.(fc1|fc2)\.", r"encoder.layers.\1.feed_forward.\2."),
    (r"^encoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.", r"encoder.layers.\1.\2."),
]
_HEAD_KEY_RULES = [
    (r"^predictor\.", "classifier."),
    (r"^quantize_layer\.(0|2)\.", r"quantizer.projection.\1."),
    (r"^quantize\.embedding\.weight$", "quantizer.codebook"),
]
_SHARED_BIAS_COPY = re.compile(r"^encoder\.layers\.([1-9]\d*)\.self_attn\.relative_attention_bias\.weight$")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why."""


class ConversionWarning(UserWarning):
    """Something in a checkpoint that the conversion ignores or keeps as it is; the conversion goes on."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_load_error(error: Exception) -> str:
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"it holds a pickled Python object ({refused.group(1)}) that the safe loader refuses. beats_hf reads "
            "checkpoints with torch.load(weights_only=True) only, so nothing in a file can run code. If you trust the "
            "file, re-save it as plain data: {'cfg': dict, 'model': state_dict[, 'label_dict': dict]}."
        )
    if isinstance(error, EOFError):
        return "the file is empty or truncated (its data ends early)."
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = detail.group(1) if detail else (text.strip().splitlines() or [type(error).__name__])[0]
    detail = detail.split(". ")[0].rstrip(".")[:160]  # the first sentence; torch appends advice that does not apply
    if "PytorchStreamReader" in text:
        return f"the file is truncated or corrupted: PyTorch cannot read its zip archive ({detail})."
    return f"not a PyTorch checkpoint, or a truncated one ({type(error).__name__}: {detail})."


def load_official_checkpoint(path: str | os.PathLike) -> dict:
    """Read an official checkpoint file safely (`weights_only=True`, to the CPU); any failure is a ConversionError."""
    path = Path(path)
    if not path.exists():
        raise ConversionError("no such file.")
    if not path.is_file():
        raise ConversionError("not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for bad files; all mean "cannot read this"
        raise ConversionError(_describe_load_error(error)) from error


def _first_keys(mapping: dict, count: int = 8) -> list[str]:
    return [str(key) for key in list(mapping)[:count]]


def check_official_layout(checkpoint: object) -> None:
    """Raise a ConversionError naming what was found unless `checkpoint` looks like `{'cfg', 'model'[, 'label_dict']}`
    with a BEATs state dict."""
    expected = "an official BEATs checkpoint is a dict {'cfg': dict, 'model': state_dict[, 'label_dict': dict]}"
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"not a BEATs checkpoint: the file holds a {type(checkpoint).__name__}; {expected}.")
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise ConversionError(
            f"not a BEATs checkpoint: the file is a bare state dict of {len(checkpoint)} tensors (first keys: "
            f"{_first_keys(checkpoint)}); {expected}."
        )
    missing = [key for key in ("cfg", "model") if key not in checkpoint]
    if missing:
        raise ConversionError(
            f"not a BEATs checkpoint: no {missing} entry; top-level keys found: {_first_keys(checkpoint, 12)}; "
            f"{expected}."
        )
    cfg, state_dict = checkpoint["cfg"], checkpoint["model"]
    if not isinstance(cfg, dict):
        raise ConversionError(f"not a BEATs checkpoint: 'cfg' is a {type(cfg).__name__}, not a dict.")
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ConversionError("not a BEATs checkpoint: 'model' is not a state dict (a dict of tensors).")
    if "patch_embedding.weight" not in state_dict:
        raise ConversionError(
            "not a BEATs checkpoint: the 'model' state dict has no patch_embedding.weight; its first keys are "
            f"{_first_keys(state_dict)}."
        )
    extra = sorted(str(key) for key in checkpoint if key not in ("cfg", "model", "label_dict"))
    if extra:
        message = f"Ignoring top-level checkpoint entries unknown to beats_hf: {extra}"
        warnings.warn(message, ConversionWarning, stacklevel=2)


def checkpoint_kind(checkpoint: dict) -> str:
    """'tokenizer', 'finetuned' or 'pretrained', from the checkpoint's cfg and tensors."""
    state_dict = checkpoint["model"]
    if any(key.startswith("quantize") for key in state_dict):
        return "tokenizer"
    if checkpoint["cfg"].get("finetuned_model") or "predictor.weight" in state_dict:
        return "finetuned"
    return "pretrained"


def audioset_display_names() -> dict[str, str]:
    """AudioSet MID -> display name, from the shipped `class_labels_indices.csv`."""
    with open(AUDIOSET_LABELS_CSV, newline="", encoding="utf-8") as handle:
        return {row["mid"]: row["display_name"] for row in csv.DictReader(handle)}


def id2label_from_label_dict(label_dict: dict, num_labels: int) -> dict[int, str]:
    """The checkpoint's own index order, MIDs turned into AudioSet display names (unknown MIDs kept as they are)."""
    names = audioset_display_names()
    if sorted(int(index) for index in label_dict) != list(range(num_labels)):
        indices = sorted(label_dict)[:5]
        raise ConversionError(f"label_dict has indices {indices}... but the head has {num_labels} outputs.")
    ordered = sorted(label_dict.items(), key=lambda item: int(item[0]))
    return {int(index): names.get(mid, str(mid)) for index, mid in ordered}


def config_from_official(checkpoint: dict) -> BeatsConfig:
    """The beats_hf configuration matching an official checkpoint's cfg (official defaults filled in first)."""
    kind = checkpoint_kind(checkpoint)
    cfg = {**_OFFICIAL_DEFAULTS, **checkpoint["cfg"]}
    unknown = sorted(set(checkpoint["cfg"]) - set(_CONFIG_KEYS) - _IGNORED_CONFIG_KEYS)
    if unknown:
        warnings.warn(f"Ignoring cfg keys unknown to beats_hf: {unknown}", ConversionWarning, stacklevel=2)
    kwargs = {ours: cfg[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in cfg}
    state_dict = checkpoint["model"]
    kwargs["num_mel_bins"] = 128  # fixed by the official preprocessing
    try:
        if kind == "tokenizer":
            return BeatsTokenizationConfig(**kwargs)
        for key in ("codebook_size", "codebook_dim"):
            kwargs.pop(key)
        if kind == "finetuned":
            if "predictor.weight" not in state_dict:
                raise ConversionError("cfg says finetuned_model=True but the state dict has no predictor.weight.")
            num_labels = state_dict["predictor.weight"].shape[0]
            label_dict = checkpoint.get("label_dict")
            id2label = id2label_from_label_dict(label_dict, num_labels) if label_dict else None
            return BeatsConfig(
                **kwargs,
                num_labels=num_labels,
                id2label=id2label,
                label2id={name: index for index, name in id2label.items()} if id2label else None,
                problem_type="multi_label_classification",
            )
        return BeatsConfig(**kwargs)
    except ConversionError:
        raise
    except (TypeError, ValueError, StrictDataclassError) as error:  # BeatsConfig's own validation
        raise ConversionError(f"the checkpoint's cfg describes no valid BEATs model: {error}") from error


def model_class_for(kind: str) -> type:
    classes = {
        "pretrained": BeatsModel,
        "finetuned": BeatsForAudioClassification,
        "tokenizer": BeatsForAudioTokenization,
    }
    return classes[kind]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def official_names(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, str]:
    """beats_hf key -> the official key it comes from (for error messages that name both)."""
    prefix = "" if kind == "pretrained" else "beats."
    names = {}
    for key in state_dict:
        new_key = _rename(key, _ENCODER_KEY_RULES)
        if new_key is not None:
            names[prefix + new_key] = key
        elif kind != "pretrained" and (new_key := _rename(key, _HEAD_KEY_RULES)) is not None:
            names[new_key] = key
    return names


def convert_state_dict(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Official tensors -> beats_hf tensors (keys of the model class for `kind`).

    Every official tensor is either mapped or accounted for (the per-layer aliases of the shared relative position
    table, checked equal to layer 0's; the tokenizer's EMA training state); anything else raises.
    """
    prefix = "" if kind == "pretrained" else "beats."
    converted, unused = {}, []
    shared_key = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    shared_table = state_dict.get(shared_key)
    for key, tensor in state_dict.items():
        if _SHARED_BIAS_COPY.match(key):
            if shared_table is None:
                raise ConversionError(f"{key} is present but the table it copies, {shared_key}, is missing.")
            if tensor.shape != shared_table.shape or not torch.equal(tensor, shared_table):
                raise ConversionError(f"{key} differs from layer 0's shared relative position table.")
            continue
        if kind == "tokenizer" and key in _TOKENIZER_TRAINING_STATE:
            continue
        new_key = _rename(key, _ENCODER_KEY_RULES)
        if new_key is not None:
            converted[prefix + new_key] = tensor
            continue
        new_key = _rename(key, _HEAD_KEY_RULES) if kind != "pretrained" else None
        if new_key is None:
            unused.append(key)
            continue
        converted[new_key] = tensor
    if unused:
        raise ConversionError(f"Tensors of the checkpoint that beats_hf does not know: {unused}")
    initted = state_dict.get("quantize.embedding.initted") if kind == "tokenizer" else None
    if initted is not None and float(initted.reshape(-1)[0]) != 1.0:
        warnings.warn(
            "quantize.embedding.initted is 0: the official code would overwrite this codebook by k-means on the "
            "first batch it sees; the stored codebook is converted as it is.",
            ConversionWarning,
            stacklevel=2,
        )
    return converted


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], sources: dict[str, str] | None = None
) -> None:
    """Load with no missing, unexpected or mis-shaped tensor; every problem is named (with the official name from
    `sources` where one is known)."""
    sources = sources or {}

    def name(key: str) -> str:
        return f"{key} (official {sources[key]})" if key in sources else key

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(name(key) for key in set(state_dict) - set(expected))
    mismatched = [
        f"{name(key)}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors (beats_hf names): {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ConversionError("The checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def convert_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """An official checkpoint dict -> the matching beats_hf model in eval mode, float32."""
    check_official_layout(checkpoint)
    kind = checkpoint_kind(checkpoint)
    config = config_from_official(checkpoint)
    model = model_class_for(kind)(config)
    state_dict = checkpoint["model"]
    load_state_dict_strict(model, convert_state_dict(state_dict, kind), official_names(state_dict, kind))
    return model.eval()


def generated_clip(seconds: float = 3.0, sampling_rate: int = 16000) -> np.ndarray:
    """A fixed test clip made here (no audio files needed): three amplitude-modulated tones and quiet noise."""
    time = np.arange(int(seconds * sampling_rate)) / sampling_rate
    clip = sum(0.2 * np.sin(2 * np.pi * f * time) * (1 + np.sin(2 * np.pi * m * time)) / 2
               for f, m in ((220.0, 0.5), (660.0, 2.0), (1870.0, 3.0)))
    clip = clip + 0.02 * np.random.default_rng(0).standard_normal(time.shape)
    return clip.astype(np.float32)


def main_output(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The output a user of this model type reads: logits, token ids or the last hidden state."""
    with torch.no_grad():
        outputs = model(**inputs)
    if isinstance(model, BeatsForAudioClassification):
        return outputs.logits
    if isinstance(model, BeatsForAudioTokenization):
        if not torch.isfinite(outputs.embeddings).all():
            raise ConversionError("self-check failed: the tokenizer's projected embeddings are not finite.")
        return outputs.token_ids
    return outputs.last_hidden_state


@dataclass
class SelfCheck:
    """The converted model's output on `generated_clip()`, and a one-line description for the model card."""

    raw_audio: np.ndarray
    inputs: dict
    output: torch.Tensor
    summary: str


def self_check(model: torch.nn.Module, feature_extractor) -> SelfCheck:
    """Run the converted model on a generated clip and require sane outputs. A smoke test, not parity: parity with
    the official code is tested on the official reference data (tests/test_conversion.py, tests/test_parity.py)."""
    seconds = 3.0
    raw_audio = generated_clip(seconds)
    inputs = feature_extractor(raw_audio, sampling_rate=16000, return_tensors="pt")
    output = main_output(model, inputs)
    if isinstance(model, BeatsForAudioTokenization):
        codebook_size = model.config.codebook_size
        if output.min() < 0 or output.max() >= codebook_size:
            raise ConversionError(f"self-check failed: token ids outside [0, {codebook_size}).")
        what = f"token ids in [0, {codebook_size})"
    else:
        if not torch.isfinite(output).all():
            raise ConversionError(f"self-check failed: {(~torch.isfinite(output)).sum().item()} non-finite outputs.")
        what = "finite logits" if isinstance(model, BeatsForAudioClassification) else "a finite last_hidden_state"
    summary = f"a generated {seconds:g} s clip gives {what} of shape {tuple(output.shape)}"
    return SelfCheck(raw_audio=raw_audio, inputs=dict(inputs), output=output, summary=summary)
