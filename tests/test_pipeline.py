"""The transformers audio-classification pipeline with a model saved to a local folder."""

import numpy as np
import pytest
import torch
from conftest import load_reference
from fbank_rounding import probability_tolerance
from transformers import pipeline

from beats_hf import BeatsFeatureExtractor
from conversion.beats_conversion import convert_checkpoint


@pytest.mark.float_sensitive
def test_pipeline_on_converted_reference_checkpoint(tmp_path, reference_inputs):
    checkpoint, outputs = load_reference("finetuned")
    model = convert_checkpoint(checkpoint)
    model.save_pretrained(tmp_path)
    BeatsFeatureExtractor().save_pretrained(tmp_path)

    classifier = pipeline("audio-classification", model=str(tmp_path), function_to_apply="sigmoid", top_k=None)
    waveform = reference_inputs["individual_waveforms"][0]
    predictions = classifier({"raw": waveform[0].numpy(), "sampling_rate": 16000})

    # From raw audio: the model's parity tolerance plus the fbank's float32 rounding carried through the model.
    tolerance = probability_tolerance(model.eval(), waveform, model_tolerance=1e-5)
    official = outputs["individual_0"]["probs"][0]
    expected = {model.config.id2label[i]: i for i in range(len(official))}
    assert {p["label"] for p in predictions} == set(expected)
    assert "Speech" in expected and "Male speech, man speaking" in expected
    for prediction in predictions:
        index = expected[prediction["label"]]
        assert abs(prediction["score"] - official[index].item()) <= tolerance[index]
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.float_sensitive
def test_pipeline_batches_clips_of_different_lengths(tmp_path):
    """Batched and alone, each clip's scores agree to the fbank's rounding carried through the model (MKL may round a
    clip's FFT differently in a batch) plus 1e-5 for the model's own float32 rounding in another batch shape."""
    torch.manual_seed(0)
    checkpoint, _ = load_reference("finetuned")
    model = convert_checkpoint(checkpoint).eval()
    model.save_pretrained(tmp_path)
    BeatsFeatureExtractor().save_pretrained(tmp_path)
    classifier = pipeline("audio-classification", model=str(tmp_path), function_to_apply="sigmoid", top_k=2)
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (16000, 40000)]
    together = classifier(clips, batch_size=2)
    alone = [classifier(clip) for clip in clips]
    for clip, batched, single in zip(clips, together, alone):
        assert [p["label"] for p in batched] == [p["label"] for p in single]
        tolerance = probability_tolerance(model, torch.from_numpy(clip), model_tolerance=1e-5)
        for in_batch, by_itself in zip(batched, single):
            assert abs(in_batch["score"] - by_itself["score"]) <= tolerance[model.config.label2id[in_batch["label"]]]
