"""Audio corpora packed into WebDataset-style tar shards, read as a resumable stream.

A shard is an uncompressed tar file whose members are grouped into examples by key, as WebDataset does: `KEY.flac`
(or `.wav`, `.mp3`, any of `AUDIO_EXTENSIONS`) and optional companions such as `KEY.json`. `beats-hf pack-shards`
writes such shards (`beats_hf.pack_shards`) with a manifest `shards.json` that lists them.

`ShardedAudioClips` reads shards for training. Every stream position is a few integers, so a resumed run continues
where the stream stood and every clip of an epoch is delivered exactly once:

- **Readers.** Each (process, DataLoader worker) is one reader of `readers = world_size x num_workers`. In epoch `e`
  the shards are put in an order drawn from `(seed, e)` and reader `r` reads shards `r, r + readers, ...` of that
  order. A shard belongs to one reader per epoch, so no clip comes twice and none is lost. Readers whose shard counts
  differ by one (the shard count is not a multiple of `readers`) just finish their epoch at different moments: each
  reader runs on into the next epoch on its own. Fewer shards than readers is refused (a reader would have nothing to
  read).
- **Shuffling.** With `shuffle_buffer=N` a reader fills a block of N examples (still undecoded), yields them in an
  order drawn from `(seed, epoch, reader, block)` and starts the next block. Blocks do not cross epochs. Unlike a
  rolling buffer (`datasets.IterableDataset.shuffle`, whose content is lost when a stream state is reloaded), the
  stream can be restored exactly by re-reading at most one block of undecoded examples.
- **Position.** A reader's state is `[epoch, shard position, member offset, taken]`: where its current block starts
  (the `shard position`-th of its shards, `member offset` examples in) and how many examples of that block it has
  yielded. Every item carries its reader's state after it (`stream_state`), so whoever consumes the items knows the
  position of each reader; `start_states` restores them.
- **Clip keys.** A clip's `index` is `shard * SHARD_INDEX_STRIDE + offset` (its shard in the sorted shard list, its
  place in the shard): the same whatever the number of processes and workers. Random crops are drawn from
  `(seed, epoch, index)`, and so are the pre-training masks (`MaskedAudioModelingCollator`).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .audio_data import AUDIO_EXTENSIONS, MIN_SECONDS, SAMPLING_RATE, _ClipReader

SHARD_MANIFEST = "shards.json"
SHARD_INDEX_STRIDE = 1 << 24  # clips per shard at most: a clip's index is shard * stride + offset
_AUDIO_SUFFIXES = tuple(sorted(extension.lstrip(".") for extension in AUDIO_EXTENSIONS))


def find_shards(source: str | os.PathLike) -> list[str] | None:
    """The tar shards that `source` names, sorted, or None when it names none.

    `source` is a folder with a `shards.json` manifest (its listed shards), a folder holding `*.tar` files (not in
    sub-folders), a glob pattern (`shards/train-*.tar`) or a single `.tar` file. A folder with no tar file is not a
    shard source (None): it is read as a folder of audio files or a saved dataset instead.
    """
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        manifest = os.path.join(path, SHARD_MANIFEST)
        if os.path.isfile(manifest):
            with open(manifest) as handle:
                names = [shard["name"] for shard in json.load(handle)["shards"]]
            return [os.path.join(path, name) for name in names]
        found = sorted(glob.glob(os.path.join(path, "*.tar")))
        return found or None
    if path.endswith(".tar") and os.path.isfile(path):
        return [path]
    if glob.has_magic(path):
        found = sorted(name for name in glob.glob(path, recursive=True) if name.endswith(".tar"))
        if not found:
            raise FileNotFoundError(f"No tar shard matches {os.fspath(source)!r}.")
        return found
    return None


def _member_key(name: str) -> tuple[str, str]:
    # WebDataset's rule: the key is the path up to the first dot of the base name, the rest is the extension.
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(folder, stem), extension.lower()


def iter_shard(path: str, skip: int = 0) -> Iterator[dict[str, Any]]:
    """The examples of one tar shard, in order: `{"__key__", "__url__", extension: bytes, ...}`, one per key (members
    sharing a key are consecutive in a WebDataset shard). The first `skip` examples are read past, not returned: their
    bytes are not kept. Remote paths (`hf://`, `s3://`, ...) are opened through fsspec."""
    if "://" in path:
        from datasets.utils.file_utils import xopen

        handle = xopen(path, "rb")
    else:
        handle = open(path, "rb")
    with handle, tarfile.open(fileobj=handle, mode="r|") as archive:
        example: dict[str, Any] | None = None
        position = 0
        for member in archive:
            if not member.isfile():
                continue
            key, extension = _member_key(member.name)
            if example is None or key != example["__key__"]:
                if example is not None:
                    if position >= skip:
                        yield example
                    position += 1
                example = {"__key__": key, "__url__": path}
            if position >= skip:
                example[extension] = archive.extractfile(member).read()
        if example is not None and position >= skip:
            yield example


def example_audio(example: Mapping[str, Any]) -> dict[str, Any] | None:
    """The audio member of a shard example as a `{"bytes", "path"}` value for `decode_audio` (None if it has none)."""
    for extension in _AUDIO_SUFFIXES:
        if example.get(extension) is not None:
            return {"bytes": example[extension], "path": f"{example['__url__']}/{example['__key__']}.{extension}"}
    return None


def shard_order(num_shards: int, seed: int | None, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which the shards are dealt to the readers in `epoch`."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([int(seed or 0), int(epoch), 0x5348]).permutation(num_shards)


def reader_shards(
    num_shards: int, seed: int | None, epoch: int, shuffle: bool, reader: int, readers: int
) -> list[int]:
    """The shards (indices in the sorted shard list) that `reader` of `readers` reads in `epoch`, in order."""
    return [int(shard) for shard in shard_order(num_shards, seed, epoch, shuffle)[reader::readers]]


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedAudioClips(_ClipReader, torch.utils.data.IterableDataset):
    """Iterable dataset of mono 16 kHz clips read from tar shards; see the module docstring for the stream's rules.

    Items are `{"waveform", "index", "epoch", "stream_state"}` (plus `"labels"` when `label_column` names a member,
    e.g. `"cls"`, as bytes). Unreadable or too short clips are skipped and counted, as in `StreamingAudioClips`.

    Args:
        shards: the tar files (e.g. `find_shards(folder)`); their sorted order defines the clip indices.
        crop_seconds: random crop of each clip, drawn from `(seed, epoch, index)`; `None` keeps whole clips.
        shuffle_buffer: examples per shuffled block; 0 reads shards and members in order.
        seed: seed of the shard orders, the blocks and the crops.
        num_epochs: stop after this many epochs; `None` runs on forever (training, counted in steps).
        start_epoch: the epoch of a fresh stream.
        rank, world_size: this process among all; default: torch.distributed's, else (0, 1).
    """

    def __init__(
        self,
        shards: Sequence[str],
        crop_seconds: float | None = 10.0,
        min_seconds: float = MIN_SECONDS,
        shuffle_buffer: int = 0,
        seed: int | None = 0,
        num_epochs: int | None = None,
        start_epoch: int = 0,
        label_column: str | None = None,
        sampling_rate: int = SAMPLING_RATE,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__("audio", label_column, crop_seconds, min_seconds, sampling_rate, seed)
        self.shards = sorted(os.fspath(shard) for shard in shards)
        if not self.shards:
            raise ValueError("No tar shard to read.")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 (no shuffling) or positive, got {shuffle_buffer}.")
        self.shuffle_buffer = int(shuffle_buffer)
        self.num_epochs = num_epochs
        self.start_epoch = int(start_epoch)
        self.rank, self.world_size = rank, world_size
        # Set by the loader before the workers start: the state of each reader (by global reader id) and which local
        # reader the first worker plays (so that a resumed DataLoader continues the round robin where it stood).
        self.start_states: dict[int, Sequence[int]] = {}
        self.worker_rotation = 0

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def set_epoch(self, epoch: int) -> None:
        """The epoch a fresh stream starts at (a stream runs through its epochs by itself)."""
        super().set_epoch(epoch)
        self.start_epoch = int(epoch)

    def layout(self) -> tuple[int, int, int, int]:
        """(rank, world size, worker slot, workers per process) of the code running now."""
        rank, world_size = _distributed_rank_and_size()
        rank = rank if self.rank is None else self.rank
        world_size = world_size if self.world_size is None else self.world_size
        worker = torch.utils.data.get_worker_info()
        slot, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return rank, world_size, slot, workers

    def check_readers(self, readers: int) -> None:
        if self.n_shards < readers:
            raise ValueError(
                f"{self.n_shards} shard(s) for {readers} readers (processes x DataLoader workers): every reader needs "
                "a shard. Pack the data into more, smaller shards (beats-hf pack-shards --shard_size_mb) or use fewer "
                "workers."
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size, slot, workers = self.layout()
        local = (slot + self.worker_rotation) % workers
        reader, readers = rank * workers + local, world_size * workers
        self.check_readers(readers)
        state = self.start_states.get(reader) or self.start_states.get(str(reader)) or (self.start_epoch, 0, 0, 0)
        yield from self._read_stream(reader, readers, [int(value) for value in state])

    def _blocks(self, shards: list[int], shard_position: int, offset: int):
        """Blocks of (shard position, offset, example) from a start; a block never crosses the epoch's end."""
        size = max(1, self.shuffle_buffer)
        block = []
        for position in range(shard_position, len(shards)):
            skip = offset if position == shard_position else 0
            for member, example in enumerate(iter_shard(self.shards[shards[position]], skip=skip), start=skip):
                block.append((position, member, example))
                if len(block) == size:
                    yield block
                    block = []
        if block:
            yield block

    def _read_stream(self, reader: int, readers: int, state: list[int]) -> Iterator[dict[str, Any]]:
        epoch, shard_position, offset, taken = state
        while self.num_epochs is None or epoch < self.start_epoch + self.num_epochs:
            shards = reader_shards(self.n_shards, self.seed, epoch, self.shuffle_buffer > 0, reader, readers)
            yielded_any = False
            for block in self._blocks(shards, shard_position, offset):
                if self.shuffle_buffer > 0:
                    # Keyed by where the block starts, so a restored stream draws the same order.
                    start = block[0][:2]
                    rng = np.random.default_rng([int(self.seed or 0), epoch, reader, shards[start[0]], start[1]])
                    order = rng.permutation(len(block))
                else:
                    order = range(len(block))
                last = block[-1]
                # Where the next block starts; the current one is done once all of it is taken.
                next_start = (last[0], last[1] + 1)
                for place, chosen in enumerate(order):
                    if place < taken:
                        continue
                    position, member, example = block[chosen]
                    done = place + 1 == len(block)
                    after = [epoch, *next_start, 0] if done else [epoch, block[0][0], block[0][1], place + 1]
                    item = self._item(example, shards[position], member, epoch)
                    if item is not None:
                        yielded_any = True
                        item["stream_state"] = {"reader": reader, "readers": readers, "state": after}
                        yield item
                taken = 0
            if not yielded_any and shard_position == 0 and offset == 0:
                raise RuntimeError(f"Reader {reader} of {readers} found no readable clip in its epoch {epoch} shards.")
            epoch, shard_position, offset, taken = epoch + 1, 0, 0, 0

    def _item(self, example: Mapping[str, Any], shard: int, member: int, epoch: int) -> dict[str, Any] | None:
        index = shard * SHARD_INDEX_STRIDE + member
        self.epoch = epoch
        audio = example_audio(example)
        source = {"audio": audio}
        if self.label_column is not None and example.get(self.label_column) is not None:
            source[self.label_column] = example[self.label_column]
        item = self._read(source, f"{example['__url__']}/{example['__key__']}", self._rng(index)) if audio else None
        if audio is None:
            self._mark_bad(f"{example['__url__']}/{example['__key__']}", "unreadable")
        if item is not None:
            item["index"], item["epoch"] = index, epoch
        return item


__all__ = [
    "SHARD_INDEX_STRIDE",
    "SHARD_MANIFEST",
    "ShardedAudioClips",
    "example_audio",
    "find_shards",
    "iter_shard",
    "reader_shards",
    "shard_order",
]
