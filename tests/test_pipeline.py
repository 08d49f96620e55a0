"""The transformers audio-classification pipeline with a model saved to a local folder."""


import numpy as np
import pytest
import torch
from conftest import load_reference, write_wav
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


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetuned")
    checkpoint, _ = load_reference("finetuned")
    convert_checkpoint(checkpoint).save_pretrained(folder)
    BeatsFeatureExtractor().save_pretrained(folder)
    return pipeline("audio-classification", model=str(folder), function_to_apply="sigmoid", top_k=None)


def scores(predictions) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


def test_pipeline_reads_files_at_any_rate_and_channel_count(classifier, reference_inputs, tmp_path):
    """A file path goes through FFmpeg (resampled to 16 kHz, mixed down to mono): a 16 kHz mono file gives exactly
    the scores of its own samples, and the same clip at 44.1 kHz in stereo gives the same top label. An array at
    another rate goes through beats_hf's `decode_audio` first (FFmpeg resampling, as the README shows)."""
    from beats_hf.audio_data import decode_audio

    waveform = reference_inputs["individual_waveforms"][0][0].numpy()
    write_wav(tmp_path / "mono16k.wav", waveform)
    stored = (np.clip(waveform, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768  # what FFmpeg reads back
    from_file = scores(classifier(str(tmp_path / "mono16k.wav")))
    from_samples = scores(classifier({"raw": stored, "sampling_rate": 16000}))
    assert from_file.keys() == from_samples.keys()
    assert max(abs(from_file[label] - from_samples[label]) for label in from_file) <= 1e-6

    time_44k = np.arange(int(len(waveform) * 44100 / 16000)) / 44100
    resampled = np.interp(time_44k, np.arange(len(waveform)) / 16000, waveform).astype(np.float32)
    write_wav(tmp_path / "stereo44k.wav", np.stack([resampled, resampled]), 44100)
    from_stereo = scores(classifier(str(tmp_path / "stereo44k.wav")))
    assert max(from_stereo, key=from_stereo.get) == max(from_file, key=from_file.get)
    array_44k = scores(classifier(decode_audio({"array": resampled, "sampling_rate": 44100})))
    assert max(array_44k, key=array_44k.get) == max(from_file, key=from_file.get)


def test_pipeline_inputs_it_cannot_take_say_why(classifier):
    """What the README documents: arrays at another rate need torchaudio inside transformers (not usable here), and
    arrays must be mono; both fail with transformers' own message. A missing file names the path."""
    rng = np.random.default_rng(0)
    with pytest.raises(ImportError, match="torchaudio is required to resample"):
        classifier({"raw": rng.uniform(-0.1, 0.1, 44100).astype(np.float32), "sampling_rate": 44100})
    with pytest.raises(ValueError, match="single channel"):
        classifier(rng.uniform(-0.1, 0.1, (2, 16000)).astype(np.float32))
    with pytest.raises(FileNotFoundError, match="no_such_file.wav"):
        classifier("no_such_file.wav")
