"""`beats-hf evaluate`: the frozen-encoder benchmark. Probes of every layer of several models on one labelled dataset.

    beats-hf evaluate --models M1 M2 random:M1 logmel --data DATASET --output_dir OUT \
        [--probes linear mlp attentive knn] [--pooling mean frequency_bands] [--multi_label] \
        [--group_column COLUMN | --group_pattern REGEX] [--train_split train --test_split test]

For each model and hidden state, linear, MLP and kNN probes on the pooled clip embeddings and an attentive probe on
the 160 ms row tokens (see `beats_hf.evaluation.probes`). Every choice (hyper-parameter per layer, then the best
layer) is made on a validation split of whole TRAINING groups; the test split is scored once per (model, probe,
pooling, layer). Writes `OUT/results.json`, `OUT/report.md` (best layer per model and probe, test score with a 95 %
interval over resampled test groups, paired differences between models) and PNG plots; embeddings are cached under
`OUT/cache/` and reused by a rerun.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic_files import atomic_write_json
from ..audio_data import load_audio_dataset
from ..configuration_beats import CLASSIFIER_POOLINGS
from .embeddings import check_model_spec, data_key, embed_split, load_encoder
from .probes import CHOSEN, PROBES, Task, fit_attentive, fit_knn, fit_linear, fit_mlp, probe_settings, task_scores
from .report import (
    bootstrap_weights,
    percentile_interval,
    plot_differences,
    plot_layers,
    write_report,
)

__all__ = ["evaluate_encoders", "group_validation_split", "main"]

ROWS = "rows"  # the attentive probe's input, reported as its pooling
CHOSEN_POOLING = "chosen"  # with several poolings: per model and probe, the pooling (and layer) best on validation


# ---------------------------------------------------------------------------------------------------------------------
# Labels, groups and the validation split
# ---------------------------------------------------------------------------------------------------------------------


def _column(dataset, name: str, what: str) -> list:
    if name not in dataset.column_names:
        raise ValueError(f"No {what} column {name!r} in the data; columns: {dataset.column_names}.")
    return list(dataset[name])


def _file_names(dataset, audio_column: str) -> list[str]:
    """The audio file name of every row, read from the Arrow column where it can be (no audio bytes decoded)."""
    import pyarrow as pa

    column = dataset.data.column(audio_column) if dataset._indices is None else None
    if column is not None and pa.types.is_struct(column.type):
        paths = column.combine_chunks().field("path").to_pylist()
    elif column is not None and pa.types.is_string(column.type):
        paths = column.to_pylist()
    else:
        paths = [value.get("path") if isinstance(value, dict) else value for value in dataset[audio_column]]
    return [os.path.basename(path) if isinstance(path, str) else "" for path in paths]


def clip_groups(dataset, audio_column: str, group_column: str | None, group_pattern: str | None,
                split: str) -> list[str]:
    """A group name per row: the metadata column, the first capture group of the pattern in the file name, or the row
    itself (each clip its own group)."""
    if group_column is not None:
        return [str(value) for value in _column(dataset, group_column, "group")]
    if group_pattern is None:
        return [f"{split}:{row}" for row in range(len(dataset))]
    pattern = re.compile(group_pattern)
    groups = []
    for name in _file_names(dataset, audio_column):
        match = pattern.search(name)
        if match is None:
            raise ValueError(f"--group_pattern {group_pattern!r} does not match the {split} file name {name!r}.")
        groups.append(match.group(1) if pattern.groups else match.group(0))
    return groups


def group_validation_split(groups: list[str], fraction: float = 0.2, seed: int = 0,
                           labels: list[int] | None = None) -> np.ndarray:
    """Boolean mask of the validation clips: about `fraction` of the training GROUPS, whole, drawn deterministically
    from `seed`. With single labels where every group has one label (instrument programs of a family), the draw is
    per class, so each class keeps groups on both sides when it has two or more."""
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"A group-disjoint validation split needs at least 2 training groups; found {len(names)}.")
    rng = np.random.default_rng(seed)
    label_of: dict[str, set] = {}
    for group, label in zip(groups, labels if labels is not None else [None] * len(groups)):
        label_of.setdefault(group, set()).add(label)
    strata: dict = {}
    if labels is not None and all(len(values) == 1 for values in label_of.values()):
        for name in names:
            strata.setdefault(next(iter(label_of[name])), []).append(name)
    else:
        strata[None] = names
    chosen = set()
    for key in sorted(strata, key=str):
        members = strata[key]
        count = min(len(members) - 1, max(1 if len(members) > 1 else 0, round(fraction * len(members))))
        chosen.update(members[i] for i in rng.permutation(len(members))[:count])
    if not chosen:  # every class has a single group: fall back to drawing groups regardless of class
        count = min(len(names) - 1, max(1, round(fraction * len(names))))
        chosen.update(names[i] for i in rng.permutation(len(names))[:count])
    return np.array([group in chosen for group in groups])


def _targets(train_labels: list, other_labels: list[list], multi_label: bool, num_classes: int | None) -> tuple:
    """(task, train targets, [targets of each other split]): class indices, or multi-hot rows for lists of label
    indices."""
    test_labels = [value for labels in other_labels for value in labels]
    if multi_label:
        if not all(isinstance(value, (list, tuple)) for value in train_labels + test_labels):
            raise ValueError("--multi_label needs a label column of lists of label indices.")
        largest = max((max(value) for value in train_labels + test_labels if len(value)), default=0)
        num_classes = num_classes or int(largest) + 1

        def multi_hot(values: list) -> torch.Tensor:
            rows = torch.zeros(len(values), num_classes)
            for row, value in enumerate(values):
                rows[row, list(value)] = 1.0
            return rows

        return Task(num_classes, True), multi_hot(train_labels), [multi_hot(labels) for labels in other_labels]
    if any(isinstance(value, (list, tuple)) for value in train_labels + test_labels):
        raise ValueError("The label column holds lists: pass --multi_label for multi-label tagging.")
    if all(isinstance(value, (int, np.integer)) for value in train_labels + test_labels):
        num_classes = num_classes or int(max(train_labels + test_labels)) + 1
        return Task(num_classes), torch.tensor(train_labels), [torch.tensor(labels) for labels in other_labels]
    if any(isinstance(value, (float, np.floating)) for value in train_labels + test_labels):
        raise ValueError("The labels are numbers that are not class indices: evaluate probes classification only.")
    names = sorted({str(value) for value in train_labels})
    unseen = sorted({str(value) for value in test_labels} - set(names))
    if unseen:
        raise ValueError(f"Validation or test labels never seen in training: {unseen[:5]}.")
    index = {name: position for position, name in enumerate(names)}
    return (Task(len(names)), torch.tensor([index[str(value)] for value in train_labels]),
            [torch.tensor([index[str(value)] for value in labels], dtype=torch.long) for labels in other_labels])


def _load_split(data: str, split: str, audio_column: str):
    try:
        return load_audio_dataset(data, split=split, audio_column=audio_column)
    except (ValueError, KeyError) as error:
        if "split" not in str(error).lower():
            raise
        raise ValueError(f"No {split!r} split in {data!r} ({' '.join(str(error).split())}); name the splits with "
                         "--train_split and --test_split.") from error


def _declared_classes(dataset, label_column: str) -> int | None:
    feature = dataset.features.get(label_column) if dataset.features else None
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) / List(ClassLabel)
    return getattr(feature, "num_classes", None)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


def _run_probe(probe: str, task: Task, fit: dict, validation: dict, test: dict, pooling: str, seed: int):
    if probe == "attentive":
        return fit_attentive(task, fit[ROWS], fit["row_counts"], fit["targets"], validation[ROWS],
                             validation["row_counts"], validation["targets"], test[ROWS], test["row_counts"],
                             seed=seed)
    arguments = (task, fit[pooling], fit["targets"], validation[pooling], validation["targets"], test[pooling])
    if probe == "linear":
        return fit_linear(*arguments)
    if probe == "mlp":
        return fit_mlp(*arguments, seed=seed)
    return fit_knn(*arguments)


def _by_layer(tensors: dict[str, torch.Tensor], rows: torch.Tensor, targets: torch.Tensor) -> dict:
    """The clips `rows` of a split, each embedding as `(layers, clips, ...)` (the probes' layout)."""
    selected = {name: tensors[name][rows].transpose(0, 1) for name in ("mean", "frequency_bands", ROWS)
                if name in tensors}
    if "row_counts" in tensors:
        selected["row_counts"] = tensors["row_counts"][rows]
    selected["targets"] = targets
    return selected


def _positions(tensors: dict[str, torch.Tensor], dataset_rows: np.ndarray) -> torch.Tensor:
    """Where the dataset rows `dataset_rows` sit in a cached split (which holds only the readable clips)."""
    position = {row: place for place, row in enumerate(tensors["index"].tolist())}
    return torch.tensor([position[row] for row in dataset_rows.tolist()], dtype=torch.long)


def evaluate_encoders(
    models: list[str],
    data: str,
    output_dir: str | os.PathLike,
    probes: tuple[str, ...] | list[str] = PROBES,
    poolings: tuple[str, ...] | list[str] = ("mean", "frequency_bands"),
    multi_label: bool = False,
    label_column: str = "label",
    audio_column: str = "audio",
    group_column: str | None = None,
    group_pattern: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    validation_split: str | None = None,
    validation_fraction: float = 0.2,
    batch_size: int = 16,
    device: str | None = None,
    bootstrap_draws: int = 1000,
    seed: int = 0,
    plots: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Runs the benchmark and writes OUTPUT/results.json, report.md and plots; returns what results.json holds.

    `models`: beats_hf folders or Hub ids, `random:M` (M's architecture, untrained, seed 0) or `logmel`. `data`: an
    audio folder, saved dataset or Hub dataset with `train_split` and `test_split`. Groups (for the validation split
    and the test intervals) come from `group_column`, or `group_pattern`'s first capture group in the file name, else
    each clip is its own group. `validation_split`: a split of validation groups of its own (else about
    `validation_fraction` of the training groups). `test_split=None`: validation only (to choose among several
    runs without looking at the test groups); test scores are then NaN."""
    started = time.perf_counter()
    models, probes, poolings = list(models), list(dict.fromkeys(probes)), list(dict.fromkeys(poolings))
    if not models:
        raise ValueError("No model to evaluate.")
    if len(set(models)) != len(models):
        raise ValueError(f"A model is given twice: {models}.")
    if unknown := sorted(set(probes) - set(PROBES)):
        raise ValueError(f"Unknown probe(s) {unknown}; choose from {list(PROBES)}.")
    if unknown := sorted(set(poolings) - set(CLASSIFIER_POOLINGS)):
        raise ValueError(f"Unknown pooling(s) {unknown}; choose from {list(CLASSIFIER_POOLINGS)}.")
    if not probes or (not poolings and set(probes) != {"attentive"}):
        raise ValueError("Nothing to do: give at least one probe (and a pooling for probes other than attentive).")
    if group_column is not None and group_pattern is not None:
        raise ValueError("Give --group_column or --group_pattern, not both.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    output = Path(output_dir)

    # Everything that can be wrong with the inputs fails here, before the first forward pass.
    named = [name for name in (train_split, validation_split, test_split) if name is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"The train, validation and test splits must differ; got {named}.")
    splits = {name: _load_split(data, name, audio_column) for name in named}
    labels = {name: _column(dataset, label_column, "label") for name, dataset in splits.items()}
    groups = {name: clip_groups(dataset, audio_column, group_column, group_pattern, name)
              for name, dataset in splits.items()}
    if group_column is not None or group_pattern is not None:
        for a, b in combinations(named, 2):
            if shared := sorted(set(groups[a]) & set(groups[b])):
                raise ValueError(f"The {a} and {b} splits share group(s) {shared[:5]}: held-out groups must be "
                                 "disjoint from the training groups.")
    for spec in models:
        check_model_spec(spec, trust_remote_code)
    task, train_targets, others = _targets(labels[train_split], [labels[name] for name in named[1:]], multi_label,
                                           _declared_classes(splits[train_split], label_column))
    targets = {train_split: train_targets, **dict(zip(named[1:], others))}

    needed = set(poolings if set(probes) - {"attentive"} else []) | ({ROWS} if "attentive" in probes else set())
    embeddings, cache = {}, {}
    embedding_started = time.perf_counter()
    for spec in models:
        encoder = load_encoder(spec, device=device, trust_remote_code=trust_remote_code)
        embeddings[spec], cache[spec] = {}, {}
        for name, dataset in splits.items():
            path = output / "cache" / encoder.cache_name / f"{name}-{data_key(data, name, audio_column, dataset)[:12]}"
            path = path.with_name(path.name + ".safetensors")
            tensors, reused = embed_split(encoder, dataset, path, needed, audio_column, batch_size, device,
                                          description=f"embedding {name} ({spec})")
            embeddings[spec][name] = tensors
            cache[spec][name] = {"path": str(path), "reused": reused}
            if reused:
                print(f"reusing cached embeddings of {spec} ({name}): {path}")
        del encoder
    embedding_seconds = time.perf_counter() - embedding_started

    # Clips unreadable for one model are unreadable for all; the intersection keeps every model on the same clips.
    kept = {name: sorted(set.intersection(*(set(embeddings[spec][name]["index"].tolist()) for spec in models)))
            for name in splits}
    unreadable = {name: len(splits[name]) - len(kept[name]) for name in splits}
    train_rows = np.array(kept[train_split])
    if validation_split is None:
        train_groups = [groups[train_split][row] for row in train_rows]
        single_labels = None if multi_label else train_targets[train_rows].tolist()
        in_validation = group_validation_split(train_groups, validation_fraction, seed, single_labels)
        fit_rows, validation_rows = train_rows[~in_validation], train_rows[in_validation]
    else:
        fit_rows, validation_rows = train_rows, np.array(kept[validation_split])
    # Where each part's clips are: (split, dataset rows). Without a test split the validation clips stand in as the
    # probes' "test" input, and no test score is kept.
    parts = {"fit": (train_split, fit_rows), "validation": (validation_split or train_split, validation_rows)}
    parts["test"] = (test_split, np.array(kept[test_split])) if test_split else parts["validation"]
    test_rows = parts["test"][1]
    test_group_names = sorted(set(groups[parts["test"][0]][row] for row in test_rows))
    group_index = {name: index for index, name in enumerate(test_group_names)}
    test_group_ids = torch.tensor([group_index[groups[parts["test"][0]][row]] for row in test_rows])
    draws = bootstrap_weights(test_group_ids, bootstrap_draws, seed)
    test_targets = targets[parts["test"][0]][test_rows]
    scored = (lambda value: value) if test_split else (lambda value: float("nan"))

    jobs = [(spec, probe, pooling) for spec in models for probe in probes
            for pooling in ([ROWS] if probe == "attentive" else poolings)]
    rows, best_outputs = [], {}
    probe_started = time.perf_counter()
    for spec, probe, pooling in tqdm(jobs, desc="probes", unit="probe"):
        fit, validation, test = (
            _by_layer(embeddings[spec][split], _positions(embeddings[spec][split], part_rows),
                      targets[split][part_rows])
            for split, part_rows in parts.values()
        )
        result = _run_probe(probe, task, fit, validation, test, pooling, seed)
        test_scores = task_scores(task, result.test_outputs, test["targets"])
        best = int(torch.nan_to_num(result.validation, nan=-float("inf")).argmax())
        best_outputs[spec, probe, pooling] = (best, result.test_outputs[best])
        scores = task_scores(task, result.test_outputs[best], test["targets"], draws)
        rows.append({
            "model": spec, "probe": probe, "pooling": pooling, "best_layer": best,
            "validation": float(result.validation[best]), "test": scored(float(test_scores[best])),
            "test_interval": [scored(value) for value in percentile_interval(scores)], "chosen": CHOSEN[probe],
            "choice": result.choice[best],
            "layers": [{"layer": layer, "validation": float(result.validation[layer]),
                        "test": scored(float(test_scores[layer])), "choice": result.choice[layer]}
                       for layer in range(len(result.choice))],
        })
    probe_seconds = time.perf_counter() - probe_started
    if len(poolings) > 1:  # the pooling is a choice too, made on validation like the layer (a tie: the first given)
        for spec in models:
            for probe in (probe for probe in probes if probe != "attentive"):
                candidates = [row for row in rows if (row["model"], row["probe"]) == (spec, probe)]
                chosen = max(candidates, key=lambda row: -float("inf") if row["validation"] != row["validation"]
                             else row["validation"])
                rows.append({**chosen, "pooling": CHOSEN_POOLING, "chosen_pooling": chosen["pooling"]})
                best_outputs[spec, probe, CHOSEN_POOLING] = best_outputs[spec, probe, chosen["pooling"]]

    differences = []
    for probe, pooling in dict.fromkeys((row["probe"], row["pooling"]) for row in rows) if test_split else ():
        for model_a, model_b in combinations(models, 2):
            (layer_a, outputs_a), (layer_b, outputs_b) = (best_outputs[model_a, probe, pooling],
                                                          best_outputs[model_b, probe, pooling])
            difference = task_scores(task, outputs_a, test_targets) - task_scores(task, outputs_b, test_targets)
            drawn = (task_scores(task, outputs_a, test_targets, draws)
                     - task_scores(task, outputs_b, test_targets, draws))
            differences.append({"probe": probe, "pooling": pooling, "model_a": model_a, "model_b": model_b,
                                "layer_a": layer_a, "layer_b": layer_b, "difference": float(difference),
                                "interval": percentile_interval(drawn)})

    results = {
        "metric": task.metric,
        "settings": {"models": models, "data": data, "probes": probes, "poolings": poolings,
                     "multi_label": multi_label, "label_column": label_column, "group_column": group_column,
                     "group_pattern": group_pattern, "train_split": train_split, "test_split": test_split,
                     "validation_split": validation_split,
                     "validation_fraction": validation_fraction, "bootstrap_draws": bootstrap_draws, "seed": seed,
                     "num_classes": task.num_classes, "probe_settings": probe_settings()},
        "data": {"fit_clips": len(fit_rows), "validation_clips": len(validation_rows),
                 "test_clips": len(test_rows) if test_split else 0,
                 "fit_groups": len({groups[train_split][row] for row in fit_rows}),
                 "validation_groups": len({groups[parts["validation"][0]][row] for row in validation_rows}),
                 "test_groups": len(test_group_names) if test_split else 0, "unreadable": unreadable},
        "cache": cache,
        "results": rows,
        "differences": differences,
        "seconds": {"embedding": round(embedding_seconds, 1), "probes": round(probe_seconds, 1)},
    }
    output.mkdir(parents=True, exist_ok=True)
    if plots and test_split:
        results["plots"] = [name for name, plot in (("layers.png", plot_layers), ("differences.png", plot_differences))
                            if plot(results, output / name)]
    results["seconds"]["total"] = round(time.perf_counter() - started, 1)
    write_report(results, output / "report.md")
    atomic_write_json(output / "results.json", results)
    print(f"wrote {output / 'report.md'} and {output / 'results.json'} ({results['seconds']['total']} s)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beats-hf evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True,
                        help="beats_hf folders or Hub ids; random:M for M's architecture untrained; logmel")
    parser.add_argument("--data", required=True, help="audio folder, saved dataset or Hub dataset with two splits")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=list(PROBES))
    parser.add_argument("--pooling", nargs="+", choices=CLASSIFIER_POOLINGS, default=["mean", "frequency_bands"],
                        help="clip pooling(s) for the linear, MLP and kNN probes")
    parser.add_argument("--multi_label", action="store_true", help="labels are lists of indices; metric mAP")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--audio_column", default="audio")
    groups = parser.add_mutually_exclusive_group()
    groups.add_argument("--group_column", default=None, help="metadata column naming each clip's group")
    groups.add_argument("--group_pattern", default=None,
                        help="regex on the file name; its first capture group is the group, e.g. '_p(\\d+)_'")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test", help="'none': validation scores only")
    parser.add_argument("--validation_split", default=None,
                        help="a split of validation groups (default: --validation_fraction of the training groups)")
    parser.add_argument("--validation_fraction", type=float, default=0.2, help="share of training groups")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per forward")
    parser.add_argument("--device", default=None)
    parser.add_argument("--bootstrap_draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="validation split, probe initialisation, bootstrap")
    parser.add_argument("--no_plots", action="store_true")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    evaluate_encoders(
        args.models, args.data, args.output_dir, probes=args.probes, poolings=args.pooling,
        multi_label=args.multi_label, label_column=args.label_column, audio_column=args.audio_column,
        group_column=args.group_column, group_pattern=args.group_pattern, train_split=args.train_split,
        test_split=None if args.test_split.lower() == "none" else args.test_split,
        validation_split=args.validation_split, validation_fraction=args.validation_fraction,
        batch_size=args.batch_size,
        device=args.device, bootstrap_draws=args.bootstrap_draws, seed=args.seed, plots=not args.no_plots,
        trust_remote_code=args.trust_remote_code,
    )
    return 0
