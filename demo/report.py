"""The demo's report folder: report.md, PNG plots and results.json."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def log_history(stage_dir: Path) -> list[dict]:
    state = stage_dir / "trainer_state.json"
    return json.loads(state.read_text())["log_history"] if state.exists() else []


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def stages(pretraining_dir: Path) -> dict[str, Path]:
    """'iteration 1 ssl' -> folder, for every finished stage folder holding a trainer_state.json."""
    found = {}
    for iteration_dir in sorted(pretraining_dir.glob("iteration_*")):
        for kind in ("tokenizer", "ssl"):
            if (iteration_dir / kind / "trainer_state.json").exists():
                found[f"{iteration_dir.name.replace('_', ' ')} {kind}"] = iteration_dir / kind
    return found


def plot_curves(path: Path, title: str, curves: dict[str, tuple[list[int], list[float]]], ylabel: str) -> bool:
    curves = {label: xy for label, xy in curves.items() if xy[0]}
    if not curves:
        return False
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for label, (steps, values) in curves.items():
        axis.plot(steps, values, label=label, marker="." if len(steps) < 30 else None)
    axis.set(title=title, xlabel="step", ylabel=ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_confusion(path: Path, actual: list[int], predicted: list[int], names: list[str]) -> None:
    matrix = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(matrix, (np.asarray(actual), np.asarray(predicted)), 1)
    figure, axis = plt.subplots(figsize=(6.4, 5.6))
    axis.imshow(matrix, cmap="Blues")
    axis.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
             title="Pre-trained + fine-tuned: held-out programs")
    axis.set_xticklabels(names, rotation=45, ha="right")
    axis.set_yticklabels(names)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axis.text(column, row, str(count), ha="center", va="center",
                      color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracies(path: Path, results: dict) -> None:
    labels = ["pre-trained\nfine-tuned", "random init\nfine-tuned", "pre-trained\nlinear probe",
              "random init\nlinear probe", "log-mel +\nlogistic reg."]
    values = [results["pretrained_finetuned_accuracy"], results["random_init_finetuned_accuracy"],
              results["pretrained_linear_probe_accuracy"], results["random_init_linear_probe_accuracy"],
              results["logmel_baseline_accuracy"]]
    figure, axis = plt.subplots(figsize=(7.6, 4))
    bars = axis.bar(labels, values, color=["#2a6fb0", "#999999", "#6fa8dc", "#cccccc", "#c98b2f"])
    axis.axhline(results["chance_accuracy"], color="black", linestyle=":", label="chance")
    for bar, value in zip(bars, values):
        axis.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center")
    axis.set(ylim=(0, 1), ylabel="test accuracy (held-out programs)", title="Instrument family, unseen instruments")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_per_program(path: Path, results: dict) -> None:
    """Test accuracy of each held-out program (20 clips each) for the fine-tuned models and the log-mel baseline."""
    per_program = results["per_program_accuracy"]
    programs = list(next(iter(per_program.values())))
    figure, axis = plt.subplots(figsize=(11, 4))
    width = 0.27
    colours = {"pretrained_finetuned": "#2a6fb0", "random_init_finetuned": "#999999", "logmel_baseline": "#c98b2f"}
    for offset, (name, colour) in enumerate(colours.items()):
        positions = np.arange(len(programs)) + (offset - 1) * width
        axis.bar(positions, [per_program[name][program] for program in programs], width, color=colour,
                 label=name.replace("_", " "))
    family_of = results["test_program_families"]
    axis.set_xticks(range(len(programs)))
    axis.set_xticklabels([f"{program}\n{family_of[program][:7]}" for program in programs], fontsize=7)
    axis.set(ylim=(0, 1.05), ylabel="test accuracy", xlabel="held-out General MIDI program",
             title="Accuracy per held-out instrument")
    axis.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report_dir: Path, results: dict, pretraining_dir: Path, actual, predicted, names) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    found = stages(pretraining_dir)
    histories = {name: log_history(folder) for name, folder in found.items()}
    plots = []
    ssl = {name: series(history, "loss") for name, history in histories.items() if name.endswith("ssl")}
    if plot_curves(report_dir / "pretraining_loss.png", "Masked audio modeling loss", ssl, "cross-entropy"):
        plots.append(("Pre-training loss per iteration", "pretraining_loss.png"))
    ssl_accuracy = {name: series(history, "masked_accuracy") for name, history in histories.items()
                    if name.endswith("ssl")}
    if plot_curves(report_dir / "masked_accuracy.png", "Masked patch prediction accuracy", ssl_accuracy, "accuracy"):
        plots.append(("Masked prediction accuracy", "masked_accuracy.png"))
    tokenizer = {}
    usage = {}
    for name, history in histories.items():
        keys = sorted({key for entry in history for key in entry})
        if name.endswith("tokenizer"):
            tokenizer.update({f"{name}: {key}": series(history, key) for key in keys if "loss" in key and
                              not key.startswith(("train_", "eval_"))})
        usage.update({f"{name}: {key}": series(history, key) for key in keys if "usage" in key or "coverage" in key})
    if plot_curves(report_dir / "tokenizer_loss.png", "Tokenizer distillation losses", tokenizer, "loss"):
        plots.append(("Tokenizer training losses", "tokenizer_loss.png"))
    if plot_curves(report_dir / "codebook_usage.png", "Codebook usage per iteration", usage, "share of codes"):
        plots.append(("Codebook usage", "codebook_usage.png"))
    plot_confusion(report_dir / "confusion_matrix.png", actual, predicted, names)
    plot_accuracies(report_dir / "accuracy.png", results)
    plots += [("Confusion matrix", "confusion_matrix.png"), ("Accuracy comparison", "accuracy.png")]
    plot_per_program(report_dir / "per_program_accuracy.png", results)
    plots.append(("Accuracy per held-out program", "per_program_accuracy.png"))

    (report_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    lines = [
        "# beats_hf demo report",
        "",
        "Instrument-family classification (10 General MIDI families) on programs never seen in training, rendered",
        "from the FluidR3 soundfont. BEATs was pre-trained for 2 iterations on an unlabelled pool, then fine-tuned with",
        "LP-FT: the head, which sees per-frequency-band statistics of the last layer, is first fitted as a logistic",
        "regression on the frozen encoder (the linear probe rows), then the whole model is fine-tuned. The random-init",
        "model gets exactly the same treatment. The log-mel baseline sees per-mel-bin statistics.",
        "",
        "| model | test accuracy |",
        "|---|---|",
        f"| BEATs, 2 pre-training iterations + fine-tuning | {results['pretrained_finetuned_accuracy']:.3f} |",
        f"| same architecture, random init + same fine-tuning | {results['random_init_finetuned_accuracy']:.3f} |",
        f"| BEATs, 2 pre-training iterations, frozen + logistic regression (linear probe) "
        f"| {results['pretrained_linear_probe_accuracy']:.3f} |",
        f"| random frozen encoder + logistic regression | {results['random_init_linear_probe_accuracy']:.3f} |",
        f"| log-mel mean/std + logistic regression | {results['logmel_baseline_accuracy']:.3f} |",
        f"| chance | {results['chance_accuracy']:.3f} |",
        "",
    ]
    for key, comparison in results.get("program_bootstrap", {}).items():
        low, high = comparison["interval_95"]
        lines.append(f"- {key.replace('_', ' ')}: {comparison['difference']:+.3f} (95 % interval over resampled "
                     f"held-out programs: {low:+.3f} to {high:+.3f})")
    lines += [
        "",
        f"Settings: `{json.dumps(results['settings'])}`",
        "",
        f"Time per stage (s): `{json.dumps(results['timings_seconds'])}`",
        "",
    ]
    for title, file_name in plots:
        lines += [f"## {title}", "", f"![{title}]({file_name})", ""]
    lines += [
        "## Frozen encoders, every layer (`beats-hf evaluate`)",
        "",
        "Probes of the frozen encoders of iteration 1 and 2, the same architecture untrained and the log-mel",
        "statistics, each at the layer chosen on a validation split of whole training programs (test accuracy, 95 %",
        "interval over resampled held-out programs). Every layer, the paired differences and the plots:",
        "[../frozen_encoders/report.md](../frozen_encoders/report.md).",
        "",
        "| model | probe | layer | validation | test | interval |",
        "|---|---|---|---|---|---|",
    ]
    for model, probes in results["frozen_encoder_probes"].items():
        for probe, row in probes.items():
            low, high = row["test_interval"]
            lines.append(f"| {model} | {probe} | {row['best_layer']} | {row['validation']:.3f} | {row['test']:.3f} "
                         f"| {low:.3f}..{high:.3f} |")
    lines += ["", "## Pipeline on a few test clips", "", "| clip | true family | top predictions |", "|---|---|---|"]
    for example in results.get("pipeline_examples", []):
        top = ", ".join(f"{p['label']} ({p['score']:.2f})" for p in example["predictions"])
        lines.append(f"| {example['file']} | {example['true']} | {top} |")
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
