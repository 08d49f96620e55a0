"""Frozen-encoder evaluation (`beats-hf evaluate`): linear, MLP, attentive and kNN probes of every layer of several
models on one labelled dataset, with every choice made on a group-disjoint validation split and test intervals from
resampled test groups.

- `embeddings`: the encoders (trained, `random:M`, `logmel`) and their per-layer embeddings, computed once per model
  and split and cached under the output folder;
- `probes`: the probes, each fitted for all layers at once as one batched torch problem, and the metrics;
- `report`: group bootstrap, `results.json`, `report.md` and plots;
- `evaluate`: `evaluate_encoders(...)` and the command line.
"""

from .evaluate import evaluate_encoders, group_validation_split, main
from .probes import PROBES, ProbeResult, Task, fit_attentive, fit_knn, fit_linear, fit_mlp

__all__ = ["PROBES", "ProbeResult", "Task", "evaluate_encoders", "fit_attentive", "fit_knn", "fit_linear", "fit_mlp",
           "group_validation_split", "main"]
