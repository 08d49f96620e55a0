"""Configurations of BEATs models: the encoder family, the acoustic tokenizer and the random-projection tokenizer."""

import copy
from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

HiddenAct = Literal["gelu", "gelu_accurate", "relu", "tanh", "linear"]
ClassifierPooling = Literal["mean", "frequency_bands"]
CLASSIFIER_POOLINGS = get_args(ClassifierPooling)


# The transformers v5 style (as ASTConfig): the arguments are dataclass fields whose types `@strict` checks on every
# assignment, and the checks between fields are `validate_*` methods that run after `__init__` and before
# `save_pretrained`. A failed check raises `huggingface_hub.errors.StrictDataclassFieldValidationError` (a wrong type)
# or `StrictDataclassClassValidationError` (a bad value), with the field and the reason in the message.
@strict
class BeatsConfig(PretrainedConfig):
    r"""
    Configuration of a BEATs encoder ([`BeatsModel`]) and of the models built on it ([`BeatsForAudioClassification`],
    [`BeatsForAudioFrameClassification`], [`BeatsForMaskedAudioModeling`]). The defaults describe the released base
    model (`BEATs_iter3_plus_AS2M.pt` and its siblings): 12 post-LN DeepNorm layers, 768 wide, 12 heads, gated bucketed
    relative position bias (320 buckets, maximum distance 800), convolutional position embedding (128 taps, 16 groups).

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the input fbank (`input_features` is `(batch_size, frames, num_mel_bins)`).
        patch_size (`int`, *optional*, defaults to 16):
            Height and width of the square fbank patches (official `input_patch_size`).
        patch_embedding_dim (`int`, *optional*, defaults to 512):
            Channels of the patch embedding (official `embed_dim`). A linear projection to `hidden_size` follows when
            the two differ.
        patch_embedding_bias (`bool`, *optional*, defaults to `False`):
            Whether the patch-embedding convolution has a bias (official `conv_bias`).
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the Transformer (official `encoder_embed_dim`).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of Transformer layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Inner width of the feed-forward blocks.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation: one of `"gelu"` (exact, computed in float32 as the official code does),
            `"gelu_accurate"` (tanh approximation), `"relu"`, `"tanh"`, `"linear"`.
        layer_norm_first (`bool`, *optional*, defaults to `False`):
            Pre-LN layers (with a final LayerNorm) instead of the released post-LN layers.
        deep_norm (`bool`, *optional*, defaults to `True`):
            DeepNorm: residuals scaled by (2N)^(1/4) and the matching initialisation. Post-LN only.
        hidden_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the encoder input and on the residual branches (official `dropout`).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        activation_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the feed-forward activation.
        input_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the patch projection (official `dropout_input`).
        layerdrop (`float`, *optional*, defaults to 0.05):
            Probability of skipping a whole layer in training (official `encoder_layerdrop`).
        layer_wise_gradient_decay_ratio (`float`, *optional*, defaults to 0.6):
            Gradients flowing down into layer i are scaled by this ratio once per layer above it (training only).
        num_conv_pos_embeddings (`int`, *optional*, defaults to 128):
            Kernel size of the convolutional position embedding (official `conv_pos`).
        num_conv_pos_embedding_groups (`int`, *optional*, defaults to 16):
            Groups of that convolution (official `conv_pos_groups`).
        relative_position_bias (`bool`, *optional*, defaults to `True`):
            Whether attention adds a T5-style bucketed relative position bias (official `relative_position_embedding`).
        gated_relative_position_bias (`bool`, *optional*, defaults to `True`):
            Whether each layer gates that bias per query (official `gru_rel_pos`).
        num_buckets (`int`, *optional*, defaults to 320):
            Relative position buckets, half per direction.
        max_bucket_distance (`int`, *optional*, defaults to 800):
            Distance (in patches) at which the logarithmic buckets saturate (official `max_distance`).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the classification head (official `predictor_dropout`).
        use_weighted_layer_sum (`bool`, *optional*, defaults to `False`):
            Classify from a learned softmax-weighted sum of all hidden states instead of the last one.
        classifier_pooling (`str`, *optional*, defaults to `"mean"`):
            What the classification head sees. `"mean"`: the mean over the valid patches (the official head).
            `"frequency_bands"`: for each of the `num_frequency_patches` frequency bands, the mean and standard
            deviation over the clip's valid time rows, concatenated (`2 * num_frequency_patches * hidden_size`
            features). BEATs has no absolute position embedding, so the plain mean mixes all bands; keeping them apart
            keeps the spectral envelope, which matters for timbre tasks such as instrument recognition.
        num_target_codes (`int`, *optional*, defaults to 1024):
            Size of the label vocabulary predicted in masked audio modeling (the tokenizer's codebook size).
        predictor_num_layers (`int`, *optional*, defaults to 3):
            Transformer layers of the masked-audio-modeling label predictor.
        predictor_hidden_size (`int`, *optional*):
            Width of the label predictor; the encoder outputs are projected to it (as MAE's decoder). Defaults to
            `hidden_size` (no projection). A narrower predictor makes a pre-training step cheaper; the `base`
            pre-training preset uses 512.
        predictor_num_attention_heads (`int`, *optional*):
            Attention heads of the label predictor. Defaults to `num_attention_heads`.
        predictor_intermediate_size (`int`, *optional*):
            Feed-forward width of the label predictor. Defaults to `intermediate_size`.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the masked-audio-modeling cross-entropy.
    """

    model_type = "beats_hf"

    num_mel_bins: int = 128
    patch_size: int = 16
    patch_embedding_dim: int = 512
    patch_embedding_bias: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: HiddenAct = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    hidden_dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    input_dropout: float | int = 0.0
    layerdrop: float | int = 0.05
    layer_wise_gradient_decay_ratio: float | int = 0.6
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    relative_position_bias: bool = True
    gated_relative_position_bias: bool = True
    num_buckets: int = 320
    max_bucket_distance: int = 800
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    classifier_dropout: float | int = 0.0
    use_weighted_layer_sum: bool = False
    classifier_pooling: ClassifierPooling = "mean"
    num_target_codes: int = 1024
    predictor_num_layers: int = 3
    predictor_hidden_size: int | None = None
    predictor_num_attention_heads: int | None = None
    predictor_intermediate_size: int | None = None
    label_smoothing: float | int = 0.0

    @property
    def num_frequency_patches(self) -> int:
        """Patches per row of 16 frames (8 for 128 mel bins)."""
        return self.num_mel_bins // self.patch_size

    def validate_architecture(self) -> None:
        """Sizes that must be positive and the divisibilities the layers need."""
        super().validate_architecture()
        for name in (
            "num_mel_bins",
            "patch_size",
            "patch_embedding_dim",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
            "num_target_codes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.num_mel_bins % self.patch_size:
            raise ValueError(
                f"`num_mel_bins` ({self.num_mel_bins}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_conv_pos_embedding_groups` "
                f"({self.num_conv_pos_embedding_groups})."
            )
        if self.deep_norm and self.layer_norm_first:
            raise ValueError(
                "`deep_norm=True` needs post-LN layers: set `layer_norm_first=False` or `deep_norm=False`."
            )

    def validate_relative_position_bias(self) -> None:
        if self.relative_position_bias:
            if self.num_buckets < 4 or self.num_buckets % 2:
                raise ValueError(f"`num_buckets` must be an even integer >= 4, got {self.num_buckets!r}.")
            if self.max_bucket_distance <= self.num_buckets // 4:
                raise ValueError(
                    f"`max_bucket_distance` ({self.max_bucket_distance}) must exceed num_buckets // 4 "
                    f"({self.num_buckets // 4}), where logarithmic bucketing starts."
                )
        elif self.gated_relative_position_bias:
            raise ValueError("`gated_relative_position_bias=True` needs `relative_position_bias=True`.")

    def validate_training(self) -> None:
        """Probabilities and ratios."""
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "input_dropout", "layerdrop",
                     "classifier_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1), got {value!r}.")
        if not 0.0 < self.layer_wise_gradient_decay_ratio <= 1.0:
            raise ValueError(
                f"`layer_wise_gradient_decay_ratio` must lie in (0, 1], got {self.layer_wise_gradient_decay_ratio!r}."
            )

    def validate_label_predictor(self) -> None:
        if self.predictor_num_layers < 0:
            raise ValueError(f"`predictor_num_layers` must be >= 0, got {self.predictor_num_layers!r}.")
        for name in ("predictor_hidden_size", "predictor_num_attention_heads", "predictor_intermediate_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")
        predictor = self.label_predictor_config()
        if predictor.hidden_size % predictor.num_attention_heads:
            raise ValueError(
                f"the label predictor's width ({predictor.hidden_size}) must be divisible by its number of heads "
                f"({predictor.num_attention_heads}): set `predictor_num_attention_heads`."
            )

    def label_predictor_config(self) -> "BeatsConfig":
        """This config with the label predictor's width, heads and feed-forward size as the layer sizes (itself when
        the predictor is as wide as the encoder)."""
        sizes = {
            "hidden_size": self.predictor_hidden_size,
            "num_attention_heads": self.predictor_num_attention_heads,
            "intermediate_size": self.predictor_intermediate_size,
        }
        changed = {name: value for name, value in sizes.items() if value is not None and value != getattr(self, name)}
        if not changed:
            return self
        predictor = copy.copy(self)
        predictor.__dict__.update(changed)
        return predictor


@strict
class BeatsTokenizationConfig(BeatsConfig):
    r"""
    Configuration of a BEATs acoustic tokenizer ([`BeatsForAudioTokenization`]): a BEATs encoder, a quantizer
    projection (Linear-Tanh-Linear to `codebook_dim`) and an L2-normalised codebook of `codebook_size` vectors. It takes
    every [`BeatsConfig`] argument plus the following ones.

    Args:
        codebook_size (`int`, *optional*, defaults to 1024):
            Number of codes (official `quant_n`).
        codebook_dim (`int`, *optional*, defaults to 256):
            Dimension of the codes (official `quant_dim`).
        codebook_decay (`float`, *optional*, defaults to 0.99):
            Exponential-moving-average decay of the codebook during tokenizer training.
        commitment_weight (`float`, *optional*, defaults to 1.0):
            Weight of the commitment loss during tokenizer training (official `beta`).
        estimator_num_layers (`int`, *optional*, defaults to 3):
            Transformer layers of the estimator that reconstructs the teacher from the quantized vectors (training
            only; the estimator is not part of the saved tokenizer).
    """

    model_type = "beats_hf_tokenization"

    codebook_size: int = 1024
    codebook_dim: int = 256
    codebook_decay: float = 0.99
    commitment_weight: float | int = 1.0
    estimator_num_layers: int = 3

    def validate_codebook(self) -> None:
        for name in ("codebook_size", "codebook_dim", "estimator_num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if not 0.0 < self.codebook_decay < 1.0:
            raise ValueError(f"`codebook_decay` must lie in (0, 1), got {self.codebook_decay!r}.")


@strict
class BeatsRandomProjectionConfig(PretrainedConfig):
    r"""
    Configuration of the iteration-1 random-projection tokenizer ([`BeatsRandomProjectionForAudioTokenization`],
    paper §3.2): each 16x16 patch of the normalised fbank is projected by a frozen random matrix and labelled with its
    nearest code in a frozen random L2-normalised codebook. Everything is drawn from `seed`.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128): Mel bins of the input fbank.
        patch_size (`int`, *optional*, defaults to 16): Patch height and width.
        codebook_size (`int`, *optional*, defaults to 1024): Number of codes.
        codebook_dim (`int`, *optional*, defaults to 256): Dimension of the projection and of the codes.
        seed (`int`, *optional*, defaults to 0): Seed of the projection and the codebook.
    """

    model_type = "beats_hf_random_projection"

    num_mel_bins: int = 128
    patch_size: int = 16
    codebook_size: int = 1024
    codebook_dim: int = 256
    seed: int = 0

    def validate_architecture(self) -> None:
        super().validate_architecture()
        for name in ("num_mel_bins", "patch_size", "codebook_size", "codebook_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.num_mel_bins % self.patch_size:
            raise ValueError(
                f"`num_mel_bins` ({self.num_mel_bins}) must be a multiple of `patch_size` ({self.patch_size})."
            )

    @property
    def num_frequency_patches(self) -> int:
        return self.num_mel_bins // self.patch_size


__all__ = ["BeatsConfig", "BeatsTokenizationConfig", "BeatsRandomProjectionConfig"]
