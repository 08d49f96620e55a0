"""The held-out task suite's task that is not music: which phrase a voice says, on voices never heard in training.

Source: the voice packs of the game Hedgewars (Debian package `hedgewars-data`): 15 voices, each a recording of one
actor (several accents and characters, five of them in Spanish, Polish, Russian or Ukrainian) saying the same set of
short game phrases. The task keeps the 25 phrases that every voice has and that are words (the numbered pain and jump
sounds `Ow1`-`Ow4`, `Ooff1`-`Ooff3`, `Jump1`-`Jump3` are left out: which of them is which is arbitrary); the label is
the phrase, the group is the voice. One speaker per voice, and every voice says every phrase, so the speaker, the
microphone and the language are no cue to the label.

Voices were assigned to splits once, before any score was seen, mixing accents and languages:

========== ================================================================================
split      voices
========== ================================================================================
train      Classic, Default, Default_es, Default_ru, Mobster, Pirate, Russian_pl
validation British, Default_pl, Robot
test       HillBilly, Russian, Singer, Surfer, Default_uk
========== ================================================================================

Layout of `output_dir`::

    labelled/<split>/<phrase>/<voice>--<phrase>.wav   # audiofolder; group pattern `^(.+?)--`
    unlabelled/<voice>--<file>.wav                    # every file of the TRAIN voices (pre-training pool material)
    voices.json                                       # settings, counts, the package's version; written last

Every file is decoded with FFmpeg (torchcodec), averaged to mono, resampled to 16 kHz and normalised to -20 dBFS RMS
(peaks limited to 0.95), as the instrument clips are, so that level is no cue either. 25 x 15 = 375 labelled clips of
0.3 to 2.5 s. A rerun with the same settings and package reuses the folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .corpus import MAX_PEAK, SAMPLING_RATE, SILENT_RMS, TARGET_RMS, _write_wav

VOICES_DIR = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
PACKAGE = "hedgewars-data"
SPLITS = {
    "train": ("Classic", "Default", "Default_es", "Default_ru", "Mobster", "Pirate", "Russian_pl"),
    "validation": ("British", "Default_pl", "Robot"),
    "test": ("HillBilly", "Russian", "Singer", "Surfer", "Default_uk"),
}
PHRASES = (
    "Byebye", "Comeonthen", "Enemydown", "Firstblood", "Flawless", "Hello", "Hurry", "Illgetyou", "Incoming",
    "Kamikaze", "Laugh", "Missed", "Nooo", "Nutter", "Oops", "Reinforcements", "Sameteam", "Stupid", "Takecover",
    "Traitor", "Uh-oh", "Victory", "Watchit", "Yessir", "Youllregretthat",
)
GROUP_PATTERN = r"^(.+?)--"
VERSION = 1  # bump when the output changes

__all__ = ["GROUP_PATTERN", "PHRASES", "SPLITS", "build_phrase_task"]


def _package_version() -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or "unknown"


def _convert(source: Path, target: Path) -> None:
    from beats_hf.audio_data import decode_audio

    waveform = decode_audio(str(source))
    if waveform is None:
        raise RuntimeError(f"could not decode {source}")
    waveform = waveform.astype(np.float64)
    rms = float(np.sqrt(np.mean(waveform**2)))
    if rms < SILENT_RMS:
        raise RuntimeError(f"{source} is silent")
    waveform *= TARGET_RMS / rms
    peak = float(np.abs(waveform).max())
    if peak > MAX_PEAK:
        waveform *= MAX_PEAK / peak
    _write_wav(target, waveform)


def build_phrase_task(output_dir: str | Path, voices_dir: str | Path = VOICES_DIR, progress: bool = True) -> dict:
    """Writes the phrase task (and the train voices' unlabelled files) into `output_dir`; returns voices.json."""
    voices_dir, output = Path(voices_dir), Path(output_dir)
    if not voices_dir.is_dir():
        raise FileNotFoundError(f"{voices_dir} not found: install the voices with `apt-get install {PACKAGE}` "
                                "(Debian/Ubuntu).")
    manifest = {"version": VERSION, "sampling_rate": SAMPLING_RATE, "target_rms": TARGET_RMS,
                "package": {"name": PACKAGE, "version": _package_version()},
                "splits": {split: list(voices) for split, voices in SPLITS.items()}, "phrases": list(PHRASES)}
    missing = [f"{voice}/{phrase}.ogg" for voices in SPLITS.values() for voice in voices for phrase in PHRASES
               if not (voices_dir / voice / f"{phrase}.ogg").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} voice files missing under {voices_dir}, e.g. {missing[:3]}")
    jobs = [(voices_dir / voice / f"{phrase}.ogg", f"labelled/{split}/{phrase}/{voice}--{phrase}.wav")
            for split, voices in SPLITS.items() for voice in voices for phrase in PHRASES]
    jobs += [(path, f"unlabelled/{voice}--{path.stem}.wav") for voice in SPLITS["train"]
             for path in sorted((voices_dir / voice).glob("*.ogg"))]
    manifest_path = output / "voices.json"
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if (previous is not None and {key: previous.get(key) for key in manifest} == manifest
            and all((output / target).is_file() for _, target in jobs)):
        return {**previous, "output_dir": str(output), "reused": True}
    for stale in (manifest_path, output / "labelled", output / "unlabelled"):  # only what this builder writes
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    from tqdm import tqdm

    for source, target in tqdm(jobs, desc="converting voices", unit="clip", disable=not progress):
        _convert(source, output / target)
    manifest["counts"] = {split: len(voices) * len(PHRASES) for split, voices in SPLITS.items()}
    manifest["counts"]["unlabelled"] = len(jobs) - sum(manifest["counts"].values())
    output.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks completion
    return {**manifest, "output_dir": str(output), "reused": False}
