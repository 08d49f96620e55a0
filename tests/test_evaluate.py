"""`beats-hf evaluate`: probes on planted signals, the group-disjoint validation split, group-bootstrap intervals,
mAP, caching, input errors, and one end-to-end run of the command on a tiny model and generated audio."""

import json

import numpy as np
import pytest
import torch
from conftest import write_wav

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel
from beats_hf.cli import main as cli
from beats_hf.evaluation import evaluate_encoders, fit_attentive, fit_knn, fit_linear, fit_mlp, group_validation_split
from beats_hf.evaluation.probes import Task, accuracy, mean_average_precision
from beats_hf.evaluation.report import bootstrap_weights, percentile_interval

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_embedding_dim=32,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0)
LAYERS, INFORMATIVE, WIDTH, CLASSES = 4, 2, 16, 3


def planted(clips: int, seed: int, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake hidden states `(layers, clips, [rows,] width)`: noise everywhere, plus a class-dependent direction in
    layer INFORMATIVE only."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(clips) % CLASSES
    shape = (LAYERS, clips, WIDTH) if rows is None else (LAYERS, clips, rows, WIDTH)
    states = torch.randn(*shape, generator=generator)
    directions = 4.0 * torch.eye(WIDTH)[:CLASSES]
    signal = directions[labels] if rows is None else directions[labels][:, None]
    states[INFORMATIVE] += signal
    return states, labels


@pytest.mark.parametrize("probe", ["linear", "mlp", "knn", "attentive"])
def test_probes_find_the_one_informative_layer(probe):
    rows = 5 if probe == "attentive" else None
    (fit, fit_labels), (validation, validation_labels), (test, test_labels) = (
        planted(150, 0, rows), planted(30, 1, rows), planted(60, 2, rows))
    task = Task(CLASSES)
    if probe == "attentive":
        counts = [torch.full((len(labels),), rows) for labels in (fit_labels, validation_labels, test_labels)]
        counts[0][::2] = 3  # some clips shorter: padded rows must be ignored
        fit[:, ::2, 3:] = 1e3  # garbage in the padding
        result = fit_attentive(task, fit, counts[0], fit_labels, validation, counts[1], validation_labels, test,
                               counts[2])
    else:
        fitter = {"linear": fit_linear, "mlp": fit_mlp, "knn": fit_knn}[probe]
        result = fitter(task, fit, fit_labels, validation, validation_labels, test)
    assert result.test_outputs.shape == (LAYERS, 60, CLASSES) and len(result.choice) == LAYERS
    assert int(result.validation.argmax()) == INFORMATIVE
    test_scores = accuracy(result.test_outputs, test_labels)
    assert test_scores[INFORMATIVE] > 0.9
    others = torch.cat([test_scores[:INFORMATIVE], test_scores[INFORMATIVE + 1 :]])
    assert others.max() < 0.7  # chance is 1/3


def test_multi_label_probe_and_mean_average_precision():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.9], [0.6, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    # class 0: positives ranked 1st and 3rd -> (1 + 2/3) / 2; class 1: its one positive ranked 1st -> 1
    expected = ((1 + 2 / 3) / 2 + 1) / 2
    assert mean_average_precision(scores, targets).item() == pytest.approx(expected)
    assert mean_average_precision(scores, targets, torch.ones(3, 4))[0].item() == pytest.approx(expected)
    # a weight of 2 on clip 1 (a negative ranked above the second positive) is the clip counted twice
    doubled = mean_average_precision(scores[[0, 1, 1, 2, 3]], targets[[0, 1, 1, 2, 3]])
    weighted = mean_average_precision(scores, targets, torch.tensor([[1.0, 2.0, 1.0, 1.0]]))
    assert weighted.item() == pytest.approx(doubled.item())

    (fit, fit_labels), (validation, validation_labels), (test, test_labels) = (
        planted(90, 0), planted(30, 1), planted(60, 2))
    task = Task(CLASSES, multi_label=True)
    hot = [torch.nn.functional.one_hot(labels, CLASSES).float() for labels in (fit_labels, validation_labels,
                                                                                test_labels)]
    result = fit_linear(task, fit, hot[0], validation, hot[1], test)
    assert int(result.validation.argmax()) == INFORMATIVE
    assert mean_average_precision(result.test_outputs[INFORMATIVE], hot[2]).item() > 0.95


def test_validation_split_takes_whole_training_groups():
    groups = [f"p{program}" for program in range(30) for _ in range(4)]
    labels = [program % 5 for program in range(30) for _ in range(4)]
    mask = group_validation_split(groups, 0.2, seed=0, labels=labels)
    inside = {group for group, chosen in zip(groups, mask) if chosen}
    outside = {group for group, chosen in zip(groups, mask) if not chosen}
    assert not inside & outside and len(inside) == 5  # 20 % of 30 groups: one of the 6 programs of each class
    assert {labels[groups.index(group)] for group in inside} == set(range(5))
    assert (group_validation_split(groups, 0.2, seed=0, labels=labels) == mask).all()
    assert not (group_validation_split(groups, 0.2, seed=1, labels=labels) == mask).all()
    no_labels = group_validation_split(groups, 0.2, seed=0)
    assert no_labels.sum() == 24 and len({g for g, chosen in zip(groups, no_labels) if chosen}) == 6
    with pytest.raises(ValueError, match="at least 2 training groups"):
        group_validation_split(["only"] * 5)


def test_group_bootstrap_interval():
    groups = torch.arange(20).repeat_interleave(5)  # 20 groups of 5 clips
    weights = bootstrap_weights(groups, draws=500, seed=0)
    assert weights.shape == (500, 100) and torch.equal(weights, bootstrap_weights(groups, draws=500, seed=0))
    assert (weights.sum(1) == 100).all()  # 20 groups drawn, 5 clips each
    assert torch.equal(weights[:, 0], weights[:, 4])  # a group's clips move together
    # Half the groups right, half wrong: the interval is that of a mean of 20 coin flips, not of 100.
    correct_groups = (torch.arange(20) % 2 == 0).repeat_interleave(5)
    targets = torch.zeros(100, dtype=torch.long)
    outputs = torch.stack([correct_groups.float(), (~correct_groups).float()], 1)
    low, high = percentile_interval(accuracy(outputs, targets, weights))
    assert accuracy(outputs, targets).item() == 0.5
    # 0.5 +- 1.96 * sqrt(0.25 / 20) = 0.28..0.72 (clips resampled alone would give 0.40..0.60)
    assert 0.2 <= low <= 0.35 and 0.65 <= high <= 0.8
    everything_right = accuracy(torch.stack([torch.ones(100), torch.zeros(100)], 1), targets, weights)
    assert percentile_interval(everything_right) == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------------
# The command on a tiny model and a generated audio folder
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two classes (a low and a high tone), 4 training and 2 test programs each, 3 clips of 0.6 s per program; files
    named `<family>_p<program>_<index>.wav` as in the demo corpus. Plus a tiny model folder."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    seconds = np.arange(int(16000 * 0.6)) / 16000
    for split, programs in (("train", range(4)), ("test", range(4, 6))):
        for family, base, first_program in (("low", 300.0, 0), ("high", 2500.0, 10)):
            folder = root / "audio" / split / family
            folder.mkdir(parents=True)
            for program in programs:
                for index in range(3):
                    tone = np.sin(2 * np.pi * base * (1 + 0.05 * program) * seconds)
                    write_wav(folder / f"{family}_p{first_program + program}_{index}.wav",
                              0.3 * tone + 0.05 * rng.standard_normal(len(seconds)))
    (root / "audio" / "train" / "low" / "low_p0_9.wav").write_bytes(b"not audio")  # skipped for every model
    torch.manual_seed(1)  # not seed 0: the weights of random:model must differ from the model's
    BeatsModel(BeatsConfig(**TINY)).save_pretrained(root / "model")
    BeatsFeatureExtractor().save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def first_run(corpus):
    output = corpus / "out"
    code = cli(["evaluate", "--models", str(corpus / "model"), f"random:{corpus / 'model'}", "logmel",
                "--data", str(corpus / "audio"), "--group_pattern", r"_p(\d+)_", "--output_dir", str(output),
                "--bootstrap_draws", "200"])
    assert code == 0
    return output


def test_command_end_to_end(corpus, first_run):
    results = json.loads((first_run / "results.json").read_text())
    model = str(corpus / "model")
    assert results["metric"] == "accuracy"
    assert results["data"]["test_groups"] == 4 and results["data"]["validation_groups"] == 2  # one program per class
    assert results["data"]["fit_clips"] + results["data"]["validation_clips"] == 24
    assert results["data"]["unreadable"] == {"train": 1, "test": 0}
    combinations = {(row["model"], row["probe"], row["pooling"]) for row in results["results"]}
    # 3 models x (linear, mlp, knn x (2 poolings + the pooling chosen on validation) + attentive on rows)
    assert len(combinations) == 3 * (3 * 3 + 1)
    for row in results["results"]:
        if row["pooling"] == "chosen":
            candidates = [other for other in results["results"] if (other["model"], other["probe"]) == (
                row["model"], row["probe"]) and other["pooling"] in ("mean", "frequency_bands")]
            assert row["validation"] == max(other["validation"] for other in candidates)
            same = next(other for other in candidates if other["pooling"] == row["chosen_pooling"])
            assert (row["test"], row["best_layer"]) == (same["test"], same["best_layer"])
        assert len(row["layers"]) == (1 if row["model"] == "logmel" else 3)
        low, high = row["test_interval"]
        assert low <= row["test"] <= high and row["validation"] == row["layers"][row["best_layer"]]["validation"]
    # the tones are easy: the log-mel statistics separate them
    logmel = next(row for row in results["results"] if row["model"] == "logmel" and row["probe"] == "linear")
    assert logmel["test"] == 1.0
    assert len(results["differences"]) == 3 * 10 and {row["model_a"] for row in results["differences"]} >= {model}
    report = (first_run / "report.md").read_text()
    assert "| validation accuracy | test accuracy | 95 % interval |" in report
    assert "random:" in report and "Differences between models" in report
    for name in results.get("plots", []):
        assert (first_run / name).stat().st_size > 0
    caches = sorted(path.relative_to(first_run).as_posix() for path in (first_run / "cache").rglob("*.safetensors"))
    assert len(caches) == 6 and all(path.endswith(".safetensors") for path in caches)
    # one folder per model, keyed by the weights: the trained and the random model share their path, not their key
    folders = {path.split("/")[1] for path in caches}
    assert len(folders) == 3 and len({folder.rsplit("-", 1)[1] for folder in folders}) == 3
    assert any(folder.startswith("random_") for folder in folders)


def test_rerun_reuses_the_cached_embeddings(corpus, first_run, monkeypatch, capsys):
    from beats_hf import modeling_beats

    def no_forward(*args, **kwargs):
        raise AssertionError("the encoder ran although its embeddings are cached")

    monkeypatch.setattr(modeling_beats.BeatsEncoder, "forward", no_forward)
    first = json.loads((first_run / "results.json").read_text())
    again = evaluate_encoders([str(corpus / "model"), "logmel"], str(corpus / "audio"), first_run,
                              group_pattern=r"_p(\d+)_", bootstrap_draws=200, plots=False)
    assert "reusing cached embeddings" in capsys.readouterr().out
    assert all(entry["reused"] for splits in again["cache"].values() for entry in splits.values())
    same = {(row["model"], row["probe"], row["pooling"]): row["test"] for row in first["results"]}
    assert all(same[row["model"], row["probe"], row["pooling"]] == row["test"] for row in again["results"])


def test_bad_inputs_are_clear_errors(corpus, tmp_path):
    data, model = str(corpus / "audio"), str(corpus / "model")
    with pytest.raises(ValueError, match="Unknown model .*no_such_model"):
        evaluate_encoders([model, str(tmp_path / "no_such_model")], data, tmp_path / "out")
    with pytest.raises(ValueError, match="No 'validation' split in"):
        evaluate_encoders([model], data, tmp_path / "out", test_split="validation")
    with pytest.raises(ValueError, match=r"--group_pattern .* does not match the train file name 'high_p10_0.wav'"):
        evaluate_encoders([model], data, tmp_path / "out", group_pattern=r"_program(\d+)_")
    with pytest.raises(ValueError, match="--multi_label needs a label column of lists"):
        evaluate_encoders([model], data, tmp_path / "out", multi_label=True)
    with pytest.raises(ValueError, match="'random:' must be followed"):
        evaluate_encoders(["random:"], data, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # every check runs before any embedding


def test_multi_label_saved_dataset_with_a_group_column(corpus, tmp_path):
    """Tags as lists of label indices, groups from a metadata column, a `save_to_disk` dataset; metric mAP."""
    import datasets

    def split(name: str) -> datasets.Dataset:
        files = sorted((corpus / "audio" / name).rglob("*.wav"))
        tags = [[0, 2] if file.parent.name == "low" else [1] for file in files]  # tag 2 marks the low tones too
        programs = [file.name.split("_")[1] for file in files]
        return datasets.Dataset.from_dict({"audio": [str(file) for file in files], "tags": tags, "program": programs})

    datasets.DatasetDict({"train": split("train"), "test": split("test")}).save_to_disk(tmp_path / "saved")
    results = evaluate_encoders(["logmel"], str(tmp_path / "saved"), tmp_path / "out", probes=["linear", "knn"],
                                poolings=["mean"], multi_label=True, label_column="tags", group_column="program",
                                bootstrap_draws=100, plots=False)
    assert results["metric"] == "mAP" and results["settings"]["num_classes"] == 3
    assert results["data"]["test_groups"] == 4 and results["data"]["validation_groups"] == 2
    assert all(row["test"] > 0.9 for row in results["results"])
    assert "| validation mAP | test mAP |" in (tmp_path / "out" / "report.md").read_text()


def test_a_validation_split_of_its_own_and_validation_only_runs(corpus, tmp_path):
    """Programs 0-1 fit, 2-3 validate (a split of their own), 4-5 test; without a test split nothing is scored on
    test. A validation split that shares a group with training is refused."""
    import shutil

    for source in sorted((corpus / "audio").rglob("*_[0-2].wav")):
        program = int(source.name.split("_p")[1].split("_")[0]) % 10
        split = "test" if source.parent.parent.name == "test" else ("train" if program < 2 else "validation")
        target = tmp_path / "data" / split / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    data = str(tmp_path / "data")
    common = dict(probes=["linear"], group_pattern=r"_p(\d+)_", bootstrap_draws=100, plots=False)
    scored = evaluate_encoders(["logmel"], data, tmp_path / "scored", validation_split="validation", **common)
    assert scored["data"] == {"fit_clips": 12, "validation_clips": 12, "test_clips": 12, "fit_groups": 4,
                              "validation_groups": 4, "test_groups": 4, "unreadable": {"train": 0, "validation": 0,
                                                                                       "test": 0}}
    unscored = evaluate_encoders(["logmel"], data, tmp_path / "unscored", validation_split="validation",
                                 test_split=None, **common)
    assert unscored["data"]["test_clips"] == 0 and unscored["differences"] == []
    for row, same in zip(unscored["results"], scored["results"], strict=True):
        assert row["validation"] == same["validation"] and row["test"] != row["test"]  # NaN: no test score
    assert "n/a" in (tmp_path / "unscored" / "report.md").read_text()
    shutil.copyfile(next((tmp_path / "data" / "train" / "low").glob("*.wav")),
                    tmp_path / "data" / "validation" / "low" / "low_p0_7.wav")  # a training program in validation
    with pytest.raises(ValueError, match="The train and validation splits share group"):
        evaluate_encoders(["logmel"], data, tmp_path / "mixed", validation_split="validation", **common)
