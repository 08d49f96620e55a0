"""Input pipeline of streamed pre-training: how many 10 s clips a data loader worker core delivers from tar shards,
and how many cores it takes to keep one GPU fed at 500 clips/s, with the fbank in the workers (before) or on the
training device (`--features_on_device`, after).

The audio is real recorded instrument sound: the demo's fluidsynth corpus (`demo/corpus.py`), five 2 s clips joined
into each 10 s clip, packed by `beats-hf pack-shards` into FLAC, MP3 and WAV shards (16 kHz mono, as pack-shards writes
them). Measured, all in one process, variants alternating (benchmarks/common.py):

1. per worker core, one thread: clips/s of read + decode + 10 s crop (`ShardedAudioClips`), for each format; and of the
   whole worker side of a batch of 8 (the pre-training collator: fbank + masks before, padding + masks after);
2. the whole input path (`ShardStreamLoader`, FLAC, batches of 8, one epoch) with 1, 2 and 4 workers, before and
   after;
3. the device's side after: `BeatsFeatureExtractor.featurize_padded` on a (32, 160000) batch on the CPU and, when
   `torch.cuda.is_available()`, on the GPU;
4. cores to feed 500 clips/s = 500 / (clips/s per worker core), before and after.

    python benchmarks/input_pipeline.py [--clips 48] [--repeats 3] [--corpus DIR]
"""

import json
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
from common import REPO_ROOT, base_parser, machine_description, print_table, set_threads, write_results

from beats_hf import BeatsFeatureExtractor
from beats_hf.audio_data import decode_audio
from beats_hf.audio_shards import ShardedAudioClips, find_shards
from beats_hf.pack_shards import encode_clip, pack_shards
from beats_hf.training.pretraining.collator import MaskedAudioModelingCollator
from beats_hf.training.streaming import ShardStreamLoader

TARGET_CLIPS_PER_SECOND = 500
CLIP_SECONDS = 10
FORMATS = ("flac", "mp3", "wav")


def ten_second_clips(corpus: Path, folder: Path, count: int) -> None:
    """`count` 10 s WAV files, each five consecutive 2 s clips of the demo corpus."""
    if len(list(folder.glob("*.wav"))) >= count:
        return
    sys.path.insert(0, str(REPO_ROOT))
    from demo.corpus import build_corpus

    build_corpus(corpus, clips_per_train_program=8, clips_per_test_program=0, unlabelled_clips=count * 5,
                 progress=False)
    parts = sorted(corpus.rglob("*.wav"))[: count * 5]
    if len(parts) < count * 5:
        raise RuntimeError(f"the corpus has {len(parts)} clips, {count * 5} needed")
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pieces = []
        for part in parts[index * 5 : index * 5 + 5]:
            with wave.open(str(part)) as handle:
                pieces.append(handle.readframes(handle.getnframes()))
        with wave.open(str(folder / f"clip_{index:04d}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            handle.writeframes(b"".join(pieces))


def epoch(clips: ShardedAudioClips) -> int:
    return sum(1 for _ in clips)


def median_rate(run, clips: int, repeats: int) -> tuple[float, float]:
    """(median clips/s of wall time, median clips/s of this process's CPU time)."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return clips / statistics.median(walls), clips / statistics.median(cpus)


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=3)
    parser.add_argument("--clips", type=int, default=48, help="10 s clips in the shards")
    parser.add_argument("--corpus", default=None, help="folder for the rendered corpus (default: a temporary one)")
    args = parser.parse_args(argv)
    set_threads(1)  # a data loader worker: one core
    load_before = os.getloadavg()
    work = Path(args.corpus or tempfile.mkdtemp(prefix="input_pipeline_"))
    clip_folder = work / "clips_10s"
    ten_second_clips(work / "corpus", clip_folder, args.clips)
    shards = {}
    first_clip = decode_audio(str(sorted(clip_folder.glob("*.wav"))[0]))
    for audio_format in FORMATS:
        # About 8 clips a shard, so that 4 workers have shards to read.
        size = 8 * (len(encode_clip(first_clip, audio_format)) + 1024) / 2**20
        folder = work / f"shards_{audio_format}_{size:.3f}mb"
        pack_shards(str(clip_folder), str(folder), shard_size_mb=size, audio_format=audio_format, progress=False)
        shards[audio_format] = find_shards(folder)
    extractor = BeatsFeatureExtractor()

    # 1. Per worker core.
    rows, per_core = [], {}
    for audio_format in FORMATS:
        clips = ShardedAudioClips(shards[audio_format], crop_seconds=CLIP_SECONDS, num_epochs=1)
        epoch(clips)  # warm-up
        wall, cpu = median_rate(lambda clips=clips: epoch(clips), args.clips, args.repeats)
        per_core[f"decode_{audio_format}"] = cpu
        rows.append({"work per clip": f"read + decode + crop, {audio_format.upper()}",
                     "clips/s (wall)": round(wall, 1), "clips/s per core (CPU time)": round(cpu, 1),
                     "shards": len(shards[audio_format])})
    for name, on_device in (("before: + fbank + masks (batches of 8)", False),
                            ("after: + padding + masks (batches of 8)", True)):
        collator = MaskedAudioModelingCollator(extractor, seed=0, features_on_device=on_device)
        clips = ShardedAudioClips(shards["flac"], crop_seconds=CLIP_SECONDS, num_epochs=1)
        items = list(clips)

        def worker(items=items, collator=collator, clips=clips):
            epoch(clips)
            for start in range(0, len(items), 8):
                collator(items[start : start + 8])

        worker()
        wall, cpu = median_rate(worker, args.clips, args.repeats)
        per_core["before" if not on_device else "after"] = cpu
        rows.append({"work per clip": f"FLAC {name}", "clips/s (wall)": round(wall, 1),
                     "clips/s per core (CPU time)": round(cpu, 1), "shards": len(shards["flac"])})
    print_table(rows, ["work per clip", "clips/s (wall)", "clips/s per core (CPU time)", "shards"],
                "Per data loader worker (one thread)")

    # 2. The whole input path.
    loader_rows = []
    for workers in (1, 2, 4):
        for on_device in (False, True):
            collator = MaskedAudioModelingCollator(extractor, seed=0, features_on_device=on_device)

            def run(workers=workers, collator=collator):
                clips = ShardedAudioClips(shards["flac"], crop_seconds=CLIP_SECONDS, num_epochs=1)
                return sum(len(batch["bool_masked_pos"]) for batch in
                           ShardStreamLoader(clips, collator, batch_size=8, num_workers=workers))

            run()
            wall, _ = median_rate(run, args.clips, args.repeats)
            loader_rows.append({"workers": workers, "fbank": "in the workers" if not on_device else "on the device",
                                "clips/s": round(wall, 1)})
    print_table(loader_rows, ["workers", "fbank", "clips/s"],
                f"Whole input path, FLAC, batches of 8 ({os.cpu_count()} logical CPUs on this machine)")

    # 3. The device's side: fbank of a batch of 32 10 s clips.
    device_rows = []
    batch = torch.from_numpy(np.stack([item["waveform"] for item in list(
        ShardedAudioClips(shards["wav"], crop_seconds=CLIP_SECONDS, num_epochs=1))[:32]]))
    lengths = torch.full((len(batch),), batch.shape[1])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        threads = 1 if device == "cpu" else torch.get_num_threads()
        on_device, on_lengths = batch.to(device), lengths.to(device)

        def fbank(on_device=on_device, on_lengths=on_lengths, device=device):
            extractor.featurize_padded(on_device, on_lengths)
            if device == "cuda":
                torch.cuda.synchronize()

        fbank()
        wall, _ = median_rate(fbank, len(batch), max(args.repeats, 5))
        device_rows.append({"device": device, "threads": threads, "fbank clips/s": round(wall, 1),
                            "share of a device at 500 clips/s": round(TARGET_CLIPS_PER_SECOND / wall, 3)})
    print_table(device_rows, ["device", "threads", "fbank clips/s", "share of a device at 500 clips/s"],
                "fbank + normalisation + frame mask of (32, 160000) on the training device")

    # 4. Cores to feed one GPU.
    feed = {
        "before_fbank_in_workers": round(TARGET_CLIPS_PER_SECOND / per_core["before"], 1),
        "after_fbank_on_device": round(TARGET_CLIPS_PER_SECOND / per_core["after"], 1),
        **{f"decode_only_{audio_format}": round(TARGET_CLIPS_PER_SECOND / per_core[f"decode_{audio_format}"], 1)
           for audio_format in FORMATS},
    }
    print(f"\nWorker cores to feed {TARGET_CLIPS_PER_SECOND} clips/s (10 s clips): {json.dumps(feed)}")

    path = write_results("input_pipeline", {
        "machine": machine_description(1),
        "note": (f"{os.cpu_count()} logical CPUs shared with other jobs while measured: the 2- and 4-worker rows "
                 "cannot scale past the cores there are; per-core figures use process CPU time, which competition "
                 "disturbs far less than wall time."),
        "load_average_1_5_15_min_before": [round(value, 2) for value in load_before],
        "clips": args.clips, "clip_seconds": CLIP_SECONDS, "repeats": args.repeats,
        "per_worker_core": rows, "input_path": loader_rows, "device_fbank": device_rows,
        f"cores_to_feed_{TARGET_CLIPS_PER_SECOND}_clips_per_s": feed,
    }, args.output)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
