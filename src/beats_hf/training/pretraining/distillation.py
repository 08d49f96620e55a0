"""Acoustic tokenizer training by knowledge distillation (paper §3.2): the model that `Trainer` optimises and the
`Trainer` subclass that runs the frozen teacher.

The student is a `BeatsForAudioTokenization` (encoder + quantizer). Its L2-normalised vectors `z` are quantized to
their nearest codes `q`; an estimator (a few BEATs encoder layers and a linear layer) sees `z + (q - z).detach()`
(straight-through) and must reconstruct the teacher's last-layer output. The loss, averaged over valid patches, is

    (1 - cos(estimator output, teacher output)) + commitment_weight * ||z - sg(q)||^2

and the codebook follows the norm-EMA update of `quantization.NormEmaCodebook`. Only the student is kept afterwards;
the estimator and the EMA statistics live in the Trainer checkpoints, for resuming.
"""

import dataclasses
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, Trainer
from transformers.utils import ModelOutput

from ...configuration_beats import BeatsConfig, BeatsTokenizationConfig
from ...modeling_beats import (
    BeatsEncoder,
    BeatsForAudioTokenization,
    BeatsModel,
    BeatsPreTrainedModel,
    masked_mean,
    nearest_code,
)
from ..streaming import ShardStreamTrainerMixin
from .quantization import NormEmaCodebook, codebook_perplexity, codebook_usage

# BeatsConfig's own fields, without PreTrainedConfig's (labels, architectures, dtype...): a fine-tuned teacher's labels
# must not reach the student's config.
_BEATS_CONFIG_ARGUMENTS = tuple(
    field.name for field in dataclasses.fields(BeatsConfig)
    if field.name not in {base.name for base in dataclasses.fields(PreTrainedConfig)}
)


def beats_config_kwargs(config: BeatsConfig) -> dict:
    """The `BeatsConfig` arguments of `config` (architecture and training fields, no codebook or bookkeeping)."""
    return {name: getattr(config, name) for name in _BEATS_CONFIG_ARGUMENTS}


def student_config_from_teacher(teacher_config: BeatsConfig, **overrides) -> BeatsTokenizationConfig:
    """A tokenizer config with the teacher's encoder architecture, then `overrides` (any `BeatsTokenizationConfig`
    argument, e.g. `hidden_size=256, codebook_size=1024`). The patch geometry must stay the teacher's: both see the
    same patches, and the teacher's output is the target of every patch."""
    config = BeatsTokenizationConfig(**{**beats_config_kwargs(teacher_config), **overrides})
    for name in ("num_mel_bins", "patch_size"):
        student_value, teacher_value = getattr(config, name), getattr(teacher_config, name)
        if student_value != teacher_value:
            raise ValueError(f"The student's {name} ({student_value}) must equal the teacher's ({teacher_value}).")
    return config


@dataclass
class BeatsTokenizationDistillationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        `distillation_loss + commitment_weight * commitment_loss`.
    distillation_loss (`torch.FloatTensor` of shape `()`):
        Mean over valid patches of 1 - cosine similarity between the estimator output and the teacher output.
    commitment_loss (`torch.FloatTensor` of shape `()`):
        Mean over valid patches of the squared distance between the student's vector and its (frozen) code.
    token_ids (`torch.LongTensor` of shape `(batch_size, patches)`):
        The nearest code of every patch (before this step's codebook update); -100 at padded patches.
    patch_mask (`torch.BoolTensor` of shape `(batch_size, patches)`):
        True for the valid patches.
    code_counts (`torch.FloatTensor` of shape `(codebook_size,)`):
        How many valid patches chose each code; in training, summed over all processes.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, patches, teacher_hidden_size)`):
        The estimator output.
    """

    loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None
    patch_mask: torch.BoolTensor | None = None
    code_counts: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None


class BeatsTokenizationEstimator(BeatsPreTrainedModel):
    """Reconstructs the teacher's last layer from quantized vectors: a linear layer up to `hidden_size`, a BEATs
    encoder stack of `estimator_num_layers` layers (convolutional and relative position embeddings: the codes carry
    no position), and a linear layer to the teacher's width.

    It is its own pre-trained model so that its DeepNorm initialisation follows its own depth.
    """

    def __init__(self, config: BeatsConfig, input_size: int, output_size: int):
        super().__init__(config)
        self.input_projection = nn.Linear(input_size, config.hidden_size)
        self.encoder = BeatsEncoder(config)
        self.output_projection = nn.Linear(config.hidden_size, output_size)
        self.post_init()

    @classmethod
    def from_tokenization_config(cls, config: BeatsTokenizationConfig, output_size: int):
        estimator_config = BeatsConfig(
            **{
                **beats_config_kwargs(config),
                "num_hidden_layers": config.estimator_num_layers,
                # Every estimator layer must run and get the full gradient.
                "layerdrop": 0.0,
                "layer_wise_gradient_decay_ratio": 1.0,
            }
        )
        estimator_config._attn_implementation = config._attn_implementation
        return cls(estimator_config, config.codebook_dim, output_size)

    def forward(self, quantized: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        hidden_states = self.input_projection(quantized)
        hidden_states = self.encoder(hidden_states, patch_mask).last_hidden_state
        return self.output_projection(hidden_states)


class BeatsTokenizationDistillationModel(BeatsPreTrainedModel):
    """The model `Trainer` optimises for tokenizer training: the student tokenizer (`.student`, what gets saved), the
    estimator (`.estimator`) and the codebook's EMA statistics (`.codebook_ema`).

    In training mode, each forward assigns codes, initialises the codebook by k-means on the first call (if the
    statistics say it was never initialised) and updates it by norm-EMA; in eval mode the codebook is left alone.
    Under `torch.distributed` every forward communicates (the EMA statistics are summed over processes), so all
    processes must run it together, as in a training step.

    Args:
        config: the student's configuration (codebook, commitment weight, EMA decay and estimator depth included).
        teacher_hidden_size: width of the teacher's output (defaults to `config.hidden_size`).
        student: an existing student to train further (defaults to a new one).
        kmeans_iterations: spherical k-means iterations for the codebook initialisation.
        seed: seed of the k-means initialisation (and of the restarted codes' draws).
        restart_dead_codes_after: move a code that no patch chose for this many codebook updates onto a patch
            vector of the current step (`None`: never, as the official quantizer).
    """

    config_class = BeatsTokenizationConfig
    config: BeatsTokenizationConfig
    base_model_prefix = "student"
    # The loss is a mean over this batch's valid patches: Trainer must not rescale it by num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(
        self,
        config: BeatsTokenizationConfig,
        teacher_hidden_size: int | None = None,
        student: BeatsForAudioTokenization | None = None,
        kmeans_iterations: int = 10,
        seed: int = 0,
        restart_dead_codes_after: int | None = None,
    ):
        super().__init__(config)
        self.teacher_hidden_size = teacher_hidden_size or config.hidden_size
        self.student = student if student is not None else BeatsForAudioTokenization(config)
        self.estimator = BeatsTokenizationEstimator.from_tokenization_config(config, self.teacher_hidden_size)
        self.codebook_ema = NormEmaCodebook(
            config.codebook_size,
            config.codebook_decay,
            kmeans_iterations=kmeans_iterations,
            dead_after_updates=restart_dead_codes_after,
            seed=seed,
            restart_dead_codes=restart_dead_codes_after is not None,
        )
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        teacher_hidden_states: torch.Tensor | None = None,
    ) -> BeatsTokenizationDistillationOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised Kaldi log-mel fbank from [`BeatsFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
            1 for real frames, 0 for padding.
        teacher_hidden_states (`torch.FloatTensor` of shape `(batch_size, patches, teacher_hidden_size)`):
            The frozen teacher's last-layer output on the same inputs (the reconstruction target).
        """
        if teacher_hidden_states is None:
            raise ValueError(
                "BeatsTokenizationDistillationModel needs `teacher_hidden_states` (the teacher's last_hidden_state on "
                "the same input_features and attention_mask); TokenizationDistillationTrainer passes it."
            )
        encoded = self.student.beats(input_features, attention_mask=attention_mask)
        expected_shape = (*encoded.last_hidden_state.shape[:2], self.teacher_hidden_size)
        if tuple(teacher_hidden_states.shape) != expected_shape:
            raise ValueError(
                f"`teacher_hidden_states` has shape {tuple(teacher_hidden_states.shape)}, expected {expected_shape} "
                "(batch, patches, teacher_hidden_size)."
            )
        vectors = self.student.quantizer(encoded.last_hidden_state)  # L2-normalised
        patch_mask = encoded.patch_mask
        valid = patch_mask if patch_mask is not None else torch.ones(vectors.shape[:2], dtype=torch.bool,
                                                                        device=vectors.device)
        codebook = self.student.quantizer.codebook
        valid_vectors = vectors.detach()[valid]

        if self.training and not self.codebook_ema.is_initialized:
            self.codebook_ema.initialize(codebook, valid_vectors)
        token_ids = nearest_code(vectors.detach().to(codebook.dtype), codebook)
        # A copy of the codes chosen now: the EMA update below changes the codebook in place.
        quantized = F.embedding(token_ids, codebook).to(vectors.dtype)
        if self.training:
            code_counts = self.codebook_ema.update(codebook, valid_vectors, token_ids[valid])
        else:
            code_counts = torch.bincount(token_ids[valid], minlength=codebook.shape[0]).float()

        straight_through = vectors + (quantized - vectors).detach()
        reconstruction = self.estimator(straight_through, patch_mask)
        cosine = F.cosine_similarity(reconstruction.float(), teacher_hidden_states.float(), dim=-1)
        distillation_loss = masked_mean(1.0 - cosine, valid, dim=(0, 1))
        commitment_loss = masked_mean((vectors.float() - quantized.detach().float()).pow(2).sum(-1), valid, dim=(0, 1))
        loss = distillation_loss + self.config.commitment_weight * commitment_loss

        return BeatsTokenizationDistillationOutput(
            loss=loss,
            distillation_loss=distillation_loss,
            commitment_loss=commitment_loss,
            token_ids=token_ids.masked_fill(~valid, -100),
            patch_mask=patch_mask,
            code_counts=code_counts,
            reconstruction=reconstruction,
        )


def teacher_encoder(model: nn.Module) -> BeatsModel:
    """The BEATs encoder of a beats_hf model: the model itself (`BeatsModel`) or its `.beats`
    (`BeatsForAudioClassification` for the iter3+ recipe, `BeatsForMaskedAudioModeling`, a tokenizer...)."""
    encoder = getattr(model, "base_model", None)  # transformers' own "the encoder of this model"
    if not isinstance(encoder, BeatsModel):
        raise TypeError(
            "The teacher must be a beats_hf BeatsModel or a model with a `.beats` BeatsModel, got "
            f"{type(model).__name__}."
        )
    return encoder


class TokenizationDistillationTrainer(ShardStreamTrainerMixin, Trainer):
    """Trainer for `BeatsTokenizationDistillationModel` that runs the frozen teacher inside `compute_loss` (eval mode,
    no gradients, same device) to get the reconstruction targets.

    Logged at every logging step, besides `loss`: `distillation_loss` and `commitment_loss` (means over the steps
    and processes since the previous log), `codebook_usage` (share of the codes chosen at least once since the
    previous log, over all processes), `codebook_perplexity` (exp of the entropy of those choices) and `dead_codes`
    (codes no patch chose in the last `dead_after_updates` codebook updates, 100 by default).
    """

    def __init__(self, *args, teacher: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher_encoder(teacher).to(self.args.device).eval().requires_grad_(False)
        num_codes = self.model.config.codebook_size
        # [distillation sum, commitment sum, steps] and per-code counts, between two logs.
        self._loss_sums = torch.zeros(3, device=self.args.device)
        self._code_counts = torch.zeros(num_codes, device=self.args.device)

    @torch.no_grad()
    def teacher_targets(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.teacher(
            input_features=inputs["input_features"], attention_mask=inputs.get("attention_mask")
        ).last_hidden_state

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = self.teacher_targets(inputs)
        outputs = model(
            input_features=inputs["input_features"],
            attention_mask=inputs.get("attention_mask"),
            teacher_hidden_states=targets,
        )
        if model.training:
            with torch.no_grad():
                self._loss_sums += torch.stack(
                    [outputs.distillation_loss.detach(), outputs.commitment_loss.detach(),
                     torch.ones((), device=self._loss_sums.device)]
                )
                # Already summed over processes by the codebook update.
                self._code_counts += outputs.code_counts
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Only the periodic training logs carry "loss"; every process calls log() with them, so the reduce is safe.
        if "loss" in logs:
            sums = self.accelerator.reduce(self._loss_sums, reduction="sum")
            if sums[2] > 0:
                logs["distillation_loss"] = round((sums[0] / sums[2]).item(), 5)
                logs["commitment_loss"] = round((sums[1] / sums[2]).item(), 5)
                logs["codebook_usage"] = round(codebook_usage(self._code_counts), 4)
                logs["codebook_perplexity"] = round(codebook_perplexity(self._code_counts), 2)
                ema = self.accelerator.unwrap_model(self.model).codebook_ema
                logs["dead_codes"] = ema.num_dead_codes()
                if ema.restart_dead_codes:
                    logs["restarted_codes"] = int(ema.restarted_codes.item())
            self._loss_sums.zero_()
            self._code_counts.zero_()
        super().log(logs, start_time)


def codebook_checksum(codebook: torch.Tensor) -> str:
    """A short hex digest of the codebook's bytes (equal digests: bit-identical codebooks)."""
    return hashlib.sha256(codebook.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


__all__ = [
    "BeatsTokenizationDistillationModel",
    "BeatsTokenizationDistillationOutput",
    "BeatsTokenizationEstimator",
    "TokenizationDistillationTrainer",
    "beats_config_kwargs",
    "codebook_checksum",
    "student_config_from_teacher",
    "teacher_encoder",
]
