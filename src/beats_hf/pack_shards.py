"""`beats-hf pack-shards`: pack an audio folder or any `datasets` audio dataset into WebDataset-style tar shards.

    beats-hf pack-shards --data SOURCE --output_dir SHARDS [--shard_size_mb 256] [--format flac|wav|mp3|keep]

Each example becomes one member `KEY.EXT` (KEY: the example's place in the source, ten digits). `flac`, `wav` (16-bit
PCM) and `mp3` re-encode the audio as 16 kHz mono, what BEATs reads, so the data loader workers only decode and crop;
`keep` copies each file's bytes as they are, under its own extension. Unreadable files (checked by decoding them) are
left out and counted.

A shard is filled up to `--shard_size_mb` (at least one clip each), written as `.NAME.tmp` and renamed into place, then
recorded in `.pack_progress.json`; a rerun with the same settings skips the recorded shards and continues after them.
The manifest `shards.json` (shard names, clip counts, the source and the settings) is written last, atomically; it
is what `load_audio_dataset` and `beats-hf pretrain --data SHARDS --streaming` read. A folder packed with other
settings is refused. Nothing is deleted but the progress file, which the command wrote itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic_files import atomic_write_json
from .audio_data import SAMPLING_RATE, _open_source, decode_audio, load_audio_dataset
from .audio_shards import SHARD_MANIFEST
from .sources import is_local_path

FORMATS = ("flac", "wav", "mp3", "keep")
PROGRESS_NAME = ".pack_progress.json"
_TAR_BLOCK = 512


def encode_clip(waveform: np.ndarray, audio_format: str, sampling_rate: int = SAMPLING_RATE) -> bytes:
    """A mono float waveform as the bytes of a `flac`, `wav` (16-bit PCM) or `mp3` file."""
    from torchcodec.encoders import AudioEncoder

    samples = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None]
    return AudioEncoder(samples, sample_rate=sampling_rate).to_tensor(audio_format).numpy().tobytes()


def _member(value: Any, audio_format: str) -> tuple[bytes, str] | None:
    """(file bytes, extension) of one audio value, or None when it is unreadable."""
    if audio_format == "keep" and isinstance(value, dict):
        path, data = value.get("path"), value.get("bytes")
        extension = os.path.splitext(path or "")[1].lower().lstrip(".")
        if extension and "." not in extension and (data is not None or path):
            if data is None:
                try:
                    source = _open_source(path)
                    if isinstance(source, str):
                        with open(source, "rb") as handle:
                            source = handle.read()
                    data = source
                except OSError:
                    return None
            # Checked once here, so that a shard holds only clips the training can read.
            return (bytes(data), extension) if data and decode_audio({"bytes": bytes(data)}) is not None else None
    waveform = decode_audio(value)
    if waveform is None:
        return None
    # Without a known extension `keep` falls back to FLAC, which is lossless.
    target = "flac" if audio_format == "keep" else audio_format
    return encode_clip(waveform, target), target


def _source_setting(source: str) -> str:
    path = os.path.expanduser(source)
    return os.path.abspath(path) if is_local_path(source) and os.path.exists(path) else source


def _write_shard(folder: str, name: str, members: list[tuple[str, bytes]]) -> int:
    temporary = os.path.join(folder, f".{name}.tmp")
    with open(temporary, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for member_name, data in members:
                info = tarfile.TarInfo(member_name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(folder, name))
    return os.path.getsize(os.path.join(folder, name))


def pack_shards(
    source: str,
    output_dir: str,
    shard_size_mb: float = 256.0,
    audio_format: str = "flac",
    split: str | None = "train",
    audio_column: str = "audio",
    prefix: str = "shard",
    progress: bool = True,
) -> dict:
    """Pack `source` (anything `load_audio_dataset` reads) into tar shards in `output_dir`; returns the manifest.

    Raises `ValueError` when `output_dir` was packed (or partly packed) with other settings.
    """
    if audio_format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {audio_format!r}.")
    if not shard_size_mb > 0:
        raise ValueError(f"--shard_size_mb must be positive, got {shard_size_mb}.")
    settings = {"source": _source_setting(os.fspath(source)), "split": split, "audio_column": audio_column,
                "format": audio_format, "shard_size_mb": shard_size_mb, "prefix": prefix}
    os.makedirs(output_dir, exist_ok=True)
    manifest_path = os.path.join(output_dir, SHARD_MANIFEST)
    progress_path = os.path.join(output_dir, PROGRESS_NAME)
    for path, what in ((manifest_path, "packed"), (progress_path, "partly packed")):
        if os.path.isfile(path):
            with open(path) as handle:
                recorded = json.load(handle)
            changed = [f"{key}: {recorded['settings'].get(key)!r} -> {value!r}"
                       for key, value in settings.items() if recorded["settings"].get(key) != value]
            if changed:
                raise ValueError(f"{output_dir} was {what} with other settings ({'; '.join(changed)}): use another "
                                 "--output_dir, or the same settings.")
            if path == manifest_path:
                print(f"{output_dir}: already packed ({recorded['num_clips']} clips in {len(recorded['shards'])} "
                      "shards); nothing to do", flush=True)
                return recorded

    done = {"settings": settings, "shards": []}
    if os.path.isfile(progress_path):
        with open(progress_path) as handle:
            done = json.load(handle)
        print(f"{output_dir}: {len(done['shards'])} shard(s) already written; continuing after them", flush=True)
    dataset = load_audio_dataset(source, split=split, audio_column=audio_column)
    start = done["shards"][-1]["first_example"] + done["shards"][-1]["num_examples"] if done["shards"] else 0
    limit = int(shard_size_mb * 2**20)

    members: list[tuple[str, bytes]] = []
    size, first, skipped = 0, start, 0

    def flush(end: int) -> None:
        nonlocal members, size, first, skipped
        name = f"{prefix}-{len(done['shards']):06d}.tar"
        written = _write_shard(output_dir, name, members)
        done["shards"].append({"name": name, "num_clips": len(members), "bytes": written, "first_example": first,
                               "num_examples": end - first, "skipped": skipped})
        atomic_write_json(progress_path, done)
        members, size, first, skipped = [], 0, end, 0

    bar = tqdm(range(start, len(dataset)), total=len(dataset), initial=start, desc="packing", unit="clip",
               disable=not progress)
    for index in bar:
        member = _member(dataset[index][audio_column], audio_format)
        if member is None:
            skipped += 1
            continue
        data, extension = member
        member_size = _TAR_BLOCK + -(-len(data) // _TAR_BLOCK) * _TAR_BLOCK
        if members and size + member_size > limit:
            flush(index)
        members.append((f"{index:010d}.{extension}", data))
        size += member_size
    if members:
        flush(len(dataset))
    elif skipped and done["shards"]:  # unreadable files at the very end: counted with the last shard
        done["shards"][-1]["skipped"] += skipped
        done["shards"][-1]["num_examples"] += skipped

    shards = [{key: shard[key] for key in ("name", "num_clips", "bytes")} for shard in done["shards"]]
    manifest = {
        "format_version": 1,
        "settings": settings,
        "num_clips": sum(shard["num_clips"] for shard in done["shards"]),
        "num_examples": len(dataset),
        "skipped_unreadable": sum(shard["skipped"] for shard in done["shards"]),
        "shards": shards,
    }
    atomic_write_json(manifest_path, manifest)
    os.remove(progress_path)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beats-hf pack-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="audio folder, saved dataset or Hub dataset id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--shard_size_mb", type=float, default=256.0, help="shard size in MiB (at least one clip)")
    parser.add_argument("--format", choices=FORMATS, default="flac",
                        help="re-encode as 16 kHz mono flac, wav (16-bit) or mp3, or keep each file's bytes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--audio_column", default="audio")
    parser.add_argument("--prefix", default="shard", help="shard names: PREFIX-000000.tar, ...")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    manifest = pack_shards(args.data, args.output_dir, args.shard_size_mb, args.format, args.split, args.audio_column,
                           args.prefix, progress=not args.no_progress)
    print(json.dumps({key: manifest[key] for key in ("num_clips", "num_examples", "skipped_unreadable")}
                     | {"num_shards": len(manifest["shards"])}))
    return 0


__all__ = ["FORMATS", "encode_clip", "main", "pack_shards"]
