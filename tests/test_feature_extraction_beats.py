"""BeatsFeatureExtractor and the batched Kaldi fbank against the official (torchaudio Kaldi) reference data."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fbank_rounding import assert_within_rounding, exact_features, exact_log_mel

from beats_hf.feature_extraction_beats import (
    BeatsFeatureExtractor,
    _fbank_constants,
    kaldi_fbank,
    logger,
    num_frames,
)

pytestmark = pytest.mark.float_sensitive

REFERENCE = Path(__file__).parent / "fixtures/official_tiny" / "inputs.pt"
EMPTY_MEL_CHANNEL = 3  # its Kaldi triangle holds no FFT bin: always log(eps), normalised to -2.3916928
EMPTY_MEL_VALUE = -2.3916928
REFERENCE_FRAMES = [268, 98, 498]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module")
def clips(reference) -> list[np.ndarray]:
    return [waveform[0].numpy() for waveform in reference["individual_waveforms"]]


@pytest.fixture(scope="module")
def extractor() -> BeatsFeatureExtractor:
    return BeatsFeatureExtractor()


def random_clips(lengths, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.8, 0.8, n).astype(np.float32) for n in lengths]


# ---------------------------------------------------------------------------------------------------------------------
# Parity with the official preprocessing, to float32 rounding (see fbank_rounding.py: MKL's FFT rounds differently on
# every CPU family and code path, so bit-exactness holds only against torchaudio on the same machine)
# ---------------------------------------------------------------------------------------------------------------------


def test_kaldi_fbank_and_official_fbank_within_rounding_of_exact(reference):
    for case, waveforms in (("single_unpadded", "single_waveform"), ("batch_padded", "batch_waveforms")):
        exact, bound = exact_log_mel(reference[waveforms])
        ours = kaldi_fbank(reference[waveforms])
        assert ours.dtype == torch.float32
        assert_within_rounding(ours, exact, bound, f"beats_hf {case}")
        # The reference data itself (computed on another CPU) obeys the same bound, so both sides are honest.
        assert_within_rounding(reference["preprocess"][case]["fbank_raw_log_mel"], exact, bound, f"official {case}")
    single = kaldi_fbank(reference["single_waveform"])
    assert single.shape == (1, 268, 128)
    assert torch.all(single[..., EMPTY_MEL_CHANNEL] == torch.tensor(torch.finfo(torch.float32).eps).log())


def test_rounding_bound_is_tight_where_the_signal_is():
    """The bound must not be so loose that it cannot fail. It is a worst case (every bin may carry the FFT's whole
    error), so it is loosest in the quiet low bins that pre-emphasis leaves; on a loud clip its median is still below
    1e-3 in raw log-mel, and a 1 % error in one upper mel filter's weight (a real bug) breaks it."""
    (clip,) = random_clips([16000])
    exact, bound = exact_log_mel(torch.from_numpy(clip))
    assert bound.median() < 1e-3
    wrong = kaldi_fbank(torch.from_numpy(clip)).double()
    wrong[..., 100] += math.log(1.01)
    with pytest.raises(AssertionError, match="beyond its rounding bound"):
        assert_within_rounding(wrong, exact, bound)


def test_single_clip_features_within_rounding(reference, extractor):
    features = extractor(reference["single_waveform"][0].numpy(), sampling_rate=16000, return_tensors="pt")
    assert features["input_features"].shape == (1, 268, 128)
    exact, bound = exact_features(reference["single_waveform"])
    assert_within_rounding(features["input_features"], exact, bound, "beats_hf")
    assert_within_rounding(reference["preprocess"]["single_unpadded"]["fbank"], exact, bound, "official")
    torch.testing.assert_close(
        features["input_features"][..., EMPTY_MEL_CHANNEL], torch.full((1, 268), EMPTY_MEL_VALUE), rtol=0, atol=1e-6
    )
    assert features["attention_mask"].tolist() == [[1] * 268]


def test_padded_batch_of_reference_clips(reference, clips, extractor):
    features = extractor(clips, sampling_rate=16000, return_tensors="pt")
    input_features, attention_mask = features["input_features"], features["attention_mask"]
    assert input_features.shape == (3, 498, 128) and input_features.dtype == torch.float32
    assert attention_mask.shape == (3, 498) and attention_mask.dtype == torch.int32
    assert attention_mask.sum(-1).tolist() == REFERENCE_FRAMES
    official_batch = reference["preprocess"]["batch_padded"]["fbank"]
    for index, frames in enumerate(REFERENCE_FRAMES):
        assert attention_mask[index, :frames].all() and not attention_mask[index, frames:].any()
        # Frames inside a clip never see its padding: beats_hf and the official padded batch both hold the clip's own
        # features there, each within rounding of the exact ones.
        exact, bound = exact_features(torch.from_numpy(clips[index]))
        assert_within_rounding(input_features[index, :frames], exact[0], bound[0], f"beats_hf clip {index}")
        assert_within_rounding(official_batch[index, :frames], exact[0], bound[0], f"official clip {index}")
        assert torch.all(input_features[index, frames:] == extractor.padding_value)


def test_clip_in_padded_batch_equals_clip_alone_to_rounding(clips):
    """Batch invariance is exact in values that are computed, but MKL may round a transform differently by its place
    in the batch (seen with MKL_CBWR=COMPATIBLE): each row and each clip alone stay within rounding of the exact
    features, and the padding is exactly `padding_value`."""
    extractor = BeatsFeatureExtractor(padding_value=-7.0)
    batch = extractor(clips, sampling_rate=16000, return_tensors="pt")
    for index, clip in enumerate(clips):
        alone = extractor(clip, sampling_rate=16000, return_tensors="pt")["input_features"][0]
        frames = alone.shape[0]
        assert frames == num_frames(len(clip)) == REFERENCE_FRAMES[index]
        exact, bound = exact_features(torch.from_numpy(clip))
        assert_within_rounding(alone, exact[0], bound[0], f"clip {index} alone")
        assert_within_rounding(batch["input_features"][index, :frames], exact[0], bound[0], f"clip {index} in batch")
        assert torch.all(batch["input_features"][index, frames:] == -7.0)


# ---------------------------------------------------------------------------------------------------------------------
# Input forms and output types
# ---------------------------------------------------------------------------------------------------------------------


def test_numpy_torch_list_and_2d_inputs_agree(extractor):
    clip_a, clip_b = random_clips([4000, 4000])
    expected = extractor([clip_a, clip_b], sampling_rate=16000, return_tensors="pt")["input_features"]
    variants = [
        [torch.from_numpy(clip_a), torch.from_numpy(clip_b)],
        np.stack([clip_a, clip_b]),
        torch.from_numpy(np.stack([clip_a, clip_b])),
        [clip_a.astype(np.float64), clip_b.astype(np.float64)],
        (clip_a.tolist(), clip_b.tolist()),
        [clip_a[None, :], clip_b[:, None]],  # a singleton channel axis is already mono
    ]
    for variant in variants:
        assert torch.equal(extractor(variant, sampling_rate=16000, return_tensors="pt")["input_features"], expected)
    single = extractor(clip_a, sampling_rate=16000, return_tensors="pt")["input_features"]
    assert torch.equal(extractor(clip_a.tolist(), sampling_rate=16000, return_tensors="pt")["input_features"], single)
    exact, bound = exact_features(torch.from_numpy(clip_a))
    assert_within_rounding(single, exact, bound, "alone")
    assert_within_rounding(expected[:1], exact, bound, "first of two")


def test_return_tensors_types_and_shapes(extractor):
    clips = random_clips([4000, 3200])
    frames = [num_frames(4000), num_frames(3200)]

    pt = extractor(clips, sampling_rate=16000, return_tensors="pt")
    assert list(pt.keys()) == extractor.model_input_names
    assert isinstance(pt["input_features"], torch.Tensor) and pt["input_features"].shape == (2, frames[0], 128)
    assert isinstance(pt["attention_mask"], torch.Tensor) and pt["attention_mask"].dtype == torch.int32

    np_out = extractor(clips, sampling_rate=16000, return_tensors="np")
    assert isinstance(np_out["input_features"], np.ndarray) and np_out["input_features"].dtype == np.float32
    assert np_out["attention_mask"].dtype == np.int32 and np_out["attention_mask"].shape == (2, frames[0])
    np.testing.assert_array_equal(np_out["input_features"], pt["input_features"].numpy())

    listed = extractor(clips, sampling_rate=16000)
    assert isinstance(listed["input_features"], list) and len(listed["input_features"]) == 2
    assert all(row.shape == (frames[0], 128) and row.dtype == np.float32 for row in listed["input_features"])
    assert [row.sum() for row in listed["attention_mask"]] == frames

    ragged = extractor(clips, sampling_rate=16000, padding=False)
    assert [row.shape[0] for row in ragged["input_features"]] == frames
    with pytest.raises(ValueError, match="padding=True"):
        extractor(clips, sampling_rate=16000, padding=False, return_tensors="pt")

    no_mask = extractor(clips, sampling_rate=16000, return_tensors="pt", return_attention_mask=False)
    assert list(no_mask.keys()) == ["input_features"]


def test_truncation_and_max_length_padding(extractor):
    (clip,) = random_clips([6000])
    truncated = extractor(clip, sampling_rate=16000, return_tensors="pt", truncation=True, max_length=3000)
    expected = extractor(clip[:3000], sampling_rate=16000, return_tensors="pt")
    assert torch.equal(truncated["input_features"], expected["input_features"])

    padded = extractor(clip, sampling_rate=16000, return_tensors="pt", padding="max_length", max_length=8000)
    assert padded["input_features"].shape == (1, num_frames(8000), 128)
    assert padded["attention_mask"].sum().item() == num_frames(6000)
    with pytest.raises(ValueError, match="truncation=True"):
        extractor(clip, sampling_rate=16000, padding="max_length", max_length=5000)
    with pytest.raises(ValueError, match="max_length"):
        extractor(clip, sampling_rate=16000, truncation=True)


def test_save_and_load_round_trip(tmp_path):
    extractor = BeatsFeatureExtractor(padding_value=-1.0, fbank_mean=10.0, fbank_std=5.0, return_attention_mask=False)
    extractor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = BeatsFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    assert (loaded.fbank_mean, loaded.fbank_std, loaded.padding_value) == (10.0, 5.0, -1.0)
    settings = ("feature_size", "sampling_rate", "frame_length", "hop_length", "patch_size")
    assert [getattr(loaded, name) for name in settings] == [128, 16000, 400, 160, 16]
    assert loaded.return_attention_mask is False
    clips = random_clips([3000, 5000])
    np.testing.assert_array_equal(
        loaded(clips, sampling_rate=16000, return_tensors="np")["input_features"],
        extractor(clips, sampling_rate=16000, return_tensors="np")["input_features"],
    )


@pytest.mark.parametrize("num_clips", [3, 9])  # one block of 3 rows / three blocks of 4, 4 and 1 rows
def test_blocked_cpu_fbank_equals_each_clip_alone(num_clips):
    """On CPU, batches over _CPU_BLOCK_FRAMES frames are computed block by block: every row, and every clip alone, must
    still be the clip's own filter bank (to rounding: see test_clip_in_padded_batch_equals_clip_alone_to_rounding)."""
    waveforms = torch.from_numpy(np.stack(random_clips([160000] * num_clips, seed=num_clips)))  # 998 frames each
    batched = kaldi_fbank(waveforms)
    assert batched.shape == (num_clips, 998, 128)
    exact, bound = exact_log_mel(waveforms)
    assert_within_rounding(batched, exact, bound, "batched")
    for index in (0, num_clips - 1):
        assert_within_rounding(kaldi_fbank(waveforms[index]), exact[index : index + 1], bound[index : index + 1])


def test_fbank_constants_are_built_once():
    first = _fbank_constants(128, 16000, 400, torch.device("cpu"), torch.float32)
    assert _fbank_constants(128, 16000, 400, torch.device("cpu"), torch.float32) is first
    window, mel_banks, _ = first
    assert window.shape == (400,) and mel_banks.shape == (128, 257)
    assert torch.all(mel_banks[:, -1] == 0) and torch.all(mel_banks[EMPTY_MEL_CHANNEL] == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_cpu(clips, extractor):
    on_gpu = extractor(clips, sampling_rate=16000, return_tensors="pt", device="cuda")
    assert on_gpu["input_features"].is_cuda and on_gpu["attention_mask"].is_cuda
    on_cpu = extractor(clips, sampling_rate=16000, return_tensors="pt")
    for index, clip in enumerate(clips):  # cuFFT obeys the same kind of rounding bound as MKL
        exact, bound = exact_features(torch.from_numpy(clip))
        frames = exact.shape[1]
        assert_within_rounding(on_gpu["input_features"][index, :frames].cpu(), exact[0], bound[0], f"cuda {index}")
    assert torch.equal(on_gpu["attention_mask"].cpu(), on_cpu["attention_mask"])


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_input", "kwargs", "match"),
    [
        (lambda c: c, {"sampling_rate": 44100}, r"44100 Hz.*Resample.*16 kHz.*Audio\(sampling_rate=16000\)"),
        (lambda c: c, {"sampling_rate": 8000}, r"8000 Hz"),
        (lambda c: [c, np.stack([c, c])], {}, r"Clip 1 has shape \(2, 4000\).*mono"),
        (lambda c: np.stack([c, c], axis=-1), {}, r"\(4000, 2\).*multi-channel.*mono"),
        (lambda c: np.stack([c, c])[None], {}, r"\(1, 2, 4000\).*mono"),
        (lambda c: [c, c[:2000]], {}, r"Clip 1 has 2000 samples.*at least 2800 samples \(0\.175 s"),
        (lambda c: [c[:399]], {}, r"Clip 0 has 399 samples.*0\.175 s"),
        (lambda c: [c, np.where(np.arange(4000) == 7, np.nan, c)], {}, r"Clip 1 contains NaN or Inf"),
        (lambda c: [np.where(np.arange(4000) == 7, np.inf, c), c], {}, r"Clip 0 contains NaN or Inf"),
        (lambda c: [], {}, r"empty batch"),
        (lambda c: [c, np.zeros(0, np.float32)], {}, r"Clip 1 is empty"),
        (lambda c: (c * 32767).astype(np.int16), {}, r"integer dtype int16.*32768"),
        (lambda c: [c, torch.from_numpy((c * 32767).astype(np.int16))], {}, r"Clip 1 has integer dtype int16.*32768"),
        (lambda c: c, {"return_tensors": "tf"}, r"return_tensors"),
    ],
)
def test_bad_inputs_raise_helpful_errors(extractor, make_input, kwargs, match):
    (clip,) = random_clips([4000])
    kwargs = {"sampling_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=match):
        extractor(make_input(clip), **kwargs)


def test_missing_sampling_rate_warns(extractor, caplog):
    (clip,) = random_clips([4000])
    # transformers-style loggers may not propagate to the root logger that caplog listens on.
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            extractor(clip)
            assert any("sampling_rate" in record.getMessage() for record in caplog.records)
            caplog.clear()
            extractor(clip, sampling_rate=16000)
            assert not caplog.records
    finally:
        logger.removeHandler(caplog.handler)
