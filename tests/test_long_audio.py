"""The chunked long-audio path: equivalence with one forward, the row grid, stitching, and argument checks."""

import pytest
import torch
from conftest import tiny_config

from beats_hf import BeatsFeatureExtractor, BeatsForAudioClassification, BeatsModel
from beats_hf.long_audio import embed_long_audio, plan_windows

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
