"""The transformers audio-classification pipeline with a model saved to a local folder."""

import numpy as np
import torch
from conftest import load_reference
from transformers import pipeline

from beats_hf import BeatsFeatureExtractor
from conversion.beats_conversion import convert_checkpoint


def test_pipeline_on_converted_reference_checkpoint(tmp_path, reference_inputs):
    checkpoint, outputs = load_reference("finetuned")
    model = convert_checkpoint(checkpoint)
    model.save_pretrained(tmp_path)
    BeatsFeatureExtractor().save_pretrained(tmp_path)

    classifier = pipeline("audio-classification", model=str(tmp_path), function_to_apply="sigmoid", top_k=None)
    waveform = reference_inputs["individual_waveforms"][0][0].numpy()
    predictions = classifier({"raw": waveform, "sampling_rate": 16000})

    official = outputs["individual_0"]["probs"][0]
    expected = {model.config.id2label[i]: official[i].item() for i in range(len(official))}
    assert {p["label"] for p in predictions} == set(expected)
    assert "Speech" in expected and "Male speech, man speaking" in expected
    for prediction in predictions:
        assert abs(prediction["score"] - expected[prediction["label"]]) <= 1e-5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


def test_pipeline_batches_clips_of_different_lengths(tmp_path):
    torch.manual_seed(0)
    checkpoint, _ = load_reference("finetuned")
    convert_checkpoint(checkpoint).save_pretrained(tmp_path)
    BeatsFeatureExtractor().save_pretrained(tmp_path)
    classifier = pipeline("audio-classification", model=str(tmp_path), function_to_apply="sigmoid", top_k=2)
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (16000, 40000)]
    together = classifier(clips, batch_size=2)
    alone = [classifier(clip) for clip in clips]
    for batched, single in zip(together, alone):
        assert [p["label"] for p in batched] == [p["label"] for p in single]
        np.testing.assert_allclose([p["score"] for p in batched], [p["score"] for p in single], atol=1e-5)
