"""PyTorch BEATs: the encoder, its classification heads and the acoustic tokenizers.

Reads top to bottom: helpers -> patch embedding -> position embeddings -> attention -> layer -> encoder ->
PreTrainedModel -> BeatsModel -> heads -> tokenizers.

Conventions used throughout: `input_features` is the normalised Kaldi fbank `(batch, frames, num_mel_bins)` and its
`attention_mask` is frame-level (1 = real frame). Patches are ordered time-major (`p = row * 8 + band` for 128 mel
bins), and a patch is valid only when all its frames are valid, so each clip of a padded batch gives the outputs it
gives alone (the official code does not; see the README).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_beats import BeatsConfig, BeatsRandomProjectionConfig, BeatsTokenizationConfig

logger = logging.get_logger(__name__)

# Docstrings are written out, not generated with transformers' `@auto_docstring`. Tried on a BEATs head with
# transformers 5.24 (a model outside the library), it ran but documented it wrongly: the config class is looked up in
# transformers' own model tables, so the class docstring named the model class as its config and the forward's
# "Returns" read "depending on the configuration ([`None`])"; arguments left to its defaults got text for other
# modalities (`attention_mask` as a token mask, `labels` as masked-LM labels), so every argument had to be written out
# anyway; and it derives the model name from the file's path, which raised IndexError when the module came from a
# path of fewer than three parts (code run from stdin).


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def check_input_features(input_features, num_mel_bins: int) -> None:
    """Clear errors for inputs that would otherwise fail deep in a convolution or give silently wrong outputs."""
    if not isinstance(input_features, torch.Tensor):
        raise TypeError(f"`input_features` must be a torch.Tensor, got {type(input_features).__name__}.")
    shape = tuple(input_features.shape)
    if input_features.ndim in (1, 2) and shape[-1] != num_mel_bins:
        raise ValueError(
            f"`input_features` has shape {shape}, which looks like raw audio: BEATs takes the fbank features "
            f"`(batch_size, frames, {num_mel_bins})` that BeatsFeatureExtractor computes from 16 kHz waveforms."
        )
    if input_features.ndim != 3:
        raise ValueError(f"`input_features` must be `(batch_size, frames, {num_mel_bins})`, got shape {shape}.")
    if shape[-1] != num_mel_bins:
        hint = " (transposed? the mel bins come last)" if shape[1] == num_mel_bins else ""
        raise ValueError(
            f"`input_features` has {shape[-1]} mel bins in its last dimension but the model takes {num_mel_bins}"
            f"{hint}: use the model's own BeatsFeatureExtractor."
        )
    if not input_features.is_floating_point():
        raise ValueError(f"`input_features` must be floating point, got {input_features.dtype}.")


def warn_on_non_finite_weights(model: nn.Module) -> list[str]:
    """Warns (and returns) the names of the parameters and buffers holding NaN or Inf; meta tensors are skipped."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [
        name for name, tensor in tensors
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        logger.warning(f"{type(model).__name__} loaded with non-finite weights (NaN or Inf) in {shown}.")
    return bad


def check_patch_mask(patch_mask: torch.Tensor) -> None:
    """A clip with no valid patch would give outputs of exactly 0 (or a mean over nothing): an error instead. Skipped
    under torch.compile, where it would break the graph."""
    if torch.compiler.is_compiling():
        return
    empty = (~patch_mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"`attention_mask` leaves clip(s) {empty} without a single valid patch (a patch needs 16 consecutive "
            "valid frames, 0.175 s of audio): an all-zero attention mask is padding only. Drop those clips, or pass "
            "the mask that BeatsFeatureExtractor returns."
        )


def patch_mask_from_frame_mask(attention_mask: torch.Tensor, patch_size: int, frequency_patches: int) -> torch.Tensor:
    """Frame-level mask `(batch, frames)` -> patch-level bool mask `(batch, patches)`, True = valid.

    A row of `patch_size` frames is valid only if all its frames are; trailing frames that do not fill a row are
    dropped, as the patch convolution drops them. Each row holds `frequency_patches` patches (time-major order).
    """
    batch_size, num_frames = attention_mask.shape
    num_rows = num_frames // patch_size
    rows = attention_mask[:, : num_rows * patch_size].reshape(batch_size, num_rows, patch_size).bool().all(-1)
    return rows.repeat_interleave(frequency_patches, dim=1)


def relative_position_buckets(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5-style bidirectional buckets, computed exactly as the official code does (float32 log, truncation)."""
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    is_small = distance < max_exact
    # clamp(min=1) only avoids log(0) at the positions `is_small` selects anyway.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (half - max_exact)).long()
    if_large = if_large.clamp(max=half - 1)
    return buckets + torch.where(is_small, distance, if_large)


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


# torch 2.13's oneDNN bf16 grouped conv1d is wrong (relative error ~100 %, seen on Intel AVX-512/AMX CPUs) when a group
# has fewer than 16 channels: such position convolutions run in float32 under autocast or with bf16/fp16 weights. The
# released models (48 channels per group) and the `tiny` preset (16) are not affected.
_MIN_REDUCED_PRECISION_GROUP_CHANNELS = 16


def additive_key_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool `(batch, length)` (True = attend) -> additive `(batch, 1, 1, length)` mask: 0 or the dtype's minimum,
    finite so that a row with no valid key gives no NaN."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, torch.finfo(dtype).min)
    return mask[:, None, None, :]


def _gelu_float32(x: torch.Tensor) -> torch.Tensor:
    # The official FFN computes the exact GELU in float32 whatever the input dtype. PyTorch's bfloat16 GELU kernel
    # already computes in float32 and rounds once (the same bits), without two full-size casts.
    if x.dtype == torch.bfloat16:
        return F.gelu(x)
    return F.gelu(x.float()).type_as(x)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu_float32,
    "gelu_accurate": lambda x: F.gelu(x.float(), approximate="tanh").type_as(x),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BeatsModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, patches, hidden_size)`):
        Output of the last layer (after the final LayerNorm for pre-LN models). Positions where `patch_mask` is False
        hold padding and should be ignored.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The encoder input (after the convolutional position embedding, and its LayerNorm for post-LN models) and the
        output of every layer, each `(batch_size, patches, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention probabilities of every layer, `(batch_size, num_heads, patches, patches)` (eager attention only).
    patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`):
        True for the valid patches of each clip.
    position_ids (`torch.LongTensor` of shape `(batch_size, patches)`, *optional*):
        Only with `bool_masked_pos`: the position, in the full patch sequence, of each encoded (visible) patch.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    patch_mask: torch.BoolTensor | None = None
    position_ids: torch.LongTensor | None = None


@dataclass
class BeatsTokenizationOutput(ModelOutput):
    r"""
    token_ids (`torch.LongTensor` of shape `(batch_size, patches)`):
        Index of the nearest code of every patch; -100 (the cross-entropy `ignore_index`) at padded patches.
    patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`):
        True for the valid patches of each clip.
    quantized (`torch.FloatTensor` of shape `(batch_size, patches, codebook_dim)`):
        The chosen codes (zero at padded patches).
    embeddings (`torch.FloatTensor` of shape `(batch_size, patches, codebook_dim)`):
        The L2-normalised vectors that were quantized.
    """

    token_ids: torch.LongTensor | None = None
    patch_mask: torch.BoolTensor | None = None
    quantized: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


class BeatsPatchEmbeddings(nn.Module):
    """16x16 fbank patches -> Conv2d -> LayerNorm -> optional projection to `hidden_size`."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_mel_bins = config.num_mel_bins
        self.projection = nn.Conv2d(
            1,
            config.patch_embedding_dim,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_embedding_bias,
        )
        self.layer_norm = nn.LayerNorm(config.patch_embedding_dim, eps=config.layer_norm_eps)
        self.post_projection = (
            nn.Linear(config.patch_embedding_dim, config.hidden_size)
            if config.patch_embedding_dim != config.hidden_size
            else None
        )
        self.dropout = nn.Dropout(config.input_dropout)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        check_input_features(input_features, self.num_mel_bins)
        num_frames = input_features.shape[1]
        if num_frames < self.patch_size:
            raise ValueError(
                f"`input_features` has {num_frames} frames but BEATs needs at least {self.patch_size} (one patch row, "
                "0.175 s of 16 kHz audio)."
            )
        # (B, T, F) -> (B, C, T/16, F/16) -> (B, P, C) with time-major patch order.
        patches = self.projection(input_features.unsqueeze(1)).flatten(2).transpose(1, 2)
        patches = self.layer_norm(patches)
        if self.post_projection is not None:
            patches = self.post_projection(patches)
        return self.dropout(patches)


class BeatsPositionalConvEmbedding(nn.Module):
    """Grouped Conv1d over the patch sequence with weight norm (per kernel tap), 'same' padding for an even kernel
    (last output dropped), then GELU."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=config.num_conv_pos_embeddings,
            padding=config.num_conv_pos_embeddings // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove_last = config.num_conv_pos_embeddings % 2 == 0
        channels_per_group = config.hidden_size // config.num_conv_pos_embedding_groups
        self.float32_only = channels_per_group < _MIN_REDUCED_PRECISION_GROUP_CHANNELS

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.float32_only and _in_reduced_precision(hidden_states):
            output = self._float32_conv(hidden_states.transpose(1, 2)).to(hidden_states.dtype)
        else:
            output = self.conv(hidden_states.transpose(1, 2))
        if self.remove_last:
            output = output[:, :, :-1]
        return F.gelu(output).transpose(1, 2)

    def _float32_conv(self, conv_input: torch.Tensor) -> torch.Tensor:
        with torch.autocast(conv_input.device.type, enabled=False):
            weight, bias = self.conv.weight.float(), self.conv.bias
            bias = bias.float() if bias is not None else None
            return F.conv1d(
                conv_input.float(), weight, bias, padding=self.conv.padding, groups=self.conv.groups
            )


def _in_reduced_precision(hidden_states: torch.Tensor) -> bool:
    """bf16/fp16 tensors, or float32 tensors that autocast would run in bf16/fp16."""
    if hidden_states.dtype in (torch.bfloat16, torch.float16):
        return True
    device_type = hidden_states.device.type
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) != torch.float32


class BeatsRelativePositionBias(nn.Module):
    """The bucketed relative position bias, one table shared by all layers (the official layers alias layer 0's)."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_bucket_distance
        self.rel_attn_embed = nn.Embedding(config.num_buckets, config.num_attention_heads)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """`position_ids` `(batch or 1, length)` -> bias `(batch or 1, heads, length, length)`."""
        relative_position = position_ids[:, None, :] - position_ids[:, :, None]  # key - query
        buckets = relative_position_buckets(relative_position, self.num_buckets, self.max_distance)
        # Contiguous once here, so that every layer's gate multiply reads it in order.
        return self.rel_attn_embed(buckets).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------------------------
# Attention, layer, encoder
# ---------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class BeatsAttention(nn.Module):
    """Multi-head self-attention with the (optionally gated) relative position bias folded into an additive mask."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if config.gated_relative_position_bias:
            # The gate of each query: 8 logits summed in two groups of 4, as the official `grep_linear`.
            self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_bias: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        attention_workspace: dict | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, _ = hidden_states.shape
        hidden_shape = (batch_size, length, self.num_heads, self.head_dim)
        projected_query = self.q_proj(hidden_states).view(hidden_shape)
        query = projected_query.transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        if position_bias is not None and self.config.gated_relative_position_bias:
            # The gate of each query, in the contiguous (batch, length, heads) layout of the projection (no copy).
            gate_logits = self.gru_rel_pos_linear(projected_query)
            gate_logits = gate_logits.view(batch_size, length, self.num_heads, 2, 4).sum(-1)
            gate_a, gate_b = torch.sigmoid(gate_logits).unbind(-1)
            gate = gate_a * (gate_b * self.gru_rel_pos_const.view(1, 1, -1) - 1.0) + 2.0
            gate = gate.transpose(1, 2).unsqueeze(-1)  # (batch, heads, length, 1)
            # In inference all layers write their (batch, heads, length, length) mask into one tensor: allocating a
            # fresh one per layer costs more (page faults) than the multiply itself.
            out = None
            if attention_workspace is not None:
                shape = (batch_size, self.num_heads, length, length)
                out = attention_workspace.get("mask")
                if out is None or out.shape != shape or out.dtype != query.dtype:
                    out = attention_workspace["mask"] = query.new_empty(shape)
            if key_padding_mask is None:
                attention_mask = torch.mul(gate, position_bias, out=out)
            else:  # one pass instead of a product and a sum
                attention_mask = torch.addcmul(key_padding_mask, gate, position_bias, out=out)
            attention_mask = attention_mask.to(query.dtype)
        else:
            attention_mask = None
            if position_bias is not None:
                attention_mask = position_bias.to(query.dtype)
            if key_padding_mask is not None:
                key_bias = key_padding_mask.to(query.dtype)
                attention_mask = key_bias if attention_mask is None else attention_mask + key_bias

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, length, -1)
        return self.out_proj(attn_output), attn_weights


class BeatsFeedForward(nn.Module):
    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(hidden_states))))


class BeatsEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2.0 * config.num_hidden_layers) ** 0.25 if config.deep_norm else 1.0
        self.self_attn = BeatsAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = BeatsFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_bias: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        dropped: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if dropped:  # layerdrop
            return hidden_states, None
        if self.layer_norm_first:
            attn_output, attn_weights = self.self_attn(
                self.self_attn_layer_norm(hidden_states), position_bias, key_padding_mask, **kwargs
            )
            hidden_states = hidden_states + self.dropout(attn_output)
            hidden_states = hidden_states + self.dropout(self.feed_forward(self.final_layer_norm(hidden_states)))
        else:
            attn_output, attn_weights = self.self_attn(hidden_states, position_bias, key_padding_mask, **kwargs)
            hidden_states = self.self_attn_layer_norm(hidden_states * self.residual_scale + self.dropout(attn_output))
            ff_output = self.dropout(self.feed_forward(hidden_states))
            hidden_states = self.final_layer_norm(hidden_states * self.residual_scale + ff_output)
        return hidden_states, attn_weights


class BeatsEncoder(nn.Module):
    """Convolutional position embedding, (post-LN) input LayerNorm, the layer stack, (pre-LN) final LayerNorm."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.config = config
        self.pos_conv_embed = BeatsPositionalConvEmbedding(config)
        self.relative_position_bias = BeatsRelativePositionBias(config) if config.relative_position_bias else None
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([BeatsEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BeatsModelOutput:
        batch_size, num_patches, _ = hidden_states.shape
        if bool_masked_pos is not None:
            # From here on `patch_mask` marks the patches the encoder sees: valid and not masked.
            patch_mask = ~bool_masked_pos if patch_mask is None else patch_mask & ~bool_masked_pos
        if patch_mask is not None:
            # Padded and masked patches are zeroed before the position convolution, so nothing leaks from them.
            hidden_states = hidden_states * patch_mask.unsqueeze(-1).to(hidden_states.dtype)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)

        position_ids = torch.arange(num_patches, device=hidden_states.device).unsqueeze(0)
        if bool_masked_pos is not None:
            # Encode only the visible patches (MAE style), each keeping its true position for the relative bias.
            num_visible = patch_mask.sum(-1)
            order = torch.argsort((~patch_mask).to(torch.int8), dim=1, stable=True)[:, : int(num_visible.max())]
            hidden_states = torch.gather(hidden_states, 1, order.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
            patch_mask = torch.arange(order.shape[1], device=order.device).unsqueeze(0) < num_visible.unsqueeze(1)
            position_ids = order

        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)

        position_bias = self.relative_position_bias(position_ids) if self.relative_position_bias is not None else None
        key_padding_mask = None
        if patch_mask is not None:
            key_padding_mask = additive_key_mask(patch_mask, hidden_states.dtype)

        decay = self.config.layer_wise_gradient_decay_ratio
        # Reused attention-mask storage of the layers; only in inference (autograd needs each layer's mask).
        workspace = {} if not torch.is_grad_enabled() else None
        for layer in self.layers:
            if decay != 1.0 and torch.is_grad_enabled():
                hidden_states = _GradMultiply.apply(hidden_states, decay)
            # A dropped layer still "runs" (as the identity), so that recorded hidden states keep one entry per layer.
            dropped = self.training and self.config.layerdrop > 0 and bool(torch.rand([]) < self.config.layerdrop)
            hidden_states, _ = layer(
                hidden_states,
                position_bias,
                key_padding_mask,
                dropped=dropped,
                attention_workspace=workspace,
                **kwargs,
            )

        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return BeatsModelOutput(
            last_hidden_state=hidden_states,
            patch_mask=patch_mask,
            position_ids=position_ids if bool_masked_pos is not None else None,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ---------------------------------------------------------------------------------------------------------------------


class _ChecksLoadedWeights:
    """`from_pretrained` plus a warning naming any weight that holds NaN or Inf: a corrupt or diverged checkpoint
    would otherwise load silently and give NaN outputs."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        warn_on_non_finite_weights(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded


class BeatsPreTrainedModel(_ChecksLoadedWeights, PreTrainedModel):
    config_class = BeatsConfig
    config: BeatsConfig
    base_model_prefix = "beats"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    # The weight-norm position convolution computes its weight from two parameters (`parametrizations.weight`) at
    # every call: with `device_map`, they must sit on one device (as HuBERT declares "ParametrizedConv1d").
    _no_split_modules = ["BeatsEncoderLayer", "BeatsPositionalConvEmbedding"]
    _supports_sdpa = True
    _supports_flash_attn = False  # the bias is an arbitrary float mask
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": BeatsEncoderLayer, "attentions": BeatsAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        config = self.config
        deep_norm_gain = (8.0 * config.num_hidden_layers) ** -0.25 if getattr(config, "deep_norm", False) else 1.0
        if isinstance(module, BeatsPositionalConvEmbedding):
            conv = module.conv
            std = math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels))
            direction = conv.parametrizations.weight.original1
            init.normal_(direction, mean=0.0, std=std)
            init.copy_(conv.parametrizations.weight.original0, direction.norm(dim=(0, 1), keepdim=True))
            init.zeros_(conv.bias)
        elif isinstance(module, BeatsAttention):
            if getattr(config, "deep_norm", False):
                for proj, gain in ((module.q_proj, 1.0), (module.k_proj, 1.0), (module.v_proj, deep_norm_gain),
                                   (module.out_proj, deep_norm_gain)):
                    init.xavier_normal_(proj.weight, gain=gain)
            if hasattr(module, "gru_rel_pos_const"):
                init.ones_(module.gru_rel_pos_const)
        elif isinstance(module, BeatsFeedForward) and getattr(config, "deep_norm", False):
            init.xavier_normal_(module.fc1.weight, gain=deep_norm_gain)
            init.xavier_normal_(module.fc2.weight, gain=deep_norm_gain)
        elif isinstance(module, _BeatsHeadMixin) and module.layer_weights is not None:
            init.constant_(module.layer_weights, 1.0 / module.layer_weights.numel())
        elif isinstance(module, BeatsQuantizer):
            init.copy_(module.codebook, F.normalize(torch.randn_like(module.codebook), dim=-1))

    def compute_patch_mask(
        self, attention_mask: torch.Tensor | None, num_patches: int, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Which patches are valid (bool, True = valid): `patch_mask` when the caller has derived it already, else
        derived from the frame-level `attention_mask`; None when every frame is valid. Checked either way."""
        source = "patch_mask"
        if patch_mask is None:
            if attention_mask is None:
                return None
            source = "attention_mask"
            patch_mask = patch_mask_from_frame_mask(
                attention_mask, self.config.patch_size, self.config.num_frequency_patches
            )
        if patch_mask.ndim != 2 or patch_mask.shape[1] != num_patches:
            raise ValueError(
                f"{source} gives {tuple(patch_mask.shape)} patches but the features give (batch, {num_patches})."
            )
        patch_mask = patch_mask.bool()
        check_patch_mask(patch_mask)
        return patch_mask


# ---------------------------------------------------------------------------------------------------------------------
# Base model
# ---------------------------------------------------------------------------------------------------------------------


_INPUTS_DOCSTRING = r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`] (at least 16 frames).
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding, as returned by [`BeatsFeatureExtractor`]. A patch is used only if all
            its frames are real. Without it every frame counts as real.
"""



class BeatsModel(BeatsPreTrainedModel):
    """The bare BEATs encoder: fbank patches in, one vector per patch out."""

    # The masked-audio-modeling heads are dropped silently when a pre-training folder is loaded as a BeatsModel.
    _keys_to_ignore_on_load_unexpected = [r"^label_predictor\.", r"^mask_embedding", r"^classifier\.",
                                          r"^layer_weights"]

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self.patch_embeddings = BeatsPatchEmbeddings(config)
        self.encoder = BeatsEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embeddings.projection

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BeatsModelOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`] (at least 16 frames).
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding, as returned by [`BeatsFeatureExtractor`]. A patch is used only if all
            its frames are real. Without it every frame counts as real.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, patches)`, *optional*):
            Patches to hide (masked audio modeling). Only the visible patches are encoded, keeping their true
            positions; the outputs then have `max(visible)` positions, described by `patch_mask` and `position_ids`.
        patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`, *optional*):
            True for the valid patches, when the caller has derived it from `attention_mask` already
            (`patch_mask_from_frame_mask`, as the pre-training collator does once per batch); it takes the place of
            `attention_mask`.
        """
        hidden_states = self.patch_embeddings(input_features)
        patch_mask = self.compute_patch_mask(attention_mask, hidden_states.shape[1], patch_mask)
        return self.encoder(hidden_states, patch_mask, bool_masked_pos, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------------------


# The readout: the one place that turns hidden states into what heads, embeddings, long audio and probes use.


def weighted_layer_sum(hidden_states: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """`sum_i weights[i] * hidden_states[i]` over the encoder input and every layer's output, in their dtype."""
    stacked = torch.stack(tuple(hidden_states), dim=0)
    weights = weights.to(device=stacked.device, dtype=stacked.dtype)
    if weights.shape != (stacked.shape[0],):
        raise ValueError(f"The layer weights have shape {tuple(weights.shape)}, expected ({stacked.shape[0]},).")
    return (stacked * weights.view(-1, 1, 1, 1)).sum(0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, dim) -> torch.Tensor:
    """Mean of `values` over `dim` where `mask` (broadcastable bool) is True; an all-masked slice gives 0."""
    if mask is None:
        return values.mean(dim)
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def frequency_rows(hidden_states: torch.Tensor, bands: int) -> torch.Tensor:
    """`(batch, patches, C)` time-major patch states -> `(batch, rows, bands, C)`: one row per 16 frames (160 ms)."""
    batch_size, num_patches, width = hidden_states.shape
    return hidden_states.view(batch_size, num_patches // bands, bands, width)


def pool_frequency_bands(hidden_states: torch.Tensor, patch_mask: torch.Tensor | None, bands: int) -> torch.Tensor:
    """`classifier_pooling="frequency_bands"`: `(batch, patches, C)` patch states (time-major) -> `(batch, bands * 2C)`,
    for each frequency band its mean then its standard deviation over the valid time rows (in float32)."""
    rows = frequency_rows(hidden_states.float(), bands)
    row_mask = None if patch_mask is None else patch_mask.view(rows.shape[0], -1, bands, 1)
    mean = masked_mean(rows, row_mask, dim=1)
    variance = masked_mean((rows - mean.unsqueeze(1)).square(), row_mask, dim=1)
    return frequency_band_statistics(mean, variance).to(hidden_states.dtype)


def frequency_band_statistics(mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Per-band mean and population variance over time, `(..., bands, C)` each -> the `frequency_bands` features
    `(..., bands * 2C)`: for each band its mean, then its standard deviation."""
    # The epsilon keeps the gradient of the square root finite for a clip with a single valid row.
    return torch.cat([mean, (variance + 1e-6).sqrt()], dim=-1).flatten(-2)


def clip_feature_size(config: BeatsConfig, pooling: str) -> int:
    """Width of a clip embedding pooled as `pooling` (see `BeatsConfig.classifier_pooling`)."""
    return config.hidden_size * (2 * config.num_frequency_patches if pooling == "frequency_bands" else 1)


def _classification_loss(config: BeatsConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss chosen by `config.problem_type` (inferred from the labels when unset, as transformers does), in float32.
    The frame head uses it for targets that transformers' token-classification loss does not take (multi-hot rows,
    regression)."""
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(logits.shape[:-1]))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.float().reshape(-1, num_labels), labels.reshape(-1), ignore_index=-100)
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    raise ValueError(f"Unknown problem_type {config.problem_type!r}.")


def requested_hidden_states(
    hidden_states: tuple[torch.Tensor, ...], requested: bool | int | list[int] | None
) -> tuple[torch.Tensor | None, ...] | None:
    """The part of `hidden_states` (all of them) that `output_hidden_states=requested` asks for: none, all, or, for an
    index or a list of indices (negative ones count from the end), all positions with None at the others, as
    transformers' `capture_outputs` returns a selection."""
    if requested is None or isinstance(requested, bool):
        return hidden_states if requested else None
    indices = [requested] if isinstance(requested, int) else list(requested)
    count = len(hidden_states)
    kept = {index % count for index in indices if -count <= index < count}
    return tuple(state if index in kept else None for index, state in enumerate(hidden_states))


class _BeatsHeadMixin:
    """Shared by the classification heads: the encoder and linear head, frozen parts, the weighted sum of layers."""

    def _build_head(self, config: BeatsConfig, input_size: int) -> None:
        self.beats = BeatsModel(config)
        num_layers = config.num_hidden_layers + 1
        self.layer_weights = nn.Parameter(torch.ones(num_layers) / num_layers) if config.use_weighted_layer_sum else None
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(input_size, config.num_labels)

    def freeze_feature_encoder(self) -> None:
        """Freeze the patch embedding (convolution, LayerNorm, projection), as Wav2Vec2 heads freeze their CNN."""
        for parameter in self.beats.patch_embeddings.parameters():
            parameter.requires_grad = False

    def freeze_base_model(self) -> None:
        """Freeze the whole encoder (linear probing)."""
        for parameter in self.beats.parameters():
            parameter.requires_grad = False

    def _encode(self, input_features, attention_mask, kwargs) -> tuple:
        """-> (the patch states the head reads, the patch mask, the hidden states and attentions to return).

        The weighted layer sum needs every hidden state, but the head returns only those the caller asked for with
        `output_hidden_states` (all, none, or a selection of indices), as the bare encoder would. The encoder always
        returns its dataclass here (`return_dict=True`): `config.return_dict=False` shapes the head's own output."""
        kwargs = {**kwargs, "return_dict": True}
        if not self.config.use_weighted_layer_sum:
            outputs = self.beats(input_features, attention_mask=attention_mask, **kwargs)
            return outputs.last_hidden_state, outputs.patch_mask, outputs.hidden_states, outputs.attentions
        requested = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        outputs = self.beats(input_features, attention_mask=attention_mask, **{**kwargs, "output_hidden_states": True})
        hidden_states = weighted_layer_sum(outputs.hidden_states, F.softmax(self.layer_weights, dim=0))
        returned = requested_hidden_states(outputs.hidden_states, requested)
        return hidden_states, outputs.patch_mask, returned, outputs.attentions


class BeatsForAudioClassification(_BeatsHeadMixin, BeatsPreTrainedModel):
    """BEATs with the official fine-tuning head: a linear layer per patch, averaged over the valid patches; or, with
    `config.classifier_pooling="frequency_bands"`, a linear layer over per-band statistics (see `BeatsConfig`).
    Returns logits (apply a sigmoid for AudioSet probabilities, a softmax for single-label tasks)."""

    # The loss is this batch's mean: Trainer must not pass `num_items_in_batch` and then skip its division by the
    # gradient accumulation steps (or multiply by the number of processes), as it does for models that take **kwargs.
    accepts_loss_kwargs = False

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self._build_head(config, clip_feature_size(config, config.classifier_pooling))
        self.post_init()

    @torch.no_grad()
    def clip_features(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the head's linear layer sees, `(batch, classifier.in_features)`: without dropout, the logits are
        `classifier(clip_features)`. For fitting the head as a linear probe."""
        hidden_states, patch_mask, _, _ = self._encode(input_features, attention_mask, {})
        return self._pool(hidden_states, patch_mask)

    def _pool(self, hidden_states: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        """Patch states -> the head's input, as `config.classifier_pooling` says."""
        if self.config.classifier_pooling == "frequency_bands":
            return pool_frequency_bands(hidden_states, patch_mask, self.config.num_frequency_patches)
        return masked_mean(hidden_states, None if patch_mask is None else patch_mask.unsqueeze(-1), dim=1)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding.
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            Class indices (single-label), multi-hot targets (multi-label, AudioSet) or values (regression); the loss
            follows `config.problem_type`.
        """
        hidden_states, patch_mask, all_hidden_states, attentions = self._encode(input_features, attention_mask, kwargs)
        if self.config.classifier_pooling == "frequency_bands":
            logits = self.classifier(self.dropout(self._pool(hidden_states, patch_mask)))
        else:  # as the official head: logits per patch (dropout per patch), then the mean over valid patches
            patch_logits = self.classifier(self.dropout(hidden_states))
            logits = masked_mean(patch_logits, None if patch_mask is None else patch_mask.unsqueeze(-1), dim=1)
        loss = None
        if labels is not None:
            # transformers' sequence-classification loss (by `config.problem_type`), from float32 logits.
            loss = self.loss_function(labels, logits.float(), self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=all_hidden_states, attentions=attentions
        )


class BeatsForAudioFrameClassification(_BeatsHeadMixin, BeatsPreTrainedModel):
    """BEATs with a per-frame head for sound event detection: one prediction per row of 16 fbank frames (160 ms),
    from the mean of the row's frequency patches."""

    accepts_loss_kwargs = False  # a mean loss, as the clip head's

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self._build_head(config, config.hidden_size)  # one row = the mean of its frequency patches
        # transformers picks `self.loss_function` from the class name, and has no entry for frame classification: a
        # class index per row is token classification (cross-entropy, -100 ignored).
        self.loss_type = "ForTokenClassification"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding.
        labels (`torch.LongTensor` of shape `(batch_size, frames // 16)` or `torch.FloatTensor` of shape `(batch_size, frames // 16, num_labels)`, *optional*):
            Per-row targets: class indices (-100 is ignored) or multi-hot vectors (padded rows must be masked by the
            caller with -100 for single-label).
        """
        hidden_states, patch_mask, all_hidden_states, attentions = self._encode(input_features, attention_mask, kwargs)
        batch_size, bands = hidden_states.shape[0], self.config.num_frequency_patches
        rows = frequency_rows(hidden_states, bands).mean(2)
        logits = self.classifier(self.dropout(rows))
        loss = None
        if labels is not None:
            integer_labels = labels.dtype in (torch.long, torch.int)
            if patch_mask is not None and not integer_labels:
                row_mask = patch_mask.view(batch_size, -1, bands)[..., 0]
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
                loss = masked_mean(loss.mean(-1), row_mask, dim=(0, 1))
            elif integer_labels and self.config.problem_type in (None, "single_label_classification"):
                loss = self.loss_function(logits.float(), labels, self.config)
            else:
                loss = _classification_loss(self.config, logits, labels)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=all_hidden_states, attentions=attentions)


# ---------------------------------------------------------------------------------------------------------------------
# Masked audio modeling (pre-training)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BeatsMaskedAudioModelingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy (with `config.label_smoothing`) of the label predictor over the masked valid patches that have a
        label; only when `labels` is given.
    logits (`torch.FloatTensor` of shape `(batch_size, patches, num_target_codes)`):
        Code scores at every patch position. Only the masked valid positions are trained; the others are returned so
        that the shape does not depend on the mask.
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, visible_patches, hidden_size)`):
        Encoder output for the visible patches only, left-aligned; see `patch_mask` and `position_ids`.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The encoder's hidden states (visible patches only), as in [`BeatsModelOutput`].
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        The encoder's attention probabilities (visible patches only), as in [`BeatsModelOutput`].
    patch_mask (`torch.BoolTensor` of shape `(batch_size, visible_patches)`):
        True for the slots of `last_hidden_state` that hold a visible patch.
    position_ids (`torch.LongTensor` of shape `(batch_size, visible_patches)`):
        Position, in the full patch sequence, of each slot of `last_hidden_state`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    patch_mask: torch.BoolTensor | None = None
    position_ids: torch.LongTensor | None = None


class BeatsLabelPredictor(nn.Module):
    """`predictor_num_layers` encoder layers over the full patch sequence, then a linear layer to the code scores.

    The encoded visible patches are projected to the predictor's width (`config.predictor_hidden_size`, as MAE's
    decoder; no projection when it equals the encoder's), put back at their positions, and the masked positions get
    the learned mask embedding. The predictor has its own relative position bias over the full-length positions: the
    mask embedding is the same vector at every masked patch, so the bias is what tells the predictor where each masked
    patch lies. Its layers are built like the encoder's (DeepNorm scaling and initialisation) and never skipped.
    """

    def __init__(self, config: BeatsConfig):
        super().__init__()
        predictor_config = config.label_predictor_config()
        width = predictor_config.hidden_size
        self.input_projection = nn.Linear(config.hidden_size, width) if width != config.hidden_size else None
        self.relative_position_bias = (
            BeatsRelativePositionBias(predictor_config) if config.relative_position_bias else None
        )
        self.layers = nn.ModuleList([BeatsEncoderLayer(predictor_config) for _ in range(config.predictor_num_layers)])
        # Post-LN layers end in a LayerNorm already; pre-LN layers need a final one.
        self.layer_norm = nn.LayerNorm(width, eps=config.layer_norm_eps) if config.layer_norm_first else None
        self.classifier = nn.Linear(width, config.num_target_codes)

    def forward(self, hidden_states: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """`hidden_states`: `(batch, patches, predictor width)`, encoded patches and mask embeddings in place."""
        num_patches = hidden_states.shape[1]
        position_bias = None
        if self.relative_position_bias is not None:
            position_bias = self.relative_position_bias(torch.arange(num_patches, device=hidden_states.device)[None])
        key_padding_mask = additive_key_mask(patch_mask, hidden_states.dtype)
        for layer in self.layers:
            hidden_states, _ = layer(hidden_states, position_bias, key_padding_mask)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return self.classifier(hidden_states)


class BeatsForMaskedAudioModeling(BeatsPreTrainedModel):
    """BEATs masked audio modeling (paper §3.3): the encoder sees only the visible patches; a label predictor sees the
    encoded visible patches back at their positions, a learned mask embedding at the masked ones, and predicts the
    acoustic tokenizer's code of every masked patch.

    Masks and targets are inputs: `bool_masked_pos` from `beats_hf.training.pretraining.masking.random_masked_patches` (the
    pre-training collator adds it) and `labels` from a frozen tokenizer (`BeatsForAudioTokenization` or
    `BeatsRandomProjectionForAudioTokenization`), which the training loop runs; no tokenizer lives in this model.
    `AutoModel.from_pretrained` on a saved folder gives the bare encoder ([`BeatsModel`]) and drops the predictor.
    """

    # The loss is a mean over this batch's masked patches: Trainer must not rescale it by num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        self.beats = BeatsModel(config)
        # The mask embedding lives in the predictor's space (after its input projection).
        self.mask_embedding = nn.Parameter(torch.empty(config.label_predictor_config().hidden_size))
        self.label_predictor = BeatsLabelPredictor(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.normal_(self.mask_embedding, mean=0.0, std=self.config.initializer_range)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BeatsMaskedAudioModelingOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`] (at least 16 frames).
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding. A patch is valid only if all its frames are real.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, patches)`):
            True for the patches to mask (time-major patch order, `patches = frames // 16 * 8`). Masked patches are
            hidden from the encoder and predicted; True at a padded patch is ignored.
        labels (`torch.LongTensor` of shape `(batch_size, patches)`, *optional*):
            Code index of every patch from the acoustic tokenizer; -100 is ignored. The loss covers the masked valid
            patches only.
        patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`, *optional*):
            True for the valid patches, when the caller has derived it from `attention_mask` already (the
            pre-training collator does, once per batch, for the masks); it takes the place of `attention_mask`.
        """
        if bool_masked_pos is None:
            raise ValueError(
                "BeatsForMaskedAudioModeling needs `bool_masked_pos` (batch, patches): draw it with "
                "beats_hf.training.pretraining.masking.random_masked_patches or use MaskedAudioModelingCollator."
            )
        batch_size, num_frames = input_features.shape[:2]
        num_patches = num_frames // self.config.patch_size * self.config.num_frequency_patches
        if tuple(bool_masked_pos.shape) != (batch_size, num_patches):
            raise ValueError(
                f"`bool_masked_pos` has shape {tuple(bool_masked_pos.shape)} but the features give "
                f"({batch_size}, {num_patches}) patches."
            )
        if labels is not None and tuple(labels.shape) != (batch_size, num_patches):
            raise ValueError(f"`labels` has shape {tuple(labels.shape)}, expected ({batch_size}, {num_patches}).")
        bool_masked_pos = bool_masked_pos.bool()
        if patch_mask is None and attention_mask is not None:
            # Derived once here; the encoder checks it (shape, a valid patch per clip).
            patch_mask = patch_mask_from_frame_mask(
                attention_mask, self.config.patch_size, self.config.num_frequency_patches
            )

        outputs = self.beats(
            input_features, bool_masked_pos=bool_masked_pos, patch_mask=patch_mask, return_dict=True, **kwargs
        )
        encoded = outputs.last_hidden_state
        patch_mask = torch.ones_like(bool_masked_pos) if patch_mask is None else patch_mask.bool()
        masked = bool_masked_pos & patch_mask

        # Put the encoded patches back at their positions; unused slots of the visible sequence go to a spare column.
        visible_states = encoded
        if self.label_predictor.input_projection is not None:
            visible_states = self.label_predictor.input_projection(encoded)
        slots = torch.where(outputs.patch_mask, outputs.position_ids, num_patches)
        full = visible_states.new_zeros(batch_size, num_patches + 1, visible_states.shape[-1])
        full = full.scatter(1, slots.unsqueeze(-1).expand_as(visible_states), visible_states)[:, :num_patches]
        full = torch.where(masked.unsqueeze(-1), self.mask_embedding.to(full.dtype), full)
        logits = self.label_predictor(full, patch_mask)

        loss = None
        if labels is not None:
            selected = masked & (labels != -100)
            # A sum over the selected patches divided by their count: 0 (not NaN) for a batch with nothing masked.
            # (The masked accuracy and codebook coverage are the Trainer's: MaskedAudioModelingTrainer logs them.)
            loss = F.cross_entropy(
                logits[selected].float(), labels[selected], label_smoothing=self.config.label_smoothing, reduction="sum"
            ) / selected.sum().clamp(min=1)

        return BeatsMaskedAudioModelingOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=encoded,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            patch_mask=outputs.patch_mask,
            position_ids=outputs.position_ids,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Acoustic tokenizers
# ---------------------------------------------------------------------------------------------------------------------


def nearest_code(embeddings: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code by squared Euclidean distance (|z|^2 + |e|^2 - 2 z.e, as the official code, which
    does not assume unit-norm codes). Ties go to the lowest index."""
    distances = (
        embeddings.pow(2).sum(-1, keepdim=True)
        + codebook.pow(2).sum(-1)
        - 2.0 * torch.matmul(embeddings, codebook.t())
    )
    return distances.argmin(-1)


def _tokenization_output(embeddings, codebook, patch_mask) -> BeatsTokenizationOutput:
    token_ids = nearest_code(embeddings, codebook)
    quantized = F.embedding(token_ids, codebook)
    if patch_mask is not None:
        token_ids = token_ids.masked_fill(~patch_mask, -100)
        quantized = quantized * patch_mask.unsqueeze(-1).to(quantized.dtype)
    return BeatsTokenizationOutput(token_ids=token_ids, patch_mask=patch_mask, quantized=quantized, embeddings=embeddings)


class BeatsQuantizer(nn.Module):
    """Linear-Tanh-Linear projection to the codebook space, L2 normalisation, and the codebook."""

    def __init__(self, config: BeatsTokenizationConfig):
        super().__init__()
        self.projection = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.Tanh(),
            nn.Linear(config.hidden_size, config.codebook_dim),
        )
        # Trained by exponential moving average, never by the optimiser.
        self.codebook = nn.Parameter(torch.empty(config.codebook_size, config.codebook_dim), requires_grad=False)

    def forward(
        self, hidden_states: torch.Tensor, patch_mask: torch.Tensor | None = None, return_codes: bool = False
    ) -> torch.Tensor | BeatsTokenizationOutput:
        """Encoder states -> the L2-normalised vectors `(batch, patches, codebook_dim)`; with `return_codes=True`, the
        [`BeatsTokenizationOutput`] of their nearest codes (`patch_mask`: True at valid patches).

        The lookup happens here, in the module that owns the codebook: with `device_map` offloading, accelerate brings
        a module's weights onto the execution device only while its own forward runs, so a codebook read outside this
        call would still be on the meta device."""
        embeddings = F.normalize(self.projection(hidden_states), dim=-1)
        if not return_codes:
            return embeddings
        return _tokenization_output(embeddings, self.codebook, patch_mask)


class BeatsForAudioTokenization(BeatsPreTrainedModel):
    """The BEATs acoustic tokenizer: a BEATs encoder and a quantizer that labels every patch with its nearest code."""

    config_class = BeatsTokenizationConfig
    config: BeatsTokenizationConfig

    def __init__(self, config: BeatsTokenizationConfig):
        super().__init__(config)
        self.beats = BeatsModel(config)
        self.quantizer = BeatsQuantizer(config)
        self.post_init()

    # Its kwargs are not `Unpack[TransformersKwargs]`: a tokenizer returns codes, never hidden states or attentions.
    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BeatsTokenizationOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding.
        patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`, *optional*):
            True for the valid patches, when already derived from `attention_mask`; it takes its place.
        """
        outputs = self.beats(
            input_features, attention_mask=attention_mask, patch_mask=patch_mask, return_dict=True, **kwargs
        )
        return self.quantizer(outputs.last_hidden_state, outputs.patch_mask, return_codes=True)


class BeatsRandomProjectionForAudioTokenization(_ChecksLoadedWeights, PreTrainedModel):
    """The iteration-1 tokenizer (paper §3.2): a frozen random projection of each patch's fbank values and a frozen
    random L2-normalised codebook, both drawn from `config.seed` on the CPU so every process gets the same ones."""

    config_class = BeatsRandomProjectionConfig
    config: BeatsRandomProjectionConfig
    base_model_prefix = "random_projection"
    main_input_name = "input_features"
    input_modalities = ("audio",)

    def __init__(self, config: BeatsRandomProjectionConfig):
        super().__init__(config)
        patch_dim = config.patch_size * config.patch_size
        self.projection = nn.Parameter(torch.empty(patch_dim, config.codebook_dim), requires_grad=False)
        self.codebook = nn.Parameter(torch.empty(config.codebook_size, config.codebook_dim), requires_grad=False)
        self.post_init()

    def draw_projection_and_codebook(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed)
        patch_dim = self.config.patch_size * self.config.patch_size
        projection = torch.randn(patch_dim, self.config.codebook_dim, generator=generator) / math.sqrt(patch_dim)
        codebook = F.normalize(torch.randn(self.config.codebook_size, self.config.codebook_dim, generator=generator), dim=-1)
        return projection, codebook

    def _init_weights(self, module: nn.Module) -> None:
        if module is self:
            projection, codebook = self.draw_projection_and_codebook()
            init.copy_(self.projection, projection)
            init.copy_(self.codebook, codebook)

    def patchify(self, input_features: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, mel)` -> `(batch, patches, patch_size**2)` in the encoder's time-major patch order."""
        size = self.config.patch_size
        batch_size, num_frames, num_bins = input_features.shape
        rows = num_frames // size
        patches = input_features[:, : rows * size].reshape(batch_size, rows, size, num_bins // size, size)
        return patches.permute(0, 1, 3, 2, 4).reshape(batch_size, rows * (num_bins // size), size * size)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BeatsTokenizationOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding.
        patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`, *optional*):
            True for the valid patches, when already derived from `attention_mask`; it takes its place.
        """
        check_input_features(input_features, self.config.num_mel_bins)
        patches = self.patchify(input_features.to(self.projection.dtype))
        embeddings = F.normalize(patches @ self.projection, dim=-1)
        if patch_mask is None and attention_mask is not None:
            patch_mask = patch_mask_from_frame_mask(
                attention_mask, self.config.patch_size, self.config.num_frequency_patches
            )
        if patch_mask is not None:
            if tuple(patch_mask.shape) != tuple(patches.shape[:2]):
                raise ValueError(
                    f"The patch mask has shape {tuple(patch_mask.shape)} but the features give "
                    f"{tuple(patches.shape[:2])} patches."
                )
            patch_mask = patch_mask.bool()
            check_patch_mask(patch_mask)
        return _tokenization_output(embeddings, self.codebook, patch_mask)


__all__ = [
    "BeatsPreTrainedModel",
    "BeatsModel",
    "BeatsForAudioClassification",
    "BeatsForAudioFrameClassification",
    "BeatsForMaskedAudioModeling",
    "BeatsForAudioTokenization",
    "BeatsRandomProjectionForAudioTokenization",
    "BeatsModelOutput",
    "BeatsMaskedAudioModelingOutput",
    "BeatsTokenizationOutput",
]
