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
        features_on_device: return the padded waveforms (`input_values`, float32 `(batch, samples)`) and their
            `lengths` instead of `input_features` and `attention_mask`: the fbank is then computed on the training
            device (`MaskedAudioModelingTrainer.device_features`). Patch validity and masks depend on the lengths
            only, so they are still drawn here, on the CPU, and are the same as without this option.
    """

    def __init__(
        self,
        feature_extractor: Callable[..., Mapping[str, Any]],
        mask_ratio: float = 0.75,
        patch_size: int = 16,
        num_frequency_patches: int = 8,
        seed: int | None = 0,
        features_on_device: bool = False,
    ):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio!r}.")
        self.feature_extractor = feature_extractor
        self.features = AudioFeatureCollator(feature_extractor)
        self.features_on_device = features_on_device
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

    def _padded_waveforms(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """`input_values` (zero-padded float32 waveforms), `lengths`, `attention_mask` (frames, CPU) and `index`."""
        lengths = [int(np.shape(item["waveform"])[-1]) for item in items]
        shortest = getattr(self.feature_extractor, "min_num_samples", 0)
        if min(lengths) < shortest:
            raise ValueError(f"A clip has {min(lengths)} samples; BEATs needs at least {shortest}.")
        waveforms = torch.zeros(len(items), max(lengths), dtype=torch.float32)
        for row, item in enumerate(items):  # a copy per clip, as any padding collator makes
            waveforms[row, : lengths[row]] = torch.as_tensor(np.asarray(item["waveform"], dtype=np.float32))
        self.feature_extractor._check_values(waveforms)
        lengths = torch.tensor(lengths, dtype=torch.long)
        num_frames = self.feature_extractor.num_frames(waveforms.shape[1])
        batch = {
            "input_values": waveforms,
            "lengths": lengths,
            "attention_mask": self.feature_extractor.frame_mask(lengths, num_frames),
        }
        if "index" in items[0]:
            batch["index"] = torch.tensor([int(item["index"]) for item in items], dtype=torch.long)
        return batch

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        items = [item for item in items if item is not None]
        if not items:
            return {}
        batch = self._padded_waveforms(items) if self.features_on_device else self.features(items)
        batch.pop("labels", None)  # class labels of the dataset, if any: pre-training makes its own targets
        indices = batch.pop("index", None)
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones(batch["input_features"].shape[:2], dtype=torch.long)
        if self.features_on_device:
            # The frame mask is recomputed with the features on the device; here it only gave patch validity.
            del batch["attention_mask"]
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
