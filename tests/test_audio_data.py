"""Tests for beats_hf.audio_data on real audio files written here (WAV via stdlib `wave`, FLAC via torchcodec)."""

import logging
import wave
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from beats_hf.audio_data import (
    AudioClips,
    AudioFeatureCollator,
    StreamingAudioClips,
    decode_audio,
    load_audio_dataset,
    random_crop,
)

SR = 16000


def tone(seconds: float, rate: int, freq: float, amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def write_wav(path: Path, channels: list[np.ndarray], rate: int) -> Path:
    """PCM16 WAV with one array per channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.stack(channels, axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(len(channels))
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


class StubFeatureExtractor:
    """Pads waveforms to the longest, frames them by 160 samples, 4 features per frame, frame-level mask."""

    def __call__(self, waveforms, sampling_rate, return_tensors="pt"):
        assert sampling_rate == SR and return_tensors == "pt"
        frames = [len(w) // 160 for w in waveforms]
        longest = max(frames)
        features = torch.zeros(len(waveforms), longest, 4)
        mask = torch.zeros(len(waveforms), longest, dtype=torch.long)
        for i, (w, n) in enumerate(zip(waveforms, frames)):
            features[i, :n] = torch.from_numpy(np.asarray(w[: n * 160]).reshape(n, 160)[:, :4].copy())
            mask[i, :n] = 1
        return {"input_features": features, "attention_mask": mask}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Class sub-folders with: stereo 44.1 kHz WAV, mono 16 kHz WAV, FLAC, one corrupt and one too-short file."""
    root = tmp_path_factory.mktemp("corpus")
    left, right = tone(1.5, 44100, 440.0, 0.5), tone(1.5, 44100, 1000.0, 0.2, phase=1.0)
    files = {
        "stereo": write_wav(root / "dog" / "stereo44k.wav", [left, right], 44100),
        "mono": write_wav(root / "dog" / "mono16k.wav", [tone(2.0, SR, 300.0)], SR),
        "corrupt": root / "cat" / "corrupt.wav",
        "short": write_wav(root / "cat" / "short.wav", [tone(0.05, SR, 500.0)], SR),
    }
    files["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    try:
        from torchcodec.encoders import AudioEncoder

        files["flac"] = root / "cat" / "tone22k.flac"
        AudioEncoder(torch.from_numpy(tone(1.0, 22050, 700.0))[None], sample_rate=22050).to_file(str(files["flac"]))
    except Exception:  # no FLAC encoder in this FFmpeg build: the WAV files still cover the pipeline
        files.pop("flac", None)
    # Single channels of the stereo file, to check the down-mix is the mean of the channels.
    side = tmp_path_factory.mktemp("side")
    files["left"] = write_wav(side / "left.wav", [left], 44100)
    files["right"] = write_wav(side / "right.wav", [right], 44100)
    return root, files


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def folder_dataset(corpus, cache_dir):
    return load_audio_dataset(str(corpus[0]), cache_dir=cache_dir)


def n_good(files) -> int:
    return 3 if "flac" in files else 2


# ------------------------------------------------------------------------------------------------ loading


def test_load_folder_has_labels_and_undecoded_audio(folder_dataset, corpus):
    ds = folder_dataset
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == n_good(corpus[1]) + 2  # corrupt and short files are listed; they are skipped when read
    assert ds.features["audio"] == datasets.Audio(decode=False)
    assert sorted(ds.features["label"].names) == ["cat", "dog"]
    assert isinstance(ds[0]["audio"], dict) and ds[0]["audio"]["path"]


def test_load_flat_folder_without_labels(tmp_path, cache_dir):
    write_wav(tmp_path / "flat" / "a.wav", [tone(0.5, SR, 300.0)], SR)
    write_wav(tmp_path / "flat" / "b.wav", [tone(0.5, SR, 400.0)], SR)
    ds = load_audio_dataset(str(tmp_path / "flat"), cache_dir=cache_dir)
    assert len(ds) == 2 and "label" not in ds.column_names


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such folder"):
        load_audio_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(FileNotFoundError, match="No audio file"):
        load_audio_dataset(str(tmp_path / "empty"))
    datasets.Dataset.from_dict({"text": ["a"], "y": [1]}).save_to_disk(str(tmp_path / "no_audio"))
    with pytest.raises(ValueError, match=r"columns found: \['text', 'y'\]"):
        load_audio_dataset(str(tmp_path / "no_audio"))


def test_load_saved_dataset_and_dataset_dict(folder_dataset, tmp_path):
    # A decoding Audio column on disk comes back undecoded.
    folder_dataset.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "saved"))
    ds = load_audio_dataset(str(tmp_path / "saved"))
    assert isinstance(ds, datasets.Dataset) and len(ds) == len(folder_dataset)
    assert ds.features["audio"] == datasets.Audio(decode=False)

    datasets.DatasetDict({"train": folder_dataset, "test": folder_dataset.select([0])}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    assert len(load_audio_dataset(str(tmp_path / "saved_dict"), split="test")) == 1
    with pytest.raises(ValueError, match="splits"):
        load_audio_dataset(str(tmp_path / "saved_dict"), split=None)

    streamed = load_audio_dataset(str(tmp_path / "saved"), streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert sum(1 for _ in streamed) == len(folder_dataset)


def test_hub_id_is_routed_to_load_dataset(monkeypatch, corpus):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_dict({"audio": [str(corpus[1]["mono"])]}).cast_column("audio", datasets.Audio())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_audio_dataset("someone/some-audio", split="validation", streaming=False, revision="main")
    assert calls == [("someone/some-audio", {"split": "validation", "streaming": False, "revision": "main"})]
    assert ds.features["audio"] == datasets.Audio(decode=False)
    with pytest.raises(ValueError, match=r"No audio column 'sound'.*columns found: \['audio'\]"):
        load_audio_dataset("someone/some-audio", audio_column="sound")


# ------------------------------------------------------------------------------------------------ decoding


def test_decode_resamples_and_downmixes_by_mean(corpus):
    files = corpus[1]
    stereo = decode_audio(str(files["stereo"]))
    assert stereo.dtype == np.float32 and stereo.ndim == 1
    assert abs(len(stereo) - 1.5 * SR) <= 4
    mean = (decode_audio(str(files["left"])) + decode_audio(str(files["right"]))) / 2
    np.testing.assert_allclose(stereo, mean, atol=2e-4)
    # The 440 Hz channel at 0.5 and the 1 kHz one at 0.2 average to a peak of at most 0.35.
    assert 0.3 < np.abs(stereo).max() < 0.36

    mono = decode_audio(str(files["mono"]))
    assert len(mono) == 2 * SR  # no resampling at 16 kHz: exact length and values
    np.testing.assert_allclose(mono, tone(2.0, SR, 300.0), atol=1e-4)
    # bytes, {"bytes", "path"} and {"path"} give the same waveform.
    raw = files["mono"].read_bytes()
    np.testing.assert_array_equal(decode_audio(raw), mono)
    np.testing.assert_array_equal(decode_audio({"bytes": raw, "path": "ignored.wav"}), mono)
    np.testing.assert_array_equal(decode_audio({"bytes": None, "path": str(files["mono"])}), mono)
    if "flac" in files:
        assert abs(len(decode_audio(str(files["flac"]))) - SR) <= 4


def test_decode_arrays_and_bad_inputs(corpus):
    files = corpus[1]
    resampled = decode_audio({"array": tone(1.0, 44100, 440.0), "sampling_rate": 44100})
    assert abs(len(resampled) - SR) <= 4 and resampled.dtype == np.float32
    same = decode_audio({"array": np.stack([tone(1.0, SR, 440.0)] * 2), "sampling_rate": SR})
    np.testing.assert_allclose(same, tone(1.0, SR, 440.0), atol=1e-6)
    assert decode_audio(str(files["corrupt"])) is None
    assert decode_audio(files["corrupt"].read_bytes()) is None
    assert decode_audio(str(files["stereo"]) + ".missing") is None
    assert decode_audio(b"") is None
    assert decode_audio({"bytes": None, "path": None}) is None
    header_only = write_wav(files["mono"].parent.parent / "empty.wav.tmp", [np.zeros(0, np.float32)], SR)
    assert decode_audio(header_only.read_bytes()) is None
    header_only.unlink()
    with pytest.raises(TypeError):
        decode_audio(42)


def test_random_crop():
    wave_ = np.arange(100, dtype=np.float32)
    crop = random_crop(wave_, 30, np.random.default_rng(1))
    assert len(crop) == 30 and np.all(np.diff(crop) == 1)
    np.testing.assert_array_equal(crop, random_crop(wave_, 30, np.random.default_rng(1)))
    assert random_crop(wave_, 200, np.random.default_rng(1)) is wave_
    assert random_crop(wave_, 100, np.random.default_rng(1)) is wave_


# ------------------------------------------------------------------------------------------------ torch datasets


def test_audio_clips_crops_are_reproducible(folder_dataset):
    a = AudioClips(folder_dataset, crop_seconds=0.5, seed=3)
    b = AudioClips(folder_dataset, crop_seconds=0.5, seed=3)
    items_a, items_b = [a[i] for i in range(len(a))], [b[i] for i in range(len(b))]
    for x, y in zip(items_a, items_b):
        assert x["waveform"].dtype == np.float32 and len(x["waveform"]) == 8000
        np.testing.assert_array_equal(x["waveform"], y["waveform"])
        assert x["labels"] == y["labels"] and isinstance(x["labels"], int)
    b.set_epoch(1)
    assert any(not np.array_equal(x["waveform"], b[i]["waveform"]) for i, x in enumerate(items_a))

    whole = AudioClips(folder_dataset, crop_seconds=None)
    lengths = sorted(len(whole[i]["waveform"]) for i in range(len(whole)))
    assert max(lengths) == 2 * SR  # the 2 s file, whole
    # A dataset that still decodes through datasets is switched to our decoding.
    decoding = AudioClips(folder_dataset.cast_column("audio", datasets.Audio()), crop_seconds=None)
    assert sorted(len(decoding[i]["waveform"]) for i in range(len(decoding))) == lengths
    kept = AudioClips(folder_dataset, crop_seconds=10.0)  # longer than every clip: clips kept whole
    assert sorted(len(kept[i]["waveform"]) for i in range(len(kept))) == lengths


def test_audio_clips_skip_bad_files(folder_dataset, corpus, caplog):
    files = corpus[1]
    paths = [Path(a["path"]).name for a in folder_dataset["audio"]]
    bad = {paths.index("corrupt.wav"), paths.index("short.wav")}

    clips = AudioClips(folder_dataset, crop_seconds=None, replace_bad=True)
    with caplog.at_level(logging.WARNING, logger="beats_hf.audio_data"):
        for _ in range(2):  # a second pass neither recounts nor re-logs
            items = [clips[i] for i in range(len(clips))]
    assert all(item is not None for item in items)  # bad indices replaced by the next readable clip
    assert clips.skipped == 2 and clips.skipped_reasons == {"unreadable": 1, "too short": 1}
    warned = [r.getMessage() for r in caplog.records if "Replacing" in r.getMessage()]  # training says it substitutes
    assert len(warned) == 2 and any("corrupt.wav" in m for m in warned) and any("short.wav" in m for m in warned)

    aligned = AudioClips(folder_dataset, crop_seconds=None, replace_bad=False, return_index=True)
    items = [aligned[i] for i in range(len(aligned))]
    assert {i for i, item in enumerate(items) if item is None} == bad
    assert all(item["index"] == i for i, item in enumerate(items) if item is not None)
    assert aligned.skipped == 2
    assert len([i for i in items if i is not None]) == n_good(files)

    # Scored sets: the bad files are left out (not substituted) and counted; every kept item is a distinct good file.
    with caplog.at_level(logging.WARNING, logger="beats_hf.audio_data"):
        scored = AudioClips(folder_dataset, crop_seconds=None, replace_bad=False).without_unreadable("test set")
    assert len(scored) == n_good(files) and scored.dropped == {"unreadable": 1, "too short": 1}
    kept = [Path(example["audio"]["path"]).name for example in scored.dataset]
    assert len(set(kept)) == len(kept) and not {"corrupt.wav", "short.wav"} & set(kept)
    assert all(scored[i] is not None for i in range(len(scored)))
    assert any("test set: left out 2 of" in r.getMessage() for r in caplog.records)

    # A min_seconds above every clip leaves nothing readable: a clear error, not an endless loop.
    with pytest.raises(RuntimeError, match="No readable"):
        AudioClips(folder_dataset, min_seconds=100.0)[0]


def test_streaming_clips(corpus, cache_dir, folder_dataset, tmp_path):
    stream = load_audio_dataset(str(corpus[0]), streaming=True, cache_dir=cache_dir)
    assert isinstance(stream, datasets.IterableDataset)
    clips = StreamingAudioClips(stream, crop_seconds=0.5, seed=0)
    items = list(clips)
    assert len(items) == n_good(corpus[1]) and clips.skipped == 2
    assert all(len(item["waveform"]) == 8000 and "labels" in item for item in items)
    again = list(StreamingAudioClips(stream, crop_seconds=0.5, seed=0))
    for x, y in zip(items, again):
        np.testing.assert_array_equal(x["waveform"], y["waveform"])

    # Two DataLoader workers over a sharded stream: every readable clip once.
    folder_dataset.save_to_disk(str(tmp_path / "saved"))
    sharded = load_audio_dataset(str(tmp_path / "saved"), streaming=True)
    loader = torch.utils.data.DataLoader(
        StreamingAudioClips(sharded, crop_seconds=None), batch_size=None, num_workers=2
    )
    whole = AudioClips(folder_dataset, crop_seconds=None, replace_bad=False)
    expected = sorted(len(item["waveform"]) for item in (whole[i] for i in range(len(whole))) if item is not None)
    assert sorted(len(item["waveform"]) for item in loader) == expected


# ------------------------------------------------------------------------------------------------ collator


def test_collator_with_dataloader(folder_dataset):
    clips = AudioClips(folder_dataset, crop_seconds=None, replace_bad=False)
    loader = torch.utils.data.DataLoader(
        clips, batch_size=len(clips), collate_fn=AudioFeatureCollator(StubFeatureExtractor())
    )
    batch = next(iter(loader))
    good = len(clips) - 2
    assert batch["input_features"].shape[0] == good and batch["attention_mask"].shape[0] == good
    assert batch["input_features"].shape[1] == 2 * SR // 160  # padded to the longest clip
    assert batch["attention_mask"].sum(1).tolist() != [batch["attention_mask"].shape[1]] * good  # padding masked
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (good,)


def test_collator_labels():
    collate = AudioFeatureCollator(StubFeatureExtractor(), num_labels=5)
    items = [
        {"waveform": np.zeros(3200, np.float32), "labels": [0, 3]},
        None,
        {"waveform": np.zeros(1600, np.float32), "labels": []},
        {"waveform": np.zeros(4800, np.float32), "labels": np.array([4])},
    ]
    batch = collate(items)
    assert batch["input_features"].shape == (3, 30, 4) and batch["attention_mask"].sum(1).tolist() == [20, 10, 30]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]

    dense = collate([{"waveform": np.zeros(1600, np.float32), "labels": [0.0, 0.5, 1.0, 0.0, 0.0]}])
    assert dense["labels"].tolist() == [[0.0, 0.5, 1.0, 0.0, 0.0]]
    single = collate([
        {"waveform": np.zeros(1600, np.float32), "label": 2},
        {"waveform": np.zeros(800, np.float32), "label": 0},
    ])
    assert single["labels"].dtype == torch.int64 and single["labels"].tolist() == [2, 0]
    assert collate([None, None]) == {}
    assert set(collate([{"waveform": np.zeros(1600, np.float32)}])) == {"input_features", "attention_mask"}
    with pytest.raises(ValueError, match="num_labels"):
        AudioFeatureCollator(StubFeatureExtractor())([{"waveform": np.zeros(1600, np.float32), "labels": [1]}])
    with pytest.raises(ValueError, match="out of range"):
        collate([{"waveform": np.zeros(1600, np.float32), "labels": [5]}])


def test_collator_with_beats_feature_extractor():
    module = pytest.importorskip("beats_hf.feature_extraction_beats")
    extractor = module.BeatsFeatureExtractor()
    collate = AudioFeatureCollator(extractor)
    batch = collate([{"waveform": tone(1.0, SR, 440.0), "labels": 1}, {"waveform": tone(0.5, SR, 880.0), "labels": 0}])
    assert batch["input_features"].shape[0] == 2 and batch["input_features"].dtype == torch.float32
    assert batch["attention_mask"].shape[0] == 2
    assert batch["attention_mask"][0].sum() > batch["attention_mask"][1].sum()
    assert batch["labels"].tolist() == [1, 0]
