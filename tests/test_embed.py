"""`beats-hf embed`: shapes, pooling and formats on a tiny model and generated audio."""

import json
import wave

import datasets
import numpy as np
import pytest
import torch

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel
from beats_hf.cli import main as cli

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_embedding_dim=32,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0)
SECONDS = (1.0, 2.5, 0.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    BeatsModel(BeatsConfig(**TINY)).save_pretrained(root / "model")
    BeatsFeatureExtractor().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "audio").mkdir()
    for index, seconds in enumerate(SECONDS):
        samples = (0.2 * rng.standard_normal(int(16000 * seconds))).clip(-1, 1)
        with wave.open(str(root / "audio" / f"clip{index}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            handle.writeframes((samples * 32767).astype("<i2").tobytes())
    (root / "audio" / "broken.wav").write_bytes(b"not audio at all")
    return root


def expected_rows(seconds: float) -> int:
    frames = 1 + (int(16000 * seconds) - 400) // 160
    return frames // 16


def test_npy_clip_and_frame_embeddings(setup, tmp_path):
    assert cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir",
                str(tmp_path), "--format", "npy", "--frames", "--batch_size", "2"]) == 0
    clips = np.load(tmp_path / "clip_embeddings.npy")
    order = np.load(tmp_path / "indices.npy")
    offsets = np.load(tmp_path / "frame_offsets.npy")
    frames = np.load(tmp_path / "frame_embeddings.npy")
    assert clips.shape == (3, 32)
    summary = json.loads((tmp_path / "embeddings.json").read_text())
    assert summary["clips"] == 3 and summary["skipped"] == 1

    # The embeddings are the mean of the last layer over valid patches, computed for each clip alone.
    dataset = datasets.load_dataset("audiofolder", data_dir=str(setup / "audio"), split="train")
    model = BeatsModel.from_pretrained(setup / "model").eval()
    extractor = BeatsFeatureExtractor()
    files = [dataset.cast_column("audio", datasets.Audio(decode=False))[int(i)]["audio"]["path"] for i in order]
    for row, path in enumerate(files):
        seconds = SECONDS[int(path.split("clip")[-1][0])]
        with wave.open(path) as handle:
            samples = np.frombuffer(handle.readframes(handle.getnframes()), "<i2").astype(np.float32) / 32768
        with torch.no_grad():
            hidden = model(**extractor(samples, sampling_rate=16000, return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(clips[row], hidden.mean(0).numpy(), atol=1e-4)
        rows = frames[offsets[row] : offsets[row + 1]]
        assert rows.shape == (expected_rows(seconds), 32)
        np.testing.assert_allclose(rows, hidden.view(-1, 8, 32).mean(1).numpy(), atol=1e-4)


def test_datasets_output_and_layer_choice(setup, tmp_path):
    cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir", str(tmp_path / "a"),
         "--layer", "0"])
    cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir", str(tmp_path / "b"),
         "--layer", "weighted", "--frames"])
    first = datasets.load_from_disk(str(tmp_path / "a" / "embeddings"))
    mixed = datasets.load_from_disk(str(tmp_path / "b" / "embeddings"))
    assert len(first) == 3 and len(np.asarray(first[0]["clip_embedding"])) == 32
    assert "frame_embeddings" in mixed.column_names
    assert not np.allclose(first["clip_embedding"], mixed["clip_embedding"])


def test_bad_layer_is_a_clear_error(setup, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir",
             str(tmp_path), "--layer", "7"])


def test_frequency_band_pooling(setup, tmp_path):
    """`--pooling frequency_bands`: per band, mean and std over the time rows, as the classifier head of that name."""
    assert cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir",
                str(tmp_path), "--format", "npy", "--pooling", "frequency_bands"]) == 0
    clips = np.load(tmp_path / "clip_embeddings.npy")
    assert clips.shape == (3, 2 * 8 * 32)
    assert json.loads((tmp_path / "embeddings.json").read_text())["clip_embedding_size"] == 2 * 8 * 32
    means = clips.reshape(3, 8, 2, 32)[:, :, 0]
    plain = tmp_path / "plain"
    cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir", str(plain),
         "--format", "npy"])
    # The mean of the band means is the plain mean (every band has the same number of valid rows).
    np.testing.assert_allclose(means.mean(1), np.load(plain / "clip_embeddings.npy"), atol=1e-5)
    assert (clips.reshape(3, 8, 2, 32)[:, :, 1] > 0).all()
    with pytest.raises(SystemExit):
        cli(["embed", "--model", str(setup / "model"), "--data", str(setup / "audio"), "--output_dir",
             str(tmp_path / "x"), "--pooling", "frequency_bands", "--chunk_seconds", "1.0"])

