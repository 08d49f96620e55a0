"""Model tests in the transformers style: a tiny-config tester and our own common checks."""

import copy
import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification
from transformers.integrations.accelerate import compute_module_sizes
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from beats_hf import (
    BeatsConfig,
    BeatsForAudioClassification,
    BeatsForAudioFrameClassification,
    BeatsForAudioTokenization,
    BeatsForMaskedAudioModeling,
    BeatsModel,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
    BeatsTokenizationConfig,
)
from beats_hf.modeling_beats import BeatsPositionalConvEmbedding, nearest_code


class BeatsModelTester:
    """Builds tiny configs and inputs: 3 clips of 80, 64 and 37 frames in one padded batch."""

    batch_size = 3
    num_frames = 80
    lengths = (80, 64, 37)  # 37 frames: 2 full rows of 16 (16 patches), 5 frames that fill no patch

    def get_config(self, **overrides) -> BeatsConfig:
        return tiny_config(**{"num_labels": 5, **overrides})

    def get_inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(self.batch_size, self.num_frames, 128, generator=generator)
        mask = torch.zeros(self.batch_size, self.num_frames, dtype=torch.long)
        for index, length in enumerate(self.lengths):
            mask[index, :length] = 1
            features[index, length:] = 0.0
        return {"input_features": features, "attention_mask": mask}

    @staticmethod
    def valid_patches(num_frames: int) -> int:
        return (num_frames // 16) * 8


TESTER = BeatsModelTester()
ALL_HEADS = (BeatsModel, BeatsForAudioClassification, BeatsForAudioFrameClassification)
CONFIG_VARIANTS = {
    "release": {},
    "pre_ln_no_gate_no_proj": dict(
        layer_norm_first=True,
        deep_norm=False,
        gated_relative_position_bias=False,
        patch_embedding_dim=32,
        patch_embedding_bias=True,
    ),
    "no_relative_bias": dict(relative_position_bias=False, gated_relative_position_bias=False),
}


def build(model_class, attn_implementation: str = "sdpa", **overrides):
    torch.manual_seed(0)
    config = TESTER.get_config(**overrides)
    config._attn_implementation = attn_implementation
    return model_class(config).eval()


def first_output(outputs) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


# ------------------------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------------------------


def test_default_config_is_the_released_base_architecture():
    config = BeatsConfig()
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        12,
        768,
        12,
        3072,
    )
    assert (config.patch_size, config.patch_embedding_dim, config.num_buckets, config.max_bucket_distance) == (
        16,
        512,
        320,
        800,
    )
    assert not config.layer_norm_first and config.deep_norm and config.gated_relative_position_bias
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (128, 16)


def test_config_round_trip(tmp_path):
    config = TESTER.get_config(layer_norm_first=True, deep_norm=False, label_smoothing=0.1, use_weighted_layer_sum=True)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is BeatsConfig
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert loaded.label_smoothing == 0.1 and loaded.layer_norm_first and loaded.use_weighted_layer_sum


def test_a_config_saved_with_the_removed_mask_ratio_still_loads(tmp_path):
    # `mask_ratio` was a config field that nothing read (the collator takes its own); old folders still hold it.
    config = TESTER.get_config()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "mask_ratio": 0.6}))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert "mask_ratio" not in BeatsConfig().to_dict() and loaded.hidden_size == config.hidden_size


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=30), "divisible by `num_attention_heads`"),
        (dict(num_mel_bins=120), "multiple of `patch_size`"),
        (dict(hidden_act="swish"), "Field 'hidden_act' expected one of"),
        (dict(layer_norm_first=True, deep_norm=True), "deep_norm=True"),
        (dict(relative_position_bias=False, gated_relative_position_bias=True), "needs `relative_position_bias"),
        (dict(hidden_dropout=1.5), "`hidden_dropout` must lie in"),
        (dict(label_smoothing=1.0), "`label_smoothing` must lie in"),
        (dict(num_hidden_layers=0), "`num_hidden_layers` must be a positive integer"),
        (dict(num_buckets=31), "`num_buckets` must be an even integer"),
        (dict(classifier_pooling="max"), "Field 'classifier_pooling' expected one of"),
        (dict(num_hidden_layers=2.0), "Field 'num_hidden_layers' expected int"),
        (dict(layer_norm_first=1), "Field 'layer_norm_first' expected bool"),
    ],
)
def test_config_validation(overrides, message):
    """transformers v5 style: `@strict` checks the field types on every assignment and the `validate_*` methods check
    the values after `__init__` (and before saving)."""
    with pytest.raises(StrictDataclassError, match=message):
        TESTER.get_config(**overrides)


def test_config_validation_also_guards_assignment_and_saving(tmp_path):
    config = TESTER.get_config()
    with pytest.raises(StrictDataclassError, match="Field 'hidden_size' expected int"):
        config.hidden_size = "32"
    config.hidden_size = 30  # a valid type, an invalid architecture: caught before it is written
    with pytest.raises(StrictDataclassError, match="divisible by `num_attention_heads`"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------------------------------------------------------------
# Common checks
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", ALL_HEADS)
def test_save_load_round_trip(model_class, tmp_path):
    model = build(model_class)
    inputs = TESTER.get_inputs()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(first_output(loaded(**inputs)), first_output(model(**inputs)), rtol=0, atol=0)


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
@pytest.mark.parametrize("model_class", ALL_HEADS)
def test_eager_equals_sdpa(model_class, variant):
    inputs = TESTER.get_inputs()
    eager = build(model_class, "eager", **CONFIG_VARIANTS[variant])
    sdpa = build(model_class, "sdpa", **CONFIG_VARIANTS[variant])
    with torch.no_grad():
        torch.testing.assert_close(first_output(sdpa(**inputs)), first_output(eager(**inputs)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_batch_equals_one_by_one(variant):
    """Padding invariance: each clip of a padded batch gives, on its valid patches, what it gives alone."""
    model = build(BeatsModel, **CONFIG_VARIANTS[variant])
    classifier = build(BeatsForAudioClassification, **CONFIG_VARIANTS[variant])
    inputs = TESTER.get_inputs()
    with torch.no_grad():
        batch = model(**inputs)
        batch_logits = classifier(**inputs).logits
        for index, length in enumerate(TESTER.lengths):
            alone_features = inputs["input_features"][index : index + 1, :length]
            alone = model(alone_features)
            num_valid = TESTER.valid_patches(length)
            assert alone.last_hidden_state.shape[1] == num_valid
            assert batch.patch_mask[index].sum() == num_valid
            torch.testing.assert_close(
                batch.last_hidden_state[index, :num_valid], alone.last_hidden_state[0], rtol=0, atol=1e-5
            )
            torch.testing.assert_close(batch_logits[index], classifier(alone_features).logits[0], rtol=0, atol=1e-5)


def test_padding_values_do_not_leak():
    """Whatever the padded frames hold, the valid outputs are the same."""
    model = build(BeatsModel)
    inputs = TESTER.get_inputs()
    noisy = dict(inputs)
    noisy["input_features"] = inputs["input_features"] + 100.0 * (1 - inputs["attention_mask"][..., None])
    with torch.no_grad():
        clean, dirty = model(**inputs), model(**noisy)
    valid = clean.patch_mask
    torch.testing.assert_close(dirty.last_hidden_state[valid], clean.last_hidden_state[valid], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_hidden_states_and_attentions(variant):
    model = build(BeatsModel, "eager", **CONFIG_VARIANTS[variant])
    inputs = TESTER.get_inputs()
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
    num_patches = (TESTER.num_frames // 16) * 8
    config = model.config
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    for hidden in outputs.hidden_states:
        assert hidden.shape == (TESTER.batch_size, num_patches, config.hidden_size)
    assert len(outputs.attentions) == config.num_hidden_layers
    for attention in outputs.attentions:
        assert attention.shape == (TESTER.batch_size, config.num_attention_heads, num_patches, num_patches)
        # Probabilities over keys; padded keys get none of the mass.
        torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))
        padded_keys = ~outputs.patch_mask[:, None, None, :].expand_as(attention)
        assert attention[padded_keys].abs().max() == 0
    if config.layer_norm_first:
        assert not torch.equal(outputs.hidden_states[-1], outputs.last_hidden_state)
    else:
        torch.testing.assert_close(outputs.hidden_states[-1], outputs.last_hidden_state, rtol=0, atol=0)
    assert outputs.patch_mask.shape == (TESTER.batch_size, num_patches)
    assert outputs.patch_mask.sum(-1).tolist() == [TESTER.valid_patches(n) for n in TESTER.lengths]


@pytest.mark.parametrize("model_class", ALL_HEADS)
@pytest.mark.parametrize("weighted", [False, True])
def test_every_parameter_gets_a_gradient(model_class, weighted):
    if weighted and model_class is BeatsModel:
        pytest.skip("the weighted layer sum belongs to the heads")
    model = build(model_class, use_weighted_layer_sum=weighted).train()
    outputs = model(**TESTER.get_inputs())
    first_output(outputs).pow(2).mean().backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    zero = [
        name for name, parameter in model.named_parameters() if parameter.grad is not None and not parameter.grad.any()
    ]
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"all-zero gradient: {zero}"


def _gradients(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    first_output(model(**inputs)).pow(2).mean().backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients():
    model = build(BeatsForAudioClassification).train()
    inputs = TESTER.get_inputs()
    reference = _gradients(model, inputs)
    model.activation_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = _gradients(model, inputs)
    for name, gradient in reference.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-6, msg=name)


def test_layer_wise_gradient_decay_scales_lower_layers():
    """Layer i of N gets its gradient scaled by ratio**(N-1-i); the forward pass is unchanged."""
    inputs = TESTER.get_inputs()
    plain = build(BeatsModel, layer_wise_gradient_decay_ratio=1.0, num_hidden_layers=3).train()
    decayed = build(BeatsModel, layer_wise_gradient_decay_ratio=0.5, num_hidden_layers=3).train()
    decayed.load_state_dict(plain.state_dict())
    plain_gradients, decayed_gradients = _gradients(plain, inputs), _gradients(decayed, inputs)
    for layer in range(3):
        name = f"encoder.layers.{layer}.feed_forward.fc1.weight"
        torch.testing.assert_close(decayed_gradients[name], plain_gradients[name] * 0.5 ** (2 - layer))
    name = "patch_embeddings.projection.weight"
    torch.testing.assert_close(decayed_gradients[name], plain_gradients[name] * 0.5**3)


def test_bf16_forward_is_finite(tmp_path):
    build(BeatsForAudioClassification).save_pretrained(tmp_path)
    model = BeatsForAudioClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    inputs = TESTER.get_inputs()
    with torch.no_grad():
        logits = model(inputs["input_features"].bfloat16(), inputs["attention_mask"]).logits
    assert torch.isfinite(logits).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = build(BeatsForAudioClassification)(**inputs).logits
    assert torch.isfinite(logits).all()


BF16_UNIT_ROUNDOFF = 2.0**-8
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def position_convolution(groups: int) -> BeatsPositionalConvEmbedding:
    torch.manual_seed(0)  # tiny_config: 32 channels, so 4 groups hold 8 channels each and 2 groups 16
    module = BeatsPositionalConvEmbedding(tiny_config(num_conv_pos_embedding_groups=groups)).eval()
    with torch.no_grad():  # weight norm's magnitude away from its init, so the test sees the real weights
        module.conv.parametrizations.weight.original0.mul_(1.5)
    return module


@pytest.mark.float_sensitive
def test_position_convolution_under_autocast_is_the_float32_one_for_narrow_groups():
    """Fewer than 16 channels per group: under bf16 autocast the convolution runs in float32, so its output is exactly
    the float32 module's (oneDNN's bf16 grouped conv1d is ~100 % wrong there on some CPUs). 16 channels: bf16."""
    hidden_states = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(1))
    narrow, wide = position_convolution(groups=4), position_convolution(groups=2)
    assert narrow.float32_only and not wide.float32_only
    with torch.no_grad():
        expected = narrow(hidden_states)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            guarded, unguarded = narrow(hidden_states), wide(hidden_states)
    assert guarded.dtype == torch.float32 and torch.equal(guarded, expected)
    assert unguarded.dtype == torch.bfloat16


@pytest.mark.float_sensitive
def test_position_convolution_with_bf16_weights_matches_a_float64_convolution():
    """bf16 weights and inputs, 8 channels per group: the guarded output is the exact convolution of those bf16 values
    to within float32 accumulation (gamma_n times the sum of |w||x|, n = 8 channels x 16 taps + bias) plus rounding the
    result and its GELU to bf16 (GELU's slope is at most 1.13)."""
    module = position_convolution(groups=4).to(torch.bfloat16)
    hidden_states = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.no_grad():
        actual = module(hidden_states)
        conv = module.conv
        weight, bias = conv.weight.double(), conv.bias.double()
    conv_input = hidden_states.transpose(1, 2).double()
    exact = F.conv1d(conv_input, weight, bias, padding=conv.padding, groups=conv.groups)[..., :-1]
    magnitude = F.conv1d(conv_input.abs(), weight.abs(), bias.abs(), padding=conv.padding, groups=conv.groups)
    magnitude = magnitude[..., :-1]
    terms = 8 * 16 + 1
    accumulation = terms * FLOAT32_UNIT_ROUNDOFF / (1 - terms * FLOAT32_UNIT_ROUNDOFF) * magnitude
    bound = 1.13 * (accumulation + BF16_UNIT_ROUNDOFF * exact.abs()) + BF16_UNIT_ROUNDOFF * F.gelu(exact).abs()
    assert actual.dtype == torch.bfloat16
    assert ((actual.double().transpose(1, 2) - F.gelu(exact)).abs() <= bound + 1e-30).all()


def test_clip_without_a_valid_patch_is_a_clear_error():
    """An all-zero attention mask (or fewer than 16 valid frames) used to give logits of exactly 0: now an error that
    names the clip, for the encoder, the heads and both tokenizers."""
    inputs = TESTER.get_inputs()
    inputs["attention_mask"][1] = 0
    inputs["attention_mask"][2, 15:] = 0  # 15 valid frames: no full patch row
    for model in (build(BeatsModel), build(BeatsForAudioClassification), build(BeatsForAudioFrameClassification)):
        with pytest.raises(ValueError, match=r"clip\(s\) \[1, 2\] without a single valid patch"):
            model(**inputs)
    tokenizer = BeatsRandomProjectionForAudioTokenization(BeatsRandomProjectionConfig(codebook_size=16))
    with pytest.raises(ValueError, match=r"\[1, 2\] without a single valid patch"):
        tokenizer(**inputs)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (torch.randn(2, 16000), r"shape \(2, 16000\), which looks like raw audio.*BeatsFeatureExtractor"),
        (torch.randn(16000), r"looks like raw audio"),
        (torch.randn(2, 64, 80), r"80 mel bins in its last dimension but the model takes 128"),
        (torch.randn(2, 128, 64), r"64 mel bins.*transposed\? the mel bins come last"),
        (torch.randn(2, 1, 64, 128), r"must be `\(batch_size, frames, 128\)`, got shape \(2, 1, 64, 128\)"),
        (torch.randint(0, 5, (2, 64, 128)), r"must be floating point, got torch.int64"),
        (torch.randn(2, 64, 128).numpy(), r"must be a torch.Tensor, got ndarray"),
    ],
)
def test_wrong_features_are_clear_errors(features, match):
    model = build(BeatsForAudioClassification)
    with pytest.raises((ValueError, TypeError), match=match):
        model(features)


def test_non_finite_weights_warn_on_loading(tmp_path, caplog):
    from beats_hf.modeling_beats import logger

    model = build(BeatsForAudioClassification)
    model.save_pretrained(tmp_path / "finite")
    with torch.no_grad():
        model.beats.encoder.layers[0].feed_forward.fc1.weight[0, 0] = float("nan")
        model.classifier.bias[0] = float("inf")
    model.save_pretrained(tmp_path / "broken")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to caplog's root handler
    try:
        with caplog.at_level("WARNING", logger=logger.name):
            BeatsForAudioClassification.from_pretrained(tmp_path / "finite")
            assert not [r for r in caplog.records if "non-finite" in r.getMessage()]
            BeatsModel.from_pretrained(tmp_path / "broken")  # the encoder alone: only the encoder weight is named
            BeatsForAudioClassification.from_pretrained(tmp_path / "broken")
    finally:
        logger.removeHandler(caplog.handler)
    warnings = list(dict.fromkeys(r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()))
    assert len(warnings) == 2
    assert "encoder.layers.0.feed_forward.fc1.weight" in warnings[0] and "classifier" not in warnings[0]
    assert "classifier.bias" in warnings[1] and "fc1.weight" in warnings[1]


def test_too_few_frames_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 16"):
        build(BeatsModel)(torch.zeros(1, 15, 128))


# ------------------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------------------


def test_classification_losses():
    inputs = TESTER.get_inputs()
    single = build(BeatsForAudioClassification)
    labels = torch.tensor([0, 3, 4])
    outputs = single(**inputs, labels=labels)
    assert single.config.problem_type == "single_label_classification"
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))

    multi = build(BeatsForAudioClassification, problem_type="multi_label_classification")
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    outputs = multi(**inputs, labels=targets)
    torch.testing.assert_close(
        outputs.loss, torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, targets)
    )


def test_classification_pools_logits_over_valid_patches_only():
    model = build(BeatsForAudioClassification)
    inputs = TESTER.get_inputs()
    with torch.no_grad():
        hidden = model.beats(**inputs)
        logits = model(**inputs).logits
    for index in range(TESTER.batch_size):
        valid = hidden.patch_mask[index]
        expected = model.classifier(hidden.last_hidden_state[index, valid]).mean(0)
        torch.testing.assert_close(logits[index], expected, rtol=0, atol=1e-6)


def test_frequency_band_pooling_keeps_the_bands_apart():
    """`classifier_pooling="frequency_bands"`: per band, the mean and std over the clip's valid time rows, computed
    here clip by clip from the encoder's output; `clip_features` is what the head's linear layer sees."""
    model = build(BeatsForAudioClassification, classifier_pooling="frequency_bands")
    inputs = TESTER.get_inputs()
    width = model.config.hidden_size
    assert model.classifier.in_features == 2 * 8 * width
    with torch.no_grad():
        hidden = model.beats(**inputs)
        logits = model(**inputs).logits
        features = model.clip_features(**inputs)
    for index in range(TESTER.batch_size):
        rows = hidden.last_hidden_state[index, hidden.patch_mask[index]].view(-1, 8, width)  # (time rows, bands, C)
        std = (rows.var(0, unbiased=False) + 1e-6).sqrt()
        expected = torch.cat([rows.mean(0), std], dim=-1).flatten()
        torch.testing.assert_close(features[index], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, model.classifier(features), rtol=0, atol=1e-5)
    # A clip with a single valid row has zero spread: the gradient must stay finite.
    single_row = {"input_features": inputs["input_features"][:, :16], "attention_mask": inputs["attention_mask"][:, :16]}
    model.train()
    model(**single_row, labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_freeze_feature_encoder_and_base_model():
    model = build(BeatsForAudioClassification)
    model.freeze_feature_encoder()
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {
        f"beats.{name}" for name, _ in model.beats.patch_embeddings.named_parameters(prefix="patch_embeddings")
    }
    model.freeze_base_model()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_weighted_layer_sum_uses_all_layers():
    model = build(BeatsForAudioClassification, use_weighted_layer_sum=True)
    inputs = TESTER.get_inputs()
    with torch.no_grad():
        before = model(**inputs).logits
        model.layer_weights.copy_(torch.tensor([0.0, 0.0, 50.0]))  # softmax ~ one-hot on the last layer
        last_only = model(**inputs).logits
    plain = build(BeatsForAudioClassification)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "layer_weights"})
    with torch.no_grad():
        torch.testing.assert_close(last_only, plain(**inputs).logits, rtol=0, atol=1e-5)
    assert not torch.allclose(before, last_only, atol=1e-4)


def test_layerdrop_keeps_one_hidden_state_per_layer():
    """A dropped layer acts as the identity: the weighted layer sum still gets num_layers + 1 states in training."""
    model = build(BeatsForAudioClassification, use_weighted_layer_sum=True, layerdrop=0.9).train()
    inputs = TESTER.get_inputs()
    torch.manual_seed(1)
    outputs = model.beats(**inputs, output_hidden_states=True)
    states = outputs.hidden_states
    assert len(states) == model.config.num_hidden_layers + 1
    assert any(torch.equal(states[i], states[i + 1]) for i in range(len(states) - 1))  # some layer was dropped
    model(**inputs, labels=torch.zeros(inputs["input_features"].shape[0], dtype=torch.long)).loss.backward()


def test_frame_classification_head():
    model = build(BeatsForAudioFrameClassification).train()
    inputs = TESTER.get_inputs()
    rows = TESTER.num_frames // 16
    labels = torch.randint(0, 5, (TESTER.batch_size, rows))
    labels[2, 2:] = -100  # the third clip has 2 valid rows
    outputs = model(**inputs, labels=labels)
    assert outputs.logits.shape == (TESTER.batch_size, rows, 5)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    multi = build(BeatsForAudioFrameClassification)
    targets = torch.randint(0, 2, (TESTER.batch_size, rows, 5)).float()
    assert torch.isfinite(multi(**inputs, labels=targets).loss)


def test_auto_classes(tmp_path):
    model = build(BeatsForAudioClassification)
    model.save_pretrained(tmp_path)
    assert type(AutoModelForAudioClassification.from_pretrained(tmp_path)) is BeatsForAudioClassification
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is BeatsModel
    torch.testing.assert_close(
        encoder.state_dict()["encoder.layer_norm.weight"], model.beats.encoder.layer_norm.weight
    )


def test_deep_norm_initialisation_scales_value_and_ffn():
    config = TESTER.get_config(num_hidden_layers=12, hidden_size=256, num_attention_heads=4, intermediate_size=256)
    torch.manual_seed(0)
    model = BeatsModel(config)
    layer = model.encoder.layers[0]
    beta = (8 * 12) ** -0.25
    xavier_std = (2 / (256 + 256)) ** 0.5
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(xavier_std, rel=0.05)
    assert layer.self_attn.v_proj.weight.std().item() == pytest.approx(beta * xavier_std, rel=0.05)
    assert layer.feed_forward.fc2.weight.std().item() == pytest.approx(beta * xavier_std, rel=0.05)
    assert layer.residual_scale == pytest.approx(24**0.25)


def test_outputs_are_independent_of_batch_composition():
    """A clip's outputs do not depend on what else is in the batch (no batch-global statistics)."""
    model = build(BeatsModel)
    inputs = TESTER.get_inputs()
    swapped = copy.deepcopy(inputs)
    swapped["input_features"][1] = (
        torch.randn_like(swapped["input_features"][1]) * swapped["attention_mask"][1, :, None]
    )
    with torch.no_grad():
        a, b = model(**inputs), model(**swapped)
    torch.testing.assert_close(a.last_hidden_state[0], b.last_hidden_state[0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# transformers conventions: what transformers' own shared tests found (tests/test_transformers_common.py runs them
# when their files are there), each checked here without them
# ------------------------------------------------------------------------------------------------------------------

ALL_CLASSES = (
    BeatsModel,
    BeatsForAudioClassification,
    BeatsForAudioFrameClassification,
    BeatsForMaskedAudioModeling,
    BeatsForAudioTokenization,
    BeatsRandomProjectionForAudioTokenization,
)
TOKENIZER_SIZES = dict(codebook_size=16, codebook_dim=8)


def build_any(model_class, **overrides):
    """A tiny eval-mode model of any public class, and inputs for it."""
    torch.manual_seed(0)
    inputs = TESTER.get_inputs()
    if model_class is BeatsRandomProjectionForAudioTokenization:
        return model_class(BeatsRandomProjectionConfig(**TOKENIZER_SIZES, **overrides)).eval(), inputs
    config = TESTER.get_config(num_target_codes=16, predictor_num_layers=1, **overrides)
    if model_class is BeatsForAudioTokenization:
        fields = {name: getattr(config, name) for name in BeatsConfig.__dataclass_fields__}
        config = BeatsTokenizationConfig(**fields, **TOKENIZER_SIZES, estimator_num_layers=1)
    if model_class is BeatsForMaskedAudioModeling:
        num_patches = TESTER.num_frames // 16 * 8
        inputs["bool_masked_pos"] = torch.arange(num_patches).repeat(TESTER.batch_size, 1) % 3 == 0
    return model_class(config).eval(), inputs


def assert_same_outputs(actual, expected):
    assert type(actual) is type(expected) and len(actual) == len(expected)
    for got, want in zip(actual, expected):
        if isinstance(want, tuple):
            assert_same_outputs(got, want)
        else:
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)


# accelerate notes that masked audio modeling's `mask_embedding`, a parameter of the model itself, is not a submodule.
@pytest.mark.filterwarnings("ignore:The following device_map keys do not match any submodules")
@pytest.mark.parametrize("model_class", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_device_map_with_a_cpu_and_disk_split(model_class, tmp_path):
    """A CPU version of transformers' disk-offload test: `device_map="auto"` with room on the CPU for part of the
    model only, the rest offloaded to disk (accelerate brings each offloaded module's weights in for its own forward).
    The weight-norm position convolution must not be split (`_no_split_modules`), and the tokenizer must read its
    codebook inside the quantizer's forward, or the forward meets meta tensors."""
    model, inputs = build_any(model_class)
    with torch.no_grad():
        expected = model(**inputs).to_tuple()
    model.save_pretrained(tmp_path / "saved")
    size = compute_module_sizes(model)[0][""]
    devices_seen = set()
    for share in (0.5, 0.7, 0.9):
        loaded = model_class.from_pretrained(
            tmp_path / "saved", device_map="auto", max_memory={"cpu": int(share * size)},
            offload_folder=tmp_path / f"offload_{share}",
        )  # fmt: skip
        devices = set(loaded.hf_device_map.values())
        assert "disk" in devices
        devices_seen |= devices
        with torch.no_grad():
            assert_same_outputs(loaded(**inputs).to_tuple(), expected)
    if model_class is not BeatsRandomProjectionForAudioTokenization:  # its two weights sit on the model itself
        assert devices_seen == {"cpu", "disk"}


def test_the_weight_norm_convolution_is_never_split():
    assert "BeatsPositionalConvEmbedding" in BeatsModel._no_split_modules
    model, _ = build_any(BeatsForMaskedAudioModeling)
    from accelerate.utils import infer_auto_device_map

    size = compute_module_sizes(model)[0][""]
    for share in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        device_map = infer_auto_device_map(
            model, max_memory={"cpu": int(share * size)}, no_split_module_classes=model._no_split_modules
        )
        assert not [name for name in device_map if name.startswith("beats.encoder.pos_conv_embed.")], device_map


def test_the_quantizer_looks_codes_up_in_its_own_forward():
    model, inputs = build_any(BeatsForAudioTokenization)
    with torch.no_grad():
        encoded = model.beats(**inputs)
        codes = model.quantizer(encoded.last_hidden_state, encoded.patch_mask, return_codes=True)
        vectors = model.quantizer(encoded.last_hidden_state)  # the training loop's call: vectors only
        outputs = model(**inputs)
    torch.testing.assert_close(vectors, outputs.embeddings, rtol=0, atol=0)
    for name in ("token_ids", "patch_mask", "quantized", "embeddings"):
        torch.testing.assert_close(getattr(codes, name), getattr(outputs, name), rtol=0, atol=0)
    valid = outputs.patch_mask
    expected = nearest_code(vectors, model.quantizer.codebook)
    assert torch.equal(outputs.token_ids[valid], expected[valid]) and (outputs.token_ids[~valid] == -100).all()


@pytest.mark.parametrize("model_class", (BeatsForAudioClassification, BeatsForAudioFrameClassification))
def test_weighted_layer_sum_returns_only_the_hidden_states_asked_for(model_class):
    """The weighted sum needs every hidden state, but the head returns them as the encoder would: none unless asked,
    all for True, and for a selection of indices those (negative ones count from the end) with None at the others."""
    model, inputs = build_any(model_class, use_weighted_layer_sum=True)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        plain = model(**inputs)
        every = model(**inputs, output_hidden_states=True)
        chosen = model(**inputs, output_hidden_states=[0, -1])
        attentions_only = model(**inputs, output_attentions=True)
        expected = model.beats(**inputs, output_hidden_states=True).hidden_states
    assert plain.hidden_states is None and list(plain.keys()) == ["logits"]
    assert attentions_only.hidden_states is None and list(attentions_only.keys()) == ["logits", "attentions"]
    assert len(attentions_only.attentions) == model.config.num_hidden_layers
    assert_same_outputs(every.hidden_states, expected)
    assert len(chosen.hidden_states) == len(expected) == 3
    assert chosen.hidden_states[1] is None
    torch.testing.assert_close(chosen.hidden_states[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(chosen.hidden_states[2], expected[2], rtol=0, atol=0)
    for outputs in (every, chosen, attentions_only):
        torch.testing.assert_close(outputs.logits, plain.logits, rtol=0, atol=0)  # the head itself is unchanged


@pytest.mark.parametrize("model_class", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_return_dict_false_gives_the_same_outputs_as_a_tuple(model_class):
    """`return_dict=False` (or `config.return_dict=False`) gives `to_tuple()` of the dict outputs, `patch_mask`
    included as the same bool tensor (the random-projection tokenizer used to ignore it)."""
    model, inputs = build_any(model_class)
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    assert_same_outputs(as_tuple, as_dict.to_tuple())
    assert_same_outputs(from_config, as_dict.to_tuple())
    if "patch_mask" in as_dict:
        assert as_dict.patch_mask.dtype == torch.bool


@pytest.mark.parametrize("model_class", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_forward_kwargs_are_typed_for_transformers(model_class):
    """`**kwargs: Unpack[TransformersKwargs]` is how transformers sees that a model can return attentions (the shared
    tests and `_can_output_attn` read the annotation); the tokenizers return codes only, and say nothing."""
    annotation = inspect.signature(model_class.forward).parameters["kwargs"].annotation
    if model_class in (BeatsForAudioTokenization, BeatsRandomProjectionForAudioTokenization):
        assert annotation is inspect.Parameter.empty
    else:
        assert annotation == Unpack[TransformersKwargs]
        assert {"output_attentions", "output_hidden_states"} <= set(TransformersKwargs.__annotations__)


def test_losses_are_transformers_own_and_not_rescaled_by_trainer(tmp_path):
    """The clip head takes transformers' sequence-classification loss and the frame head its token-classification loss
    (`self.loss_function`), both per-batch means, so Trainer must not pass `num_items_in_batch` and then skip its
    gradient-accumulation division (`accepts_loss_kwargs = False`)."""
    from transformers import Trainer, TrainingArguments
    from transformers.loss.loss_utils import ForSequenceClassificationLoss, ForTokenClassification

    clip, inputs = build_any(BeatsForAudioClassification)
    frame, _ = build_any(BeatsForAudioFrameClassification)
    assert clip.loss_function is ForSequenceClassificationLoss and frame.loss_function is ForTokenClassification
    labels = torch.tensor([0, 3, 4])
    outputs = clip(**inputs, labels=labels)
    torch.testing.assert_close(outputs.loss, F.cross_entropy(outputs.logits, labels))
    rows = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 1, -100, -100, -100]])
    outputs = frame(**inputs, labels=rows)
    torch.testing.assert_close(outputs.loss, F.cross_entropy(outputs.logits.flatten(0, 1), rows.flatten()))
    assert frame.config.problem_type is None  # the token-classification loss leaves the config alone
    for model in (clip, frame):
        assert model.accepts_loss_kwargs is False
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False
