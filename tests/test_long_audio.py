"""The chunked long-audio path: equivalence with one forward, the row grid, stitching, frequency-band pooling across
windows, and argument checks."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from fbank_rounding import UNIT_ROUNDOFF, assert_within_rounding, exact_features, gamma

import beats_hf.long_audio as long_audio
from beats_hf import BeatsFeatureExtractor, BeatsForAudioClassification, BeatsModel
from beats_hf.long_audio import _BandMoments, embed_long_audio, plan_windows, row_owners
from beats_hf.modeling_beats import pool_frequency_bands

SAMPLING_RATE = 16000
ROW = 2560  # samples between 160 ms rows
ROW_SPAN = 2800  # samples one row needs



@pytest.fixture(scope="module")
def model() -> BeatsModel:
    torch.manual_seed(0)
    return BeatsModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def feature_extractor() -> BeatsFeatureExtractor:
    return BeatsFeatureExtractor()


def waveform(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(round(seconds * SAMPLING_RATE), generator=generator)


def rows_alone(model, feature_extractor, audio: torch.Tensor) -> torch.Tensor:
    """Per-row vectors of one plain forward pass over `audio` (no padding)."""
    inputs = feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(inputs["input_features"]).last_hidden_state[0]
    return hidden.view(-1, 8, hidden.shape[-1]).mean(1)


@pytest.mark.parametrize("seconds", [3.0, 1.0, 0.2])
def test_one_window_equals_the_unchunked_forward(model, feature_extractor, seconds):
    audio = waveform(seconds)
    result = embed_long_audio(model, feature_extractor, audio, window_seconds=10.0)
    inputs = feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**inputs).last_hidden_state[0]
    torch.testing.assert_close(result.clip_embedding, hidden.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.frame_embeddings, hidden.view(-1, 8, 32).mean(1), atol=1e-5, rtol=0)
    assert result.window_starts.tolist() == [0.0]


def test_row_count_and_time_stamps(model, feature_extractor):
    audio = waveform(7.3)
    result = embed_long_audio(model, feature_extractor, audio, window_seconds=2.0, hop_seconds=1.6, batch_size=3)
    num_rows = (audio.shape[0] - ROW_SPAN) // ROW + 1
    assert num_rows == 45
    assert result.frame_embeddings.shape == (num_rows, 32)
    torch.testing.assert_close(result.frame_times, torch.arange(num_rows, dtype=torch.float64) * 0.16)
    assert result.hop_seconds == pytest.approx(1.6)
    # 2 s windows hold 12 rows; a hop of 10 rows; windows until one reaches row 44.
    assert result.window_starts.tolist() == pytest.approx([0.0, 1.6, 3.2, 4.8, 6.4])
    torch.testing.assert_close(result.clip_embedding, result.frame_embeddings.mean(0))


def test_every_row_comes_from_the_window_where_it_is_most_central(model, feature_extractor):
    audio = waveform(5.0, seed=1)
    window_seconds, hop_seconds = 2.0, 1.28  # 12 rows per window, a hop of 8 rows: 4 rows of overlap
    result = embed_long_audio(model, feature_extractor, audio, window_seconds, hop_seconds, batch_size=2)
    windows, total_rows, _ = plan_windows(audio.shape[0], feature_extractor, window_seconds, hop_seconds)
    assert [start // ROW for start, _ in windows] == [0, 8, 16, 24]
    assert total_rows == 31
    # Each window alone (the last, shorter one unpadded): the padded and masked batch must give the same rows.
    alone = [rows_alone(model, feature_extractor, audio[start:end]) for start, end in windows]
    assert [len(rows) for rows in alone] == [12, 12, 12, 7]
    # Overlap rows 8-11 of windows 0 and 1: rows 8 and 9 are more central in window 0, 10 and 11 in window 1
    # (margins 3/0, 2/1, 1/2, 0/3); the same pattern at rows 16-19 and 24-27 (the last window ends with the
    # recording, whose end is no window edge).
    source = [0] * 10 + [1] * 8 + [2] * 8 + [3] * 5
    expected = torch.stack([alone[window][row - 8 * window] for row, window in enumerate(source)])
    torch.testing.assert_close(result.frame_embeddings, expected, atol=1e-5, rtol=0)


def test_windows_without_overlap_tile_the_recording(model, feature_extractor):
    audio = waveform(4.0, seed=2)
    result = embed_long_audio(model, feature_extractor, audio, window_seconds=1.92, hop_seconds=1.76)
    windows, total_rows, grid = plan_windows(audio.shape[0], feature_extractor, 1.92, 1.76)
    assert grid.window_rows == 11 and grid.hop_rows == 11  # 1.92 s holds 11 rows: no overlap
    alone = [rows_alone(model, feature_extractor, audio[start:end]) for start, end in windows]
    torch.testing.assert_close(result.frame_embeddings, torch.cat(alone), atol=1e-5, rtol=0)
    assert result.frame_embeddings.shape[0] == total_rows


def test_layer_selection(model, feature_extractor):
    audio = waveform(3.0)
    default = embed_long_audio(model, feature_extractor, audio, window_seconds=2.0)
    last = embed_long_audio(model, feature_extractor, audio, window_seconds=2.0, layer=-1)
    torch.testing.assert_close(default.frame_embeddings, last.frame_embeddings)
    first = embed_long_audio(model, feature_extractor, audio, window_seconds=2.0, layer=0)
    one_hot = embed_long_audio(model, feature_extractor, audio, window_seconds=2.0,
                               layer_weights=torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(first.frame_embeddings, one_hot.frame_embeddings)
    assert not torch.allclose(first.frame_embeddings, last.frame_embeddings)


def test_head_models_and_numpy_input(feature_extractor):
    torch.manual_seed(0)
    classifier = BeatsForAudioClassification(tiny_config(num_labels=3)).eval()
    audio = waveform(2.5)
    from_head = embed_long_audio(classifier, feature_extractor, audio.numpy()[None], window_seconds=2.0)
    from_encoder = embed_long_audio(classifier.beats, feature_extractor, audio, window_seconds=2.0)
    torch.testing.assert_close(from_head.clip_embedding, from_encoder.clip_embedding)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window_seconds=2.0, hop_seconds=2.5), "leave gaps"),
        (dict(window_seconds=1.9, hop_seconds=1.9), "holds only 11 rows"),
        (dict(window_seconds=2.0, hop_seconds=0.05), "rounds to 0 rows"),
        (dict(window_seconds=2.0, hop_seconds=0.0), "must be positive"),
        (dict(window_seconds=0.1), "shorter than one row"),
        (dict(window_seconds=-1.0), "must be positive"),
        (dict(layer=0, layer_weights=torch.ones(3)), "either `layer` or `layer_weights`"),
        (dict(batch_size=0), "at least 1"),
        (dict(sampling_rate=44100), "resample"),
        (dict(pooling="max"), "must be one of"),
    ],
)
def test_argument_errors(model, feature_extractor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        embed_long_audio(model, feature_extractor, waveform(3.0), **kwargs)


def test_input_errors(model, feature_extractor):
    with pytest.raises(ValueError, match="fewer than the 2800"):
        embed_long_audio(model, feature_extractor, waveform(0.1))
    with pytest.raises(ValueError, match="mono audio"):
        embed_long_audio(model, feature_extractor, torch.zeros(2, 48000))


# ---------------------------------------------------------------------------------------------------------------------
# Frequency-band pooling across windows
# ---------------------------------------------------------------------------------------------------------------------


def exact_band_statistics(rows: torch.Tensor) -> torch.Tensor:
    """`frequency_bands` pooling of `(rows, bands, C)` in float64: per band the mean, then sqrt(variance + 1e-6)."""
    rows = rows.double()
    mean = rows.mean(0)
    std = ((rows - mean).square().mean(0) + 1e-6).sqrt()
    return torch.cat([mean, std], -1).flatten()


def pooling_rounding_bound(rows: torch.Tensor) -> torch.Tensor:
    """Bound on how far `pool_frequency_bands` (float32) of the float32 `rows` `(R, bands, C)` lies from the exact
    pooling, per output element (Higham's gamma_k = k u / (1 - k u) for a sum of k + 1 terms).
      mean: a sum of R terms (gamma_{R-1} sum |x|), then a division (u |m|): e_m <= gamma_R mean|x| + u |m|;
      deviations fl(x - m^) = x - m + (m - m^) + one rounding: e_d <= e_m + u (|x - m| + e_m);
      variance: the squares of the perturbed deviations (e_d (2 |x - m| + e_d)), their rounding, the sum and the
        division (gamma_{R+1} (|x - m| + e_d)^2), averaged over the rows;
      std = sqrt(variance + 1e-6): the addition's rounding, the square root's slope 1 / (2 std) (bounded by 1 / std)
        and its own rounding (2u std)."""
    x = rows.double()
    count = x.shape[0]
    mean = x.mean(0)
    e_mean = gamma(count) * x.abs().mean(0) + UNIT_ROUNDOFF * mean.abs()
    deviation = (x - mean).abs()
    e_deviation = e_mean + UNIT_ROUNDOFF * (deviation + e_mean)
    variance = deviation.square().mean(0)
    e_variance = (e_deviation * (2 * deviation + e_deviation)).mean(0) + gamma(count + 1) * (
        deviation + e_deviation
    ).square().mean(0)
    e_input = e_variance + UNIT_ROUNDOFF * (variance + 1e-6 + e_variance)
    std = (variance + 1e-6).sqrt()
    e_std = e_input / std + 2 * UNIT_ROUNDOFF * std
    return torch.cat([e_mean, e_std], -1).flatten()


def test_band_moments_merge_to_the_statistics_of_all_rows():
    """The merge rule M2 = M2_A + M2_B + (m_B - m_A)^2 n_A n_B / n is exact algebra: any split of the rows into
    blocks (empty ones included) gives the statistics of all rows, to float64 rounding (100 rows of size ~1: a few
    hundred operations of relative error 2^-53 each, far below 1e-12)."""
    rows = torch.randn(100, 8, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2.0
    expected = exact_band_statistics(rows)
    for splits in ([100], [1, 99], [37, 0, 40, 23], [10] * 10):
        moments = _BandMoments()
        for block in torch.split(rows, splits):
            moments.add(block)
        assert moments.count == 100
        torch.testing.assert_close(moments.statistics(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seconds", [3.0, 1.0, 0.2])
def test_frequency_bands_of_one_window_equal_the_head_pooling(model, feature_extractor, seconds):
    """A recording that fits in one window: the chunked per-band statistics (merged in float64, returned in float32)
    are those of `pool_frequency_bands` (float32) over the same hidden states, each within its rounding bound."""
    audio = waveform(seconds)
    result = embed_long_audio(model, feature_extractor, audio, window_seconds=10.0, pooling="frequency_bands")
    inputs = feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    pooled = pool_frequency_bands(outputs.last_hidden_state, outputs.patch_mask, 8)[0]
    rows = outputs.last_hidden_state[0].view(-1, 8, 32)
    exact = exact_band_statistics(rows)
    assert result.clip_embedding.shape == (2 * 8 * 32,)
    # Ours: float64 merging, then one rounding to float32.
    tolerance = pooling_rounding_bound(rows) + UNIT_ROUNDOFF * exact.abs() + 1e-12
    assert ((result.clip_embedding.double() - pooled.double()).abs() <= tolerance).all()


def sliced_window_features(feature_extractor, audio: torch.Tensor):
    """A stand-in for `long_audio._window_features` that cuts each window's frames out of the recording's own
    features, so that windows and the whole recording get bit-identical inputs. (That the real per-window fbank is
    the recording's, to rounding, is `test_window_features_are_the_recording_features`.)"""
    whole = feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"][0]

    def window_features(_, __, windows, device):
        pieces = [whole[start // 160 : start // 160 + 1 + (end - start - 400) // 160] for start, end in windows]
        length = max(len(piece) for piece in pieces)
        features = torch.stack([F.pad(piece, (0, 0, 0, length - len(piece))) for piece in pieces])
        mask = torch.stack([(torch.arange(length) < len(piece)).int() for piece in pieces])
        return {"input_features": features.to(device), "attention_mask": mask.to(device)}

    return whole, window_features


@pytest.fixture(scope="module")
def model64(model) -> BeatsModel:
    return copy.deepcopy(model).double()


@pytest.mark.float_sensitive
def test_window_features_are_the_recording_features(feature_extractor):
    """The premise of `sliced_window_features`: a window's fbank, computed on its own samples, is the recording's
    fbank at the window's frames (each within the derived float32 rounding bound of the exact value)."""
    audio = waveform(5.0, seed=4)
    exact, bound = exact_features(audio)
    windows, _, _ = plan_windows(audio.shape[0], feature_extractor, 2.0, 1.6)
    features = long_audio._window_features(feature_extractor, audio, windows, "cpu")
    for index, (start, end) in enumerate(windows):
        frames = 1 + (end - start - 400) // 160
        assert int(features["attention_mask"][index].sum()) == frames
        piece = slice(start // 160, start // 160 + frames)
        assert_within_rounding(features["input_features"][index, :frames], exact[0, piece], bound[0, piece],
                               f"window {index}")


def test_frequency_bands_across_windows_equal_the_unchunked_pooling_at_layer_0(model64, feature_extractor,
                                                                                monkeypatch):
    """Where chunking changes nothing mathematically, the chunked per-band statistics are the unchunked ones.

    Hidden state 0 (the encoder input) sees its neighbours only through the position convolution, whose kernel of 16
    patches reaches 8 patches = 1 row to each side. With 2 s windows every 1.6 s (12 rows, a hop of 10: 2 rows of
    overlap, split between the two windows) each stitched row is at least 1 row from any window edge, so it is
    exactly the unchunked row; the statistics then differ only by rounding. The model runs in float64 (rounding
    ~1e-16 relative, under 1e-10 absolute here) and the outputs are float32: tolerance u |x| + 1e-10.
    At the last layer attention sees the whole window, so there the chunked result must differ."""
    audio = waveform(7.3, seed=5)
    whole, window_features = sliced_window_features(feature_extractor, audio)
    monkeypatch.setattr(long_audio, "_window_features", window_features)
    result = embed_long_audio(model64, feature_extractor, audio, 2.0, 1.6, batch_size=2, layer=0,
                              pooling="frequency_bands")
    assert len(result.window_starts) == 5
    with torch.inference_mode():
        outputs = model64(whole[None].double(), output_hidden_states=True)
    rows = outputs.hidden_states[0][0].view(-1, 8, 32)
    expected = exact_band_statistics(rows)
    torch.testing.assert_close(result.clip_embedding.double(), expected,
                               atol=1e-10 + UNIT_ROUNDOFF * float(expected.abs().max()), rtol=0)
    frames = rows.mean(1)
    torch.testing.assert_close(result.frame_embeddings.double(), frames,
                               atol=1e-10 + UNIT_ROUNDOFF * float(frames.abs().max()), rtol=0)

    last = embed_long_audio(model64, feature_extractor, audio, 2.0, 1.6, batch_size=2, pooling="frequency_bands")
    unchunked_last = exact_band_statistics(outputs.last_hidden_state[0].view(-1, 8, 32))
    assert (last.clip_embedding.double() - unchunked_last).abs().max() > 1e-3


def test_frequency_bands_across_windows_pool_the_stitched_rows(model64, feature_extractor, monkeypatch):
    """At the last layer (full context effects), the chunked per-band statistics are those of the stitched rows:
    each row of the recording from the window where it is most central (`row_owners`), every row counted once.
    Each window is run alone here (the chunked path runs them in padded batches); float64 model, float32 output."""
    audio = waveform(6.1, seed=6)
    window_seconds, hop_seconds = 2.0, 1.28  # 12 rows, a hop of 8: 4 rows of overlap
    whole, window_features = sliced_window_features(feature_extractor, audio)
    monkeypatch.setattr(long_audio, "_window_features", window_features)
    result = embed_long_audio(model64, feature_extractor, audio, window_seconds, hop_seconds, batch_size=3,
                              pooling="frequency_bands")
    windows, total_rows, grid = plan_windows(audio.shape[0], feature_extractor, window_seconds, hop_seconds)
    owner = row_owners(windows, total_rows, grid)
    stitched = torch.zeros(total_rows, 8, 32, dtype=torch.float64)
    for index, (start, end) in enumerate(windows):
        features = window_features(None, None, [(start, end)], "cpu")["input_features"].double()
        with torch.inference_mode():
            rows = model64(features).last_hidden_state[0].view(-1, 8, 32)
        first = start // ROW
        mine = (owner[first : first + len(rows)] == index).nonzero().flatten()
        stitched[first + mine] = rows[mine]
    assert owner.unique().tolist() == list(range(len(windows)))  # every window contributes
    expected = exact_band_statistics(stitched)
    torch.testing.assert_close(result.clip_embedding.double(), expected,
                               atol=1e-10 + UNIT_ROUNDOFF * float(expected.abs().max()), rtol=0)
    torch.testing.assert_close(result.frame_embeddings.double(), stitched.mean(1),
                               atol=1e-10 + UNIT_ROUNDOFF * float(stitched.abs().max()), rtol=0)


@pytest.mark.parametrize(
    ("hop_seconds", "expected"),
    [
        # 4 rows of overlap: as in test_every_row_comes_from_the_window_where_it_is_most_central.
        (1.28, [0] * 10 + [1] * 8 + [2] * 8 + [3] * 5),
        # 3 rows of overlap: the middle one is as central in both windows and goes to the earlier one (rows 10, 19,
        # 28); the last window ends with the recording, whose end is no edge.
        (1.44, [0] * 11 + [1] * 9 + [2] * 9 + [3] * 2),
    ],
)
def test_row_owners_take_each_row_from_its_most_central_window(feature_extractor, hop_seconds, expected):
    windows, total_rows, grid = plan_windows(round(5.0 * SAMPLING_RATE), feature_extractor, 2.0, hop_seconds)
    assert row_owners(windows, total_rows, grid).tolist() == expected
