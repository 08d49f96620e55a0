"""The held-out task suite: three tasks that no demo setting was tuned on, scored with `beats-hf evaluate`.

==================== ============================================================== ========= ====================
task                 what is predicted, on what                                     classes   groups (fit/val/test)
==================== ============================================================== ========= ====================
instruments          instrument family, held-out General MIDI programs (FluidR3)    10        50 / 10 / 20 programs
instruments_timgm6mb the same task rendered from TimGM6mb, whose samples are not     10        50 / 10 / 20 programs
                     FluidR3's (and which no pre-training pool contains)
phrases              spoken game phrase, held-out voices (Hedgewars voice packs)    25        7 / 3 / 5 voices
==================== ============================================================== ========= ====================

Every task has a validation split of its own groups (programs or voices), and neither the validation nor the test
groups are in any unlabelled pre-training pool (`build_pool`). Every choice (probe setting, layer, pooling, recipe) is
made on validation; the test groups are scored once per finished recipe (`evaluate_suite(..., test=True)`).

The unlabelled pools are assembled from named sources (`POOL_SOURCES`): the FluidR3 corpus's own pool (its 50 train
programs and the 24 synth programs), the same programs rendered from three more soundfonts, and the train voices'
recordings. Each pool is a flat folder of hard links (copies where links cannot be made) named `<source>--<file>`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from beats_hf.evaluation.evaluate import CHOSEN_POOLING

from .corpus import build_corpus
from .voices import GROUP_PATTERN as VOICE_PATTERN
from .voices import build_phrase_task

PROGRAM_PATTERN = r"_p(\d+)_"
TIMGM6MB = "/usr/share/sounds/sf2/TimGM6mb.sf2"
# Soundfonts for pool diversity only (never a task): their own samples (csound's bank, an OPL3 FM chip), and
# MuseScore's General, which is partly derived from FluidR3.
POOL_SOUNDFONTS = {
    "sf_gmbank": "/usr/share/sounds/sf2/sf_GMbank.sf2",
    "opl3": "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2",
    "musescore": "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",
}
POOL_SOURCES = ("fluidr3", *POOL_SOUNDFONTS, "speech")


@dataclass(frozen=True)
class HeldOutTask:
    name: str
    title: str
    folder: str  # the labelled audiofolder, relative to the suite folder
    group_pattern: str


TASKS = (
    HeldOutTask("instruments", "instrument family, held-out programs (FluidR3)", "instruments/labelled",
                PROGRAM_PATTERN),
    HeldOutTask("instruments_timgm6mb", "instrument family, held-out programs, another soundfont (TimGM6mb)",
                "instruments_timgm6mb/labelled", PROGRAM_PATTERN),
    HeldOutTask("phrases", "spoken phrase, held-out voices (Hedgewars)", "phrases/labelled", VOICE_PATTERN),
)

__all__ = ["POOL_SOURCES", "TASKS", "HeldOutTask", "build_pool", "build_suite", "chosen_score", "evaluate_suite"]


def build_suite(folder: str | Path, clips_per_train_program: int, clips_per_validation_program: int,
                clips_per_test_program: int, fluidr3_pool_clips: int, seed: int = 0,
                instrument_soundfont: str | None = None) -> dict:
    """Renders (or reuses) the three tasks and the FluidR3 pool under `folder`; returns their manifests.

    `instrument_soundfont` replaces FluidR3 for the first task (tests use the small TimGM6mb: faster renders)."""
    folder = Path(folder)
    counts = dict(clips_per_train_program=clips_per_train_program,
                  clips_per_validation_program=clips_per_validation_program,
                  clips_per_test_program=clips_per_test_program, seed=seed)
    return {
        "instruments": build_corpus(folder / "instruments", soundfont=instrument_soundfont,
                                    unlabelled_clips=fluidr3_pool_clips, **counts),
        "instruments_timgm6mb": build_corpus(folder / "instruments_timgm6mb", soundfont=TIMGM6MB,
                                             unlabelled_clips=0, **counts),
        "phrases": build_phrase_task(folder / "phrases"),
    }


def _source_files(folder: Path, source: str, clips: int, seed: int) -> list[Path]:
    if source == "fluidr3":
        files = sorted((folder / "instruments" / "unlabelled").glob("*.wav"))
    elif source == "speech":
        files = sorted((folder / "phrases" / "unlabelled").glob("*.wav"))
    elif source in POOL_SOUNDFONTS:
        render = folder / "pool_sources" / source
        build_corpus(render, soundfont=POOL_SOUNDFONTS[source], clips_per_train_program=0,
                     clips_per_validation_program=0, clips_per_test_program=0, unlabelled_clips=clips, seed=seed)
        files = sorted((render / "unlabelled").glob("*.wav"))
    else:
        raise ValueError(f"Unknown pool source {source!r}; choose from {POOL_SOURCES}.")
    if len(files) < clips:
        raise ValueError(f"Pool source {source!r} has {len(files)} clips, fewer than the {clips} asked for.")
    return files[:clips]


def build_pool(folder: str | Path, sources: dict[str, int], seed: int = 0) -> Path:
    """The unlabelled pre-training pool made of `sources` (source name -> clip count), as a flat folder of links
    under `folder/pools/`; reused when it exists with the same sources. Needs `build_suite` first."""
    folder = Path(folder)
    name = "+".join(f"{source}{count}" for source, count in sources.items())
    pool = folder / "pools" / name
    manifest = {"sources": dict(sources), "seed": seed}
    record = pool / "pool.json"
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) == manifest:
        return pool
    if pool.exists():
        shutil.rmtree(pool)  # a pool folder is ours alone: only links and pool.json
    pool.mkdir(parents=True)
    for source, clips in sources.items():
        for path in _source_files(folder, source, clips, seed):
            target = pool / f"{source}--{path.name}"
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    record.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")  # last: marks completion
    return pool


def evaluate_suite(models: list[str], folder: str | Path, output_dir: str | Path, test: bool,
                   probes: tuple[str, ...] = ("linear",), seed: int = 0) -> dict[str, dict]:
    """`beats-hf evaluate` of `models` on every task (OUTPUT/<task>/); validation only unless `test`."""
    from beats_hf.evaluation import evaluate_encoders

    return {
        task.name: evaluate_encoders(models=models, data=str(Path(folder) / task.folder),
                                     output_dir=Path(output_dir) / task.name, probes=probes,
                                     group_pattern=task.group_pattern, validation_split="validation",
                                     test_split="test" if test else None, seed=seed)
        for task in TASKS
    }


def chosen_score(results: dict, model: str, probe: str = "linear") -> dict:
    """A model's score on one task with its pooling and layer chosen on validation (`evaluate`'s "chosen" row)."""
    row = next(row for row in results["results"]
               if (row["model"], row["probe"], row["pooling"]) == (model, probe, CHOSEN_POOLING))
    return {"pooling": row["chosen_pooling"], **{key: row[key] for key in ("best_layer", "validation", "test",
                                                                          "test_interval")}}
