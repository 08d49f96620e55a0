"""`make demo` (`python -m demo.run` from the repository root): the whole BEATs method on real recorded instrument sound, end to end.

1. Render a corpus from the FluidR3 General MIDI soundfont: instrument-family classification with held-out
   programs (labelled train/test) and an unlabelled pool (`demo/corpus.py`).
2. `beats-hf iterate` for 2 iterations on the unlabelled pool: random-projection tokenizer -> SSL model 1 ->
   distilled tokenizer -> SSL model 2.
3. Fine-tune SSL model 2 on the labelled train split, and the same architecture from random initialisation with the
   same budget. Both heads see per-frequency-band statistics of the last layer (`classifier_pooling=
   "frequency_bands"`) and start with LP-FT: the head is first fitted as a logistic regression on the frozen encoder's
   clip embeddings (that linear probe is evaluated too), then the whole model is fine-tuned. Then a log-mel + logistic-
   regression baseline on per-mel-bin statistics. Training runs in bf16 where the hardware has bf16 matrix units.
4. Evaluate all on the held-out programs, classify a few test clips with `pipeline("audio-classification")`, and
   write a report folder (report.md, PNG plots, results.json).
5. Probe every layer of the frozen encoders of iteration 1 and 2, the same architecture untrained and the log-mel
   statistics with `beats-hf evaluate` (linear, MLP, attentive and kNN probes; choices on a validation split of whole
   training programs): `frozen_encoders/report.md`, summarised in the demo's report.

`DEMO_FAST=1` runs a reduced version (under a minute on an idle machine) for CI.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from beats_hf.precision import bf16_is_fast


@dataclass
class DemoSettings:
    clips_per_train_program: int
    clips_per_test_program: int
    unlabelled_clips: int
    model_preset: str
    ssl_steps: int
    tokenizer_steps: int
    finetune_epochs: float
    pretrain_batch_size: int
    finetune_batch_size: int
    finetune_learning_rate: float
    pretrain_learning_rate: float
    soundfont: str | None = None
    seed: int = 0
    # Tokenizer training moves codes unused for this many updates onto current patch vectors. Without it, the demo's
    # distilled tokenizer used 50 of its 1024 codes (perplexity 24) and iteration 2 learnt worse features than 1.
    restart_dead_codes_after: int = 20
    # The classifiers see per-frequency-band statistics (`BeatsConfig.classifier_pooling`), as the log-mel baseline sees
    # per-mel-bin ones: the official mean over all patches mixes the bands and lost the pre-trained encoder's lead.
    classifier_pooling: str = "frequency_bands"
    # The frozen-encoder comparison of every layer (`beats-hf evaluate`): which probes it fits.
    evaluate_probes: tuple[str, ...] = ("linear", "mlp", "attentive", "knn")


FULL = DemoSettings(
    clips_per_train_program=10, clips_per_test_program=20, unlabelled_clips=1200, model_preset="small",
    ssl_steps=1500, tokenizer_steps=250, finetune_epochs=6, pretrain_batch_size=16, finetune_batch_size=16,
    finetune_learning_rate=2e-4, pretrain_learning_rate=1e-3,
)
FAST = DemoSettings(
    clips_per_train_program=2, clips_per_test_program=2, unlabelled_clips=48, model_preset="tiny",
    ssl_steps=6, tokenizer_steps=6, finetune_epochs=1, pretrain_batch_size=8, finetune_batch_size=8,
    finetune_learning_rate=1e-3, pretrain_learning_rate=1e-3, soundfont="/usr/share/sounds/sf2/TimGM6mb.sf2",
)


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_corpus(settings: DemoSettings, folder: Path) -> dict:
    from .corpus import build_corpus as render

    return render(
        folder,
        soundfont=settings.soundfont,
        clips_per_train_program=settings.clips_per_train_program,
        clips_per_test_program=settings.clips_per_test_program,
        unlabelled_clips=settings.unlabelled_clips,
        seed=settings.seed,
    )


def precision_flags() -> list[str]:
    """TrainingArguments flags: bf16 where it is fast (see `bf16_is_fast`; Trainer wants `--use_cpu` for CPU bf16)."""
    import torch

    on_cpu = not torch.cuda.is_available()
    if not bf16_is_fast(on_cpu):
        return []
    return ["--bf16", "--use_cpu"] if on_cpu else ["--bf16"]


def run_iterate(settings: DemoSettings, unlabelled: Path, output: Path) -> None:
    command = [
        sys.executable, "-m", "beats_hf.cli", "iterate",
        "--data", str(unlabelled), "--output_dir", str(output), "--iterations", "2",
        "--model_preset", settings.model_preset, "--max_steps", str(settings.ssl_steps),
        "--tokenizer_max_steps", str(settings.tokenizer_steps), "--seed", str(settings.seed),
        "--crop_seconds", "2.0", "--per_device_train_batch_size", str(settings.pretrain_batch_size),
        "--learning_rate", str(settings.pretrain_learning_rate), "--warmup_steps", "0.05",
        "--tokenizer_restart_dead_codes_after", str(settings.restart_dead_codes_after),
        "--logging_steps", str(max(1, settings.ssl_steps // 30)), "--save_steps", str(max(1, settings.ssl_steps // 3)),
        *precision_flags(),
    ]
    log("running: " + " ".join(command[2:]))
    subprocess.run(command, check=True)


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


def waveforms_and_labels(labelled: Path, split: str) -> tuple[list[np.ndarray], list[int]]:
    from beats_hf.audio_data import AudioClips, load_audio_dataset

    clips = AudioClips(load_audio_dataset(str(labelled), split=split), crop_seconds=None, replace_bad=False)
    items = [clips[i] for i in range(len(clips))]
    items = [item for item in items if item is not None]
    return [item["waveform"] for item in items], [int(item["labels"]) for item in items]


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


def frozen_encoder_summary(results: dict) -> dict:
    """Per model and probe/pooling, the layer chosen on validation, its validation and test accuracy and the test
    interval over resampled held-out programs; every layer's scores are in frozen_encoders/report.md."""
    from beats_hf.evaluation.report import short_name

    summary = {}
    for row in results["results"]:
        summary.setdefault(short_name(row["model"]), {})[f"{row['probe']}/{row['pooling']}"] = {
            key: row[key] for key in ("best_layer", "validation", "test", "test_interval")
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("DEMO_FAST") == "1",
                        help="reduced run for CI (also DEMO_FAST=1)")
    args = parser.parse_args(argv)
    settings = FAST if args.fast else FULL
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

    corpus_dir = output / "corpus"
    corpus = stage("1/6 building the corpus", build_corpus, settings, corpus_dir)
    labelled, unlabelled = corpus_dir / "labelled", corpus_dir / "unlabelled"
    stage("2/6 iterative pre-training (2 iterations)", run_iterate, settings, unlabelled, output / "pretraining")
    ssl_dir = output / "pretraining" / "iteration_2" / "ssl"
    pretrained = stage("3/6 linear probe + fine-tuning of the pre-trained model", fine_tune, settings, ssl_dir,
                       labelled, output / "finetuned_pretrained", False)
    scratch = stage("4/6 linear probe + fine-tuning from random initialisation", fine_tune, settings, ssl_dir,
                    labelled, output / "finetuned_random_init", True)

    def baseline():
        from .baseline import logmel_baseline

        train_waves, train_labels = waveforms_and_labels(labelled, "train")
        test_waves, test_labels = waveforms_and_labels(labelled, "test")
        return logmel_baseline(train_waves, train_labels, test_waves, test_labels, num_classes=max(train_labels) + 1)

    logmel = stage("5/6 log-mel + logistic regression baseline", baseline)

    def frozen_encoders():
        from beats_hf.evaluation import evaluate_encoders

        iterations = output / "pretraining"
        models = [str(iterations / "iteration_1" / "ssl"), str(ssl_dir), f"random:{ssl_dir}", "logmel"]
        return evaluate_encoders(models=models, data=str(labelled), output_dir=output / "frozen_encoders",
                                 probes=settings.evaluate_probes, group_pattern=r"_p(\d+)_", seed=settings.seed)

    frozen = stage("6/6 frozen-encoder probes of every layer (beats-hf evaluate)", frozen_encoders)

    actual, predicted, names = predictions_of(output / "finetuned_pretrained", labelled)
    _, predicted_random, _ = predictions_of(output / "finetuned_random_init", labelled)
    programs = held_out_programs(labelled)
    correct = {
        "pretrained_finetuned": np.equal(predicted, actual),
        "random_init_finetuned": np.equal(predicted_random, actual),
        "logmel_baseline": np.equal(logmel["predictions"], actual),
    }
    examples = pipeline_examples(output / "finetuned_pretrained", labelled)
    results = {
        "pretrained_finetuned_accuracy": pretrained["eval_accuracy"],
        "random_init_finetuned_accuracy": scratch["eval_accuracy"],
        "pretrained_linear_probe_accuracy": pretrained["linear_probe_accuracy"],
        "random_init_linear_probe_accuracy": scratch["linear_probe_accuracy"],
        "logmel_baseline_accuracy": logmel["accuracy"],
        "chance_accuracy": 1.0 / len(names),
        "program_bootstrap": {
            f"pretrained_finetuned_minus_{other}": program_bootstrap(correct["pretrained_finetuned"], correct[other],
                                                                     programs)
            for other in ("random_init_finetuned", "logmel_baseline")
        },
        "test_program_families": {str(program): names[label] for program, label in zip(programs, actual)},
        "per_program_accuracy": {
            name: {str(program): float(np.mean(hits[np.equal(programs, program)])) for program in sorted(set(programs))}
            for name, hits in correct.items()
        },
        "settings": {**asdict(settings), "fast": args.fast,
                     "pretraining_precision_flags": precision_flags(), "finetuning_bf16": bf16_is_fast(on_cpu=True)},
        "corpus": {key: value for key, value in corpus.items() if key in ("counts", "soundfont", "programs")},
        "frozen_encoder_probes": frozen_encoder_summary(frozen),
        "timings_seconds": {**timings, "total": round(time.time() - started, 1)},
        "pipeline_examples": examples,
    }
    report_dir = output / "report"
    from .report import write_report

    write_report(report_dir, results, output / "pretraining", actual, predicted, names)
    log(f"fine-tuned: pre-trained {results['pretrained_finetuned_accuracy']:.3f} | random init "
        f"{results['random_init_finetuned_accuracy']:.3f}; linear probe: pre-trained "
        f"{results['pretrained_linear_probe_accuracy']:.3f} | random init "
        f"{results['random_init_linear_probe_accuracy']:.3f}; log-mel baseline "
        f"{results['logmel_baseline_accuracy']:.3f}")
    log(f"report: {report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
