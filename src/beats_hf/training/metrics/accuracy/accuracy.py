"""Accuracy, shipped with beats_hf so that `evaluate` can load it without reaching the Hub.

evaluate scans this file for imports line by line: keep one import per line.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy: the fraction of predictions equal to their reference label.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    normalize (`bool`, defaults to `True`): return the fraction; if `False`, the number of correct predictions.
    sample_weight (`list` of `float`, *optional*): per-example weights.
Returns:
    `{"accuracy": float}`
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self, predictions, references, normalize: bool = True, sample_weight: list[float] | None = None
    ) -> dict[str, float]:
        correct = (np.asarray(predictions) == np.asarray(references)).astype(np.float64)
        weights = np.ones_like(correct) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if correct.size == 0:
            return {"accuracy": float("nan")}
        total = float((correct * weights).sum())
        return {"accuracy": total / float(weights.sum()) if normalize else total}
