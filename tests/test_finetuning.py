"""The fine-tuning example on tiny generated datasets: single-label audiofolder and multi-label saved dataset."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import finetune, write_wav

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsForAudioClassification, BeatsModel
from beats_hf.training.finetuning import layer_wise_parameter_groups, spec_augment
from demo.run import predictions_of

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_embedding_dim=32,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
)


def clip(kind: int, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    if kind == 0:  # low tone
        signal = np.sin(2 * np.pi * rng.uniform(200, 400) * t)
    elif kind == 1:  # white noise
        signal = rng.standard_normal(t.size)
    else:  # high tone
        signal = np.sin(2 * np.pi * rng.uniform(3000, 5000) * t)
    return (0.3 * signal / np.abs(signal).max()).astype(np.float32)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pretrained")
    torch.manual_seed(0)
    BeatsModel(BeatsConfig(**TINY)).save_pretrained(folder)
    BeatsFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def audiofolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiofolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label, name in enumerate(("low", "noise", "high")):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                write_wav(root / split / name / f"{index}.wav", clip(label, rng, rng.uniform(0.6, 1.2)))
    return root


def common_args(model_dir, data, output_dir) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--dataset", str(data), "--output_dir", str(output_dir),
        "--do_train", "--do_eval", "--use_cpu", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "5",
        "--report_to", "none", "--save_strategy", "no", "--seed", "0", "--dataloader_num_workers", "0",
    ]


def test_single_label_fine_tuning_learns(pretrained_dir, audiofolder, tmp_path):
    output = tmp_path / "out"
    metrics = finetune(
        common_args(pretrained_dir, audiofolder, output) + ["--max_steps", "40"]
    )
    assert metrics["eval_accuracy"] >= 0.75, metrics  # 3 easy classes, chance 0.33
    model = BeatsForAudioClassification.from_pretrained(output)
    assert model.config.id2label == {0: "high", 1: "low", 2: "noise"}
    assert (output / "preprocessor_config.json").exists()
    losses = [entry["loss"] for entry in json.loads((output / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert losses[-1] < losses[0]


def test_unreadable_eval_files_are_left_out_and_counted(pretrained_dir, audiofolder, tmp_path):
    """An unreadable test file is not replaced by a copy of another clip: it is left out of the scores and counted in
    the metrics files; an unreadable training file is replaced and counted."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(audiofolder, data)
    (data / "test" / "low" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (data / "train" / "low" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    output = tmp_path / "out"
    # 37 training clips, batches of 8: 5 steps read every one of them once.
    metrics = finetune(common_args(pretrained_dir, data, output) + ["--max_steps", "5"])
    assert metrics["eval_unreadable_files_left_out"] == 1
    assert metrics["train_unreadable_files_replaced"] == 1
    saved = json.loads((output / "all_results.json").read_text())
    assert saved["eval_unreadable_files_left_out"] == 1
    # The 12 readable test clips are scored, not 13 items: the accuracy is a multiple of 1/12.
    assert abs(metrics["eval_accuracy"] * 12 - round(metrics["eval_accuracy"] * 12)) < 1e-6


def test_paper_recipe_options_train(pretrained_dir, audiofolder, tmp_path):
    """Mixup, SpecAugment and layer-wise lr decay together: training runs and the loss stays finite."""
    metrics = finetune(
        common_args(pretrained_dir, audiofolder, tmp_path / "out")
        + ["--max_steps", "6", "--mixup_alpha", "0.8", "--time_mask_frames", "10", "--freq_mask_bins", "8",
           "--layer_decay", "0.75", "--freeze_feature_encoder"]
    )
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])


def test_multi_label_fine_tuning_reports_map(pretrained_dir, tmp_path):
    rng = np.random.default_rng(1)
    rows = {"audio": [], "labels": []}
    for index in range(24):
        present = sorted({int(k) for k in rng.choice(3, size=rng.integers(1, 3), replace=False)})
        waveform = sum(clip(kind, rng) for kind in present)
        path = tmp_path / f"{index}.wav"
        write_wav(path, waveform / max(1.0, np.abs(waveform).max()))
        rows["audio"].append(str(path))
        rows["labels"].append(present)
    features = datasets.Features(
        {"audio": datasets.Audio(), "labels": datasets.Sequence(datasets.ClassLabel(names=["low", "noise", "high"]))}
    )
    dataset = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(8))}).save_to_disk(tmp_path / "saved")
    metrics = finetune(
        common_args(pretrained_dir, tmp_path / "saved", tmp_path / "out")
        + ["--max_steps", "10", "--multi_label", "--label_column", "labels"]
    )
    assert 0.0 <= metrics["eval_mAP"] <= 1.0
    config = BeatsForAudioClassification.from_pretrained(tmp_path / "out").config
    assert config.problem_type == "multi_label_classification"


def test_linear_probing_changes_only_the_head(pretrained_dir, audiofolder, tmp_path):
    output = tmp_path / "probe"
    finetune(
        common_args(pretrained_dir, audiofolder, output) + ["--max_steps", "3", "--freeze_base_model"]
    )
    before = BeatsModel.from_pretrained(pretrained_dir).state_dict()
    after = BeatsForAudioClassification.from_pretrained(output).beats.state_dict()
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("pooling", ["mean", "frequency_bands"])
def test_linear_probe_head_is_fitted_before_fine_tuning(pretrained_dir, audiofolder, tmp_path, pooling):
    """LP-FT: the head starts as a logistic regression on the frozen clip embeddings (pooled as the head pools). With
    a learning rate of 0 the saved model is exactly that probe, so it scores what the probe scored before training."""
    output = tmp_path / "lp"
    metrics = finetune(
        common_args(pretrained_dir, audiofolder, output)
        + ["--max_steps", "2", "--linear_probe_head", "--learning_rate", "0", "--warmup_steps", "0",
           "--classifier_pooling", pooling]
    )
    assert metrics["linear_probe_accuracy"] >= 0.75, metrics  # tones vs noise are separable even by a random encoder
    assert metrics["linear_probe_train_accuracy"] >= 0.9
    assert metrics["eval_accuracy"] == metrics["linear_probe_accuracy"]
    # The saved model is that probe: reloaded, it makes the same test predictions.
    actual, predicted, _ = predictions_of(output, audiofolder)
    assert np.mean(np.array(actual) == np.array(predicted)) == metrics["linear_probe_accuracy"]
    assert BeatsForAudioClassification.from_pretrained(output).classifier.in_features == (
        32 if pooling == "mean" else 2 * 8 * 32
    )


def test_linear_probe_head_needs_single_label(pretrained_dir, tmp_path):
    features = datasets.Features({"audio": datasets.Audio(), "labels": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))})
    rng = np.random.default_rng(0)
    paths = []
    for index in range(4):
        paths.append(str(tmp_path / f"{index}.wav"))
        write_wav(paths[-1], clip(index % 3, rng))
    dataset = datasets.Dataset.from_dict({"audio": paths, "labels": [[0], [1], [0, 1], [0]]}, features=features)
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match="single-label"):
        finetune(
            common_args(pretrained_dir, tmp_path / "saved", tmp_path / "out")
            + ["--max_steps", "1", "--multi_label", "--label_column", "labels", "--linear_probe_head"]
        )


def test_layer_wise_learning_rates():
    model = BeatsForAudioClassification(BeatsConfig(**TINY, num_labels=3))
    groups = layer_wise_parameter_groups(model, learning_rate=1.0, weight_decay=0.1, decay=0.5)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate_of[id(named["classifier.weight"])] == 1.0
    assert rate_of[id(named["beats.encoder.layers.1.feed_forward.fc1.weight"])] == 0.5
    assert rate_of[id(named["beats.encoder.layers.0.feed_forward.fc1.weight"])] == 0.25
    assert rate_of[id(named["beats.patch_embeddings.projection.weight"])] == 0.125
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_spec_augment_masks_inside_valid_frames_only():
    features = torch.ones(2, 100, 128)
    mask = torch.ones(2, 100, dtype=torch.long)
    mask[1, 50:] = 0
    generator = torch.Generator().manual_seed(0)
    augmented = spec_augment(features, mask, 20, 2, 16, 2, generator=generator)
    zero_frames = (augmented == 0).all(-1)
    assert zero_frames.any()
    assert not zero_frames[1, 50:].any()
    zero_bins = (augmented == 0).all(1)
    assert zero_bins.any() and zero_bins.sum(-1).max() <= 32


def test_probe_layers_scores_every_hidden_state(pretrained_dir, audiofolder, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import probe_layers

    results = probe_layers.main(["--dataset", str(audiofolder), "--models", str(pretrained_dir),
                                 f"random:{pretrained_dir}", "--output_dir", str(tmp_path / "probes")])
    assert set(results) == {str(pretrained_dir), f"random:{pretrained_dir}"}
    for scores in results.values():
        for pooling in ("mean", "frequency_bands"):
            assert len(scores[pooling]) == TINY["num_hidden_layers"] + 1
            assert all(0.0 <= value <= 1.0 for value in scores[pooling])
        assert max(scores["frequency_bands"]) >= 0.75  # tones vs noise: separable from any layer's band statistics
    assert (tmp_path / "probes" / "report.md").is_file()
