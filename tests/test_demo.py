"""`DEMO_FAST=1 make demo` end to end (the reduced demo: tiny model, a few steps, the small TimGM6mb soundfont)."""

import json
import os
import subprocess
import sys

import pytest

from beats_hf.demo import corpus  # noqa: F401  (fails early if the corpus builder is missing)

SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"


@pytest.mark.skipif(not os.path.exists(SOUNDFONT), reason="timgm6mb-soundfont is installed by `make test`")
def test_fast_demo_end_to_end(tmp_path):
    env = {**os.environ, "DEMO_FAST": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "beats_hf.cli", "demo", "--output_dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = tmp_path / "report"
    results = json.loads((report / "results.json").read_text())
    for key in ("pretrained_finetuned_accuracy", "random_init_finetuned_accuracy", "pretrained_linear_probe_accuracy",
                "random_init_linear_probe_accuracy", "logmel_baseline_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["settings"]["fast"] is True
    for name in ("report.md", "accuracy.png", "confusion_matrix.png", "pretraining_loss.png"):
        assert (report / name).stat().st_size > 0, name
    assert "report.md" in completed.stdout
    assert len(results["pipeline_examples"]) == 5
    for example in results["pipeline_examples"]:  # top 3 labels with scores, best first
        scores = [prediction["score"] for prediction in example["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    manifest = json.loads((tmp_path / "pretraining" / "iterations.json").read_text())
    # Written by `beats-hf iterate`; the demo's tokenizer training restarts dead codes (and counts them).
    assert "last_restarted_codes" in manifest["stages"]["iteration_2/tokenizer"]["metrics"]
