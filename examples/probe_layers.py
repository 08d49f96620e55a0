"""Linear probes of every layer of frozen BEATs encoders: which layer holds what a task needs, and how a pre-trained
encoder compares with a random one of the same architecture.

For each model and each hidden state (0 = encoder input, then one per layer), the clip embedding is pooled over the
valid patches as the mean, the standard deviation, or both concatenated, or per frequency band as the mean and standard
deviation over time ("frequency_bands", what a `classifier_pooling="frequency_bands"` head sees), and
`beats_hf.training.linear_probe` fits a logistic regression on the train split and scores it on the test split of a labelled
audio folder / saved dataset.

    python examples/probe_layers.py --dataset demo_output/corpus/labelled \
        --models demo_output/pretraining/iteration_1/ssl random:demo_output/pretraining/iteration_1/ssl

`random:PATH` is PATH's architecture with a fresh random initialisation (seed 0). Prints one JSON line per model.
"""

import argparse
import json

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from beats_hf.audio_data import AudioClips, AudioFeatureCollator, load_audio_dataset
from beats_hf.training.linear_probe import fit_logistic_regression
from beats_hf.modeling_beats import pool_frequency_bands


@torch.inference_mode()
def pooled_states(encoder, clips: AudioClips, collator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, bands, labels): mean and std over valid patches, `(clips, hidden states, width)` each, and the
    frequency-band statistics, `(clips, hidden states, 2 * bands * width)`."""
    means, stds, bands, labels = [], [], [], []
    for start in tqdm(range(0, len(clips), 32), desc="embedding", leave=False):
        items = [item for item in (clips[i] for i in range(start, min(start + 32, len(clips)))) if item is not None]
        batch = collator(items)
        labels += batch.pop("labels").tolist()
        outputs = encoder(**batch, output_hidden_states=True)
        states = torch.stack(outputs.hidden_states, 1).double()  # (B, L+1, P, C)
        mask = outputs.patch_mask if outputs.patch_mask is not None else torch.ones(states.shape[0], states.shape[2])
        weight = mask.to(states.dtype)[:, None, :, None]
        count = weight.sum(2).clamp(min=1)
        mean = (states * weight).sum(2) / count
        means.append(mean)
        stds.append((((states - mean.unsqueeze(2)) ** 2 * weight).sum(2) / count).sqrt())
        bands.append(torch.stack([pool_frequency_bands(hidden, outputs.patch_mask, encoder.config.num_frequency_patches)
                                  for hidden in outputs.hidden_states], 1).double())
    return torch.cat(means).numpy(), torch.cat(stds).numpy(), torch.cat(bands).numpy(), np.array(labels)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="labelled audio folder or saved dataset with train/test")
    parser.add_argument("--models", nargs="+", required=True, help="model folders; random:PATH for a random init")
    args = parser.parse_args(argv)
    splits = {split: load_audio_dataset(args.dataset, split=split) for split in ("train", "test")}
    results = {}
    for spec in args.models:
        path = spec.removeprefix("random:")
        if spec.startswith("random:"):
            torch.manual_seed(0)
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        else:
            model = AutoModel.from_pretrained(path)
        encoder = model.base_model.eval()
        collator = AudioFeatureCollator(AutoFeatureExtractor.from_pretrained(path))
        pooled = {split: pooled_states(encoder, AudioClips(data, crop_seconds=None, replace_bad=False), collator)
                  for split, data in splits.items()}
        (train_mean, train_std, train_bands, train_labels) = pooled["train"]
        (test_mean, test_std, test_bands, test_labels) = pooled["test"]
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        scores = {"mean": [], "std": [], "mean+std": [], "frequency_bands": []}
        for layer in range(train_mean.shape[1]):
            for name, train, test in (
                ("mean", train_mean[:, layer], test_mean[:, layer]),
                ("std", train_std[:, layer], test_std[:, layer]),
                ("mean+std", np.concatenate([train_mean[:, layer], train_std[:, layer]], 1),
                 np.concatenate([test_mean[:, layer], test_std[:, layer]], 1)),
                ("frequency_bands", train_bands[:, layer], test_bands[:, layer]),
            ):
                probe = fit_logistic_regression(train, train_labels, num_classes)
                scores[name].append(round(float(np.mean(probe.predict(test) == test_labels)), 4))
        results[spec] = scores
        print(json.dumps({"model": spec, "test_accuracy_per_hidden_state": scores}), flush=True)
    return results


if __name__ == "__main__":
    main()
