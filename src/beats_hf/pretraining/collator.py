"""Data collator for masked audio modeling: fbank features from `AudioFeatureCollator` plus `bool_masked_pos`."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..audio_data import AudioFeatureCollator
from ..modeling_beats import patch_mask_from_frame_mask
from .masking import compute_patch_mask


def _process_and_worker() -> tuple[int, int]:
    """(distributed rank, DataLoader worker id) of the code running now; (0, 0) in a plain single process."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    worker = torch.utils.data.get_worker_info()
    return rank, worker.id if worker is not None else 0


class MaskedAudioModelingCollator:
    """Turns `AudioClips` items into `input_features`, `attention_mask` and `bool_masked_pos` (bool, (batch, patches)).

    A patch is valid only if all its `patch_size` frames are real; masks are drawn among valid patches only
    ([`compute_patch_mask`]). The masks come from a numpy Generator seeded by `(seed, rank, worker id)`, created in
    the process that collates, so a run with the same seed, processes and workers draws the same masks. (Resuming
    from a checkpoint restarts the mask stream; the model weights and data order are restored by Trainer.)

    Args:
        feature_extractor: a [`BeatsFeatureExtractor`] (or anything `AudioFeatureCollator` accepts).
        mask_ratio: share of each clip's valid patches to mask.
        patch_size: frames (and mel bins) per patch side.
        num_frequency_patches: patches per row of `patch_size` frames (`num_mel_bins // patch_size`).
        seed: seed of the masks; `None` draws fresh masks every run.
    """

    def __init__(
        self,
        feature_extractor: Callable[..., Mapping[str, Any]],
        mask_ratio: float = 0.75,
        patch_size: int = 16,
        num_frequency_patches: int = 8,
        seed: int | None = 0,
    ):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio!r}.")
        self.features = AudioFeatureCollator(feature_extractor)
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.num_frequency_patches = num_frequency_patches
        self.seed = seed
        self._generators: dict[tuple[int, int], np.random.Generator] = {}

    def _generator(self) -> np.random.Generator:
        key = _process_and_worker()
        if key not in self._generators:
            entropy = None if self.seed is None else [int(self.seed), *key]
            self._generators[key] = np.random.default_rng(entropy)
        return self._generators[key]

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        batch = self.features(items)
        if not batch:
            return batch
        batch.pop("labels", None)  # class labels of the dataset, if any: pre-training makes its own targets
        features = batch["input_features"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones(features.shape[:2], dtype=torch.long)
        patch_valid = patch_mask_from_frame_mask(attention_mask, self.patch_size, self.num_frequency_patches)
        masked = compute_patch_mask(patch_valid.numpy(), self.mask_ratio, self._generator())
        batch["bool_masked_pos"] = torch.from_numpy(masked)
        return batch


__all__ = ["MaskedAudioModelingCollator"]
