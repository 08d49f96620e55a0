"""The held-out task suite (`demo.suite`, `demo.voices`) and the recipe search (`demo.recipes`)."""

import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from demo import recipes as recipes_module
from demo.recipes import BUDGET, CHOSEN, RECIPES, best_recipe, iteration_comparisons, read_record, write_table
from demo.suite import build_pool, build_suite
from demo.voices import PHRASES, SPLITS, VOICES_DIR, build_phrase_task

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_voices = pytest.mark.skipif(not VOICES_DIR.is_dir(), reason="hedgewars-data is installed by `make test`")
needs_suite = pytest.mark.skipif(
    not VOICES_DIR.is_dir() or shutil.which("fluidsynth") is None or not TIMGM.is_file(),
    reason="hedgewars-data, fluidsynth and timgm6mb-soundfont are installed by `make test`",
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    manifests = build_suite(folder, 1, 1, 1, fluidr3_pool_clips=20, instrument_soundfont=str(TIMGM))
    return folder, manifests


@needs_suite
def test_phrase_task_holds_out_whole_voices(suite):
    folder, manifests = suite
    phrases = folder / "phrases"
    assert manifests["phrases"]["counts"] == {"train": 175, "validation": 75, "test": 125, "unlabelled": 381}
    voices = {}
    for path in (phrases / "labelled").rglob("*.wav"):
        split, phrase = path.parent.parent.name, path.parent.name
        voice, said = re.fullmatch(r"(.+?)--(.+)\.wav", path.name).groups()
        assert said == phrase and phrase in PHRASES  # the folder (the label) is the phrase of the file
        voices.setdefault(split, set()).add(voice)
    assert {split: sorted(found) for split, found in voices.items()} == {
        split: sorted(names) for split, names in SPLITS.items()}
    pooled = {path.name.split("--")[0] for path in (phrases / "unlabelled").glob("*.wav")}
    assert pooled == set(SPLITS["train"])  # no validation or test voice in the pre-training material
    with wave.open(str(next((phrases / "labelled" / "test").rglob("*.wav")))) as handle:
        assert (handle.getnchannels(), handle.getframerate()) == (1, 16000)
        samples = np.frombuffer(handle.readframes(handle.getnframes()), "<i2") / 32768
    assert 0.05 < np.sqrt(np.mean(samples**2)) < 0.1001  # -20 dBFS unless the peak had to be limited
    again = build_phrase_task(phrases)
    assert again["reused"]


@needs_suite
def test_pools_hold_no_validation_or_test_group(suite):
    folder, _ = suite
    pool = build_pool(folder, {"fluidr3": 20, "speech": 30})
    names = sorted(path.name for path in pool.glob("*.wav"))
    assert len(names) == 50 and all(path.stat().st_nlink >= 2 for path in pool.glob("*.wav"))  # links, not copies
    held_out = {program for split in ("validation", "test")
                for programs in json.loads((folder / "instruments" / "corpus.json").read_text())["programs"][
                    split].values() for program in programs}
    programs = {int(re.search(r"_p(\d+)", name).group(1)) for name in names if name.startswith("fluidr3--")}
    assert programs and not programs & held_out
    voices = {name.split("--")[1] for name in names if name.startswith("speech--")}
    assert voices <= set(SPLITS["train"])
    marker = (pool / "pool.json").stat().st_mtime_ns
    assert build_pool(folder, {"fluidr3": 20, "speech": 30}) == pool  # reused: not written again
    assert (pool / "pool.json").stat().st_mtime_ns == marker
    with pytest.raises(ValueError, match="Unknown pool source 'noise'"):
        build_pool(folder, {"noise": 3})
    with pytest.raises(ValueError, match="has 20 clips, fewer than the 21 asked for"):
        build_pool(folder, {"fluidr3": 21})


@needs_voices
def test_missing_voice_package_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install hedgewars-data"):
        build_phrase_task(tmp_path / "out", voices_dir=tmp_path / "no_voices")
    assert not (tmp_path / "out").exists()


def test_every_recipe_spends_the_same_budget():
    assert {recipe.optimizer_steps for recipe in RECIPES.values()} == {BUDGET}
    assert len(RECIPES) <= 8 and CHOSEN in RECIPES


def test_the_demo_adopts_the_best_recipe_of_the_record():
    rows = read_record()
    if not rows:
        pytest.skip("no recipe has been run yet")
    assert CHOSEN == best_recipe(rows)


def _row(name: str, iterations: int, scores: dict[str, list[float]], pool=(("fluidr3", 1200),)) -> dict:
    recipe = {"name": name, "iterations": iterations, "ssl_steps": 10 // iterations, "tokenizer_steps": 0,
              "pool": [list(source) for source in pool], "mask_ratio": 0.75, "model_preset": "small",
              "batch_size": 16, "learning_rate": 1e-3}
    return {"recipe": recipe, "optimizer_steps": 10, "pool_clips": 1200, "pretraining_minutes": 1.0, "cpu": "test",
            "cores": 2, "scores": {task: {f"iteration_{i + 1}": {"validation": value} for i, value in
                                              enumerate(values)} | {"untrained": {"validation": 0.1},
                                                                    "logmel": {"validation": 0.2}}
                                       for task, values in scores.items()}}


def test_two_iterations_are_compared_with_one_at_the_same_budget_and_pool(tmp_path, monkeypatch):
    rows = [_row("two", 2, {"a": [0.5, 0.4], "b": [0.5, 0.6]}), _row("one", 1, {"a": [0.6], "b": [0.6]}),
            _row("one_other_pool", 1, {"a": [0.9], "b": [0.9]}, pool=(("speech", 381),))]
    comparisons = iteration_comparisons(rows)
    assert len(comparisons) == 1  # the other pool is not the same recipe with another split of the steps
    assert comparisons[0]["two_iterations"] == "two" and comparisons[0]["one_iteration"] == "one"
    assert comparisons[0]["mean_two"] == pytest.approx(0.5) and comparisons[0]["mean_one"] == pytest.approx(0.6)
    assert not comparisons[0]["two_beats_one"]
    assert comparisons[0]["validation"]["b"] == {"two_iterations": 0.6, "one_iteration": 0.6}
    assert best_recipe(rows) == "one_other_pool"
    monkeypatch.setattr(recipes_module, "RECIPES", {"two": None, "one": None, "one_other_pool": None, "later": None})
    write_table(rows, tmp_path / "table.md")
    table = (tmp_path / "table.md").read_text()
    assert table.index("**one_other_pool**") < table.index("**one**") < table.index("**two**")  # best first
    assert "| iteration_2 | 0.400 | 0.600 | 0.500 |" in table and "Not run yet: `later`." in table
