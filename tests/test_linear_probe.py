"""The logistic-regression linear probe shared by the log-mel baseline and LP-FT."""

import numpy as np
import pytest

from beats_hf.training.linear_probe import WEIGHT_DECAYS, fit_logistic_regression


def blobs(rng, per_class: int, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.standard_normal((3, len(scales))) * 3.0
    labels = np.repeat(np.arange(3), per_class)
    features = (centers[labels] + rng.standard_normal((len(labels), len(scales)))) * scales
    return features, labels


def test_probe_separates_classes_whatever_the_feature_scales():
    """Features 1e-4 and 1e4 apart in scale: the standardisation (folded into the weights) makes them equal."""
    rng = np.random.default_rng(0)
    scales = np.array([1e-4, 1.0, 1e4, 1e2])
    train, train_labels = blobs(rng, 40, scales)
    rng = np.random.default_rng(0)  # same centers for the test clips, new noise
    test, test_labels = blobs(rng, 40, scales)
    test = test + np.random.default_rng(1).standard_normal(test.shape) * 0.3 * scales
    probe = fit_logistic_regression(train, train_labels, num_classes=3)
    assert probe.weight.shape == (4, 3) and probe.bias.shape == (3,)
    assert probe.weight_decay in WEIGHT_DECAYS and probe.validation_accuracy >= 0.9
    assert probe.train_accuracy >= 0.95
    assert np.mean(probe.predict(test) == test_labels) >= 0.9
    again = fit_logistic_regression(train, train_labels, num_classes=3)
    assert np.array_equal(again.weight, probe.weight)  # deterministic


def test_probe_input_errors():
    with pytest.raises(ValueError, match="one label per clip"):
        fit_logistic_regression(np.zeros((3, 2)), [0, 1], num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        fit_logistic_regression(np.zeros((2, 2)), [0, 2], num_classes=2)
    with pytest.raises(ValueError, match="at least one"):
        fit_logistic_regression(np.zeros((0, 2)), [], num_classes=2)
