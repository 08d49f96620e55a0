"""What `beats-hf evaluate` writes: group-bootstrap intervals, `results.json`, `report.md` and the plots.

Intervals resample test GROUPS, not clips: clips of one group (one instrument program, one recording session) are not
independent, and the question is how the score would move with other groups. A draw picks as many groups as the test
split has, with replacement, and weights each clip by how often its group was drawn; the interval is the 2.5th and
97.5th percentile over `draws` draws from a fixed seed. Model differences use the same draws for both models (paired).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic_files import atomic_write_text

__all__ = ["bootstrap_weights", "percentile_interval", "plot_differences", "plot_layers", "short_name",
           "write_report"]


def bootstrap_weights(groups: torch.Tensor, draws: int = 1000, seed: int = 0) -> torch.Tensor:
    """`groups` `(clips,)` group index per clip (0..G-1) -> `(draws, clips)` clip weights: how often each clip's group
    was drawn when G groups are drawn with replacement."""
    num_groups = int(groups.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(num_groups, (draws, num_groups), generator=generator)
    counts = torch.zeros(draws, num_groups, dtype=torch.float64)
    counts.scatter_add_(1, picks, torch.ones(picks.shape, dtype=torch.float64))
    return counts[:, groups]


def percentile_interval(values: torch.Tensor, level: float = 0.95) -> list[float]:
    values = values[~values.isnan()].double()
    if values.numel() == 0:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2
    return [float(values.quantile(tail)), float(values.quantile(1 - tail))]


def short_name(spec: str) -> str:
    """A model spec as a table or legend shows it: the last two parts of a path (`iteration_2/ssl`)."""
    prefix = "random:" if spec.startswith("random:") else ""
    parts = [part for part in spec[len(prefix):].replace("\\", "/").split("/") if part]
    return prefix + "/".join(parts[-2:]) if parts else spec


def _number(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN != NaN


def _per_pooling(results: dict) -> list[dict]:
    """The result rows of one pooling each (a row of the pooling chosen on validation repeats one of them)."""
    return [row for row in results["results"] if "chosen_pooling" not in row]


def write_report(results: dict, path: Path) -> None:
    metric = results["metric"]
    data = results["data"]
    lines = [
        "# Frozen-encoder evaluation", "",
        f"Data: `{results['settings']['data']}`; {data['fit_clips']} fit + {data['validation_clips']} validation "
        f"clips ({data['fit_groups']} + {data['validation_groups']} training groups), {data['test_clips']} test clips "
        f"({data['test_groups']} groups). Metric: {metric}. Every choice (hyper-parameter, layer) is made on "
        "validation; each test score is computed once. Intervals: 95 %, "
        f"{results['settings']['bootstrap_draws']} draws of test groups.", "",
        "Models: " + ", ".join(f"`{spec}`" for spec in results["settings"]["models"]) + ".", "",
        f"| model | probe | pooling | best layer | chosen there | validation {metric} | test {metric} "
        "| 95 % interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["results"]:
        low, high = row["test_interval"]
        pooling = f"chosen: {row['chosen_pooling']}" if "chosen_pooling" in row else row["pooling"]
        lines.append(f"| {short_name(row['model'])} | {row['probe']} | {pooling} | {row['best_layer']} | "
                     f"{row['chosen']} {row['choice']:g} | "
                     f"{_number(row['validation'])} | {_number(row['test'])} | {_number(low)} to {_number(high)} |")
    if results["differences"]:
        lines += ["", "## Differences between models (best layers, test)", "",
                  "| probe | pooling | model A | model B | A - B | 95 % interval |", "|---|---|---|---|---|---|"]
        for row in results["differences"]:
            low, high = row["interval"]
            lines.append(f"| {row['probe']} | {row['pooling']} | "
                         f"{short_name(row['model_a'])} (layer {row['layer_a']}) | "
                         f"{short_name(row['model_b'])} (layer {row['layer_b']}) | {row['difference']:+.3f} | "
                         f"{low:+.3f} to {high:+.3f} |")
    per_pooling = _per_pooling(results)
    deepest = max(len(row["layers"]) for row in per_pooling)
    lines += ["", f"## Every layer: test {metric} (validation)", "",
              "| probe | pooling | model | " + " | ".join(f"layer {layer}" for layer in range(deepest)) + " |",
              "|---|---|---|" + "---|" * deepest]
    order = list(dict.fromkeys((row["probe"], row["pooling"]) for row in per_pooling))
    for row in sorted(per_pooling, key=lambda row: order.index((row["probe"], row["pooling"]))):
        cells = [f"{_number(layer['test'])} ({_number(layer['validation'])})" for layer in row["layers"]]
        cells[row["best_layer"]] = f"**{cells[row['best_layer']]}**"
        lines.append(f"| {row['probe']} | {row['pooling']} | {short_name(row['model'])} | "
                     + " | ".join(cells + [""] * (deepest - len(cells))) + " |")
    lines += ["", "Bold: the layer chosen on validation. The chosen hyper-parameters per layer: `results.json`.", ""]
    atomic_write_text(path, "\n".join(lines))


def _pyplot():
    """matplotlib is only a development dependency: None (and a printed note) where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib).")
        return None
    return plt


def plot_layers(results: dict, path: Path) -> bool:
    """Test score per layer for every model, one panel per probe; a star at the layer chosen on validation."""
    plt = _pyplot()
    if plt is None:
        return False
    probes = list(dict.fromkeys(row["probe"] for row in results["results"]))
    models = list(dict.fromkeys(row["model"] for row in results["results"]))
    colours = {model: f"C{index % 10}" for index, model in enumerate(models)}
    styles = {"mean": "-", "frequency_bands": "--", "rows": "-"}
    figure, axes = plt.subplots(1, len(probes), figsize=(4.5 * len(probes), 3.8), squeeze=False)
    deepest = max(len(row["layers"]) for row in results["results"]) - 1
    for axis, probe in zip(axes[0], probes):
        for row in (row for row in _per_pooling(results) if row["probe"] == probe):
            tests = [layer["test"] for layer in row["layers"]]
            label = f"{short_name(row['model'])} ({row['pooling']})"
            if len(tests) == 1:  # a one-"layer" baseline: a level line across the depth
                axis.axhline(tests[0], color=colours[row["model"]], linestyle=":", label=label)
                continue
            axis.plot(range(len(tests)), tests, linestyle=styles.get(row["pooling"], "-"), color=colours[row["model"]],
                      marker="o", markersize=3, label=label)
            axis.plot(row["best_layer"], row["test"], "*", color=colours[row["model"]], markersize=12)
        axis.set_title(probe)
        axis.set_xlabel("hidden state (0 = encoder input)")
        axis.set_xticks(range(deepest + 1))
        axis.set_ylabel(f"test {results['metric']}")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_differences(results: dict, path: Path) -> bool:
    """Best-layer test differences between models with their group-bootstrap intervals, one panel per probe and
    pooling."""
    if not results["differences"]:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    panels = list(dict.fromkeys((row["probe"], row["pooling"]) for row in results["differences"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.5 + 0.45 * len(results["differences"])
                                                         / len(panels) + 1.5), squeeze=False)
    for axis, (probe, pooling) in zip(axes[0], panels):
        rows = [row for row in results["differences"] if (row["probe"], row["pooling"]) == (probe, pooling)]
        positions = range(len(rows))
        differences = [row["difference"] for row in rows]
        errors = [[row["difference"] - row["interval"][0] for row in rows],
                  [row["interval"][1] - row["difference"] for row in rows]]
        axis.errorbar(differences, positions, xerr=errors, fmt="o", capsize=3)
        axis.axvline(0, color="grey", linewidth=0.8)
        names = [f"{short_name(row['model_a'])}\n- {short_name(row['model_b'])}" for row in rows]
        axis.set_yticks(list(positions), names, fontsize=6)
        axis.set_title(f"{probe} ({pooling})")
        axis.set_xlabel(f"test {results['metric']} difference")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
