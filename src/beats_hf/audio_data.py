"""Audio data pipeline shared by the training and extraction scripts.

Loading keeps the audio column undecoded (`datasets.Audio(decode=False)`): decoding happens here, in `decode_audio`,
so that an unreadable or empty file is skipped and counted instead of crashing a long run inside `datasets`.

Typical use with `Trainer`::

    ds = load_audio_dataset("path/to/folder_with_class_subfolders")      # or a saved dataset, or a Hub id
    train = AudioClips(ds, crop_seconds=10.0, seed=0)                     # items: {"waveform", "labels"}
    collator = AudioFeatureCollator(BeatsFeatureExtractor())              # -> input_features, attention_mask, labels
    Trainer(model=..., train_dataset=train, data_collator=collator, ...)

Bad files (undecodable, empty, or shorter than `min_seconds`):

- `AudioClips(replace_bad=True)` (default, for training) returns the next readable item instead, so every batch is
  full and any collator works; each replacement is logged and counted. `AudioClips(replace_bad=False)` (for embedding
  extraction, where indices must stay aligned) returns `None`; `AudioFeatureCollator` drops `None` items and returns
  `{}` for a batch with no readable item.
- Evaluation and test sets must never score a substitute: `AudioClips(...).without_unreadable()` reads every example
  once, drops the bad ones and keeps their count (`dropped`), so every scored item is a distinct readable file.
- `StreamingAudioClips` simply does not yield them.
- Both count them in `.skipped` (split by reason in `.skipped_reasons`) and log each bad path once. The counters live
  in the process that reads the items: with `DataLoader(num_workers>0)` every worker has its own copy.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .sources import is_local_path

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
# One BEATs patch row: 16 fbank frames of 10 ms, plus the 25 ms window = 0.175 s.
MIN_SECONDS = 0.175
try:  # the audiofolder builder's own list, so the emptiness check agrees with what it will load
    from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder as _AudioFolder

    AUDIO_EXTENSIONS = frozenset(ext.lower() for ext in _AudioFolder.EXTENSIONS)
except (ImportError, AttributeError):
    AUDIO_EXTENSIONS = frozenset({".aiff", ".au", ".flac", ".m4a", ".mp3", ".mp4", ".ogg", ".opus", ".wav", ".webm"})

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioClips",
    "AudioFeatureCollator",
    "MIN_SECONDS",
    "SAMPLING_RATE",
    "StreamingAudioClips",
    "decode_audio",
    "load_audio_dataset",
    "random_crop",
]


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def _is_saved_dataset(folder: str) -> bool:
    # Files written by Dataset.save_to_disk / DatasetDict.save_to_disk.
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(folder, name))

    return has("dataset_dict.json") or (has("state.json") and has("dataset_info.json"))


def _has_audio_file(folder: str) -> bool:
    # Stops at the first hit, so it stays cheap on large corpora.
    for _, _, files in os.walk(folder, followlinks=True):
        if any(os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS for name in files):
            return True
    return False


def _pick_split(dataset_dict: Mapping[str, Any], split: str | None, source: str):
    if split is None:
        if len(dataset_dict) != 1:
            raise ValueError(f"{source!r} has splits {sorted(dataset_dict)}; pass split= to choose one.")
        return next(iter(dataset_dict.values()))
    if split not in dataset_dict:
        raise ValueError(f"Split {split!r} not found in {source!r}; splits found: {sorted(dataset_dict)}.")
    return dataset_dict[split]


def load_audio_dataset(
    source: str,
    split: str | None = "train",
    audio_column: str = "audio",
    streaming: bool = False,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an audio dataset with its audio column left undecoded (`datasets.Audio(decode=False)`).

    Args:
        source: a folder of WebDataset tar shards (`*.tar` in it, or the shards listed by its `shards.json` from
            `beats-hf pack-shards`), a glob of shards or one `.tar` file: read with the `webdataset` builder, the
            audio column is the members' extension (e.g. "flac") unless `audio_column` names one; a local folder of
            audio files (searched recursively, loaded with the `audiofolder` builder: files in class sub-folders get
            a `label` ClassLabel column), a folder written by `Dataset.save_to_disk` /
            `DatasetDict.save_to_disk`, or a Hub dataset id (passed to `datasets.load_dataset`).
        split: the split to return. `None` returns the only split, or raises if there are several.
        audio_column: the column holding the audio (bytes / path / encoded audio).
        streaming: return a `datasets.IterableDataset` that reads lazily (a saved dataset goes through
            `to_iterable_dataset(num_shards=...)`; pass `num_shards` in `load_kwargs` to override its default of
            `min(64, num_rows)`, which lets up to that many DataLoader workers read in parallel).
        **load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`, `revision`, `data_files`) or to
            `datasets.load_from_disk` for a saved dataset.

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder with no audio file.
        ValueError: the audio column is missing (the message lists the columns found) or is not castable to audio.
    """
    source = os.fspath(source)
    expanded = os.path.expanduser(source)
    shards = _tar_shards(expanded)
    if shards is not None:
        dataset = datasets.load_dataset("webdataset", data_files={split or "train": shards}, split=split or "train",
                                        streaming=streaming, **load_kwargs)
        return _cast_audio_undecoded(dataset, _shard_audio_column(dataset, audio_column), source)
    if os.path.isdir(expanded):
        if _is_saved_dataset(expanded):
            num_shards = load_kwargs.pop("num_shards", None)
            loaded = datasets.load_from_disk(expanded, **load_kwargs)
            dataset = _pick_split(loaded, split, source) if isinstance(loaded, datasets.DatasetDict) else loaded
            if streaming:
                num_shards = num_shards or max(1, min(64, len(dataset)))
                dataset = dataset.to_iterable_dataset(num_shards=num_shards)
        else:
            if not _has_audio_file(expanded):
                raise FileNotFoundError(
                    f"No audio file found under {source!r} (looked for {', '.join(sorted(AUDIO_EXTENSIONS)[:8])}...)."
                )
            dataset = datasets.load_dataset(
                "audiofolder", data_dir=expanded, split=split, streaming=streaming, **load_kwargs
            )
    elif os.path.exists(expanded):
        raise ValueError(f"{source!r} is a file; expected a folder of audio files, a saved dataset, or a Hub id.")
    elif is_local_path(source):
        raise FileNotFoundError(f"No such folder: {source!r}.")
    else:
        dataset = datasets.load_dataset(source, split=split, streaming=streaming, **load_kwargs)

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dataset = _pick_split(dataset, split, source)

    return _cast_audio_undecoded(dataset, audio_column, source)


def _tar_shards(path: str) -> list[str] | None:
    from .audio_shards import find_shards

    return find_shards(path)


def _shard_audio_column(dataset, audio_column: str) -> str:
    # A WebDataset shard names its audio column by the members' extension ("flac", "wav", ...).
    features = dataset.features or {}
    if audio_column in features:
        return audio_column
    audio = [name for name, feature in features.items() if isinstance(feature, datasets.Audio)]
    return audio[0] if audio else audio_column


def _cast_audio_undecoded(dataset, audio_column: str, source: str = "dataset"):
    features = dataset.features
    if features is None:
        # Some streamed Hub datasets only know their features after reading; decode_audio copes with any form.
        return dataset
    if audio_column not in features:
        audio_like = [name for name, feature in features.items() if isinstance(feature, datasets.Audio)]
        hint = f" Audio columns: {audio_like}; pass audio_column=." if audio_like else ""
        raise ValueError(
            f"No audio column {audio_column!r} in {source!r}; columns found: {list(features)}.{hint}"
        )
    feature = features[audio_column]
    if isinstance(feature, datasets.Audio) and not feature.decode:
        return dataset
    try:
        return dataset.cast_column(audio_column, datasets.Audio(decode=False))
    except Exception as error:  # pyarrow raises several types here
        raise ValueError(
            f"Column {audio_column!r} of {source!r} ({feature}) cannot be read as audio "
            f"(expected audio files, bytes or paths): {error}"
        ) from error


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


def _open_source(path: str):
    # Remote paths from streamed datasets ("zip://...::hf://...", "https://...") need fsspec via datasets' xopen.
    if "://" in path:
        from datasets.utils.file_utils import xopen

        with xopen(path, "rb") as f:
            return f.read()
    return path


def _decode_to_mono(source, target_sampling_rate: int) -> np.ndarray:
    from torchcodec.decoders import AudioDecoder

    samples = AudioDecoder(source, sample_rate=target_sampling_rate).get_all_samples()
    if samples.sample_rate != target_sampling_rate:
        raise RuntimeError(f"decoder returned {samples.sample_rate} Hz, asked for {target_sampling_rate} Hz")
    # Down-mix by averaging the channels ourselves: FFmpeg's own stereo->mono down-mix (num_channels=1) sums the
    # channels at -3 dB (x0.707 each), which is louder than the mean that datasets, torchaudio and librosa use.
    return samples.data.mean(dim=0).numpy().astype(np.float32, copy=False)


def _resample_array(array: np.ndarray, sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim > 1:
        array = array.reshape(-1, array.shape[-1]).mean(axis=0)
    if sampling_rate == target_sampling_rate:
        return array
    from torchcodec.encoders import AudioEncoder

    # Resample with FFmpeg's resampler (the one used for files) through an in-memory float WAV round trip.
    wav = AudioEncoder(torch.from_numpy(array)[None], sample_rate=int(sampling_rate)).to_tensor("wav")
    return _decode_to_mono(wav, target_sampling_rate)


def decode_audio(example_audio: Any, target_sampling_rate: int = SAMPLING_RATE) -> np.ndarray | None:
    """Decode one audio value to a mono float32 waveform at `target_sampling_rate` (resampled by FFmpeg).

    `example_audio` may be a `{"bytes", "path"}` dict (a `datasets.Audio(decode=False)` value; bytes win over path),
    a `{"array", "sampling_rate"}` dict, a path (`str` / `os.PathLike`, local or fsspec URL), raw file `bytes`, or a
    torchcodec / `datasets` `AudioDecoder`. Channels are averaged.

    Returns `None` when the audio cannot be decoded (any exception from the decoder: corrupt, truncated, missing
    file, unsupported codec) or decodes to zero samples. Raises `TypeError` only for a value of an unsupported type,
    which is a programming error rather than a bad file.
    """
    value = example_audio
    array = source = None
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            array, rate = value["array"], value["sampling_rate"]
        elif value.get("bytes") is not None:
            source = bytes(value["bytes"])
        elif value.get("path") is not None:
            source = os.fspath(value["path"])
        else:
            return None
    elif isinstance(value, (str, os.PathLike)):
        source = os.fspath(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        source = bytes(value)
    elif not hasattr(value, "get_all_samples"):
        raise TypeError(f"decode_audio cannot read a {type(value).__name__}")
    try:
        if array is not None:
            waveform = _resample_array(array, rate, target_sampling_rate)
        elif source is not None:
            source = _open_source(source) if isinstance(source, str) else source
            waveform = _decode_to_mono(source, target_sampling_rate)
        else:
            # An already-opened decoder (e.g. a datasets Audio(decode=True) value) has its own rate: resample it.
            samples = value.get_all_samples()
            waveform = _resample_array(samples.data.numpy(), samples.sample_rate, target_sampling_rate)
    except Exception:  # any decoder failure means "bad file": the caller skips and counts it
        return None
    if waveform.size == 0:
        return None
    return np.ascontiguousarray(waveform, dtype=np.float32)


def random_crop(waveform: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of `num_samples` along the last axis; a waveform that is not longer is returned whole."""
    length = waveform.shape[-1]
    if num_samples is None or length <= num_samples:
        return waveform
    start = int(rng.integers(0, length - num_samples + 1))
    return waveform[..., start : start + num_samples]


# ---------------------------------------------------------------------------------------------------------------------
# Torch datasets
# ---------------------------------------------------------------------------------------------------------------------


def _audio_identifier(value: Any, fallback: str) -> str:
    if isinstance(value, Mapping) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return fallback


def _undecoded(dataset, audio_column: str):
    # Accept datasets with a decoding Audio column too: switch it to our decoding.
    features = getattr(dataset, "features", None)
    if features is not None and isinstance(features.get(audio_column), datasets.Audio):
        if features[audio_column].decode:
            return dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


class _ClipReader:
    """Shared logic: decode, length check, crop, label pass-through, skip bookkeeping."""

    def __init__(
        self,
        audio_column: str,
        label_column: str | None,
        crop_seconds: float | None,
        min_seconds: float,
        sampling_rate: int,
        seed: int | None,
    ):
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds}")
        self.audio_column = audio_column
        self.label_column = label_column
        self.crop_seconds = crop_seconds
        self.min_seconds = min_seconds
        self.sampling_rate = sampling_rate
        self.seed = seed
        self.epoch = 0
        self.crop_samples = None if crop_seconds is None else int(round(crop_seconds * sampling_rate))
        self.min_samples = int(np.ceil(min_seconds * sampling_rate))
        self.skipped_reasons: Counter[str] = Counter()
        self._skipped_ids: set[str] = set()

    @property
    def skipped(self) -> int:
        """Number of distinct bad examples met so far in this process (unreadable + too short)."""
        return sum(self.skipped_reasons.values())

    def set_epoch(self, epoch: int) -> None:
        """Changes the random crops (they depend on (seed, epoch, example)); called by Accelerate for iterable
        datasets. `Trainer` does not call it for map-style datasets: use a callback's `on_epoch_begin` for that."""
        self.epoch = int(epoch)

    def _rng(self, *key: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(self.seed), self.epoch, *(int(k) for k in key)])

    def _mark_bad(self, identifier: str, reason: str) -> None:
        if identifier in self._skipped_ids:
            return
        self._skipped_ids.add(identifier)
        self.skipped_reasons[reason] += 1
        action = "Replacing (with the next readable clip)" if getattr(self, "replace_bad", False) else "Skipping"
        logger.warning("%s %s audio %s (%d so far)", action, reason, identifier, self.skipped)

    def _read(self, example: Mapping[str, Any], identifier: str, rng: np.random.Generator) -> dict[str, Any] | None:
        audio = example.get(self.audio_column)
        identifier = _audio_identifier(audio, identifier)
        waveform = decode_audio(audio, self.sampling_rate) if audio is not None else None
        if waveform is None:
            self._mark_bad(identifier, "unreadable")
            return None
        if waveform.shape[-1] < self.min_samples:
            self._mark_bad(identifier, "too short")
            return None
        if self.crop_samples is not None:
            waveform = np.ascontiguousarray(random_crop(waveform, self.crop_samples, rng))
        item: dict[str, Any] = {"waveform": waveform}
        if self.label_column is not None and example.get(self.label_column) is not None:
            item["labels"] = example[self.label_column]
        return item


class AudioClips(_ClipReader, torch.utils.data.Dataset):
    """Map-style dataset of mono 16 kHz clips over a `datasets.Dataset` (or any indexable of example dicts).

    Item `i` is `{"waveform": float32 array (num_samples,), "labels": <label_column value>}` ("labels" only when the
    example has a non-None `label_column`; "index": i and "epoch" as well when `return_index=True`). The waveform is a
    random `crop_seconds` window (whole clip when `None` or when the clip is shorter), drawn from a numpy Generator
    seeded by `(seed, epoch, i)`: the same seed and epoch give the same crops; `seed=None` draws fresh crops every
    time.

    Bad examples (undecodable, empty, shorter than `min_seconds`) are counted in `skipped` and:
    - `replace_bad=True`: item `i` becomes the next readable example after it (wrapping around; known-bad indices are
      remembered so they are not decoded again). Batches stay full; fine for training.
    - `replace_bad=False`: item `i` is `None`; `AudioFeatureCollator` drops it. Use where indices must stay aligned.
    """

    def __init__(
        self,
        dataset,
        crop_seconds: float | None = 10.0,
        min_seconds: float = MIN_SECONDS,
        label_column: str | None = "label",
        audio_column: str = "audio",
        sampling_rate: int = SAMPLING_RATE,
        seed: int | None = 0,
        replace_bad: bool = True,
        return_index: bool = False,
    ):
        super().__init__(audio_column, label_column, crop_seconds, min_seconds, sampling_rate, seed)
        self.dataset = _undecoded(dataset, audio_column)
        self.replace_bad = replace_bad
        self.return_index = return_index
        self._bad_indices: set[int] = set()
        self.dropped: Counter[str] = Counter()  # set by without_unreadable(): bad examples left out, by reason

    def without_unreadable(self, description: str = "checking clips") -> AudioClips:
        """A copy over the readable examples only (each example decoded once here), for evaluation and test sets:
        nothing is substituted and indices are those of the kept examples. `.dropped` counts what was left out."""
        if not isinstance(self.dataset, datasets.Dataset):
            raise TypeError("without_unreadable() needs a datasets.Dataset.")
        readable = [index for index in tqdm(range(len(self)), desc=description, unit="clip") if self._load(index)]
        kept = AudioClips(
            self.dataset.select(readable), crop_seconds=self.crop_seconds, min_seconds=self.min_seconds,
            label_column=self.label_column, audio_column=self.audio_column, sampling_rate=self.sampling_rate,
            seed=self.seed, replace_bad=False, return_index=self.return_index,
        )
        kept.dropped = Counter(self.skipped_reasons)
        if kept.dropped:
            logger.warning(
                "%s: left out %d of %d examples (%s); they are not scored.", description, sum(kept.dropped.values()),
                len(self), ", ".join(f"{count} {reason}" for reason, count in sorted(kept.dropped.items())),
            )
        return kept

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> dict[str, Any] | None:
        if index in self._bad_indices:
            return None
        item = self._read(self.dataset[index], f"<example {index}>", self._rng(index))
        if item is None:
            self._bad_indices.add(index)
        elif self.return_index:
            item["index"], item["epoch"] = index, self.epoch
        return item

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        item = self._load(index)
        if item is not None or not self.replace_bad:
            return item
        for step in range(1, len(self)):
            item = self._load((index + step) % len(self))
            if item is not None:
                return item
        raise RuntimeError(f"No readable audio clip in the whole dataset ({self.skipped} skipped).")


class StreamingAudioClips(_ClipReader, torch.utils.data.IterableDataset):
    """Iterable dataset of mono 16 kHz clips over a `datasets.IterableDataset` (or any iterable of example dicts).

    Yields the same items as `AudioClips`; bad examples are skipped (not yielded) and counted. Crops come from one
    Generator per pass seeded by `(seed, epoch, worker id)`, so a pass over a stream in a fixed order is
    reproducible. `set_epoch` is forwarded to the source (a shuffled `datasets.IterableDataset` reshuffles).

    With `DataLoader(num_workers=N)` a `datasets.IterableDataset` source splits its shards between the workers
    (it needs `n_shards >= N`); an indexable source (`datasets.Dataset`) is split by index. For several processes
    (DDP), split the source first with `datasets.distributed.split_dataset_by_node`. With `return_index=True` items
    carry "epoch" and an "index" unique within a pass: `position * num_workers + worker id`, position counting the
    examples of this worker's share.
    """

    def __init__(
        self,
        dataset: Iterable[Mapping[str, Any]],
        crop_seconds: float | None = 10.0,
        min_seconds: float = MIN_SECONDS,
        label_column: str | None = "label",
        audio_column: str = "audio",
        sampling_rate: int = SAMPLING_RATE,
        seed: int | None = 0,
        return_index: bool = False,
    ):
        super().__init__(audio_column, label_column, crop_seconds, min_seconds, sampling_rate, seed)
        self.dataset = _undecoded(dataset, audio_column)
        self.return_index = return_index

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _examples(self, worker_id: int, num_workers: int) -> Iterator[Mapping[str, Any]]:
        if isinstance(self.dataset, datasets.IterableDataset) or num_workers == 1:
            # datasets.IterableDataset shards itself between DataLoader workers.
            yield from self.dataset
        elif isinstance(self.dataset, (datasets.Dataset, Sequence)):
            for index in range(worker_id, len(self.dataset), num_workers):
                yield self.dataset[index]
        else:
            raise TypeError(
                f"Cannot split a {type(self.dataset).__name__} between {num_workers} DataLoader workers; "
                "use a datasets.IterableDataset or num_workers=0."
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rng = self._rng(worker_id)
        for position, example in enumerate(self._examples(worker_id, num_workers)):
            item = self._read(example, f"<worker {worker_id} example {position}>", rng)
            if item is not None:
                if self.return_index:
                    item["index"], item["epoch"] = position * num_workers + worker_id, self.epoch
                yield item


# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------


class AudioFeatureCollator:
    """Data collator for `Trainer` / `DataLoader(collate_fn=...)` over `AudioClips` / `StreamingAudioClips` items.

    Drops `None` items, runs `feature_extractor(waveforms, sampling_rate=..., return_tensors="pt", **extractor_kwargs)`
    (e.g. `BeatsFeatureExtractor`, which pads and returns `input_features` + `attention_mask`) and returns every
    tensor it produced, plus:
    - `labels`: int64 `(batch,)` for integer labels; float32 `(batch,)` for float labels; float32 multi-hot
      `(batch, num_labels)` for a sequence of integer label indices (needs `num_labels`); float32
      `(batch, num_labels)` for a sequence of float targets (taken as is).
    - `index`: int64 `(batch,)` when the items carry an "index" (`AudioClips(return_index=True)`).
    A batch with no item left returns `{}` (callers such as extraction loops should skip it).
    """

    def __init__(
        self,
        feature_extractor: Callable[..., Mapping[str, Any]],
        sampling_rate: int = SAMPLING_RATE,
        num_labels: int | None = None,
        **extractor_kwargs,
    ):
        self.feature_extractor = feature_extractor
        self.sampling_rate = sampling_rate
        self.num_labels = num_labels
        self.extractor_kwargs = extractor_kwargs

    def _labels(self, labels: list[Any]) -> torch.Tensor:
        first = labels[0]
        if isinstance(first, torch.Tensor):
            first = first.tolist()
        if isinstance(first, np.ndarray):
            first = first.tolist()
        if isinstance(first, (list, tuple)):
            if self.num_labels is None:
                raise ValueError("Sequence labels need AudioFeatureCollator(num_labels=...) for multi-hot targets.")
            rows = [np.asarray(label.tolist() if isinstance(label, torch.Tensor) else label) for label in labels]
            if all(row.size == 0 or np.issubdtype(row.dtype, np.integer) for row in rows):
                # Integer sequences are label indices -> multi-hot.
                targets = torch.zeros(len(rows), self.num_labels, dtype=torch.float32)
                for i, row in enumerate(rows):
                    if row.size and (row.min() < 0 or row.max() >= self.num_labels):
                        raise ValueError(f"Label index out of range [0, {self.num_labels}): {row.tolist()}")
                    targets[i, torch.as_tensor(row, dtype=torch.long)] = 1.0
                return targets
            if any(row.shape != (self.num_labels,) for row in rows):
                raise ValueError(f"Float label vectors must have length num_labels={self.num_labels}.")
            return torch.as_tensor(np.stack(rows), dtype=torch.float32)
        if isinstance(first, (bool, np.bool_)) or not isinstance(first, (int, np.integer, float, np.floating)):
            raise TypeError(f"Unsupported label type {type(first).__name__}; expected int, float or a sequence.")
        if isinstance(first, (float, np.floating)):
            return torch.tensor([float(label) for label in labels], dtype=torch.float32)
        return torch.tensor([int(label) for label in labels], dtype=torch.long)

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        items = [item for item in items if item is not None]
        if not items:
            return {}
        waveforms = [np.asarray(item["waveform"], dtype=np.float32) for item in items]
        features = self.feature_extractor(
            waveforms, sampling_rate=self.sampling_rate, return_tensors="pt", **self.extractor_kwargs
        )
        batch = {key: torch.as_tensor(value) for key, value in dict(features).items()}
        label_key = "labels" if "labels" in items[0] else "label" if "label" in items[0] else None
        if label_key is not None:
            if any(label_key not in item for item in items):
                raise ValueError(f"Some items have {label_key!r} and some do not.")
            batch["labels"] = self._labels([item[label_key] for item in items])
        if "index" in items[0]:
            batch["index"] = torch.tensor([int(item["index"]) for item in items], dtype=torch.long)
        return batch


class ClipEpochCallback:
    """A `TrainerCallback` that gives the clip datasets fresh random crops every epoch (Trainer calls `set_epoch` on
    its sampler, not on a map-style dataset)."""

    def __init__(self, *clip_datasets: _ClipReader):
        self.clip_datasets = clip_datasets

    def on_epoch_begin(self, args, state, control, **kwargs):
        for clips in self.clip_datasets:
            clips.set_epoch(int(state.epoch or 0))

    def __getattr__(self, name: str):
        # Every other TrainerCallback event is a no-op.
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
