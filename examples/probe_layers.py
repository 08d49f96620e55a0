"""Linear probes of every layer of frozen BEATs encoders: which layer holds what a task needs, and how a pre-trained
encoder compares with a random one of the same architecture.

A short front of `beats-hf evaluate` (`beats_hf.evaluation`): the linear probe only, on the mean over the valid patches
and on the per-frequency-band statistics, with the penalty and the best layer chosen on validation groups (a split of
their own, or 20 % of the training groups) and the test split scored once. It prints one JSON line per model with the
test accuracy of every hidden state (0 = encoder input), and leaves the full report, the plots and the cached
embeddings in `--output_dir`.

    python examples/probe_layers.py --dataset demo_output/suite/instruments/labelled --group_pattern "_p(\\d+)_" \
        --validation_split validation \
        --models demo_output/pretraining/iteration_1/ssl random:demo_output/pretraining/iteration_1/ssl

`random:PATH` is PATH's architecture with a fresh random initialisation (seed 0). For the other probes (MLP, attentive,
kNN), use `beats-hf evaluate`.
"""

import argparse
import json

from beats_hf.evaluation import evaluate_encoders


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="labelled audio folder or saved dataset with train/test")
    parser.add_argument("--models", nargs="+", required=True, help="model folders; random:PATH for a random init")
    parser.add_argument("--group_pattern", default=None, help="regex on the file name whose first group is the clip's "
                        "group (e.g. an instrument program); the validation split holds out whole groups")
    parser.add_argument("--validation_split", default=None,
                        help="a split of validation groups (the demo suite's `validation`); default: 20 %% of the "
                        "training groups")
    parser.add_argument("--output_dir", default="probe_layers_output", help="report, plots and cached embeddings")
    args = parser.parse_args(argv)
    results = evaluate_encoders(models=args.models, data=args.dataset, output_dir=args.output_dir, probes=["linear"],
                                poolings=["mean", "frequency_bands"], group_pattern=args.group_pattern,
                                validation_split=args.validation_split)
    scores: dict[str, dict[str, list[float]]] = {}
    for row in results["results"]:
        if "chosen_pooling" in row:  # repeats one of the two poolings
            continue
        scores.setdefault(row["model"], {})[row["pooling"]] = [layer["test"] for layer in row["layers"]]
    for model, per_pooling in scores.items():
        print(json.dumps({"model": model, "test_accuracy_per_hidden_state": per_pooling}), flush=True)
    return scores


if __name__ == "__main__":
    main()
