"""Masked audio modeling: mask drawing, the pre-training collator and BeatsForMaskedAudioModeling."""

import io
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config as shared_tiny_config
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModel
from transformers.utils import logging as transformers_logging

from beats_hf import (
    BeatsConfig,
    BeatsFeatureExtractor,
    BeatsForAudioClassification,
    BeatsForMaskedAudioModeling,
    BeatsModel,
    BeatsRandomProjectionConfig,
    BeatsRandomProjectionForAudioTokenization,
)
from beats_hf.modeling_beats import patch_mask_from_frame_mask
from beats_hf.training.pretraining.collator import MaskedAudioModelingCollator
from beats_hf.training.pretraining.masking import (
    KeyedUniforms,
    compute_patch_mask,
    num_masked_patches,
    random_masked_patches,
)
from beats_hf.training.pretraining.pretrain import masked_prediction_sums

LENGTHS = (80, 64, 37)  # frames: 40, 32 and 16 valid patches (37 frames fill 2 rows of 16)
NUM_FRAMES = 80
NUM_PATCHES = NUM_FRAMES // 16 * 8
# A label predictor narrower than the encoder (input projection, mask embedding in the predictor's space).
NARROW_PREDICTOR = dict(predictor_hidden_size=16, predictor_num_attention_heads=2, predictor_intermediate_size=24)
PREDICTOR_WIDTHS = {"encoder_width": {}, "narrow": NARROW_PREDICTOR}
CONFIG_VARIANTS = {
    "release": {},
    "pre_ln_no_gate": dict(layer_norm_first=True, deep_norm=False, gated_relative_position_bias=False),
}


def tiny_config(**overrides) -> BeatsConfig:
    """The shared tiny architecture with 16 target codes and a 2-layer predictor."""
    defaults = {"intermediate_size": 48, "num_target_codes": 16, "predictor_num_layers": 2}
    return shared_tiny_config(**{**defaults, **overrides})


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(LENGTHS), NUM_FRAMES, 128, generator=generator)
    mask = torch.zeros(len(LENGTHS), NUM_FRAMES, dtype=torch.long)
    for index, length in enumerate(LENGTHS):
        mask[index, :length] = 1
        features[index, length:] = 0.0
    return features, mask


def patch_mask_of(mask: torch.Tensor) -> torch.Tensor:
    return patch_mask_from_frame_mask(mask, 16, 8)


def draw_mask(mask: torch.Tensor, seed: int = 0, ratio: float = 0.75) -> torch.Tensor:
    valid = patch_mask_of(mask).numpy()
    return torch.from_numpy(random_masked_patches(valid, ratio, np.random.default_rng(seed)))


def patch_region(patch: int) -> tuple[slice, slice]:
    """(frames, mel bins) of a patch in time-major order with 8 bands."""
    row, band = divmod(patch, 8)
    return slice(16 * row, 16 * row + 16), slice(16 * band, 16 * band + 16)


# ---------------------------------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------------------------------


def test_mask_masks_the_ratio_of_valid_patches_only():
    valid = np.zeros((5, 64), dtype=bool)
    for row, count in enumerate((64, 40, 17, 8, 2)):
        valid[row, :count] = True
    masked = random_masked_patches(valid, 0.75, np.random.default_rng(0))
    assert masked.dtype == bool and masked.shape == valid.shape
    assert not (masked & ~valid).any()
    # round half up of 0.75 * n: 48, 30, 12.75 -> 13, 6, 1.5 -> 2 capped at n - 1 = 1
    assert masked.sum(1).tolist() == [48, 30, 13, 6, 1]


@pytest.mark.parametrize("ratio", [0.01, 0.5, 0.99])
def test_every_clip_keeps_a_visible_and_a_masked_patch(ratio):
    rng = np.random.default_rng(1)
    valid = np.arange(50)[None, :] < rng.integers(2, 51, size=(200, 1))
    masked = random_masked_patches(valid, ratio, rng)
    assert (masked.sum(1) >= 1).all()
    assert ((valid & ~masked).sum(1) >= 1).all()


def test_clips_with_fewer_than_two_valid_patches_are_left_unmasked():
    valid = np.zeros((3, 8), dtype=bool)
    valid[1, 0] = True
    valid[2, :2] = True
    masked = random_masked_patches(valid, 0.75, np.random.default_rng(0))
    assert masked.sum(1).tolist() == [0, 0, 1]
    assert num_masked_patches(np.array([0, 1, 2, 3, 4]), 0.75).tolist() == [0, 0, 1, 2, 3]


def test_masks_are_reproducible_and_depend_on_the_seed():
    valid = np.ones((4, 96), dtype=bool)
    first = random_masked_patches(valid, 0.75, np.random.default_rng(7))
    again = random_masked_patches(valid, 0.75, np.random.default_rng(7))
    other = random_masked_patches(valid, 0.75, np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # Clips of one batch get different masks.
    assert not np.array_equal(first[0], first[1])


def test_masked_positions_are_uniform_among_valid_patches():
    valid = np.zeros((4000, 24), dtype=bool)
    valid[:, :16] = True
    masked = random_masked_patches(valid, 0.25, np.random.default_rng(0))
    frequency = masked[:, :16].mean(0)
    # 4 of 16 masked each time: every valid patch is masked 25 % of the time (binomial sd ~0.007).
    assert np.allclose(frequency, 0.25, atol=0.03), frequency


def test_invalid_masking_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masked_patches(np.ones((1, 8), dtype=bool), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch, patches"):
        random_masked_patches(np.ones(8, dtype=bool), 0.5, np.random.default_rng(0))
    # The old name still works, with a deprecation warning.
    with pytest.warns(FutureWarning, match="now random_masked_patches"):
        old = compute_patch_mask(np.ones((2, 8), dtype=bool), 0.5, np.random.default_rng(3))
    assert np.array_equal(old, random_masked_patches(np.ones((2, 8), dtype=bool), 0.5, np.random.default_rng(3)))


def test_collator_adds_masks_over_valid_patches_only():
    rng = np.random.default_rng(0)
    seconds = (1.0, 0.6, 0.3)
    items = [{"waveform": (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32)} for s in seconds]
    collator = MaskedAudioModelingCollator(BeatsFeatureExtractor(), mask_ratio=0.75, seed=3)
    batch = collator(items)
    features, mask, masked = batch["input_features"], batch["attention_mask"], batch["bool_masked_pos"]
    assert masked.dtype == torch.bool and masked.shape == (3, features.shape[1] // 16 * 8)
    valid = patch_mask_of(mask)
    assert torch.equal(batch["patch_mask"], valid)  # derived once here, passed on to the tokenizer and the student
    assert not (masked & ~valid).any()
    assert masked.sum(1).tolist() == num_masked_patches(valid.sum(1).numpy(), 0.75).tolist()
    # Same seed -> same masks; another seed -> other masks; successive batches differ.
    same = MaskedAudioModelingCollator(BeatsFeatureExtractor(), mask_ratio=0.75, seed=3)(items)["bool_masked_pos"]
    other = MaskedAudioModelingCollator(BeatsFeatureExtractor(), mask_ratio=0.75, seed=4)(items)["bool_masked_pos"]
    assert torch.equal(masked, same) and not torch.equal(masked, other)
    assert not torch.equal(masked, collator(items)["bool_masked_pos"])


def test_collator_masks_differ_between_processes_and_workers(monkeypatch):
    import beats_hf.training.pretraining.collator as collator_module

    items = [{"waveform": np.full(16000, 0.1, dtype=np.float32)} for _ in range(4)]
    masks = {}
    for key in ((0, 0), (1, 0), (0, 1)):
        monkeypatch.setattr(collator_module, "_process_and_worker", lambda key=key: key)
        masks[key] = MaskedAudioModelingCollator(BeatsFeatureExtractor(), seed=0)(items)["bool_masked_pos"]
    assert not torch.equal(masks[(0, 0)], masks[(1, 0)]) and not torch.equal(masks[(0, 0)], masks[(0, 1)])


def test_keyed_masks_are_a_function_of_each_clip_and_epoch():
    """Items carrying (index, epoch), as `beats-hf pretrain` reads them: a clip's mask does not depend on the batch it
    is in (so a resumed run, whose batches are the same but whose collator is new, draws the masks of an
    uninterrupted run); it changes with the epoch and the seed."""
    rng = np.random.default_rng(0)
    waveforms = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (1.0, 0.6, 0.3)]

    def masks(order, epoch=0, seed=3):
        items = [{"waveform": waveforms[i], "index": 10 + i, "epoch": epoch} for i in order]
        batch = MaskedAudioModelingCollator(BeatsFeatureExtractor(), seed=seed)(items)
        valid = patch_mask_of(batch["attention_mask"])
        return {i: batch["bool_masked_pos"][row][valid[row]] for row, i in enumerate(order)}

    alone = {i: masks([i])[i] for i in range(3)}
    for order in ([0, 1, 2], [2, 0], [1, 2, 0]):
        for i, mask in masks(order).items():
            assert torch.equal(mask, alone[i]), (order, i)
    assert not torch.equal(masks([0], epoch=1)[0], alone[0]) and not torch.equal(masks([0], seed=4)[0], alone[0])


def test_keyed_uniforms_are_uniform_and_independent():
    keys = np.stack([np.zeros(4000, dtype=np.int64), np.arange(4000)], axis=1)
    valid = np.zeros((4000, 24), dtype=bool)
    valid[:, :16] = True
    masked = random_masked_patches(valid, 0.25, KeyedUniforms(0, keys))
    assert np.allclose(masked[:, :16].mean(0), 0.25, atol=0.03)  # binomial sd ~0.007, as for a numpy Generator
    draws = KeyedUniforms(1, keys).random((4000, 24))
    assert 0.0 <= draws.min() and draws.max() < 1.0 and abs(draws.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.05  # neighbouring patches
    assert abs(np.corrcoef(draws[:-1, 0], draws[1:, 0])[0, 1]) < 0.05  # neighbouring clips
    assert np.array_equal(KeyedUniforms(1, keys[:5]).random((5, 24)), draws[:5])


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_nothing_masked_gives_the_encoder_outputs_exactly(variant):
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**CONFIG_VARIANTS[variant])).eval()
    features, mask = padded_batch()
    nothing = torch.zeros(len(LENGTHS), NUM_PATCHES, dtype=torch.bool)
    with torch.no_grad():
        output = model(features, mask, bool_masked_pos=nothing)
        reference = model.beats(features, attention_mask=mask)
    assert output.last_hidden_state.shape == reference.last_hidden_state.shape
    assert torch.equal(output.patch_mask, reference.patch_mask)
    valid = reference.patch_mask
    assert torch.equal(output.last_hidden_state[valid], reference.last_hidden_state[valid])
    assert torch.equal(output.position_ids, torch.arange(NUM_PATCHES).expand(len(LENGTHS), -1))


@pytest.mark.parametrize("variant", sorted(CONFIG_VARIANTS))
def test_visible_only_encoding_equals_full_encoding_with_masked_patches_removed(variant):
    """What makes MAE-style encoding legitimate: encoding only the visible patches (each at its true position) equals,
    at the visible positions, a full-length encoding in which the masked patches are zeroed before the convolutional
    position embedding and excluded as keys in every attention layer; only outputs at masked positions, which nothing
    reads, are skipped."""
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**CONFIG_VARIANTS[variant])).eval()
    features, mask = padded_batch()
    masked = draw_mask(mask)
    visible = patch_mask_of(mask) & ~masked
    with torch.no_grad():
        output = model(features, mask, bool_masked_pos=masked)
        patches = model.beats.patch_embeddings(features)
        # Full length, masked patches treated exactly as padding: zeroed and never attended to.
        removed = model.beats.encoder(patches, patch_mask=visible).last_hidden_state
        kept = model.beats.encoder(patches, patch_mask=patch_mask_of(mask)).last_hidden_state
    for clip in range(len(LENGTHS)):
        count = int(visible[clip].sum())
        assert output.patch_mask[clip].sum() == count
        positions = output.position_ids[clip, :count]
        assert torch.equal(positions, visible[clip].nonzero().squeeze(1))
        encoded = output.last_hidden_state[clip, :count]
        torch.testing.assert_close(encoded, removed[clip, positions], rtol=1e-5, atol=1e-5)
        # The comparison can fail: with the masked patches left in, the visible outputs change.
        assert (encoded - kept[clip, positions]).abs().max() > 1e-2


def test_masked_patch_content_does_not_leak_and_visible_content_matters():
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config()).eval()
    features, mask = padded_batch()
    masked = draw_mask(mask)
    with torch.no_grad():
        logits = model(features, mask, bool_masked_pos=masked).logits
        hidden_patch = int(masked[0].nonzero()[0])
        visible_patch = int((~masked[0]).nonzero()[0])
        changed = features.clone()
        changed[0][patch_region(hidden_patch)] += 5.0
        assert torch.equal(model(changed, mask, bool_masked_pos=masked).logits, logits)
        changed = features.clone()
        changed[0][patch_region(visible_patch)] += 5.0
        assert not torch.allclose(model(changed, mask, bool_masked_pos=masked).logits[0], logits[0])


def test_loss_is_the_cross_entropy_over_masked_valid_patches():
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config()).eval()
    features, mask = padded_batch()
    masked = draw_mask(mask)
    valid = patch_mask_of(mask)
    labels = torch.randint(0, 16, (len(LENGTHS), NUM_PATCHES), generator=torch.Generator().manual_seed(1))
    labels[~valid] = -100
    labels[0, int(masked[0].nonzero()[1])] = -100  # an ignored masked patch
    with torch.no_grad():
        output = model(features, mask, bool_masked_pos=masked, labels=labels)
        selected = masked & valid & (labels != -100)
        expected = F.cross_entropy(output.logits[selected], labels[selected])
        torch.testing.assert_close(output.loss, expected)
        # What the Trainer logs as masked accuracy and codebook coverage (the model computes no metric of its own).
        predictions = output.logits[selected].argmax(-1)
        sums = masked_prediction_sums(output.logits, labels, masked)
        assert sums[0] == (predictions == labels[selected]).sum() and sums[1] == selected.sum()
        assert torch.equal(sums[2:18].nonzero().flatten(), labels[selected].unique())
        assert torch.equal(sums[18:].nonzero().flatten(), predictions.unique())
        # The patch validity the collator derives once per batch gives the same outputs as the frame mask.
        given = model(features, bool_masked_pos=masked, labels=labels, patch_mask=valid)
        torch.testing.assert_close(given.logits, output.logits, rtol=0, atol=0)
        torch.testing.assert_close(given.loss, output.loss, rtol=0, atol=0)
        # Labels of visible patches do not count; labels of masked ones do.
        relabelled = labels.clone()
        relabelled[valid & ~masked] = (relabelled[valid & ~masked] + 1) % 16
        assert torch.equal(model(features, mask, bool_masked_pos=masked, labels=relabelled).loss, output.loss)
        relabelled = labels.clone()
        relabelled[selected] = (relabelled[selected] + 1) % 16
        assert not torch.equal(model(features, mask, bool_masked_pos=masked, labels=relabelled).loss, output.loss)


def test_label_smoothing_changes_the_loss():
    features, mask = padded_batch()
    masked = draw_mask(mask)
    labels = torch.randint(0, 16, (len(LENGTHS), NUM_PATCHES))
    losses = []
    for smoothing in (0.0, 0.1):
        torch.manual_seed(0)
        model = BeatsForMaskedAudioModeling(tiny_config(label_smoothing=smoothing)).eval()
        with torch.no_grad():
            losses.append(model(features, mask, bool_masked_pos=masked, labels=labels).loss)
    assert not torch.allclose(losses[0], losses[1])


@pytest.mark.parametrize("predictor", PREDICTOR_WIDTHS)
def test_every_parameter_gets_a_gradient(predictor):
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**PREDICTOR_WIDTHS[predictor])).train()
    features, mask = padded_batch()
    labels = torch.randint(0, 16, (len(LENGTHS), NUM_PATCHES))
    model(features, mask, bool_masked_pos=draw_mask(mask), labels=labels).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("predictor", PREDICTOR_WIDTHS)
def test_loss_falls_on_a_fixed_batch(predictor):
    """Each clip repeats one row of 16 frames, so a masked patch's code (from the random projection) can be read off
    the same band in a visible row: the model must learn to use the context."""
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**PREDICTOR_WIDTHS[predictor])).train()
    generator = torch.Generator().manual_seed(0)
    _, mask = padded_batch()
    rows = torch.randn(len(LENGTHS), 16, 128, generator=generator)
    noise = torch.randn(len(LENGTHS), NUM_FRAMES, 128, generator=generator)
    features = rows.repeat(1, NUM_FRAMES // 16, 1) + 0.1 * noise
    features = features * mask.unsqueeze(-1)
    tokenizer = BeatsRandomProjectionForAudioTokenization(BeatsRandomProjectionConfig(codebook_size=16))
    labels = tokenizer(features, mask).token_ids
    masked = draw_mask(mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(features, mask, bool_masked_pos=masked, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(np.log(16), rel=0.1)  # random init: about uniform over 16 codes
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


@pytest.mark.parametrize("predictor", PREDICTOR_WIDTHS)
def test_predictor_input_has_encoded_patches_in_place_and_the_mask_embedding_elsewhere(predictor):
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**PREDICTOR_WIDTHS[predictor])).eval()
    width = PREDICTOR_WIDTHS[predictor].get("predictor_hidden_size", 32)
    projection = model.label_predictor.input_projection
    assert (projection is None) == (width == 32)
    features, mask = padded_batch()
    masked = draw_mask(mask)
    captured = {}
    hook = model.label_predictor.register_forward_pre_hook(lambda module, args: captured.update(full=args[0]))
    with torch.no_grad():
        output = model(features, mask, bool_masked_pos=masked)
    hook.remove()
    full, valid = captured["full"], patch_mask_of(mask)
    assert full.shape == (len(LENGTHS), NUM_PATCHES, width)
    encoded = output.last_hidden_state
    with torch.no_grad():
        encoded = encoded if projection is None else projection(encoded)
    for clip in range(len(LENGTHS)):
        count = int(output.patch_mask[clip].sum())
        assert torch.equal(full[clip, output.position_ids[clip, :count]], encoded[clip, :count])
    assert torch.equal(full[masked & valid], model.mask_embedding.expand(int((masked & valid).sum()), -1))
    assert not full[~valid].any()


def test_predictor_sizes_are_validated():
    with pytest.raises(StrictDataclassError, match="label predictor's width \\(20\\) must be divisible by its"):
        tiny_config(predictor_hidden_size=20, predictor_num_attention_heads=3)
    with pytest.raises(StrictDataclassError, match="`predictor_hidden_size` must be a positive integer or None"):
        tiny_config(predictor_hidden_size=0)
    config = tiny_config(**NARROW_PREDICTOR)
    predictor = config.label_predictor_config()
    assert (predictor.hidden_size, predictor.num_attention_heads, predictor.intermediate_size) == (16, 2, 24)
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (32, 4, 48)
    same_width = tiny_config(predictor_hidden_size=32)
    assert same_width.label_predictor_config() is same_width  # as wide as the encoder: no separate sizes


def test_missing_or_misshapen_inputs_are_clear_errors():
    model = BeatsForMaskedAudioModeling(tiny_config()).eval()
    features, mask = padded_batch()
    with pytest.raises(ValueError, match="needs `bool_masked_pos`"):
        model(features, mask)
    with pytest.raises(ValueError, match="bool_masked_pos` has shape"):
        model(features, mask, bool_masked_pos=torch.zeros(3, NUM_PATCHES - 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="`labels` has shape"):
        model(features, mask, bool_masked_pos=draw_mask(mask), labels=torch.zeros(3, 4, dtype=torch.long))


def _load_log(load) -> tuple[object, str]:
    """Runs `load()` with transformers logging at INFO captured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    transformers_logging.set_verbosity_info()
    transformers_logging.add_handler(handler)
    try:
        model = load()
    finally:
        transformers_logging.remove_handler(handler)
        transformers_logging.set_verbosity_warning()
    return model, stream.getvalue()


@pytest.mark.parametrize("predictor", PREDICTOR_WIDTHS)
def test_saved_pretraining_model_loads_as_encoder_and_classifier(tmp_path, predictor):
    torch.manual_seed(0)
    model = BeatsForMaskedAudioModeling(tiny_config(**PREDICTOR_WIDTHS[predictor])).eval()
    model.save_pretrained(tmp_path)
    reloaded = BeatsForMaskedAudioModeling.from_pretrained(tmp_path).eval()
    features, mask = padded_batch()
    masked = draw_mask(mask)
    with torch.no_grad():
        assert torch.equal(reloaded(features, mask, bool_masked_pos=masked).logits,
                           model(features, mask, bool_masked_pos=masked).logits)
    assert torch.equal(reloaded.mask_embedding, model.mask_embedding)

    encoder, log = _load_log(lambda: AutoModel.from_pretrained(tmp_path))
    assert type(encoder) is BeatsModel
    assert "label_predictor" not in log and "mask_embedding" not in log, log
    weight = model.beats.encoder.layers[1].feed_forward.fc2.weight
    assert torch.equal(encoder.encoder.layers[1].feed_forward.fc2.weight, weight)
    with torch.no_grad():
        assert torch.equal(encoder(features, mask).last_hidden_state, model.beats(features, mask).last_hidden_state)

    classifier = BeatsForAudioClassification.from_pretrained(tmp_path, num_labels=3)
    assert torch.equal(classifier.beats.encoder.layers[1].feed_forward.fc2.weight, weight)
    projection = model.beats.patch_embeddings.projection.weight
    assert torch.equal(classifier.beats.patch_embeddings.projection.weight, projection)
