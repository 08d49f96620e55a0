"""Pre-training recipes at a fixed budget, compared on the validation splits of the held-out task suite.

    python -m demo.recipes one_iteration two_iterations ...   # run (or resume) recipes, record their rows
    python -m demo.recipes --table                           # rewrite docs/demo/recipes.md from the record

Every recipe spends the same number of optimizer steps (SSL steps of every iteration plus the distilled tokenizers'
steps: `Recipe.optimizer_steps`), about what `make demo` ran in 25 minutes on 2 cores before the suite existed. A run
pre-trains with `beats-hf iterate` on the recipe's unlabelled pool, then probes every layer of each iteration's
encoder, the same architecture untrained and the log-mel statistics on every task (linear probe; probe setting,
pooling and layer chosen on the task's validation groups). The recipe is chosen on the validation scores alone; the
test groups are scored once per finished recipe and recorded beside them, never used to choose. Each finished run is
one row of `docs/demo/recipes.json` (settings, steps, minutes, CPU, validation and test scores), and
`docs/demo/recipes.md` is the table of all rows.

The recipe is chosen by the mean over the tasks of its last iteration's validation score.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from beats_hf.atomic_files import atomic_write_json, atomic_write_text
from beats_hf.precision import bf16_is_fast
from benchmarks.common import machine_description

from .suite import TASKS, build_pool, build_suite, chosen_score, evaluate_suite

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORD = REPO_ROOT / "docs" / "demo" / "recipes.json"
TABLE = REPO_ROOT / "docs" / "demo" / "recipes.md"
BUDGET = 3250  # optimizer steps: 2 x 1,500 SSL + 250 tokenizer, the demo's budget before the suite
SPEECH_CLIPS = 381  # every recording of the 7 train voices
DIVERSE_POOL = (("fluidr3", 1200), ("sf_gmbank", 600), ("opl3", 600), ("musescore", 600), ("speech", SPEECH_CLIPS))


@dataclass(frozen=True)
class Recipe:
    name: str
    iterations: int = 1
    ssl_steps: int = BUDGET  # per iteration
    tokenizer_steps: int = 250  # per distilled tokenizer (one fewer than iterations)
    pool: tuple[tuple[str, int], ...] = (("fluidr3", 1200),)
    mask_ratio: float = 0.75
    model_preset: str = "small"
    batch_size: int = 16
    learning_rate: float = 1e-3
    # Tokenizer training moves codes unused for this many updates onto current patch vectors. Without it, the demo's
    # distilled tokenizer used 50 of its 1024 codes (perplexity 24) and iteration 2 learnt worse features than 1.
    restart_dead_codes_after: int = 20
    note: str = field(default="", compare=False)

    @property
    def optimizer_steps(self) -> int:
        return self.iterations * self.ssl_steps + (self.iterations - 1) * self.tokenizer_steps


RECIPES = {recipe.name: recipe for recipe in (
    Recipe("two_iterations", iterations=2, ssl_steps=1500, note="the demo's recipe before the suite"),
    Recipe("one_iteration", note="all steps on iteration 1"),
    Recipe("one_iteration_diverse_pool", pool=DIVERSE_POOL,
           note="pool: FluidR3 + 3 more soundfonts + the train voices' speech"),
    Recipe("one_iteration_large_pool", pool=(("fluidr3", 3000),), note="pool: 2.5x the FluidR3 clips"),
    Recipe("two_iterations_diverse_pool", iterations=2, ssl_steps=1500, pool=DIVERSE_POOL),
    Recipe("one_iteration_mask_60", mask_ratio=0.6),
    Recipe("one_iteration_tiny", model_preset="tiny", note="the tiny preset at the same step count"),
)}
# The demo's recipe: the best row of the record (`best_recipe`; a test holds the two together).
CHOSEN = "one_iteration_diverse_pool"
# The suite every recipe is compared on (the demo's own; the FluidR3 pool is rendered once at the largest size any
# recipe draws from, so that every recipe sees the same labelled clips).
SUITE = dict(clips_per_train_program=10, clips_per_validation_program=20, clips_per_test_program=20,
             fluidr3_pool_clips=3000)


def precision_flags() -> list[str]:
    """TrainingArguments flags: bf16 where it is fast (see `bf16_is_fast`; Trainer wants `--use_cpu` for CPU bf16)."""
    on_cpu = not torch.cuda.is_available()
    if not bf16_is_fast(on_cpu):
        return []
    return ["--bf16", "--use_cpu"] if on_cpu else ["--bf16"]


def run_iterate(recipe: Recipe, pool: Path, output: Path, seed: int = 0) -> None:
    command = [
        sys.executable, "-m", "beats_hf.cli", "iterate",
        "--data", str(pool), "--output_dir", str(output), "--iterations", str(recipe.iterations),
        "--model_preset", recipe.model_preset, "--max_steps", str(recipe.ssl_steps),
        "--tokenizer_max_steps", str(recipe.tokenizer_steps), "--seed", str(seed), "--mask_ratio",
        str(recipe.mask_ratio), "--crop_seconds", "2.0", "--per_device_train_batch_size", str(recipe.batch_size),
        "--learning_rate", str(recipe.learning_rate), "--warmup_steps", "0.05",
        "--tokenizer_restart_dead_codes_after", str(recipe.restart_dead_codes_after),
        "--logging_steps", str(max(1, recipe.ssl_steps // 30)), "--save_steps", str(max(1, recipe.ssl_steps // 3)),
        *precision_flags(),
    ]
    print("running: " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def encoders(recipe: Recipe, pretraining: Path) -> dict[str, str]:
    """Label -> model spec of what a recipe run is compared with: each iteration, untrained, log-mel."""
    iterations = {f"iteration_{i}": str(pretraining / f"iteration_{i}" / "ssl")
                  for i in range(1, recipe.iterations + 1)}
    last = iterations[f"iteration_{recipe.iterations}"]
    return {**iterations, "untrained": f"random:{last}", "logmel": "logmel"}


def pretraining_seconds(pretraining: Path) -> dict[str, float | None]:
    """Each `beats-hf iterate` stage's own run time, from its manifest: a rerun that finds a stage done (and skips
    it) does not reset it, so this is what the pre-training cost."""
    stages = json.loads((pretraining / "iterations.json").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("seconds") for name, stage in stages.items()}


def run_recipe(recipe: Recipe, runs_dir: Path, record: Path = RECORD) -> dict:
    suite = runs_dir / "suite"
    build_suite(suite, **SUITE)
    pool = build_pool(suite, dict(recipe.pool))
    run = runs_dir / recipe.name
    run_iterate(recipe, pool, run / "pretraining")
    minutes = sum(seconds or 0.0 for seconds in pretraining_seconds(run / "pretraining").values()) / 60
    models = encoders(recipe, run / "pretraining")
    # One evaluation gives both: the validation scores that choose, and the test scores, computed once per finished
    # recipe and recorded, but never used to choose.
    results = evaluate_suite(list(models.values()), suite, run / "held_out_suite", test=True)
    machine = machine_description(torch.get_num_threads())
    row = {
        "recipe": asdict(recipe), "optimizer_steps": recipe.optimizer_steps,
        "pool_clips": sum(dict(recipe.pool).values()),
        "pretraining_minutes": round(minutes, 1), "cpu": machine["cpu"], "cores": machine["logical_cpus"],
        "date": time.strftime("%Y-%m-%d"),
        "scores": {task.name: {label: chosen_score(results[task.name], spec) for label, spec in models.items()}
                       for task in TASKS},
    }
    rows = [existing for existing in read_record(record) if existing["recipe"]["name"] != recipe.name] + [row]
    atomic_write_json(record, rows)
    write_table(rows)
    return row


def read_record(record: Path = RECORD) -> list[dict]:
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else []


def recipe_score(row: dict) -> float:
    """The mean over the tasks of the last iteration's validation score: what picks the demo's recipe."""
    last = f"iteration_{row['recipe']['iterations']}"
    return sum(task[last]["validation"] for task in row["scores"].values()) / len(row["scores"])


def iteration_comparisons(rows: list[dict]) -> list[dict]:
    """Two iterations against one at the same budget: each two-iteration run next to the one-iteration run that
    differs from it only in the split of the steps (validation means and per task)."""
    same = ("pool", "mask_ratio", "model_preset", "batch_size", "learning_rate")
    comparisons = []
    for two in (row for row in rows if row["recipe"]["iterations"] == 2):
        for one in rows:
            if one["recipe"]["iterations"] != 1 or one["optimizer_steps"] != two["optimizer_steps"] or any(
                    one["recipe"][key] != two["recipe"][key] for key in same):
                continue
            tasks = {name: {"two_iterations": scores["iteration_2"]["validation"],
                            "one_iteration": one["scores"][name]["iteration_1"]["validation"]}
                     for name, scores in two["scores"].items()}
            comparisons.append({"two_iterations": two["recipe"]["name"], "one_iteration": one["recipe"]["name"],
                                "mean_two": recipe_score(two), "mean_one": recipe_score(one),
                                "two_beats_one": recipe_score(two) > recipe_score(one), "validation": tasks})
    return comparisons


def best_recipe(rows: list[dict]) -> str:
    return max(rows, key=recipe_score)["recipe"]["name"]


def write_table(rows: list[dict], path: Path = TABLE) -> None:
    names = list(rows[0]["scores"]) if rows else [task.name for task in TASKS]
    lines = [
        "# Pre-training recipes at a fixed budget", "",
        "Written by `python -m demo.recipes` (see its docstring); one row per finished run, best first. Scores: "
        "validation accuracy of a linear probe on the frozen encoder (probe setting, layer and pooling chosen on "
        "validation) on each task of the held-out suite (`demo/suite.py`). `mean` (the last iteration's mean over "
        "the tasks) alone picks the demo's recipe. `minutes`: wall time of the pre-training.", "",
        "## Validation accuracy (what chooses)", "",
        "| recipe | iterations x SSL steps (+ tokenizer) | pool clips | mask | preset | minutes | CPU | model | "
        + " | ".join(names) + " | mean |",
        "|---|---|---|---|---|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for row in sorted(rows, key=recipe_score, reverse=True):
        recipe = row["recipe"]
        steps = f"{recipe['iterations']} x {recipe['ssl_steps']}"
        if recipe["iterations"] > 1:
            steps += f" (+ {recipe['iterations'] - 1} x {recipe['tokenizer_steps']})"
        pool = " + ".join(f"{source} {count}" for source, count in recipe["pool"])
        for label in row["scores"][names[0]]:
            scores = [row["scores"][name][label]["validation"] for name in names]
            first = label == next(iter(row["scores"][names[0]]))
            settings = (f"**{recipe['name']}** | {steps} = {row['optimizer_steps']} | {pool} | "
                        f"{recipe['mask_ratio']} | {recipe['model_preset']} | {row['pretraining_minutes']} | "
                        f"{row['cpu']} ({row['cores']} cores)" if first else " | | | | | | ")
            lines.append(f"| {settings} | {label} | " + " | ".join(f"{score:.3f}" for score in scores)
                         + f" | {sum(scores) / len(scores):.3f} |")
    lines += ["", "## Test accuracy, scored once per finished recipe (never used to choose)", "",
              "Same models and probes; 95 % intervals over resampled test groups (programs or voices).", "",
              "| recipe | model | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in sorted(rows, key=recipe_score, reverse=True):
        for label in row["scores"][names[0]]:
            cells = []
            for name in names:
                score = row["scores"][name][label]
                if score.get("test") is None:
                    cells.append("-")
                else:
                    low, high = score["test_interval"]
                    cells.append(f"{score['test']:.3f} ({low:.3f}-{high:.3f})")
            lines.append(f"| {row['recipe']['name']} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "Not run yet: " + (", ".join(f"`{name}`" for name in RECIPES
                                              if name not in {row['recipe']['name'] for row in rows}) or "none") + ".",
              ""]
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.recipes", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", metavar="RECIPE", help=f"any of {', '.join(RECIPES)}")
    parser.add_argument("--runs_dir", default="recipe_runs")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the record")
    args = parser.parse_args(argv)
    if unknown := [name for name in args.recipes if name not in RECIPES]:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    for name in args.recipes:
        row = run_recipe(RECIPES[name], Path(args.runs_dir).resolve())
        print(f"{name}: mean validation {recipe_score(row):.3f}", flush=True)
    if args.table or not args.recipes:
        write_table(read_record())
    print(f"table: {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
