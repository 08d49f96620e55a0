"""Demo corpus rendered from a General MIDI soundfont (`demo.corpus`)."""

import hashlib
import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from demo import corpus as corpus_module
from demo.corpus import FAMILIES, build_corpus, midi_file

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # small GM bank (timgm6mb-soundfont): fast renders
TINY = dict(soundfont=TIMGM, clips_per_train_program=1, clips_per_validation_program=1, clips_per_test_program=1,
            unlabelled_clips=6, progress=False)

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not TIMGM.is_file(),
    reason="needs `apt-get install fluidsynth timgm6mb-soundfont` (done by `make install`)",
)


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def program_of(path: str) -> int:
    return int(re.search(r"_p(\d{3})", path).group(1))


@pytest.fixture(scope="module")
def tiny_corpora(tmp_path_factory):
    """The same tiny corpus built twice, with 1 and with 2 workers, in two folders."""
    first, second = tmp_path_factory.mktemp("corpus_a"), tmp_path_factory.mktemp("corpus_b")
    return build_corpus(first, num_workers=1, **TINY), build_corpus(second, num_workers=2, **TINY)


@needs_fluidsynth
def test_corpus_is_byte_identical_across_runs_and_workers(tiny_corpora):
    first, second = (Path(manifest["output_dir"]) for manifest in tiny_corpora)
    files_a, files_b = digests(first), digests(second)
    assert files_a == files_b
    assert len([name for name in files_a if name.endswith(".wav")]) == 50 + 10 + 20 + 6
    assert tiny_corpora[0]["counts"] == {"train": 50, "test": 20, "unlabelled": 6, "validation": 10,
                                         "redrawn_silent": 0}
    assert not tiny_corpora[0]["reused"] and not tiny_corpora[1]["reused"]


@needs_fluidsynth
def test_train_validation_and_test_programs_are_disjoint(tiny_corpora):
    root = Path(tiny_corpora[0]["output_dir"])
    manifest = json.loads((root / "corpus.json").read_text())
    assert manifest["soundfont"]["path"] == str(TIMGM)
    assert manifest["soundfont"]["sha256"] == hashlib.sha256(TIMGM.read_bytes()).hexdigest()
    train = {p for programs in manifest["programs"]["train"].values() for p in programs}
    validation = {p for programs in manifest["programs"]["validation"].values() for p in programs}
    test = {p for programs in manifest["programs"]["test"].values() for p in programs}
    assert (len(train), len(validation), len(test)) == (50, 10, 20)
    assert not train & test and not train & validation and not validation & test
    for index, family in enumerate(FAMILIES):  # 5 + 1 + 2 programs of the family's GM group
        group = set(range(8 * index, 8 * index + 8))
        splits = ("train", "validation", "test")
        assert set().union(*(manifest["programs"][split][family] for split in splits)) == group

    def programs_on_disk(folder: str) -> set[int]:
        return {program_of(path.name) for path in (root / folder).rglob("*.wav")}

    assert programs_on_disk("labelled/train") == train
    assert programs_on_disk("labelled/validation") == validation
    assert programs_on_disk("labelled/test") == test
    unlabelled = programs_on_disk("unlabelled")
    assert unlabelled and not unlabelled & (test | validation)
    assert unlabelled <= train | set(range(80, 104))
    for path in (root / "labelled").rglob("*.wav"):  # the folder name is the family of the program
        assert path.parent.name == FAMILIES[program_of(path.name) // 8]


@needs_fluidsynth
def test_clips_are_16khz_mono_2s_and_not_silent(tiny_corpora):
    root = Path(tiny_corpora[0]["output_dir"])
    for path in sorted(root.rglob("*.wav")):
        with wave.open(str(path)) as handle:
            assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, 16000)
            assert handle.getnframes() == 32000
            samples = np.frombuffer(handle.readframes(32000), dtype="<i2").astype(np.float64) / 32768
        # -20 dBFS RMS, lower only where the peak had to be limited to 0.95 (a few percussive clips)
        rms, peak = np.sqrt(np.mean(samples**2)), np.abs(samples).max()
        assert 0.02 < rms < 0.1001 and peak < 0.9501, path
        assert rms > 0.0999 or peak > 0.949, path


@needs_fluidsynth
def test_audiofolder_loads_with_three_splits_and_ten_labels(tiny_corpora, tmp_path):
    import datasets

    labelled = Path(tiny_corpora[0]["output_dir"]) / "labelled"
    dataset = datasets.load_dataset("audiofolder", data_dir=str(labelled), cache_dir=str(tmp_path / "cache"))
    assert set(dataset) == {"train", "validation", "test"}
    assert (dataset["train"].num_rows, dataset["validation"].num_rows, dataset["test"].num_rows) == (50, 10, 20)
    label = dataset["train"].features["label"]
    assert label.num_classes == 10 and sorted(label.names) == sorted(FAMILIES)
    assert set(dataset["test"]["label"]) == set(range(10))
    audio = dataset["test"][0]["audio"]  # decoded through torchcodec
    samples = audio.get_all_samples()
    assert samples.sample_rate == 16000 and tuple(samples.data.shape) == (1, 32000)


@needs_fluidsynth
def test_reuse_and_rebuild_of_a_missing_file(tiny_corpora):
    root = Path(tiny_corpora[1]["output_dir"])
    before = digests(root)
    again = build_corpus(root, **TINY)
    assert again["reused"] and again["counts"] == tiny_corpora[1]["counts"]
    removed = next(iter((root / "labelled" / "test").rglob("*.wav")))
    removed.unlink()
    rebuilt = build_corpus(root, **TINY)
    assert not rebuilt["reused"] and digests(root) == before


def test_missing_soundfont_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install timgm6mb-soundfont"):
        build_corpus(tmp_path, soundfont=tmp_path / "TimGM6mb.sf2", progress=False)
    with pytest.raises(FileNotFoundError, match="apt-get install fluid-soundfont-gm"):
        build_corpus(tmp_path, soundfont=tmp_path / "FluidR3_GM.sf2", progress=False)
    with pytest.raises(FileNotFoundError, match="General MIDI .sf2.*fluid-soundfont-gm"):
        build_corpus(tmp_path, soundfont=tmp_path / "other.sf2", progress=False)
    assert not any(tmp_path.iterdir())


def test_missing_fluidsynth_names_the_debian_package(tmp_path, monkeypatch):
    soundfont = tmp_path / "bank.sf2"
    soundfont.write_bytes(b"not read before the check")
    monkeypatch.setattr(corpus_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install fluidsynth"):
        build_corpus(tmp_path / "out", soundfont=soundfont, progress=False)


def test_midi_file_layout():
    data = midi_file([(0, bytes([0xC0, 5])), (0, bytes([0x90, 60, 100])), (200, bytes([0x80, 60, 0]))], end_tick=16583)
    assert data[:14] == b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xf4"  # type 0, one track, 500 ticks per quarter
    track = data[22:]
    assert data[14:18] == b"MTrk" and int.from_bytes(data[18:22], "big") == len(track)
    assert track == (b"\x00\xff\x51\x03\x07\xa1\x20"  # tempo 500,000 us per quarter: 1 tick = 1 ms
                     b"\x00\xc0\x05" b"\x00\x90\x3c\x64" b"\x81\x48\x80\x3c\x00"  # delta 200 = 0x81 0x48
                     b"\xff\x7f\xff\x2f\x00")  # delta 16383 = 0xff 0x7f, end of track
    with pytest.raises(ValueError):
        midi_file([(10, b"\x90\x3c\x64"), (5, b"\x80\x3c\x00")], end_tick=20)


@needs_fluidsynth
def test_silent_renders_are_redrawn_then_reported(tmp_path, monkeypatch):
    draw, seen = corpus_module._draw_notes, set()

    def first_draw_of_program_0_is_empty(rng, program, family):
        notes = draw(rng, program, family)
        if program == 0 and program not in seen:
            seen.add(program)
            return []  # renders as silence
        return notes

    settings = {**TINY, "unlabelled_clips": 0, "num_workers": 1}
    monkeypatch.setattr(corpus_module, "_draw_notes", first_draw_of_program_0_is_empty)
    manifest = build_corpus(tmp_path / "redrawn", **settings)
    assert manifest["counts"]["redrawn_silent"] == 1
    assert (tmp_path / "redrawn" / "labelled" / "train" / "piano" / "piano_p000_0000.wav").is_file()

    monkeypatch.setattr(corpus_module, "_draw_notes", lambda rng, program, family: [])
    monkeypatch.setattr(corpus_module, "MAX_ATTEMPTS", 2)
    with pytest.raises(RuntimeError, match="rendered silent 2 times"):
        build_corpus(tmp_path / "silent", **settings)
    assert not (tmp_path / "silent" / "corpus.json").exists()
