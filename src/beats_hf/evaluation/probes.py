"""Probes of frozen embeddings, fitted for every layer at once as one batched torch problem.

Inputs are stacked per layer: clip features `(layers, clips, width)`, or for the attentive probe row tokens
`(layers, clips, rows, width)` with a row count per clip. Each probe is fitted on the FIT clips, every hyper-parameter
candidate is scored on the VALIDATION clips (whole training groups the fit never saw), and each layer keeps its best
candidate; the test clips are then scored once, with that candidate. There is no refit on fit + validation: the model
scored on test is exactly the model that was validated.

The fixed settings (module constants, documented in `beats_hf.evaluation`):

- linear: softmax (or sigmoid, multi-label) regression on standardised features, full-batch L-BFGS on all layers and
  all `PENALTIES` in one problem (weights `(penalties, layers, width, classes)`); the penalty is chosen per layer.
- mlp: one hidden layer of `MLP_HIDDEN` ReLU units, AdamW on minibatches shared by all layers; the number of epochs
  (a multiple of `CHECK_EVERY`, up to `MAX_EPOCHS`) is chosen per layer on validation.
- attentive: one learned query per layer attends over the clip's valid row tokens (softmax over rows), then a linear
  layer; trained like the MLP, epochs chosen on validation.
- knn: cosine similarity of standardised features to the fit clips; `K_VALUES` candidates; majority vote (ties broken
  by summed similarity) or, multi-label, the similarity-weighted share of neighbours carrying each label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PENALTIES = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # strongest first: ties on validation go to the stronger penalty
LBFGS_ITERATIONS = 100
MLP_HIDDEN = 256
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 64
MAX_EPOCHS = 50
CHECK_EVERY = 5
K_VALUES = (1, 5, 10, 20)
PROBES = ("linear", "mlp", "attentive", "knn")
CHOSEN = {"linear": "l2_penalty", "mlp": "epochs", "attentive": "epochs", "knn": "k"}  # chosen per layer on validation


def probe_settings() -> dict:
    """The fixed settings, as results.json records them."""
    return {"linear": {"l2_penalties": list(PENALTIES), "lbfgs_iterations": LBFGS_ITERATIONS},
            "mlp": {"hidden_units": MLP_HIDDEN, "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
                    "batch_size": BATCH_SIZE, "max_epochs": MAX_EPOCHS, "check_every": CHECK_EVERY},
            "attentive": {"learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "batch_size": BATCH_SIZE,
                          "max_epochs": MAX_EPOCHS, "check_every": CHECK_EVERY},
            "knn": {"k": list(K_VALUES), "similarity": "cosine of standardised features"}}

__all__ = [
    "CHOSEN",
    "PROBES",
    "ProbeResult",
    "Task",
    "accuracy",
    "fit_attentive",
    "fit_knn",
    "fit_linear",
    "fit_mlp",
    "mean_average_precision",
    "probe_settings",
    "task_scores",
]


@dataclass(frozen=True)
class Task:
    """Single-label (targets: class index per clip, metric accuracy) or multi-label (targets: multi-hot rows, metric
    mean average precision)."""

    num_classes: int
    multi_label: bool = False

    @property
    def metric(self) -> str:
        return "mAP" if self.multi_label else "accuracy"

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss per leading index: logits `(..., clips, classes)` -> `(...)`."""
        if self.multi_label:
            expanded = targets.expand_as(logits)
            return F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").mean((-1, -2))
        repeats = logits.numel() // (targets.shape[0] * logits.shape[-1])
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(repeats), reduction="none")
        return losses.view(logits.shape[:-1]).mean(-1)


@dataclass
class ProbeResult:
    """Per layer: the validation score of the chosen candidate, the candidate itself and the test outputs (class
    scores, `(layers, test clips, classes)`) of that candidate."""

    validation: torch.Tensor
    choice: list
    test_outputs: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Metrics: plain, or weighted per clip (a bootstrap draw weights each clip by how often its group was drawn).
# ---------------------------------------------------------------------------------------------------------------------


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """outputs `(..., clips, classes)` -> `(...)`; with `weights` `(draws, clips)` and outputs `(clips, classes)` ->
    `(draws,)`."""
    correct = (outputs.argmax(-1) == targets).double()
    if weights is None:
        return correct.mean(-1)
    return (weights.double() @ correct) / weights.double().sum(-1)


def mean_average_precision(outputs: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over classes with a positive clip of the average precision. outputs `(..., clips, classes)` -> `(...)`;
    with `weights` `(draws, clips)` and outputs `(clips, classes)` -> `(draws,)`. Tied scores count in sort order."""
    if weights is None:
        leading = outputs.shape[:-2]
        flat = outputs.reshape(-1, *outputs.shape[-2:])
        ones = torch.ones(1, outputs.shape[-2], dtype=torch.float64)
        return torch.stack([mean_average_precision(item, targets, ones)[0] for item in flat]).view(leading)
    order = outputs.argsort(dim=0, descending=True)  # (clips, classes): the ranking does not depend on the draw
    positive = targets.double().gather(0, order)
    results = []
    # Chunks of draws keep (draws, clips, classes) within ~50M numbers.
    step = max(1, 50_000_000 // max(1, outputs.numel()))
    for start in range(0, weights.shape[0], step):
        drawn = weights[start : start + step].double()[:, order]  # (draws, clips, classes)
        hits = drawn * positive
        precision = hits.cumsum(1) / drawn.cumsum(1).clamp(min=1e-12)
        total = hits.sum(1)
        average_precision = (precision * hits).sum(1) / total.clamp(min=1e-12)
        average_precision[total == 0] = float("nan")
        results.append(average_precision.nanmean(-1))
    return torch.cat(results)


def task_scores(task: Task, outputs: torch.Tensor, targets: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    return (mean_average_precision if task.multi_label else accuracy)(outputs, targets, weights)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _standardiser(fit: torch.Tensor, mask: torch.Tensor | None = None):
    """Per layer and feature z-scoring with the FIT clips' statistics (features `(layers, clips, [rows,] width)`)."""
    values = fit.float()
    if mask is None:
        mean, std = values.mean(1, keepdim=True), values.std(1, keepdim=True)
    else:  # row tokens: statistics over the valid rows only
        weight = mask.to(values.dtype)[None, :, :, None]
        count = weight.sum((1, 2), keepdim=True).clamp(min=1)
        mean = (values * weight).sum((1, 2), keepdim=True) / count
        std = (((values - mean) ** 2 * weight).sum((1, 2), keepdim=True) / count).sqrt()
    std = std.clamp(min=1e-6)
    return lambda features: (features.float() - mean) / std


def _row_mask(row_counts: torch.Tensor, rows: int) -> torch.Tensor:
    # A clip without a whole row keeps its first (partial) one: attention needs at least one key.
    return torch.arange(rows)[None, :] < row_counts.clamp(min=1)[:, None]


def _choose(validation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """validation `(candidates, layers)` -> (best score, index of the first best candidate) per layer. NaN (no
    positive validation clip for any class) counts as the worst."""
    filled = torch.nan_to_num(validation, nan=-math.inf)
    index = filled.argmax(0)
    return validation.gather(0, index[None])[0], index


# ---------------------------------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------------------------------


def fit_linear(task: Task, fit: torch.Tensor, fit_targets: torch.Tensor, validation: torch.Tensor,
               validation_targets: torch.Tensor, test: torch.Tensor, penalties=PENALTIES) -> ProbeResult:
    """Logistic regression per layer and penalty, all in one L-BFGS problem (the layers and penalties are
    independent terms of one sum, so the joint optimum is each one's optimum)."""
    scale = _standardiser(fit)
    fit, validation, test = scale(fit), scale(validation), scale(test)
    layers, _, width = fit.shape
    strengths = torch.tensor(penalties, dtype=torch.float32).view(-1, 1)
    weight = torch.zeros(len(penalties), layers, width, task.num_classes, requires_grad=True)
    bias = torch.zeros(len(penalties), layers, 1, task.num_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=LBFGS_ITERATIONS, history_size=10,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def logits(features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("lnd,pldk->plnk", features, weight) + bias

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = task.loss(logits(fit), fit_targets) + 0.5 * strengths * weight.square().sum((-1, -2))
        loss = loss.sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        scores = task_scores(task, logits(validation), validation_targets)
        best, index = _choose(scores)
        chosen = logits(test)[index, torch.arange(layers)]
    return ProbeResult(best.float(), [penalties[i] for i in index.tolist()], chosen)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient-trained probes (MLP and attentive): every layer's probe sees the same minibatches.
# ---------------------------------------------------------------------------------------------------------------------


def _train_by_epochs(task: Task, parameters: list[torch.Tensor], forward, num_fit: int, fit_targets: torch.Tensor,
                     validation_targets: torch.Tensor, seed: int) -> ProbeResult:
    """AdamW for up to MAX_EPOCHS; every CHECK_EVERY epochs each layer keeps a snapshot of its parameters when its
    validation score improved. `forward(split, indices)` gives logits `(layers, len(indices), classes)`."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    best_parameters = [parameter.detach().clone() for parameter in parameters]
    layers = parameters[0].shape[0]
    best_score = torch.full((layers,), -math.inf, dtype=torch.float64)
    best_epoch = [0] * layers
    validation_indices = torch.arange(len(validation_targets))
    for epoch in range(1, MAX_EPOCHS + 1):
        for batch in torch.randperm(num_fit, generator=generator).split(BATCH_SIZE):
            optimiser.zero_grad()
            task.loss(forward("fit", batch), fit_targets[batch]).sum().backward()
            optimiser.step()
        if epoch % CHECK_EVERY:
            continue
        with torch.no_grad():
            scores = torch.nan_to_num(task_scores(task, forward("validation", validation_indices),
                                                  validation_targets), nan=-math.inf)
            better = scores > best_score
            best_score = torch.where(better, scores, best_score)
            for saved, parameter in zip(best_parameters, parameters):
                saved[better] = parameter.detach()[better]
            best_epoch = [epoch if improved else old for improved, old in zip(better.tolist(), best_epoch)]
    with torch.no_grad():
        for saved, parameter in zip(best_parameters, parameters):
            parameter.copy_(saved)
        test_outputs = forward("test", None)
    return ProbeResult(best_score.float(), best_epoch, test_outputs)


def _uniform(generator: torch.Generator, fan_in: int, *shape: int) -> torch.Tensor:
    # nn.Linear's default initialisation, drawn for all layers from one seeded generator
    bound = 1.0 / math.sqrt(fan_in)
    return ((torch.rand(*shape, generator=generator) * 2 - 1) * bound).requires_grad_()


def fit_mlp(task: Task, fit: torch.Tensor, fit_targets: torch.Tensor, validation: torch.Tensor,
            validation_targets: torch.Tensor, test: torch.Tensor, seed: int = 0) -> ProbeResult:
    """One hidden layer of MLP_HIDDEN ReLU units per layer: weights `(layers, width, hidden)` and
    `(layers, hidden, classes)`, all trained together."""
    scale = _standardiser(fit)
    splits = {"fit": scale(fit), "validation": scale(validation), "test": scale(test)}
    layers, _, width = fit.shape
    generator = torch.Generator().manual_seed(seed)
    parameters = [_uniform(generator, width, layers, width, MLP_HIDDEN),
                  _uniform(generator, width, layers, 1, MLP_HIDDEN),
                  _uniform(generator, MLP_HIDDEN, layers, MLP_HIDDEN, task.num_classes),
                  _uniform(generator, MLP_HIDDEN, layers, 1, task.num_classes)]

    def forward(split: str, indices: torch.Tensor | None) -> torch.Tensor:
        features = splits[split] if indices is None else splits[split][:, indices]
        hidden = torch.relu(torch.bmm(features, parameters[0]) + parameters[1])
        return torch.bmm(hidden, parameters[2]) + parameters[3]

    return _train_by_epochs(task, parameters, forward, fit.shape[1], fit_targets, validation_targets, seed)


def fit_attentive(task: Task, fit: torch.Tensor, fit_rows: torch.Tensor, fit_targets: torch.Tensor,
                  validation: torch.Tensor, validation_rows: torch.Tensor, validation_targets: torch.Tensor,
                  test: torch.Tensor, test_rows: torch.Tensor, seed: int = 0) -> ProbeResult:
    """One learned query per layer attends over the clip's valid row tokens `(layers, clips, rows, width)` (float16
    is fine: batches are cast to float32 as they are used), then a linear layer on the attended vector."""
    masks = {"fit": _row_mask(fit_rows, fit.shape[2]), "validation": _row_mask(validation_rows, validation.shape[2]),
             "test": _row_mask(test_rows, test.shape[2])}
    scale = _standardiser(fit, masks["fit"])
    splits = {"fit": fit, "validation": validation, "test": test}
    layers, _, _, width = fit.shape
    generator = torch.Generator().manual_seed(seed)
    parameters = [_uniform(generator, width, layers, 1, width),
                  _uniform(generator, width, layers, width, task.num_classes),
                  _uniform(generator, width, layers, 1, task.num_classes)]

    def forward(split: str, indices: torch.Tensor | None) -> torch.Tensor:
        tokens, mask = splits[split], masks[split]
        if indices is not None:
            tokens, mask = tokens[:, indices], mask[indices]
        outputs = []
        # Chunks of clips bound the float32 copy of the tokens.
        for start in range(0, tokens.shape[1], 1024):
            chunk = scale(tokens[:, start : start + 1024])  # (layers, clips, rows, width)
            attention = (chunk @ parameters[0].unsqueeze(-1)).squeeze(-1) / math.sqrt(width)
            attention = attention.masked_fill(~mask[start : start + 1024], -math.inf).softmax(-1)
            attended = (attention.unsqueeze(-1) * chunk).sum(2)
            outputs.append(torch.bmm(attended, parameters[1]) + parameters[2])
        return torch.cat(outputs, 1)

    return _train_by_epochs(task, parameters, forward, fit.shape[1], fit_targets, validation_targets, seed)


# ---------------------------------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------------------------------


def _neighbour_votes(task: Task, queries: torch.Tensor, references: torch.Tensor, reference_targets: torch.Tensor,
                     k_values=K_VALUES) -> torch.Tensor:
    """`(k candidates, layers, queries, classes)` vote scores from the `max(k_values)` most similar references."""
    k_max = min(max(k_values), references.shape[1])
    one_hot = reference_targets.float() if task.multi_label else F.one_hot(reference_targets, task.num_classes).float()
    votes = []
    step = max(1, 20_000_000 // max(1, queries.shape[0] * references.shape[1]))
    for start in range(0, queries.shape[1], step):
        similarity = torch.bmm(queries[:, start : start + step], references.transpose(1, 2))
        top, index = similarity.topk(k_max, dim=-1)
        labels = one_hot[index]  # (layers, queries, k, classes)
        per_k = []
        for k in k_values:
            k = min(k, k_max)
            if task.multi_label:  # similarity-weighted share of neighbours with the label: a ranking score for AP
                weight = top[..., :k].clamp(min=0).unsqueeze(-1) + 1e-6
                per_k.append((weight * labels[:, :, :k]).sum(2) / weight.sum(2))
            else:  # majority vote; the summed similarity (< 1 per neighbour, scaled down) only breaks ties
                per_k.append((labels[:, :, :k] * (1 + 1e-3 * top[..., :k].unsqueeze(-1))).sum(2))
        votes.append(torch.stack(per_k))
    return torch.cat(votes, 2)


def fit_knn(task: Task, fit: torch.Tensor, fit_targets: torch.Tensor, validation: torch.Tensor,
            validation_targets: torch.Tensor, test: torch.Tensor, k_values=K_VALUES) -> ProbeResult:
    """Cosine kNN on features standardised with the fit clips' statistics; k chosen per layer on validation."""
    scale = _standardiser(fit)

    def normalised(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(scale(features), dim=-1)

    references = normalised(fit)
    scores = task_scores(task, _neighbour_votes(task, normalised(validation), references, fit_targets, k_values),
                         validation_targets)
    best, index = _choose(scores)
    test_votes = _neighbour_votes(task, normalised(test), references, fit_targets, k_values)
    chosen = test_votes[index, torch.arange(fit.shape[0])]
    return ProbeResult(best.float(), [k_values[i] for i in index.tolist()], chosen)
