"""Evaluation metrics shipped as local `evaluate` modules, so they load without the Hub (`evaluate.load("accuracy")`
fetches its script from the Hub and fails offline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).parent

__all__ = ["METRICS_DIR", "available_metrics", "load_metric"]


def available_metrics() -> list[str]:
    """Names of the shipped metrics: each is a folder holding `<name>/<name>.py`."""
    return sorted(p.parent.name for p in METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load a shipped metric by name (`"accuracy"`, `"mean_average_precision"`); `kwargs` go to `evaluate.load`."""
    if name not in available_metrics():
        raise ValueError(f"Unknown metric {name!r}; available metrics: {', '.join(available_metrics())}")
    import evaluate  # deferred: evaluate pulls in datasets, which importing the metrics should not pay for

    return evaluate.load(str(METRICS_DIR / name), **kwargs)
