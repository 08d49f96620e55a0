"""`make demo` (`python -m demo.run` from the repository root): the whole BEATs method on real recorded sound, end to
end, judged on tasks nobody tuned on.

1. Build the held-out task suite (`demo/suite.py`): instrument family on held-out programs rendered from FluidR3 and,
   a second time, from TimGM6mb; spoken phrases on held-out voices (Hedgewars). Each has validation and test groups
   of its own, none of them in the unlabelled pre-training pool, which is assembled next.
2. `beats-hf iterate` with the recipe chosen on the suite's VALIDATION splits among runs at one fixed budget of
   optimizer steps (`demo/recipes.py`, the table in `docs/demo/recipes.md`).
3. Fine-tune the pre-trained encoder on the instrument task, and the same architecture from random initialisation with
   the same budget (LP-FT: the head, which sees per-frequency-band statistics of the last layer, is first fitted as a
   logistic regression on the frozen encoder, then the whole model is fine-tuned). Training runs in bf16 where the
   hardware has bf16 matrix units.
4. Score the TEST split of every task once: frozen-encoder probes of every iteration, the same architecture untrained
   and the log-mel statistics (`beats-hf evaluate`: probe setting, layer and pooling chosen on validation; 95 %
   intervals over resampled test groups), and write a report folder (report.md, PNG plots, results.json).

`DEMO_FAST=1` runs a reduced version (about a minute on an idle machine) for CI.
"""

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from beats_hf.precision import bf16_is_fast

from .recipes import (
    CHOSEN,
    RECIPES,
    SUITE,
    Recipe,
    encoders,
    iteration_comparisons,
    precision_flags,
    pretraining_seconds,
    read_record,
)
from .recipes import run_iterate as iterate_recipe
from .suite import TASKS, build_pool, build_suite, chosen_score, evaluate_suite


@dataclass
class DemoSettings:
    recipe: Recipe
    clips_per_train_program: int
    clips_per_validation_program: int
    clips_per_test_program: int
    fluidr3_pool_clips: int
    finetune_epochs: float
    finetune_batch_size: int
    finetune_learning_rate: float
    seed: int = 0
    # The classifiers see per-frequency-band statistics (`BeatsConfig.classifier_pooling`): the official mean over all
    # patches mixes the bands and lost the pre-trained encoder's lead on the instrument task.
    classifier_pooling: str = "frequency_bands"
    # The probes of the held-out suite (`beats-hf evaluate`); the linear probe decides the verdict.
    suite_probes: tuple[str, ...] = ("linear", "knn")


FULL = DemoSettings(recipe=RECIPES[CHOSEN], **SUITE, finetune_epochs=6, finetune_batch_size=16,
                    finetune_learning_rate=2e-4)
FAST = DemoSettings(
    recipe=Recipe("fast", iterations=2, ssl_steps=6, tokenizer_steps=6, pool=(("fluidr3", 48), ("speech", 16)),
                  model_preset="tiny", batch_size=8),
    clips_per_train_program=2, clips_per_validation_program=1, clips_per_test_program=2, fluidr3_pool_clips=48,
    finetune_epochs=1, finetune_batch_size=8, finetune_learning_rate=1e-3,
)


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fine_tune(settings: DemoSettings, model_dir: Path, labelled: Path, output: Path, from_scratch: bool) -> dict:
    """LP-FT: fit the head as a linear probe on the frozen encoder, evaluate it, fine-tune everything, evaluate again
    (metrics `linear_probe_accuracy` and `eval_accuracy`, on the test split)."""
    from transformers import TrainingArguments

    from beats_hf.training.finetuning import DataArguments, ModelArguments, run_finetuning

    training_args = TrainingArguments(
        output_dir=str(output), use_cpu=True, do_train=True, do_eval=True, report_to="none",
        num_train_epochs=settings.finetune_epochs, learning_rate=settings.finetune_learning_rate,
        per_device_train_batch_size=settings.finetune_batch_size, per_device_eval_batch_size=32,
        warmup_steps=0.1, weight_decay=0.01, logging_steps=10, save_strategy="no", eval_strategy="no",
        seed=settings.seed, dataloader_num_workers=0, disable_tqdm=False, bf16=bf16_is_fast(on_cpu=True),
    )
    model_args = ModelArguments(model_name_or_path=str(model_dir), from_scratch=from_scratch, layer_decay=0.9,
                                linear_probe_head=True, classifier_pooling=settings.classifier_pooling)
    # No SpecAugment: a frequency mask wipes out bands that the band-statistics head reads. With masks of up to 20
    # frames and 16 bins, LP-FT of a 2,400-step iteration-1 model fell from its probe's 0.44 to 0.37; without, it rose
    # to 0.47.
    data_args = DataArguments(dataset=str(labelled), max_length_seconds=2.0, mixup_alpha=0.0)
    return run_finetuning(model_args, data_args, training_args)


def predictions_of(model_dir: Path, labelled: Path) -> tuple[list[int], list[int], list[str]]:
    """Test-split predictions of a fine-tuned model (for the confusion matrix)."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from beats_hf.audio_data import AudioClips, AudioFeatureCollator, load_audio_dataset

    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    clips = AudioClips(load_audio_dataset(str(labelled), split="test"), crop_seconds=None, replace_bad=False)
    collator = AudioFeatureCollator(feature_extractor)
    predicted, actual = [], []
    with torch.inference_mode():
        for start in range(0, len(clips), 32):
            batch = collator([clips[i] for i in range(start, min(start + 32, len(clips)))])
            labels = batch.pop("labels")
            predicted += model(**batch).logits.argmax(-1).tolist()
            actual += labels.tolist()
    return actual, predicted, [model.config.id2label[i] for i in range(model.config.num_labels)]


def held_out_programs(labelled: Path) -> list[int]:
    """The General MIDI program of every test clip, in the order of `predictions_of` (from the corpus file names)."""
    import re

    from datasets import Audio

    from beats_hf.audio_data import load_audio_dataset

    dataset = load_audio_dataset(str(labelled), split="test")
    paths = dataset.cast_column("audio", Audio(decode=False))["audio"]
    return [int(re.search(r"_p(\d+)_", Path(item["path"]).name).group(1)) for item in paths]


def program_bootstrap(correct_a, correct_b, programs, resamples: int = 10000, seed: int = 0) -> dict:
    """Accuracy of A minus accuracy of B on the same test clips, with its 95 % interval when the held-out programs
    are resampled with replacement. Clips of one program are not independent draws (a model gets an instrument
    mostly right or mostly wrong), so the programs, not the clips, are the unit of this uncertainty."""
    correct_a, correct_b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    names, program_index = np.unique(np.asarray(programs), return_inverse=True)
    clips = np.bincount(program_index)
    per_program = np.bincount(program_index, correct_a - correct_b)
    picks = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    differences = per_program[picks].sum(1) / clips[picks].sum(1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": float(correct_a.mean() - correct_b.mean()), "interval_95": [float(low), float(high)],
            "share_of_resamples_not_above_0": float(np.mean(differences <= 0)), "programs": len(names)}


def pipeline_examples(model_dir: Path, labelled: Path, count: int = 5) -> list[dict]:
    from transformers import pipeline

    from beats_hf.audio_data import decode_audio

    classifier = pipeline("audio-classification", model=str(model_dir))
    files = sorted((labelled / "test").rglob("*.wav"))
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, count).astype(int)]
    # Decoded here (torchcodec) rather than by the pipeline, which would need the ffmpeg program.
    return [
        {"file": str(path.relative_to(labelled)), "true": path.parent.name,
         "predictions": classifier({"raw": decode_audio(str(path)), "sampling_rate": 16000}, top_k=3)}
        for path in chosen
    ]


def suite_summary(results: dict[str, dict], models: dict[str, str]) -> dict:
    """Per task: every model's linear-probe score (pooling and layer chosen on validation; test with its interval),
    and the last iteration minus each other model, paired over the same resampled test groups."""
    labels = {spec: label for label, spec in models.items()}
    last = [label for label in models if label.startswith("iteration_")][-1]
    summary = {}
    for task in TASKS:
        task_results = results[task.name]
        differences = {}
        for row in task_results["differences"]:
            if (row["probe"], row["pooling"]) != ("linear", "chosen") or last not in (labels[row["model_a"]],
                                                                                       labels[row["model_b"]]):
                continue
            sign = 1 if labels[row["model_a"]] == last else -1
            other = labels[row["model_b"] if sign == 1 else row["model_a"]]
            low, high = (value * sign for value in row["interval"])
            differences[f"{last} - {other}"] = {"difference": sign * row["difference"],
                                                "interval_95": sorted([low, high])}
        beats = [differences[f"{last} - {other}"]["interval_95"][0] > 0 for other in ("untrained", "logmel")]
        summary[task.name] = {
            "title": task.title, "classes": task_results["settings"]["num_classes"],
            "test_groups": task_results["data"]["test_groups"], "test_clips": task_results["data"]["test_clips"],
            "scores": {label: chosen_score(task_results, spec) for label, spec in models.items()},
            "differences": differences, "pretrained_beats_untrained_and_logmel": all(beats),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("DEMO_FAST") == "1",
                        help="reduced run for CI (also DEMO_FAST=1)")
    args = parser.parse_args(argv)
    settings = FAST if args.fast else FULL
    recipe = settings.recipe
    output = Path(args.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}

    def stage(name: str, function, *function_args):
        log(f"{name} ...")
        begin = time.time()
        result = function(*function_args)
        timings[name] = round(time.time() - begin, 1)
        log(f"{name} done in {timings[name]:.0f} s")
        return result

    suite_dir = output / "suite"

    def build():
        manifests = build_suite(suite_dir, settings.clips_per_train_program, settings.clips_per_validation_program,
                                settings.clips_per_test_program, settings.fluidr3_pool_clips, seed=settings.seed)
        return manifests, build_pool(suite_dir, dict(recipe.pool), seed=settings.seed)

    manifests, pool = stage("1/5 building the held-out task suite and the unlabelled pool", build)
    pretraining = output / "pretraining"
    stage(f"2/5 pre-training: recipe {recipe.name} ({recipe.optimizer_steps} optimizer steps)", iterate_recipe,
          recipe, pool, pretraining, settings.seed)
    models = encoders(recipe, pretraining)
    last = Path(models[f"iteration_{recipe.iterations}"])
    labelled = suite_dir / TASKS[0].folder
    pretrained = stage("3/5 LP-FT of the pre-trained model (instrument task)", fine_tune, settings, last, labelled,
                       output / "finetuned_pretrained", False)
    scratch = stage("4/5 LP-FT from random initialisation (instrument task)", fine_tune, settings, last, labelled,
                    output / "finetuned_random_init", True)
    suite_results = stage("5/5 the held-out suite's test splits, scored once (beats-hf evaluate)", evaluate_suite,
                          list(models.values()), suite_dir, output / "held_out_suite", True,
                          settings.suite_probes, settings.seed)

    actual, predicted, names = predictions_of(output / "finetuned_pretrained", labelled)
    _, predicted_random, _ = predictions_of(output / "finetuned_random_init", labelled)
    programs = held_out_programs(labelled)
    correct = {"pretrained_finetuned": np.equal(predicted, actual),
               "random_init_finetuned": np.equal(predicted_random, actual)}
    record = [] if args.fast else read_record()
    results = {
        "held_out_suite": suite_summary(suite_results, models),
        "recipe": {**asdict(recipe), "optimizer_steps": recipe.optimizer_steps,
                   "chosen_from": [row["recipe"]["name"] for row in record]},
        "iteration_2_versus_1": iteration_comparisons(record),
        "pretrained_finetuned_accuracy": pretrained["eval_accuracy"],
        "random_init_finetuned_accuracy": scratch["eval_accuracy"],
        "pretrained_linear_probe_accuracy": pretrained["linear_probe_accuracy"],
        "random_init_linear_probe_accuracy": scratch["linear_probe_accuracy"],
        "chance_accuracy": 1.0 / len(names),
        "program_bootstrap": {"pretrained_finetuned_minus_random_init_finetuned": program_bootstrap(
            correct["pretrained_finetuned"], correct["random_init_finetuned"], programs)},
        "test_program_families": {str(program): names[label] for program, label in zip(programs, actual)},
        "per_program_accuracy": {
            name: {str(program): float(np.mean(hits[np.equal(programs, program)]))
                   for program in sorted(set(programs))}
            for name, hits in correct.items()
        },
        "settings": {**asdict(settings), "fast": args.fast,
                     "pretraining_precision_flags": precision_flags(), "finetuning_bf16": bf16_is_fast(on_cpu=True)},
        "suite": {name: {key: value for key, value in manifest.items() if key in ("counts", "soundfont", "package")}
                  for name, manifest in manifests.items()},
        "timings_seconds": {**timings, "total": round(time.time() - started, 1)},
        # What the pre-training cost, even where this run found it done and skipped it (`beats-hf iterate` resumes).
        "pretraining_stage_seconds": pretraining_seconds(pretraining),
        "pipeline_examples": pipeline_examples(output / "finetuned_pretrained", labelled),
    }
    report_dir = output / "report"
    from .report import write_report

    write_report(report_dir, results, pretraining, actual, predicted, names, record)
    for name, task in results["held_out_suite"].items():
        scores = ", ".join(f"{label} {score['test']:.3f}" for label, score in task["scores"].items())
        log(f"{name} (test, linear probe): {scores}; pre-trained ahead of untrained and log-mel with intervals above "
            f"0: {'yes' if task['pretrained_beats_untrained_and_logmel'] else 'no'}")
    log(f"fine-tuned on instruments: pre-trained {results['pretrained_finetuned_accuracy']:.3f} | random init "
        f"{results['random_init_finetuned_accuracy']:.3f}")
    log(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
