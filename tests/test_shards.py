"""Tar shards: packing, exactly-once streaming over processes and workers, block shuffling, resuming a stream
mid-epoch, features on the training device, and a streamed `beats-hf pretrain` killed and resumed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_wav

from beats_hf import BeatsFeatureExtractor
from beats_hf.audio_data import AudioFeatureCollator, decode_audio, load_audio_dataset
from beats_hf.audio_shards import SHARD_INDEX_STRIDE, ShardedAudioClips, find_shards, iter_shard
from beats_hf.cli import main as cli
from beats_hf.pack_shards import pack_shards
from beats_hf.training.pretraining.collator import MaskedAudioModelingCollator
from beats_hf.training.streaming import ShardStreamLoader, merge_positions

REPO = Path(__file__).resolve().parents[1]
NUM_CLIPS = 24
# A 1 s (+ up to 46 samples) 16-bit WAV member: its tar header and its data rounded up to 512-byte blocks.
CLIP_BYTES = 512 + 32256

pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    seconds = np.arange(16000 + 2 * index) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * index) * seconds) + rng.normal(0, 0.01, seconds.size)).astype("f4")


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    for index in range(NUM_CLIPS):
        write_wav(folder / f"clip_{index:02d}.wav", _clip(index))
    (folder / "broken.wav").write_bytes(b"not audio")
    return folder


@pytest.fixture(scope="module")
def shards(audio_folder, tmp_path_factory) -> Path:
    """24 clips in 6 WAV shards of 4."""
    folder = tmp_path_factory.mktemp("shards")
    pack_shards(str(audio_folder), str(folder), shard_size_mb=4 * CLIP_BYTES / 2**20, audio_format="wav",
                progress=False)
    return folder


def _all_indices(shard_folder: Path) -> list[int]:
    manifest = json.loads((shard_folder / "shards.json").read_text())
    return sorted(shard * SHARD_INDEX_STRIDE + member for shard, entry in enumerate(manifest["shards"])
                  for member in range(entry["num_clips"]))


# ---------------------------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------------------------


def test_pack_shards_sizes_manifest_and_rerun(audio_folder, shards, tmp_path, monkeypatch):
    manifest = json.loads((shards / "shards.json").read_text())
    assert manifest["num_clips"] == NUM_CLIPS and manifest["skipped_unreadable"] == 1
    assert [entry["num_clips"] for entry in manifest["shards"]] == [4] * 6
    assert all(entry["bytes"] == os.path.getsize(shards / entry["name"]) for entry in manifest["shards"])
    assert find_shards(shards) == [str(shards / entry["name"]) for entry in manifest["shards"]]
    assert not [name for name in os.listdir(shards) if name.startswith(".")]  # no temporary or progress file left

    # A run killed after two shards: the rerun keeps them as they are and writes the same shards as one run.
    from beats_hf import pack_shards as module

    folder, write = tmp_path / "killed", module._write_shard
    calls = []

    def failing(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(*args)

    monkeypatch.setattr(module, "_write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_shards(str(audio_folder), str(folder), shard_size_mb=4 * CLIP_BYTES / 2**20, audio_format="wav",
                    progress=False)
    monkeypatch.setattr(module, "_write_shard", write)
    (folder / "mine.txt").write_text("not the packer's")
    first = {name: os.stat(folder / name).st_mtime_ns for name in ("shard-000000.tar", "shard-000001.tar")}
    again = pack_shards(str(audio_folder), str(folder), shard_size_mb=4 * CLIP_BYTES / 2**20, audio_format="wav",
                        progress=False)
    assert {name: os.stat(folder / name).st_mtime_ns for name in first} == first
    assert again["shards"] == manifest["shards"]
    for entry in manifest["shards"]:
        assert (folder / entry["name"]).read_bytes() == (shards / entry["name"]).read_bytes()
    assert (folder / "mine.txt").exists()
    # Finished: nothing to do; other settings: refused.
    assert pack_shards(str(audio_folder), str(folder), shard_size_mb=4 * CLIP_BYTES / 2**20, audio_format="wav",
                       progress=False) == again
    with pytest.raises(ValueError, match="format: 'wav' -> 'flac'"):
        pack_shards(str(audio_folder), str(folder), shard_size_mb=4 * CLIP_BYTES / 2**20, audio_format="flac",
                    progress=False)


@pytest.mark.parametrize("audio_format", ["flac", "wav", "mp3", "keep"])
def test_packed_members_decode(audio_folder, tmp_path, audio_format):
    assert cli(["pack-shards", "--data", str(audio_folder), "--output_dir", str(tmp_path), "--format", audio_format,
                "--shard_size_mb", "1", "--no_progress"]) == 0
    (shard,) = find_shards(tmp_path)
    examples = list(iter_shard(shard))
    extension = "wav" if audio_format == "keep" else audio_format
    assert [sorted(set(example) - {"__key__", "__url__"}) for example in examples] == [[extension]] * NUM_CLIPS
    for index in (0, 23):
        decoded = decode_audio({"bytes": examples[index][extension]})
        original = decode_audio(str(audio_folder / f"clip_{index:02d}.wav"))
        if audio_format == "mp3":  # lossy, with the encoder's delay and padding
            assert abs(decoded.size - original.size) < 2000 and decoded.std() == pytest.approx(original.std(), rel=0.1)
        else:
            np.testing.assert_allclose(decoded, original, atol=1e-4)
    if audio_format == "keep":
        assert examples[0]["wav"] == (audio_folder / "clip_00.wav").read_bytes()
    # The webdataset builder of datasets reads the same shards.
    streamed = load_audio_dataset(str(tmp_path), streaming=True)
    assert sum(1 for _ in streamed) == NUM_CLIPS


# ---------------------------------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------------------------------


def _epoch_indices(shard_folder, world_size, workers, **kwargs) -> list[list[int]]:
    """The clip indices each process delivers in one epoch, read through DataLoaders with `workers` workers."""
    per_rank = []
    for rank in range(world_size):
        clips = ShardedAudioClips(find_shards(shard_folder), crop_seconds=0.5, num_epochs=1, rank=rank,
                                  world_size=world_size, **kwargs)
        loader = torch.utils.data.DataLoader(clips, batch_size=3, num_workers=workers,
                                             collate_fn=lambda items: [item["index"] for item in items])
        per_rank.append([index for batch in loader for index in batch])
    return per_rank


def test_every_clip_once_per_epoch_over_processes_and_workers(shards):
    # 6 shards for 2 processes x 2 workers: two readers get one shard more, no clip is lost or repeated.
    per_rank = _epoch_indices(shards, world_size=2, workers=2, shuffle_buffer=5, seed=3)
    delivered = per_rank[0] + per_rank[1]
    assert sorted(delivered) == _all_indices(shards)
    assert not set(per_rank[0]) & set(per_rank[1])
    with pytest.raises(ValueError, match="6 shard.* for 8 readers"):
        ShardStreamLoader(ShardedAudioClips(find_shards(shards)), list, batch_size=1, num_workers=4, world_size=2)


def test_shuffle_reproducible_by_seed_and_new_every_epoch(shards):
    def order(seed, epochs=2):
        clips = ShardedAudioClips(find_shards(shards), crop_seconds=None, shuffle_buffer=8, seed=seed,
                                  num_epochs=epochs)
        indices = [(item["epoch"], item["index"]) for item in clips]
        return [[index for epoch, index in indices if epoch == e] for e in range(epochs)]

    first, second = order(0)
    assert sorted(first) == sorted(second) == _all_indices(shards)
    assert first != second and first != sorted(first)
    assert order(0) == [first, second]
    assert order(1)[0] != first


def _batches(loader, count=None):
    out = []
    for batch in loader:
        out.append((batch["index"].tolist(), batch["input_features"]))
        if count is not None and len(out) == count:
            break
    return out


def test_resume_mid_stream_delivers_exactly_the_rest(shards):
    collator = AudioFeatureCollator(BeatsFeatureExtractor())

    def loader():
        clips = ShardedAudioClips(find_shards(shards), crop_seconds=0.5, shuffle_buffer=3, seed=0, num_epochs=2)
        return ShardStreamLoader(clips, collator, batch_size=2, num_workers=2)

    reference = _batches(loader())
    assert len(reference) == NUM_CLIPS  # 2 epochs of 24 clips, 2 per batch
    interrupted = loader()
    seen = _batches(interrupted, count=7)  # mid-epoch, mid-block, the other worker's turn next
    saved = json.loads(json.dumps(merge_positions([interrupted.position()])))  # as trainer_state.json keeps it
    resumed = loader()
    resumed.saved = lambda: saved
    rest = _batches(resumed)
    assert [indices for indices, _ in seen + rest] == [indices for indices, _ in reference]
    for (_, features), (_, expected) in zip(seen + rest, reference, strict=True):
        assert torch.equal(features, expected)  # same crops too


# ---------------------------------------------------------------------------------------------------------------------
# Features on the training device
# ---------------------------------------------------------------------------------------------------------------------


def test_device_features_equal_the_collator_features(shards):
    from beats_hf.training.pretraining.pretrain import MaskedAudioModelingTrainer

    extractor = BeatsFeatureExtractor()
    items = list(ShardedAudioClips(find_shards(shards), crop_seconds=None, num_epochs=1))[:5]
    on_cpu = MaskedAudioModelingCollator(extractor, seed=4)(items)
    padded = MaskedAudioModelingCollator(extractor, seed=4, features_on_device=True)(items)
    assert set(padded) == {"input_values", "lengths", "patch_mask", "bool_masked_pos"}
    trainer = type("T", (), {"processing_class": extractor, "args": type("A", (), {"device": torch.device("cpu")})})
    computed = MaskedAudioModelingTrainer.device_features(trainer, padded)
    for key in ("input_features", "attention_mask", "patch_mask", "bool_masked_pos"):
        assert computed[key].dtype == on_cpu[key].dtype and torch.equal(computed[key], on_cpu[key]), key


# ---------------------------------------------------------------------------------------------------------------------
# End to end: a streamed pre-training run, killed after a checkpoint and resumed
# ---------------------------------------------------------------------------------------------------------------------

_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import transformers
    save_checkpoint = transformers.Trainer._save_checkpoint

    def patched(self, *args, **kwargs):
        save_checkpoint(self, *args, **kwargs)
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    transformers.Trainer._save_checkpoint = patched
    from beats_hf.cli import main
    main(sys.argv[1:])
    """
)


def test_streamed_pretraining_killed_and_resumed_gives_the_same_weights(shards, tmp_path):
    def arguments(output):
        return ["pretrain", "--data", str(shards), "--streaming", "--shuffle_buffer", "4", "--output_dir", str(output),
                "--model_preset", "tiny", "--crop_seconds", "0.6", "--max_steps", "4", "--save_steps", "2",
                "--per_device_train_batch_size", "3", "--dataloader_num_workers", "2", "--features_on_device",
                "--use_cpu", "--disable_tqdm", "true", "--report_to", "none", "--seed", "0", "--logging_steps", "1"]

    assert cli(arguments(tmp_path / "reference")) == 0
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, *arguments(tmp_path / "resumed")], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "checkpoint-4").exists()
    saved = json.loads((tmp_path / "resumed" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["StreamPositionCallback"]["attributes"]["stream"]["readers"] == 2
    assert cli(arguments(tmp_path / "resumed")) == 0

    def losses(folder):
        state = json.loads((folder / "trainer_state.json").read_text())
        return [entry["loss"] for entry in state["log_history"] if "loss" in entry]

    assert losses(tmp_path / "resumed") == losses(tmp_path / "reference")
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == (
        tmp_path / "reference" / "model.safetensors"
    ).read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# Two processes: 1 node x 2 and 2 nodes x 1 (localhost, gloo), every stage of `beats-hf iterate`, a kill and a resume
# ---------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _iterate_launches(shards: Path, output: Path, nodes: int) -> list[list[str]]:
    """The `accelerate launch` command of each node: 2 processes in all, as 1 node x 2 or 2 nodes x 1."""
    iterate = ["-m", "beats_hf.cli", "iterate", "--data", str(shards), "--streaming", "--shuffle_buffer", "4",
               "--output_dir", str(output), "--iterations", "2", "--model_preset", "tiny", "--crop_seconds", "0.6",
               "--max_steps", "4", "--tokenizer_max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
               "--per_device_train_batch_size", "3", "--dataloader_num_workers", "0", "--use_cpu",
               "--disable_tqdm", "true", "--report_to", "none", "--seed", "0"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_machines", str(nodes)]
    if nodes == 1:
        return [launch + iterate]
    port = str(_free_port())
    return [launch + ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port]
            + iterate for rank in range(nodes)]


def _kill_processes_naming(text: str) -> None:
    """SIGKILL every process whose command line contains `text` (read from /proc, as `pkill -f` would)."""
    import signal

    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass  # gone already


def _start(commands: list[list[str]]) -> list[subprocess.Popen]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return [subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True) for command in commands]


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def test_iterate_on_shards_two_nodes_killed_and_resumed_equals_one_node(shards, tmp_path):
    import time

    reference, resumed = tmp_path / "one_node", tmp_path / "two_nodes"
    _finish(_start(_iterate_launches(shards, reference, nodes=1)))

    # 2 nodes x 1 process, killed (every process of both nodes) once the second tokenizer has a checkpoint.
    processes = _start(_iterate_launches(shards, resumed, nodes=2))
    mark = resumed / "iteration_2" / "tokenizer.work" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 600
    while not mark.exists() and time.time() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.02)  # the checkpoint lives for 2 tiny steps before the stage is renamed: poll often
    assert mark.exists(), [p.communicate()[0][-2000:] for p in processes]
    # The launchers and the workers they started (torchrun may put those in other process groups): every process
    # whose command line names this output folder.
    _kill_processes_naming(str(resumed))
    for process in processes:
        process.wait()
    assert not (resumed / "iteration_2" / "ssl").exists()
    outputs = _finish(_start(_iterate_launches(shards, resumed, nodes=2)))
    # Finished stages are kept; the interrupted one resumes (or, killed just after its rename, is found finished).
    assert "iteration 1/2: ssl already done" in outputs[0], outputs[0][-3000:]
    resumed_stage = "resuming from iteration_2/tokenizer.work" in outputs[0] or "found finished" in outputs[0]
    assert resumed_stage, outputs[0][-3000:]

    # The same stages, bit for bit: the run is the same whatever the node layout and the kill.
    for stage in ("iteration_1/ssl", "iteration_2/tokenizer", "iteration_2/ssl"):
        assert (resumed / stage / "model.safetensors").read_bytes() == (
            reference / stage / "model.safetensors"
        ).read_bytes(), stage
    stages = json.loads((resumed / "iterations.json").read_text())["stages"]
    # Both processes ended with the same codebook (train-tokenizer compares their checksums), as in the reference.
    reference_stages = json.loads((reference / "iterations.json").read_text())["stages"]
    checksum = stages["iteration_2/tokenizer"]["metrics"]["codebook_sha256"]
    assert checksum == reference_stages["iteration_2/tokenizer"]["metrics"]["codebook_sha256"]
    # Each stage streamed over 2 readers (2 processes x no workers), its position kept in its checkpoints.
    record = json.loads((resumed / "beats_hf_run.json").read_text())
    assert record["status"] == "finished" and record["settings"]["streaming"] is True
