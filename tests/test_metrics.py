"""The metric modules shipped in beats_hf.training.metrics load offline through `evaluate` and compute the right numbers."""

import math
import socket

import numpy as np
import pytest

from beats_hf.training.metrics import available_metrics, load_metric


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")

    # evaluate may have read the flags above at import time already: also make any connection attempt fail.
    def no_network(*args, **kwargs):
        raise OSError("network access attempted in an offline metric test")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def brute_force_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Per-class loop straight from the definition, with Python's (stable) sort."""
    aps = []
    for c in range(scores.shape[1]):
        ranked = sorted(range(scores.shape[0]), key=lambda i: -scores[i, c])
        hits, precisions = 0, []
        for rank, i in enumerate(ranked, start=1):
            if targets[i, c]:
                hits += 1
                precisions.append(hits / rank)
        if precisions:
            aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps), len(aps)


def test_available_and_unknown():
    assert available_metrics() == ["accuracy", "mean_average_precision"]
    with pytest.raises(ValueError, match="accuracy, mean_average_precision"):
        load_metric("f1")


def test_accuracy():
    accuracy = load_metric("accuracy")
    assert accuracy.compute(predictions=[0, 1, 2, 2, 1], references=[0, 1, 1, 2, 0]) == {"accuracy": 0.6}
    # Incremental batches, as in an evaluation loop.
    accuracy.add_batch(predictions=[1, 1], references=[1, 0])
    accuracy.add_batch(predictions=[3], references=[3])
    assert accuracy.compute()["accuracy"] == pytest.approx(2 / 3)


def test_map_hand_computed():
    # Class 0: scores .9 .8 .3 .1, targets 1 0 1 0 -> ranks of the positives are 1 and 3:
    #          precisions 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6.
    # Class 1: scores .2 .5 .5 .7, targets 0 1 0 1 -> order ex3 (.7, +), ex1 (.5, +), ex2 (.5, -), ex0: the tie
    #          keeps input order, so ex1 comes before ex2 -> precisions 1/1 and 2/2 -> AP = 1.
    #          (Breaking the tie the other way would give 5/6: this checks the stable tie rule.)
    # Class 2: no positive -> left out.
    # mAP = (5/6 + 1) / 2 = 11/12 over 2 scored classes.
    scores = [[0.9, 0.2, 0.1], [0.8, 0.5, 0.2], [0.3, 0.5, 0.3], [0.1, 0.7, 0.4]]
    targets = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]
    result = load_metric("mean_average_precision").compute(predictions=scores, references=targets)
    assert result["num_classes_scored"] == 2
    assert result["mAP"] == pytest.approx(11 / 12, abs=1e-12)


def test_map_matches_brute_force():
    rng = np.random.default_rng(0)
    metric = load_metric("mean_average_precision")
    for n, c in [(50, 7), (200, 31)]:
        # Rounded scores create many ties; the last class gets no positive so the exclusion rule is exercised.
        scores = np.round(rng.normal(size=(n, c)), 1).astype(np.float32)
        targets = (rng.random((n, c)) < 0.08).astype(np.int64)
        targets[:, -1] = 0
        expected, num = brute_force_map(scores.astype(np.float64), targets)
        result = metric.compute(predictions=scores, references=targets)
        assert num < c
        assert result["num_classes_scored"] == num
        assert result["mAP"] == pytest.approx(expected, abs=1e-12)


def test_map_without_positives_is_nan():
    result = load_metric("mean_average_precision").compute(predictions=[[0.1, 0.2]], references=[[0, 0]])
    assert math.isnan(result["mAP"]) and result["num_classes_scored"] == 0
