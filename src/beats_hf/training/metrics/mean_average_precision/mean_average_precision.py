"""Multi-label mean average precision (AudioSet-style mAP), shipped with beats_hf for offline `evaluate`.

evaluate scans this file for imports line by line: keep one import per line.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Macro mean average precision over classes. For each class, examples are ranked by descending score (ties keep
their input order: a stable sort) and AP is the mean, over the class's positives, of the precision at each
positive's rank. mAP is the mean AP over the classes that have at least one positive; classes without positives
have no defined AP and are left out (their number is reported through `num_classes_scored`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape `(n_examples, n_classes)`): scores (logits or probabilities).
    references (`list` of `list` of `int`, shape `(n_examples, n_classes)`): 0/1 multi-hot targets.
Returns:
    `{"mAP": float, "num_classes_scored": int}`; mAP is NaN when no class has a positive.
"""


def average_precision_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of every column of `scores` (n, C) against 0/1 `targets` (n, C); NaN for columns without positives."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"predictions and references must both be (n_examples, n_classes); got {scores.shape}, {targets.shape}"
        )
    # Stable sort of the negated scores: descending order with ties kept in input order.
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(targets, order, axis=0).astype(np.float64)
    precision_at_rank = np.cumsum(hits, axis=0) / np.arange(1, scores.shape[0] + 1, dtype=np.float64)[:, None]
    num_positives = hits.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_positives > 0, (precision_at_rank * hits).sum(axis=0) / num_positives, np.nan)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanAveragePrecision(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # float64 so that float32 scores keep their exact values (and their ties) through Arrow.
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float | int]:
        ap = average_precision_per_class(np.asarray(predictions), np.asarray(references))
        scored = ~np.isnan(ap)
        num_scored = int(scored.sum())
        return {"mAP": float(ap[scored].mean()) if num_scored else float("nan"), "num_classes_scored": num_scored}
