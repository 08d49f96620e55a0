"""Training on tar shards with `Trainer`: a data loader whose stream position is saved in every checkpoint and
restored on resume, so a resumed run reads on from where its stream stood instead of reading it again from the start.

Why not `accelerator_config={"use_stateful_dataloader": True}`: in transformers 5.24 `Trainer._save_checkpoint` never
saves the data loader's state (only `Accelerator.save_state` would, and Trainer does not call it), and on resume
Trainer fast-forwards the loader with `skip_first_batches`, i.e. it reads and decodes every batch again. The state of
`datasets.IterableDataset` would not do either: it drops the content of its shuffle buffer, so a resumed epoch loses
clips. `ShardedAudioClips` instead has a position of four integers per reader, which this module keeps:

- `ShardStreamLoader` wraps the `DataLoader`. Each batch arrives with the position of the reader (worker) that made it;
  the loader keeps the latest position of every reader and which worker's batch comes next. On a resume, the workers
  restart from those positions and the round robin of the DataLoader is rotated so that the first batch comes from
  the worker whose turn it was. No batch is skipped, so Trainer's own skipping is turned off (`ignore_data_skip`).
- `StreamPositionCallback` puts the positions of all processes into the checkpoint's `trainer_state.json`, through
  Trainer's `ExportableState` mechanism (`stateful_callbacks`). That file is written last, so the checkpoint rule of
  `run_folder.checkpoint_problem` (nothing newer than `trainer_state.json`) holds unchanged, and a checkpoint's stream
  position can never be older or newer than its weights.
- `ShardStreamTrainerMixin` puts them in place for a Trainer whose `train_dataset` is a `ShardedAudioClips`.

A resumed run must use the same number of processes and workers (the readers): another layout is refused, because
the positions belong to readers that would no longer exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..audio_shards import ShardedAudioClips


class _StreamCollate:
    """Collates the items with the wrapped collator and returns the batch with the position of its reader after it
    (every item of a DataLoader batch comes from one worker, the last one carries the latest position)."""

    def __init__(self, collator: Callable[[list], Any]):
        self.collator = collator

    def __call__(self, items: Sequence[Mapping[str, Any] | None]):
        items = [dict(item) for item in items if item is not None]
        states = [item.pop("stream_state", None) for item in items]
        return self.collator(items), (states[-1] if states else None)


class ShardStreamLoader:
    """A `DataLoader` over a `ShardedAudioClips` that knows, and can restore, the position of every reader.

    Args:
        dataset: the clips.
        collator: turns a list of items into a batch.
        batch_size, num_workers, pin_memory, prefetch_factor: as for `DataLoader`.
        rank, world_size: this process among all (they decide which readers this process runs).
        saved: called when iteration starts; returns the positions to restore (`StreamPositionCallback.state()`'s
            attributes) or None for a fresh stream.
    """

    def __init__(
        self,
        dataset: ShardedAudioClips,
        collator: Callable[[list], Any],
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        saved: Callable[[], Mapping[str, Any] | None] | None = None,
    ):
        self.dataset = dataset
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, num_workers)
        self.readers = world_size * self.workers
        dataset.check_readers(self.readers)
        self.saved = saved
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, collate_fn=_StreamCollate(collator), num_workers=num_workers,
            pin_memory=pin_memory, prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )
        # Latest position of each of this process's readers (global reader id as a string, JSON's key type) and the
        # local reader whose batch comes next.
        self.positions: dict[str, list[int]] = {}
        self.next_reader = 0

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Continue from `saved` = {"readers": R, "positions": {reader: state}, "next_readers": {rank: local}}."""
        if int(saved.get("readers", self.readers)) != self.readers:
            raise ValueError(
                f"The checkpoint's stream was read by {saved['readers']} readers (processes x DataLoader workers), "
                f"this run has {self.readers} ({self.world_size} x {self.workers}): resume with the same layout."
            )
        first = self.rank * self.workers
        self.positions = {
            reader: list(state) for reader, state in saved.get("positions", {}).items()
            if first <= int(reader) < first + self.workers
        }
        self.next_reader = int(saved.get("next_readers", {}).get(str(self.rank), 0))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        saved = self.saved() if self.saved is not None else None
        if saved:
            self.restore(saved)
        self.dataset.rank, self.dataset.world_size = self.rank, self.world_size
        self.dataset.start_states = {int(reader): state for reader, state in self.positions.items()}
        # The DataLoader asks worker 0 first: make worker 0 the reader whose turn it is.
        self.dataset.worker_rotation = self.next_reader
        for batch, state in self.loader:
            if state is not None:
                self.positions[str(state["reader"])] = list(state["state"])
                self.next_reader = (state["reader"] % self.workers + 1) % self.workers
            yield batch

    def position(self) -> dict[str, Any]:
        """This process's part of the stream position."""
        return {"readers": self.readers, "positions": dict(self.positions),
                "next_readers": {str(self.rank): self.next_reader}}


def merge_positions(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The stream position of all processes from each one's `ShardStreamLoader.position()`."""
    merged: dict[str, Any] = {"readers": parts[0]["readers"] if parts else 0, "positions": {}, "next_readers": {}}
    for part in parts:
        merged["positions"].update(part["positions"])
        merged["next_readers"].update(part["next_readers"])
    return merged


class StreamPositionCallback(TrainerCallback, ExportableState):
    """Keeps the stream position of all processes in `TrainerState.stateful_callbacks`, which Trainer writes into
    each checkpoint's `trainer_state.json`. The processes' positions are gathered at the end of each step that saves
    (every process runs `on_step_end` with the same `control`)."""

    def __init__(self, loader: ShardStreamLoader | None = None):
        self.loader = loader
        self.stream: dict[str, Any] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.loader is None or not control.should_save:
            return
        part = self.loader.position()
        if args.world_size > 1:
            from accelerate.utils import gather_object

            parts = gather_object([part])
        else:
            parts = [part]
        self.stream = merge_positions(parts)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"stream": self.stream}}


class ShardStreamTrainerMixin:
    """For a `Trainer` subclass: when `train_dataset` is a `ShardedAudioClips`, train on a `ShardStreamLoader` whose
    position goes into every checkpoint and comes back on resume (see the module docstring). Other datasets take
    Trainer's own data loader."""

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, ShardedAudioClips):
            return super().get_train_dataloader()
        args = self.args
        loader = ShardStreamLoader(
            self.train_dataset, self.data_collator, batch_size=self._train_batch_size,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor, rank=args.process_index, world_size=args.world_size,
            saved=self._saved_stream_position,
        )
        # The loader restores its position itself; Trainer's fast-forward would read the skipped batches again.
        args.ignore_data_skip = True
        self.callback_handler.remove_callback(StreamPositionCallback)
        self.add_callback(StreamPositionCallback(loader))
        return loader

    def _saved_stream_position(self) -> Mapping[str, Any] | None:
        # Trainer has loaded the checkpoint's trainer_state.json (stateful_callbacks included) by the time iteration
        # starts; a fresh run holds the callback's empty state.
        saved = (self.state.stateful_callbacks or {}).get(StreamPositionCallback.__name__)
        if isinstance(saved, list):
            saved = saved[-1] if saved else None
        return (saved or {}).get("attributes", {}).get("stream") or None


__all__ = ["ShardStreamLoader", "ShardStreamTrainerMixin", "StreamPositionCallback", "merge_positions"]
