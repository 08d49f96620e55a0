"""Data collator for masked audio modeling: fbank features from `AudioFeatureCollator` plus `bool_masked_pos`."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...audio_data import AudioFeatureCollator
from ...modeling_beats import patch_mask_from_frame_mask
from .masking import KeyedUniforms, random_masked_patches


def _process_and_worker() -> tuple[int, int]:
    """(distributed rank, DataLoader worker id) of the code running now; (0, 0) in a plain single process."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    worker = torch.utils.data.get_worker_info()
    return rank, worker.id if worker is not None else 0


class MaskedAudioModelingCollator:
    """Turns `AudioClips` items into `input_features`, `attention_mask`, `patch_mask` (True at valid patches) and
    `bool_masked_pos` (True at masked patches), both bool `(batch, patches)`.

    A patch is valid only if all its `patch_size` frames are real; masks are drawn among valid patches only
    ([`random_masked_patches`]). When the items carry their `index` and `epoch` (`AudioClips(return_index=True)`, as
    `beats-hf pretrain` reads them), each clip's mask is a function of `(seed, epoch, index)` ([`KeyedUniforms`]): the
    same whichever batch, process or worker draws it, so a run resumed from a checkpoint continues the mask stream of
    an uninterrupted run. Items without an index (a plain list of waveforms) get masks from a numpy Generator seeded by
    `(seed, rank, worker id)`, a stream that starts again with every process.

    Args:
        feature_extractor: a [`BeatsFeatureExtractor`] (or anything `AudioFeatureCollator` accepts).
        mask_ratio: share of each clip's valid patches to mask.
        patch_size: frames (and mel bins) per patch side.
        num_frequency_patches: patches per row of `patch_size` frames (`num_mel_bins // patch_size`).
        seed: seed of the masks; `None` draws fresh masks every run (the seed is drawn when the collator is made).
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
        # A drawn seed for `None`, so that keyed masks stay a function of the clip within this run.
        self.seed = seed if seed is not None else int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        self._generators: dict[tuple[int, int], np.random.Generator] = {}

    def _generator(self) -> np.random.Generator:
        key = _process_and_worker()
        if key not in self._generators:
            self._generators[key] = np.random.default_rng([int(self.seed), *key])
        return self._generators[key]

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        batch = self.features(items)
        if not batch:
            return batch
        batch.pop("labels", None)  # class labels of the dataset, if any: pre-training makes its own targets
        indices = batch.pop("index", None)
        features = batch["input_features"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones(features.shape[:2], dtype=torch.long)
        patch_mask = patch_mask_from_frame_mask(attention_mask, self.patch_size, self.num_frequency_patches)
        if indices is not None:
            epochs = [int(item.get("epoch", 0)) for item in items if item is not None]
            draw = KeyedUniforms(self.seed, np.stack([np.asarray(epochs, dtype=np.int64), indices.numpy()], axis=1))
        else:
            draw = self._generator()
        masked = random_masked_patches(patch_mask.numpy(), self.mask_ratio, draw)
        batch["bool_masked_pos"] = torch.from_numpy(masked)
        # Derived once per batch, here, and used by the tokenizer and the student alike.
        batch["patch_mask"] = patch_mask
        return batch


__all__ = ["MaskedAudioModelingCollator"]
