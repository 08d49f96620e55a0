"""`beats-hf embed`: shapes, pooling and formats on a tiny model and generated audio; long recordings chunked by
default."""

import json
import wave
from contextlib import contextmanager

import datasets
import numpy as np
import pytest
import torch

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel
from beats_hf.audio_data import AudioClips, load_audio_dataset
from beats_hf.cli import main as cli
from beats_hf.long_audio import embed_long_audio

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_embedding_dim=32,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0)
SECONDS = (1.0, 2.5, 0.5)


def write_wav(path, seconds: float, rng) -> None:
    samples = (0.2 * rng.standard_normal(int(16000 * seconds))).clip(-1, 1)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    BeatsModel(BeatsConfig(**TINY)).save_pretrained(root / "model")
    BeatsFeatureExtractor().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "audio").mkdir()
    for index, seconds in enumerate(SECONDS):
        write_wav(root / "audio" / f"clip{index}.wav", seconds, rng)
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



# ---------------------------------------------------------------------------------------------------------------------
# Bounded memory by default: long recordings go through windows
# ---------------------------------------------------------------------------------------------------------------------

LONG_SECONDS = 25.0  # 156 rows: 10 s windows (62 rows) every 8 s (50 rows) -> windows at 0, 8 and 16 s
WINDOW_FRAMES = 998  # Kaldi frames of a 10 s window


@pytest.fixture(scope="module")
def long_audio_folder(tmp_path_factory):
    """A 25 s recording and a 1.5 s one (audiofolder order: long.wav, short.wav)."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(1)
    write_wav(root / "long.wav", LONG_SECONDS, rng)
    write_wav(root / "short.wav", 1.5, rng)
    return root


@contextmanager
def encoder_inputs():
    """Records the `input_features` shape of every BeatsModel forward pass."""
    shapes = []

    def hook(module, args, output):
        if isinstance(module, BeatsModel):
            shapes.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield shapes
    finally:
        handle.remove()


def decoded(folder):
    """The waveforms as the command decodes them, in its order."""
    clips = AudioClips(load_audio_dataset(str(folder)), crop_seconds=None, label_column=None, replace_bad=False)
    return [clips[i]["waveform"] for i in range(len(clips))]


def run_embed(setup, folder, output, *extra):
    assert cli(["embed", "--model", str(setup / "model"), "--data", str(folder), "--output_dir", str(output),
                "--format", "npy", "--frames", *extra]) == 0
    offsets = np.load(output / "frame_offsets.npy")
    frames = np.load(output / "frame_embeddings.npy")
    assert np.load(output / "indices.npy").tolist() == [0, 1]
    return np.load(output / "clip_embeddings.npy"), [frames[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("pooling", ["mean", "frequency_bands"])
def test_default_chunks_long_recordings(setup, long_audio_folder, tmp_path, pooling):
    """With no chunking flag, no forward pass sees more than one 10 s window: the 25 s file goes through 3 windows
    in one batch, the short one whole, and the long file's outputs are those of `embed_long_audio` with the
    documented defaults (the same computation: identical numbers)."""
    with encoder_inputs() as shapes:
        clips, frames = run_embed(setup, long_audio_folder, tmp_path, "--pooling", pooling)
    assert sorted(shapes) == sorted([(3, WINDOW_FRAMES, 128), (1, 148, 128)])
    summary = json.loads((tmp_path / "embeddings.json").read_text())
    assert summary["chunk_seconds"] == 10.0 and summary["hop_seconds"] == pytest.approx(8.0)

    model = BeatsModel.from_pretrained(setup / "model").eval()
    long, short = decoded(long_audio_folder)
    expected = embed_long_audio(model, BeatsFeatureExtractor(), long, batch_size=8, layer=-1, pooling=pooling)
    assert expected.window_starts.tolist() == [0.0, 8.0, 16.0]
    np.testing.assert_array_equal(clips[0], expected.clip_embedding.numpy())
    np.testing.assert_array_equal(frames[0], expected.frame_embeddings.numpy())
    assert frames[0].shape == (expected_rows(LONG_SECONDS), 32) and frames[1].shape == (expected_rows(1.5), 32)


def test_no_chunking_runs_whole_recordings(setup, long_audio_folder, tmp_path):
    """`--no_chunking`: one forward over the whole 25 s (the old behaviour), whose clip embedding is the mean over
    all its patches; it differs from the chunked one, whose windows see less context."""
    with encoder_inputs() as shapes:
        clips, _ = run_embed(setup, long_audio_folder, tmp_path / "whole", "--no_chunking", "--batch_size", "1")
    assert sorted(shapes) == sorted([(1, 2498, 128), (1, 148, 128)])
    assert json.loads((tmp_path / "whole" / "embeddings.json").read_text())["chunk_seconds"] is None
    model = BeatsModel.from_pretrained(setup / "model").eval()
    long, _ = decoded(long_audio_folder)
    with torch.no_grad():
        hidden = model(**BeatsFeatureExtractor()(long, sampling_rate=16000, return_tensors="pt")).last_hidden_state[0]
    # The same float32 hidden states averaged in two orders: each mean of P terms is within gamma_P mean|x| of the
    # exact one (Higham), so the two differ by at most twice that.
    patches = hidden.shape[0]
    unit = 2.0**-24
    bound = 2 * patches * unit / (1 - patches * unit) * hidden.abs().mean(0).numpy()
    assert (np.abs(clips[0] - hidden.mean(0).numpy()) <= bound).all()
    chunked, _ = run_embed(setup, long_audio_folder, tmp_path / "chunked")
    assert np.abs(chunked[0] - clips[0]).max() > 1e-3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--no_chunking", "--chunk_seconds", "5"], "cannot be combined"),
        (["--chunk_seconds", "0"], "must be positive"),
        (["--chunk_seconds", "0.1"], "--chunk_seconds (0.1) is shorter than one row"),
        (["--chunk_seconds", "2", "--hop_seconds", "3"], "leave gaps"),
    ],
)
def test_chunking_flag_errors(setup, long_audio_folder, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        cli(["embed", "--model", str(setup / "model"), "--data", str(long_audio_folder), "--output_dir",
             str(tmp_path), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "embeddings.json").exists()


def test_encoder_of_is_a_deprecated_alias_of_base_model():
    from beats_hf import BeatsConfig, BeatsForAudioClassification
    from beats_hf.embed import encoder_of

    model = BeatsForAudioClassification(BeatsConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                    intermediate_size=37, patch_embedding_dim=24, num_labels=2))
    with pytest.warns(FutureWarning, match="model.base_model"):
        assert encoder_of(model) is model.base_model is model.beats
