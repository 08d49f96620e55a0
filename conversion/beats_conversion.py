"""Turn official BEATs checkpoints (`{'cfg', 'model'[, 'label_dict']}` files from microsoft/unilm) into beats_hf models.

Small importable functions; `convert_beats_original_to_hf.py` is the command line on top of them.
"""

import csv
import re
import warnings
from pathlib import Path

import torch

from beats_hf import BeatsConfig, BeatsForAudioClassification, BeatsForAudioTokenization, BeatsModel
from beats_hf import BeatsTokenizationConfig

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
        raise ConversionError(f"label_dict has indices {sorted(label_dict)[:5]}... but the head has {num_labels} outputs.")
    return {int(index): names.get(mid, str(mid)) for index, mid in sorted(label_dict.items(), key=lambda kv: int(kv[0]))}


def config_from_official(checkpoint: dict) -> BeatsConfig:
    """The beats_hf configuration matching an official checkpoint's cfg (official defaults filled in first)."""
    kind = checkpoint_kind(checkpoint)
    cfg = {**_OFFICIAL_DEFAULTS, **checkpoint["cfg"]}
    unknown = sorted(set(checkpoint["cfg"]) - set(_CONFIG_KEYS) - _IGNORED_CONFIG_KEYS)
    if unknown:
        warnings.warn(f"Ignoring cfg keys unknown to beats_hf: {unknown}", stacklevel=2)
    kwargs = {ours: cfg[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in cfg}
    state_dict = checkpoint["model"]
    kwargs["num_mel_bins"] = 128  # fixed by the official preprocessing
    if kind == "tokenizer":
        return BeatsTokenizationConfig(**kwargs)
    for key in ("codebook_size", "codebook_dim"):
        kwargs.pop(key)
    if kind == "finetuned":
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


def model_class_for(kind: str) -> type:
    return {"pretrained": BeatsModel, "finetuned": BeatsForAudioClassification, "tokenizer": BeatsForAudioTokenization}[
        kind
    ]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def convert_state_dict(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Official tensors -> beats_hf tensors (keys of the model class for `kind`).

    Every official tensor is either mapped or accounted for (the per-layer aliases of the shared relative position
    table, checked equal to layer 0's; the tokenizer's EMA training state); anything else raises.
    """
    prefix = "" if kind == "pretrained" else "beats."
    converted, unused = {}, []
    shared_table = state_dict.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    for key, tensor in state_dict.items():
        if _SHARED_BIAS_COPY.match(key):
            if shared_table is None or not torch.equal(tensor, shared_table):
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
    if kind == "tokenizer" and "quantize.embedding.initted" in state_dict:
        if float(state_dict["quantize.embedding.initted"].reshape(-1)[0]) != 1.0:
            warnings.warn(
                "quantize.embedding.initted is 0: the official code would overwrite this codebook by k-means on the "
                "first batch it sees; the stored codebook is converted as it is.",
                stacklevel=2,
            )
    return converted


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load with no missing, unexpected or mis-shaped tensor; every problem is named."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ConversionError("The checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def convert_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """An official checkpoint dict -> the matching beats_hf model in eval mode, float32."""
    kind = checkpoint_kind(checkpoint)
    config = config_from_official(checkpoint)
    model = model_class_for(kind)(config)
    load_state_dict_strict(model, convert_state_dict(checkpoint["model"], kind))
    return model.eval()
