"""The demo's report folder: report.md, PNG plots and results.json."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .recipes import recipe_score  # noqa: E402


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


def plot_finetuning(path: Path, results: dict) -> None:
    labels = ["pre-trained\nfine-tuned", "random init\nfine-tuned", "pre-trained\nlinear probe",
              "random init\nlinear probe"]
    values = [results["pretrained_finetuned_accuracy"], results["random_init_finetuned_accuracy"],
              results["pretrained_linear_probe_accuracy"], results["random_init_linear_probe_accuracy"]]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    bars = axis.bar(labels, values, color=["#2a6fb0", "#999999", "#6fa8dc", "#cccccc"])
    axis.axhline(results["chance_accuracy"], color="black", linestyle=":", label="chance")
    for bar, value in zip(bars, values):
        axis.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center")
    axis.set(ylim=(0, 1), ylabel="test accuracy (held-out programs)", title="LP-FT on the instrument task")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


MODEL_COLOURS = {"iteration_1": "#6fa8dc", "iteration_2": "#2a6fb0", "untrained": "#999999", "logmel": "#c98b2f"}


def plot_suite(path: Path, suite: dict) -> None:
    """Test score of every model on every held-out task (linear probe), with its 95 % group-bootstrap interval."""
    tasks = list(suite)
    models = list(next(iter(suite.values()))["scores"])
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(3.2 * len(tasks) + 1, 4.2))
    for offset, model in enumerate(models):
        positions = np.arange(len(tasks)) + (offset - (len(models) - 1) / 2) * width
        scores = [suite[task]["scores"][model] for task in tasks]
        values = [score["test"] for score in scores]
        errors = [[value - score["test_interval"][0] for value, score in zip(values, scores)],
                  [score["test_interval"][1] - value for value, score in zip(values, scores)]]
        axis.bar(positions, values, width, yerr=errors, capsize=3, label=model.replace("_", " "),
                 color=MODEL_COLOURS.get(model, f"C{offset}"))
    for index, task in enumerate(tasks):
        chance = 1 / suite[task]["classes"]
        axis.hlines(chance, index - 0.45, index + 0.45, color="black", linestyle=":",
                    label="chance" if index == 0 else None)
    axis.set_xticks(range(len(tasks)))
    axis.set_xticklabels([f"{task}\n({suite[task]['test_groups']} test groups)" for task in tasks], fontsize=8)
    axis.set(ylim=(0, 1), ylabel="test accuracy (linear probe)", title="Held-out task suite, frozen encoders")
    axis.legend(fontsize=8, ncol=len(models) + 1)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_recipes(path: Path, rows: list[dict], chosen: str) -> None:
    """Mean validation score over the suite's tasks of every recipe run at the same budget (the chosen one dark)."""
    rows = sorted(rows, key=recipe_score)
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.4))
    names = [row["recipe"]["name"] for row in rows]
    axis.barh(names, [recipe_score(row) for row in rows],
              color=["#2a6fb0" if name == chosen else "#aac4e0" for name in names])
    for position, row in enumerate(rows):
        axis.text(recipe_score(row) + 0.005, position, f"{recipe_score(row):.3f}", va="center", fontsize=8)
    axis.set(xlabel="mean validation accuracy over the tasks (last iteration, linear probe)",
             title=f"Recipes at {rows[0]['optimizer_steps']} optimizer steps")
    axis.set_xlim(0, max(recipe_score(row) for row in rows) * 1.15)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_per_program(path: Path, results: dict) -> None:
    """Test accuracy of each held-out program (equal clip counts) for the two fine-tuned models."""
    per_program = results["per_program_accuracy"]
    programs = list(next(iter(per_program.values())))
    figure, axis = plt.subplots(figsize=(11, 4))
    width = 0.4
    colours = {"pretrained_finetuned": "#2a6fb0", "random_init_finetuned": "#999999"}
    for offset, (name, colour) in enumerate(colours.items()):
        positions = np.arange(len(programs)) + (offset - 0.5) * width
        axis.bar(positions, [per_program[name][program] for program in programs], width, color=colour,
                 label=name.replace("_", " "))
    family_of = results["test_program_families"]
    axis.set_xticks(range(len(programs)))
    axis.set_xticklabels([f"{program}\n{family_of[program][:7]}" for program in programs], fontsize=7)
    axis.set(ylim=(0, 1.05), ylabel="test accuracy", xlabel="held-out General MIDI program",
             title="Accuracy per held-out instrument (fine-tuned)")
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _interval(values: list[float]) -> str:
    return f"{values[0]:+.3f} to {values[1]:+.3f}"


def suite_lines(suite: dict) -> list[str]:
    lines = []
    for name, task in suite.items():
        lines += [f"### {name}: {task['title']}", "",
                  f"{task['classes']} classes, {task['test_clips']} test clips in {task['test_groups']} groups.", "",
                  "| model | pooling, layer (chosen on validation) | validation | test | 95 % interval |",
                  "|---|---|---|---|---|"]
        for model, score in task["scores"].items():
            low, high = score["test_interval"]
            lines.append(f"| {model} | {score['pooling']}, {score['best_layer']} | {score['validation']:.3f} | "
                         f"**{score['test']:.3f}** | {low:.3f} to {high:.3f} |")
        lines += [""] + [f"- {pair}: {value['difference']:+.3f} (95 % interval {_interval(value['interval_95'])})"
                         for pair, value in task["differences"].items()]
        verdict = ("ahead of both the untrained architecture and log-mel, both intervals above 0"
                   if task["pretrained_beats_untrained_and_logmel"] else
                   "**not** ahead of both the untrained architecture and log-mel with intervals above 0")
        lines += ["", f"Pre-trained: {verdict}.", ""]
    return lines


def iteration_lines(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return ["No two-iteration recipe was run next to a one-iteration recipe at the same budget.", ""]
    lines = []
    for comparison in comparisons:
        verdict = "beat" if comparison["two_beats_one"] else "did **not** beat"
        lines += [f"Two iterations (`{comparison['two_iterations']}`) {verdict} one iteration "
                  f"(`{comparison['one_iteration']}`) at the same budget: mean validation accuracy "
                  f"{comparison['mean_two']:.3f} against {comparison['mean_one']:.3f}.", "",
                  "| task | two iterations (iteration 2) | one iteration |", "|---|---|---|"]
        lines += [f"| {task} | {scores['two_iterations']:.3f} | {scores['one_iteration']:.3f} |"
                  for task, scores in comparison["validation"].items()]
        lines.append("")
    return lines


def _verdict(suite: dict) -> str:
    won = [name for name, task in suite.items() if task["pretrained_beats_untrained_and_logmel"]]
    lost = [name for name in suite if name not in won]
    text = (f"**In short:** the pre-trained frozen encoder beat both the untrained architecture and the log-mel "
            f"statistics, with 95 % intervals above 0, on {len(won)} of the {len(suite)} held-out tasks")
    return text + (f" ({', '.join(won)})." if won else ".") + (f" Not on: {', '.join(lost)}." if lost else "")


def write_report(report_dir: Path, results: dict, pretraining_dir: Path, actual, predicted, names,
                 recipe_rows: list[dict] | None = None) -> None:
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
    plot_suite(report_dir / "suite.png", results["held_out_suite"])
    plot_confusion(report_dir / "confusion_matrix.png", actual, predicted, names)
    plot_finetuning(report_dir / "finetuning.png", results)
    plot_per_program(report_dir / "per_program_accuracy.png", results)
    plots += [("Confusion matrix (fine-tuned, instrument task)", "confusion_matrix.png"),
              ("Accuracy per held-out program (fine-tuned)", "per_program_accuracy.png")]
    if recipe_rows:
        plot_recipes(report_dir / "recipes.png", recipe_rows, results["recipe"]["name"])

    (report_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    recipe = results["recipe"]
    pool = " + ".join(f"{source} {count}" for source, count in recipe["pool"])
    steps = f"{recipe['iterations']} x {recipe['ssl_steps']} SSL steps"
    if recipe["iterations"] > 1:
        steps += f" + {recipe['iterations'] - 1} x {recipe['tokenizer_steps']} tokenizer steps"
    chosen_from = recipe["chosen_from"]
    lines = [
        "# beats_hf demo report", "",
        f"Pre-training recipe `{recipe['name']}`: {steps} = {recipe['optimizer_steps']} optimizer steps, "
        f"`{recipe['model_preset']}` preset, mask ratio {recipe['mask_ratio']}, unlabelled pool {pool} clips. "
        + (f"Chosen on the validation splits of the held-out suite among {len(chosen_from)} recipes run at the same "
           "budget (`docs/demo/recipes.md`)." if chosen_from else "(The fast run: no recipe search.)"), "",
        _verdict(results["held_out_suite"]), "",
        "## Held-out task suite: test splits, scored once", "",
        "Frozen encoders, linear probe; probe setting, layer and pooling chosen on each task's validation groups; "
        "95 % intervals over resampled test groups (programs or voices), differences paired over the same draws. "
        "Every layer, the kNN probe and the plots: `../held_out_suite/<task>/report.md`.", "",
        "![Held-out task suite](suite.png)", "",
        *suite_lines(results["held_out_suite"]),
        "## Iteration 2 against iteration 1 at the same budget (validation)", "",
        *iteration_lines(results["iteration_2_versus_1"]),
    ]
    if recipe_rows:
        lines += ["![Recipes](recipes.png)", ""]
    lines += [
        "## Fine-tuning on the instrument task (LP-FT)", "",
        "The head sees per-frequency-band statistics of the last layer; it is first fitted as a logistic regression "
        "on the frozen encoder (the linear-probe rows), then the whole model is fine-tuned. The random-init model "
        "gets exactly the same treatment.", "",
        "| model | test accuracy |", "|---|---|",
        f"| pre-trained + fine-tuning | {results['pretrained_finetuned_accuracy']:.3f} |",
        f"| same architecture, random init + same fine-tuning | {results['random_init_finetuned_accuracy']:.3f} |",
        f"| pre-trained, frozen + logistic regression | {results['pretrained_linear_probe_accuracy']:.3f} |",
        f"| random frozen encoder + logistic regression | {results['random_init_linear_probe_accuracy']:.3f} |",
        f"| chance | {results['chance_accuracy']:.3f} |", "",
    ]
    for key, comparison in results["program_bootstrap"].items():
        low, high = comparison["interval_95"]
        lines.append(f"- {key.replace('_', ' ')}: {comparison['difference']:+.3f} (95 % interval over resampled "
                     f"held-out programs: {low:+.3f} to {high:+.3f})")
    lines += ["", "![Fine-tuning](finetuning.png)", "",
              f"Settings: `{json.dumps(results['settings'], default=str)}`", "",
              f"Time per stage (s): `{json.dumps(results['timings_seconds'])}`; the pre-training stages' own run "
              f"times (s): `{json.dumps(results['pretraining_stage_seconds'])}`", ""]
    for title, file_name in plots:
        lines += [f"## {title}", "", f"![{title}]({file_name})", ""]
    lines += ["## Pipeline on a few test clips", "", "| clip | true family | top predictions |", "|---|---|---|"]
    for example in results.get("pipeline_examples", []):
        top = ", ".join(f"{p['label']} ({p['score']:.2f})" for p in example["predictions"])
        lines.append(f"| {example['file']} | {example['true']} | {top} |")
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
