"""A deterministic corpus of real recorded instrument sound, rendered offline from a General MIDI soundfont.

Task: instrument-family classification on instruments never seen in training. The 10 families are the General MIDI
program groups (8 programs each); per family, programs 2 and 6 of the group are held out for the test split, program 4
for the validation split, and the other 5 make up the train split, so train, validation and test programs are
disjoint:

==================== ======== ===================== ======================= ==========================================
family               programs train programs        validation program      test programs (held out)
==================== ======== ===================== ======================= ==========================================
piano                0-7      0, 1, 3, 5, 7         4 electric piano 1      2 electric grand, 6 harpsichord
chromatic_percussion 8-15     8, 9, 11, 13, 15      12 marimba              10 music box, 14 tubular bells
organ                16-23    16, 17, 19, 21, 23    20 reed organ           18 rock organ, 22 harmonica
guitar               24-31    24, 25, 27, 29, 31    28 muted guitar         26 jazz guitar, 30 distortion guitar
bass                 32-39    32, 33, 35, 37, 39    36 slap bass 1          34 picked bass, 38 synth bass 1
strings              40-47    40, 41, 43, 45, 47    44 tremolo strings      42 cello, 46 harp
ensemble             48-55    48, 49, 51, 53, 55    52 choir aahs           50 synth strings 1, 54 synth voice
brass                56-63    56, 57, 59, 61, 63    60 french horn          58 tuba, 62 synth brass 1
reed                 64-71    64, 65, 67, 69, 71    68 oboe                 66 tenor sax, 70 bassoon
pipe                 72-79    72, 73, 75, 77, 79    76 blown bottle         74 recorder, 78 whistle
==================== ======== ===================== ======================= ==========================================

The validation programs exist so that every choice (a layer, a probe setting, a pre-training recipe) can be made
without looking at the test programs, which are scored once per finished recipe.

Every clip is one program playing a short random melody or chord sequence (a random key, scale, tempo, articulation
and loudness; pitches in a range that suits the family, narrower for a few instruments such as the contrabass or
the tuba), 2.0 s of 16 kHz mono PCM16, normalised to -20 dBFS RMS so that level is no cue (peaks are limited to
0.95, so ~5 % of the clips, mostly percussive, end up a little quieter). Layout of `output_dir`::

    labelled/train/<family>/<family>_p<program>_<index>.wav       # `load_dataset("audiofolder", data_dir=...)` gives
    labelled/validation/<family>/<family>_p<program>_<index>.wav  #  train/validation/test splits with a `label`
    labelled/test/<family>/<family>_p<program>_<index>.wav        #  ClassLabel
    unlabelled/clip_<index>_p<program>.wav                        # pre-training pool: 50 TRAIN programs + 80-103
    corpus.json                                               # settings, counts, soundfont + sha256, programs

The unlabelled pool cycles through the 50 train programs and the 24 synth lead/pad/effect programs (80-103); it
never contains a validation or test program.

Defaults: 25 clips per train program (1,250 train clips), 20 per validation program (200 clips), 20 per test program
(400 clips) and 3,000 unlabelled clips: 4,850 clips, 2.7 h of audio, ~310 MB of wav. On 2 CPU cores with FluidR3 GM
this builds in 20-30 s. Any General MIDI soundfont renders the same task (`--soundfont`): the demo's held-out task
suite renders it a second time from TimGM6mb, whose samples are not FluidR3's.

Rendering: a tiny Standard MIDI File writer (below) puts up to `CLIPS_PER_RENDER` clips one after another in one
file (2.5 s apart, with an all-sound-off between them), and one `fluidsynth` fast-render call renders the whole
batch (loading the 142 MB soundfont once per batch instead of once per clip); the float output is then cut, down-mixed
to mono and written with the stdlib `wave` module. Every random choice comes from a numpy Generator seeded by
(seed, split, program, clip index, attempt), and batches are fixed by the settings alone, so the output is
byte-identical on every run for the same settings, soundfont and fluidsynth version, whatever the number of workers.
(A clip's samples depend very slightly on the voices its batch used before it, hence the fixed batches.) A render
that comes out silent is re-drawn with the next attempt number.

Reuse: when `corpus.json` exists with the same settings, soundfont and fluidsynth version and every file is present,
nothing is rendered. Otherwise `labelled/`, `unlabelled/` and `corpus.json` are replaced.

CLI: `python -m demo.corpus --output_dir DIR [--soundfont SF2] [--clips_per_train_program N] ...`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLING_RATE = 16000
CLIP_MS = 2000
CLIP_SAMPLES = CLIP_MS * SAMPLING_RATE // 1000
# Room after each clip for the note releases and the all-sound-off fade, so nothing leaks into the next clip.
SLOT_MS = 2500
SLOT_SAMPLES = SLOT_MS * SAMPLING_RATE // 1000
LAST_NOTE_OFF_MS = 1990
CLIPS_PER_RENDER = 128  # one soundfont load (~0.2 s for FluidR3) per 128 clips
GAIN = 0.5
TARGET_RMS = 0.1  # -20 dBFS
MAX_PEAK = 0.95
SILENT_RMS = 1e-4
MAX_ATTEMPTS = 5
# Bump whenever the generated audio changes, so that an old corpus is not reused.
CORPUS_VERSION = 2  # 2: a validation program per family

DEFAULT_CLIPS_PER_TRAIN_PROGRAM = 25
DEFAULT_CLIPS_PER_VALIDATION_PROGRAM = 20
DEFAULT_CLIPS_PER_TEST_PROGRAM = 20
DEFAULT_UNLABELLED_CLIPS = 3000
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SOUNDFONT_PACKAGES = {  # Debian packages of the soundfonts the demo uses (tasks and pre-training pools)
    "FluidR3_GM.sf2": "fluid-soundfont-gm", "TimGM6mb.sf2": "timgm6mb-soundfont", "sf_GMbank.sf2": "csound-soundfont",
    "OPL-3_FM_128M.sf2": "opl3-soundfont", "MuseScore_General_Lite.sf3": "musescore-general-soundfont-small",
}

FAMILIES = (
    "piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed", "pipe",
)
HELD_OUT_OFFSETS = (2, 6)  # positions inside each 8-program group that form the test split
VALIDATION_OFFSETS = (4,)  # ... and the validation split
SYNTH_PROGRAMS = tuple(range(80, 104))  # synth lead / pad / effects: unlabelled pool only
TRAIN_PROGRAMS = {f: tuple(8 * i + k for k in range(8) if k not in HELD_OUT_OFFSETS + VALIDATION_OFFSETS)
                  for i, f in enumerate(FAMILIES)}
VALIDATION_PROGRAMS = {f: tuple(8 * i + k for k in VALIDATION_OFFSETS) for i, f in enumerate(FAMILIES)}
TEST_PROGRAMS = {f: tuple(8 * i + k for k in HELD_OUT_OFFSETS) for i, f in enumerate(FAMILIES)}

# MIDI note ranges (inclusive) where every program of the family sounds natural.
NOTE_RANGES = {
    "piano": (36, 91), "chromatic_percussion": (55, 91), "organ": (36, 84), "guitar": (40, 76), "bass": (28, 55),
    "strings": (43, 79), "ensemble": (48, 79), "brass": (46, 77), "reed": (50, 81), "pipe": (60, 93),
    "synth": (36, 84),
}
# Instruments whose natural range (and whose samples in FluidR3 / TimGM6mb) stop short of the family's range.
PROGRAM_NOTE_RANGES = {
    42: (36, 72), 43: (28, 55), 47: (36, 57), 57: (40, 72), 58: (28, 58), 67: (36, 69), 70: (34, 67), 78: (60, 78),
    101: (36, 67),
}
# Mostly monophonic instruments get mostly single notes.
CHORD_PROBABILITY = {
    "piano": 0.5, "chromatic_percussion": 0.35, "organ": 0.5, "guitar": 0.5, "bass": 0.1, "strings": 0.35,
    "ensemble": 0.5, "brass": 0.2, "reed": 0.1, "pipe": 0.1, "synth": 0.4,
}
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
NOTE_LENGTHS = (0.5, 1.0, 1.0, 1.5, 2.0)  # in beats
SPLIT_CODES = {"train": 0, "test": 1, "unlabelled": 2, "validation": 3}

GM_PROGRAM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano", "Electric Piano 1",
    "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1", "Slap Bass 2",
    "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
)

__all__ = ["FAMILIES", "TEST_PROGRAMS", "TRAIN_PROGRAMS", "VALIDATION_PROGRAMS", "build_corpus", "midi_file"]


# ---------------------------------------------------------------------------------------------------------------
# Standard MIDI File writer


def _variable_length(value: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, most significant first, high bit set on all but the last."""
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(groups))


def midi_file(events: list[tuple[int, bytes]], end_tick: int, ticks_per_quarter: int = 500,
              tempo_us_per_quarter: int = 500_000) -> bytes:
    """A type-0 Standard MIDI File from (absolute tick, channel message) pairs in playing order.

    With the defaults one tick is exactly 1 ms. The track ends (end-of-track meta event) at `end_tick`.
    """
    track = bytearray(_variable_length(0) + b"\xff\x51\x03" + tempo_us_per_quarter.to_bytes(3, "big"))
    previous = 0
    for tick, message in events:
        if tick < previous:
            raise ValueError("MIDI events must be in time order")
        track += _variable_length(tick - previous) + message
        previous = tick
    track += _variable_length(max(0, end_tick - previous)) + b"\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += ticks_per_quarter.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


# ---------------------------------------------------------------------------------------------------------------
# What to render


@dataclass(frozen=True)
class _Clip:
    path: str  # relative to the output folder
    program: int
    split: str
    index: int

    @property
    def family(self) -> str:
        return FAMILIES[self.program // 8] if self.program < 80 else "synth"


def _plan(clips_per_train_program: int, clips_per_validation_program: int, clips_per_test_program: int,
          unlabelled_clips: int) -> list[_Clip]:
    clips = []
    for split, per_program, programs in (("train", clips_per_train_program, TRAIN_PROGRAMS),
                                         ("validation", clips_per_validation_program, VALIDATION_PROGRAMS),
                                         ("test", clips_per_test_program, TEST_PROGRAMS)):
        for family in FAMILIES:
            for program in programs[family]:
                clips += [_Clip(f"labelled/{split}/{family}/{family}_p{program:03d}_{i:04d}.wav", program, split, i)
                          for i in range(per_program)]
    pool = _unlabelled_programs()
    for i in range(unlabelled_clips):
        program = pool[i % len(pool)]
        clips.append(_Clip(f"unlabelled/clip_{i:05d}_p{program:03d}.wav", program, "unlabelled", i))
    return clips


def _unlabelled_programs() -> list[int]:
    return sorted(p for family in FAMILIES for p in TRAIN_PROGRAMS[family]) + list(SYNTH_PROGRAMS)


def _draw_notes(rng: np.random.Generator, program: int, family: str) -> list[tuple[int, int, int, int]]:
    """(on ms, off ms, MIDI note, velocity) of a random melody / chord sequence in one key."""
    low, high = PROGRAM_NOTE_RANGES.get(program, NOTE_RANGES[family])
    key = int(rng.integers(12))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    pitches = [p for p in range(low, high + 1) if (p - key) % 12 in scale]
    beat_ms = int(rng.integers(250, 601))  # 100 to 240 beats per minute
    legato = float(rng.uniform(0.55, 1.0))
    loudness = int(rng.integers(70, 111))
    chord_probability = CHORD_PROBABILITY[family]
    position = int(rng.integers(len(pitches) // 4, 3 * len(pitches) // 4 + 1))
    time = int(rng.integers(0, 121))
    notes = []
    while time < CLIP_MS - 150:
        length = int(beat_ms * NOTE_LENGTHS[int(rng.integers(len(NOTE_LENGTHS)))])
        position = int(np.clip(position + int(rng.integers(-3, 4)), 0, len(pitches) - 1))
        chord = [position]
        if rng.random() < chord_probability:
            chord += [position + 2, position + 4][: int(rng.integers(1, 3))]  # a third, or a triad
        off = min(time + max(60, int(length * legato)), LAST_NOTE_OFF_MS)
        velocity = int(np.clip(loudness + int(rng.integers(-12, 13)), 30, 127))
        notes += [(time, off, pitches[i], velocity) for i in chord if i < len(pitches)]
        time += length
    return notes


def _clip_rng(seed: int, clip: _Clip, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[clip.split], clip.program, clip.index, attempt])


def _batch_midi(clips: list[tuple[_Clip, list[tuple[int, int, int, int]]]]) -> bytes:
    events = []  # (tick, order, message): at equal ticks program/controllers first, then note-offs, then note-ons
    for k, (clip, notes) in enumerate(clips):
        start = k * SLOT_MS
        events.append((start, 0, bytes([0xC0, clip.program])))
        for on, off, pitch, velocity in notes:
            events.append((start + on, 2, bytes([0x90, pitch, velocity])))
            events.append((start + off, 1, bytes([0x80, pitch, 0])))
        events.append((start + CLIP_MS, 0, bytes([0xB0, 120, 0])))  # all sound off
        events.append((start + CLIP_MS, 0, bytes([0xB0, 121, 0])))  # reset all controllers
    events.sort(key=lambda event: (event[0], event[1]))  # stable: same-key events keep their order
    return midi_file([(tick, message) for tick, _, message in events], end_tick=len(clips) * SLOT_MS)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _fluidsynth_command() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise RuntimeError(
            "The `fluidsynth` command was not found. Install it with `apt-get install fluidsynth` "
            "(Debian/Ubuntu; `brew install fluid-synth` on macOS)."
        )
    return path


def _fluidsynth_version(command: str) -> str:
    result = subprocess.run([command, "--version"], capture_output=True, text=True, check=False)
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _check_soundfont(soundfont: Path) -> None:
    if soundfont.is_file():
        return
    package = SOUNDFONT_PACKAGES.get(soundfont.name)
    if package:
        hint = f"install it with `apt-get install {package}` (Debian/Ubuntu)"
    else:
        hint = ("pass the path of a General MIDI .sf2 soundfont, e.g. the FluidR3 GM bank from "
                f"`apt-get install fluid-soundfont-gm` ({DEFAULT_SOUNDFONT})")
    raise FileNotFoundError(f"SoundFont {soundfont} not found: {hint}.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_wav(path: Path, waveform: np.ndarray) -> None:
    pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767.0).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLING_RATE)
        handle.writeframes(pcm.tobytes())


def _render_batch(fluidsynth: str, soundfont: Path, output: Path, seed: int,
                  batch: list[tuple[_Clip, int]]) -> list[tuple[_Clip, int]]:
    """Renders and writes one batch; returns the (clip, attempt) pairs that came out silent."""
    drawn = [(clip, _draw_notes(_clip_rng(seed, clip, attempt), clip.program, clip.family)) for clip, attempt in batch]
    with tempfile.TemporaryDirectory(prefix="beats_corpus_") as scratch:
        midi_path, raw_path = Path(scratch) / "batch.mid", Path(scratch) / "batch.raw"
        midi_path.write_bytes(_batch_midi(drawn))
        # Raw little-endian float32: no dither from fluidsynth's own 16-bit conversion, no header to parse.
        command = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", str(GAIN), "-r", str(SAMPLING_RATE),
                   "-T", "raw", "-O", "float", "-E", "little", "-F", str(raw_path), str(soundfont), str(midi_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not raw_path.is_file():
            raise RuntimeError(f"fluidsynth failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        stereo = np.fromfile(raw_path, dtype="<f4").reshape(-1, 2)
    needed = (len(batch) - 1) * SLOT_SAMPLES + CLIP_SAMPLES
    if len(stereo) < needed:
        raise RuntimeError(f"fluidsynth rendered {len(stereo)} samples, expected at least {needed}")
    silent = []
    for k, (clip, attempt) in enumerate(batch):
        mono = stereo[k * SLOT_SAMPLES: k * SLOT_SAMPLES + CLIP_SAMPLES].astype(np.float64).mean(axis=1)
        rms = float(np.sqrt(np.mean(mono**2)))
        if rms < SILENT_RMS:
            silent.append((clip, attempt + 1))
            continue
        mono *= TARGET_RMS / rms
        peak = float(np.abs(mono).max())
        if peak > MAX_PEAK:  # percussive clips: keep the peak below full scale rather than clip
            mono *= MAX_PEAK / peak
        _write_wav(output / clip.path, mono)
    return silent


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


# ---------------------------------------------------------------------------------------------------------------
# Public API


def build_corpus(
    output_dir: str | Path,
    soundfont: str | Path | None = None,
    clips_per_train_program: int = DEFAULT_CLIPS_PER_TRAIN_PROGRAM,
    clips_per_validation_program: int = DEFAULT_CLIPS_PER_VALIDATION_PROGRAM,
    clips_per_test_program: int = DEFAULT_CLIPS_PER_TEST_PROGRAM,
    unlabelled_clips: int = DEFAULT_UNLABELLED_CLIPS,
    seed: int = 0,
    progress: bool = True,
    num_workers: int = 2,
) -> dict:
    """Renders the corpus into `output_dir` (or reuses an identical one) and returns the contents of `corpus.json`.

    The returned dict also has `output_dir` and `reused` (whether nothing had to be rendered). `num_workers`
    fluidsynth processes run at once; it does not change the output.
    """
    for name, value in (("clips_per_train_program", clips_per_train_program),
                        ("clips_per_validation_program", clips_per_validation_program),
                        ("clips_per_test_program", clips_per_test_program), ("unlabelled_clips", unlabelled_clips)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    output = Path(output_dir)
    soundfont = Path(soundfont if soundfont is not None else DEFAULT_SOUNDFONT).resolve()
    _check_soundfont(soundfont)
    fluidsynth = _fluidsynth_command()

    plan = _plan(clips_per_train_program, clips_per_validation_program, clips_per_test_program, unlabelled_clips)
    manifest = {
        "settings": {
            "corpus_version": CORPUS_VERSION,
            "seed": seed,
            "clips_per_train_program": clips_per_train_program,
            "clips_per_validation_program": clips_per_validation_program,
            "clips_per_test_program": clips_per_test_program,
            "unlabelled_clips": unlabelled_clips,
            "sampling_rate": SAMPLING_RATE,
            "clip_seconds": CLIP_MS / 1000,
            "gain": GAIN,
            "target_rms": TARGET_RMS,
            "clips_per_render": CLIPS_PER_RENDER,
        },
        "soundfont": {"path": str(soundfont), "sha256": _sha256(soundfont)},
        "fluidsynth": _fluidsynth_version(fluidsynth),
        "families": list(FAMILIES),
        "programs": {
            "train": {family: list(TRAIN_PROGRAMS[family]) for family in FAMILIES},
            "validation": {family: list(VALIDATION_PROGRAMS[family]) for family in FAMILIES},
            "test": {family: list(TEST_PROGRAMS[family]) for family in FAMILIES},
            "unlabelled": _unlabelled_programs() if unlabelled_clips else [],
        },
        "program_names": {str(p): GM_PROGRAM_NAMES[p] for p in range(len(GM_PROGRAM_NAMES))},
    }

    manifest_path = output / "corpus.json"
    previous = _read_manifest(manifest_path)
    if (previous is not None and all(previous.get(key) == manifest[key] for key in manifest)
            and all((output / clip.path).is_file() for clip in plan)):
        return {**previous, "output_dir": str(output), "reused": True}

    for stale in (manifest_path, output / "labelled", output / "unlabelled"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    output.mkdir(parents=True, exist_ok=True)

    redrawn = 0
    pending = [(clip, 0) for clip in plan]
    from tqdm import tqdm

    with tqdm(total=len(plan), desc="rendering corpus", unit="clip", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        while pending:
            batches = list(_batches(pending, CLIPS_PER_RENDER))
            retry = []
            # map() yields in batch order, so the retry list (and the retry batches) never depend on timing.
            rendered = pool.map(lambda batch: _render_batch(fluidsynth, soundfont, output, seed, batch), batches)
            for batch, silent in zip(batches, rendered, strict=True):
                retry += silent
                bar.update(len(batch) - len(silent))
            for clip, attempt in retry:
                if attempt >= MAX_ATTEMPTS:
                    raise RuntimeError(f"program {clip.program} rendered silent {MAX_ATTEMPTS} times with "
                                       f"{soundfont}: does this soundfont have General MIDI program {clip.program}?")
            redrawn += len(retry)
            pending = retry

    counts = {split: sum(clip.split == split for clip in plan) for split in SPLIT_CODES}
    manifest["counts"] = {**counts, "redrawn_silent": redrawn}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks completion
    return {**manifest, "output_dir": str(output), "reused": False}


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.corpus",
        description="Render the instrument-family corpus (labelled train/test audiofolder + unlabelled pool) "
        "from a General MIDI soundfont with fluidsynth.",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--soundfont", default=None, help=f"a General MIDI .sf2 (default {DEFAULT_SOUNDFONT})")
    parser.add_argument("--clips_per_train_program", type=int, default=DEFAULT_CLIPS_PER_TRAIN_PROGRAM,
                        help="x 50 train programs")
    parser.add_argument("--clips_per_validation_program", type=int, default=DEFAULT_CLIPS_PER_VALIDATION_PROGRAM,
                        help="x 10 validation programs")
    parser.add_argument("--clips_per_test_program", type=int, default=DEFAULT_CLIPS_PER_TEST_PROGRAM,
                        help="x 20 held-out test programs")
    parser.add_argument("--unlabelled_clips", type=int, default=DEFAULT_UNLABELLED_CLIPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=2, help="parallel fluidsynth processes")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = build_corpus(
            args.output_dir, soundfont=args.soundfont, clips_per_train_program=args.clips_per_train_program,
            clips_per_validation_program=args.clips_per_validation_program,
            clips_per_test_program=args.clips_per_test_program, unlabelled_clips=args.unlabelled_clips,
            seed=args.seed, progress=not args.no_progress, num_workers=args.num_workers,
        )
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    state = "reused" if manifest["reused"] else "built"
    print(f"{state} {manifest['output_dir']}: {json.dumps(manifest['counts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
