"""Linear probes: multinomial logistic regression on fixed clip features, and a classifier head set from one.

`fit_logistic_regression` standardises the features with the training set's statistics, fits the regression in torch
(float64, full-batch L-BFGS, L2 penalty on the weights), chooses the penalty on a stratified 20 % of the training
clips (fit on the other 80 %) and refits on all of them. The standardisation is folded into the returned weights, so
the probe is a plain `features @ weight + bias`. Deterministic.

`initialise_head_from_linear_probe` fits such a probe on a classifier's own frozen clip embeddings (what its head sees,
`BeatsForAudioClassification.clip_features`: pooled from the last layer or the weighted layer sum) and writes it into
the head. Fine-tuning from there is LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution"): the encoder starts its updates under a head that already fits, instead of under a
random one whose large early gradients overwrite the pre-trained features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VALIDATION_FRACTION = 0.2

__all__ = ["LinearProbe", "fit_logistic_regression", "initialise_head_from_linear_probe"]


@dataclass
class LinearProbe:
    weight: np.ndarray  # (features, classes), standardisation folded in
    bias: np.ndarray  # (classes,)
    weight_decay: float  # the chosen L2 penalty
    validation_accuracy: float | None  # of the chosen penalty (None: too few clips to hold any out)
    train_accuracy: float  # of the refitted probe

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) @ self.weight + self.bias).argmax(axis=1)


def _standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = features.mean(axis=0), features.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)  # a constant feature stays 0 instead of dividing by 0


def _fit_standardised(features: np.ndarray, labels: np.ndarray, num_classes: int, weight_decay: float,
                      max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised features: (weight, bias) on the original scale."""
    mean, std = _standardisation(features)
    x = torch.from_numpy((features - mean) / std)
    y = torch.from_numpy(labels)
    weight = torch.zeros(features.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    folded = weight.detach().numpy() / std[:, None]
    return folded, bias.detach().numpy() - mean @ folded


def _validation_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, validation) indices; classes with a single clip stay entirely in the fit part."""
    rng = np.random.default_rng(seed)
    fit, validation = [], []
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(fraction * len(indices))) if len(indices) > 1 else 0
        count = min(max(count, 1 if len(indices) > 1 else 0), len(indices) - 1)
        validation += indices[:count].tolist()
        fit += indices[count:].tolist()
    return np.sort(np.array(fit, dtype=int)), np.sort(np.array(validation, dtype=int))


def fit_logistic_regression(features: np.ndarray, labels, num_classes: int) -> LinearProbe:
    """Fit a probe on `features` `(clips, dims)` and int `labels` in [0, num_classes); see the module docstring."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"need (clips, dims) features and one label per clip, got {features.shape} and {labels.shape}")
    if not len(labels):
        raise ValueError("a linear probe needs at least one training clip")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    fit, validation = _validation_split(labels, VALIDATION_FRACTION)
    scores = {}
    if len(validation):
        for weight_decay in WEIGHT_DECAYS:
            weight, bias = _fit_standardised(features[fit], labels[fit], num_classes, weight_decay)
            scores[weight_decay] = float(np.mean((features[validation] @ weight + bias).argmax(1) == labels[validation]))
    # Best validation accuracy; on a tie the stronger penalty, which should transfer better to unseen sounds.
    weight_decay = max(scores, key=lambda wd: (scores[wd], wd)) if scores else 1e-2
    weight, bias = _fit_standardised(features, labels, num_classes, weight_decay)
    train_accuracy = float(np.mean((features @ weight + bias).argmax(1) == labels))
    return LinearProbe(weight, bias, weight_decay, scores.get(weight_decay), train_accuracy)


@torch.no_grad()
def initialise_head_from_linear_probe(model, clips, collator, batch_size: int = 32) -> LinearProbe:
    """Fit a probe on the frozen clip embeddings of `model` (a `BeatsForAudioClassification`, single-label) over
    `clips` (items with "waveform" and an int "labels") and copy it into `model.classifier`. Returns the probe."""
    if model.config.problem_type == "multi_label_classification":
        raise ValueError("A linear-probe head initialisation needs single-label classes (multi-label is not supported).")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embeddings, labels = [], []
    for start in tqdm(range(0, len(clips), batch_size), desc="linear probe: embedding the training clips"):
        items = [clips[i] for i in range(start, min(start + batch_size, len(clips)))]
        items = [item for item in items if item is not None]  # unreadable files (counted by `clips`)
        if not items:
            continue
        batch = collator(items)
        labels += batch.pop("labels").tolist()
        batch = {key: value.to(device) for key, value in batch.items()}
        embeddings.append(model.clip_features(**batch).float().cpu())
    model.train(was_training)
    probe = fit_logistic_regression(torch.cat(embeddings).double().numpy(), labels, model.config.num_labels)
    head = model.classifier
    head.weight.copy_(torch.from_numpy(probe.weight.T).to(head.weight.dtype))
    head.bias.copy_(torch.from_numpy(probe.bias).to(head.bias.dtype))
    return probe
