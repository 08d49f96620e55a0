"""`DEMO_FAST=1 make demo` end to end (the reduced demo: tiny model, a few steps, the small TimGM6mb soundfont)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from demo import corpus  # noqa: F401  (fails early if the corpus builder is missing)
from demo.run import program_bootstrap

SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
VOICES = Path("/usr/share/games/hedgewars/Data/Sounds/voices")


@pytest.mark.skipif(not os.path.exists(SOUNDFONT) or not VOICES.is_dir(),
                    reason="timgm6mb-soundfont and hedgewars-data are installed by `make test`")
def test_fast_demo_end_to_end(tmp_path):
    env = {**os.environ, "DEMO_FAST": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "demo.run", "--output_dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = tmp_path / "report"
    results = json.loads((report / "results.json").read_text())
    for key in ("pretrained_finetuned_accuracy", "random_init_finetuned_accuracy", "pretrained_linear_probe_accuracy",
                "random_init_linear_probe_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["settings"]["fast"] is True
    # The held-out suite: every task's test split scored for both iterations, untrained and log-mel, with intervals
    # over the task's test groups, and the last iteration's paired differences.
    suite = results["held_out_suite"]
    assert list(suite) == ["instruments", "instruments_timgm6mb", "phrases"]
    assert [suite[name]["test_groups"] for name in suite] == [20, 20, 5]
    for task in suite.values():
        assert list(task["scores"]) == ["iteration_1", "iteration_2", "untrained", "logmel"]
        for score in task["scores"].values():
            low, high = score["test_interval"]
            assert low <= score["test"] <= high and score["pooling"] in ("mean", "frequency_bands")
        assert set(task["differences"]) == {"iteration_2 - iteration_1", "iteration_2 - untrained",
                                            "iteration_2 - logmel"}
        for name, difference in task["differences"].items():
            other = task["scores"][name.split(" - ")[1]]["test"]
            assert abs(difference["difference"] - (task["scores"]["iteration_2"]["test"] - other)) < 1e-6
            low, high = difference["interval_95"]
            assert low <= difference["difference"] <= high
    # The fine-tuning comparison with its program-level interval (20 held-out programs, 2 clips each).
    for comparison in results["program_bootstrap"].values():
        low, high = comparison["interval_95"]
        assert low <= comparison["difference"] <= high and comparison["programs"] == 20
    per_program = results["per_program_accuracy"]["pretrained_finetuned"]
    assert len(per_program) == 20
    assert abs(sum(per_program.values()) / 20 - results["pretrained_finetuned_accuracy"]) < 1e-9  # equal clip counts
    for name in ("report.md", "suite.png", "finetuning.png", "confusion_matrix.png", "pretraining_loss.png",
                 "per_program_accuracy.png"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "## Held-out task suite: test splits, scored once" in text and "### phrases" in text
    assert "report.md" in completed.stdout
    assert len(results["pipeline_examples"]) == 5
    for example in results["pipeline_examples"]:  # top 3 labels with scores, best first
        scores = [prediction["score"] for prediction in example["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    manifest = json.loads((tmp_path / "pretraining" / "iterations.json").read_text())
    # Written by `beats-hf iterate`; the demo's tokenizer training restarts dead codes (and counts them).
    assert "last_restarted_codes" in manifest["stages"]["iteration_2/tokenizer"]["metrics"]


def test_program_bootstrap_resamples_programs_not_clips():
    """A model right on every clip of one program and wrong on every clip of the other is +0.5 over a model that is
    always wrong; resampling the 2 programs gives 0, 0.5 or 1 (a quarter of the time each extreme), so the interval is
    [0, 1]. Resampling the 20 clips as if independent would give a narrow interval around 0.5."""
    programs = [1] * 10 + [2] * 10
    comparison = program_bootstrap([1] * 10 + [0] * 10, [0] * 20, programs)
    assert comparison["difference"] == 0.5 and comparison["interval_95"] == [0.0, 1.0]
    assert 0.2 < comparison["share_of_resamples_not_above_0"] < 0.3
    same = program_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], [5, 5, 6, 6])
    assert same["difference"] == 0.0 and same["interval_95"] == [0.0, 0.0]

