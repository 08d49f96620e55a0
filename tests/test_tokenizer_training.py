"""Tokenizer training by distillation (`beats_hf.training.pretraining`): the EMA codebook, the distillation model, and
end-to-end runs on a small generated corpus -- single process, resumed after a crash, and 2-process DDP on CPU."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_wav
from safetensors import safe_open
from transformers import AutoModel, HfArgumentParser, TrainerCallback, TrainingArguments

from beats_hf import (
    BeatsConfig,
    BeatsFeatureExtractor,
    BeatsForAudioClassification,
    BeatsForAudioTokenization,
    BeatsModel,
)
from beats_hf.audio_data import decode_audio
from beats_hf.training.pretraining.distillation import BeatsTokenizationDistillationModel, student_config_from_teacher
from beats_hf.training.pretraining.quantization import NormEmaCodebook, codebook_perplexity, spherical_kmeans
from beats_hf.training.pretraining.train_tokenizer import StudentArguments, load_teacher, run_tokenizer_training

SAMPLING_RATE = 16000
TEACHER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_embedding_dim=32,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STUDENT = dict(codebook_size=64, codebook_dim=16)
# The end-to-end runs are 40 steps long: an EMA horizon of 10 updates (decay 0.9) lets the codebook follow the student.
TRAINED_STUDENT = {**STUDENT, "codebook_decay": 0.9}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def generated_clip(rng: np.random.Generator) -> np.ndarray:
    """1.5-2.5 s of a harmonic tone with drifting pitch and tremolo, over noise of random level and colour."""
    time = np.arange(int(rng.uniform(1.5, 2.5) * SAMPLING_RATE)) / SAMPLING_RATE
    f0 = rng.uniform(80, 1500)
    drift = 1 + rng.uniform(-0.1, 0.1) * time
    harmonics = range(1, rng.integers(2, 9))
    tone = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * f0 * k * drift * time) for k in harmonics)
    tone *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 6) * time)
    width = int(rng.integers(1, 12))
    noise = np.convolve(rng.standard_normal(time.size), np.ones(width) / width, mode="same")
    audio = tone / np.abs(tone).max() + rng.uniform(0.0, 0.5) * noise
    return 0.8 * audio / np.abs(audio).max()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for index in range(24):
        write_wav(folder / f"clip_{index:02d}.wav", generated_clip(rng))
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    BeatsModel(BeatsConfig(**TEACHER)).save_pretrained(folder)
    return folder


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), use_cpu=True, per_device_train_batch_size=4, learning_rate=1e-4,
        lr_scheduler_type="constant", logging_steps=1, save_steps=1000, report_to=[], seed=0, disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


def logged(output_dir: Path, key: str) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry[key] for entry in history if key in entry]


# ---------------------------------------------------------------------------------------------------------------------
# The EMA codebook
# ---------------------------------------------------------------------------------------------------------------------


def test_norm_ema_update_follows_the_official_rule():
    """Used codes move towards the normalised mean of their vectors and are renormalised; unused codes stay."""
    decay = 0.9
    codebook = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    vectors = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [1.0, -0.1, 0.1], [0.3, 1.0, 0.0]]), dim=-1)
    codes = torch.tensor([0, 0, 1])
    ema = NormEmaCodebook(3, decay)
    counts = ema.update(codebook, vectors, codes)

    start = np.eye(3)
    mean_0 = vectors[:2].sum(0).numpy() / np.linalg.norm(vectors[:2].sum(0).numpy())
    expected_0 = decay * start[0] + (1 - decay) * mean_0
    expected_1 = decay * start[1] + (1 - decay) * vectors[2].numpy()
    np.testing.assert_allclose(codebook[0].numpy(), expected_0 / np.linalg.norm(expected_0), atol=1e-6)
    np.testing.assert_allclose(codebook[1].numpy(), expected_1 / np.linalg.norm(expected_1), atol=1e-6)
    assert codebook[2].tolist() == [0.0, 0.0, 1.0]
    assert counts.tolist() == [2.0, 1.0, 0.0]
    np.testing.assert_allclose(ema.cluster_size.numpy(), [0.2, 0.1, 0.0], atol=1e-7)
    assert ema.updates_since_used.tolist() == [0, 0, 1]


def test_dead_codes_count_updates_without_use():
    ema = NormEmaCodebook(4, decay=0.5)  # EMA horizon 1 / (1 - 0.5) = 2 updates
    assert ema.dead_after_updates == 2
    codebook = torch.eye(4)
    for _ in range(2):
        ema.update(codebook, codebook[:2], torch.tensor([0, 1]))
    assert ema.num_dead_codes() == 2  # codes 2 and 3
    ema.update(codebook, codebook[2:3], torch.tensor([2]))
    assert ema.num_dead_codes() == 1  # code 2 revived, codes 0 and 1 unused for 1 update only: code 3
    assert ema.updates_since_used.tolist() == [1, 1, 0, 3]


def test_dead_codes_are_restarted_onto_current_vectors():
    """With restarts, a code unused for `dead_after_updates` updates moves next to one of the step's vectors (distinct
    vectors for distinct codes); used codes follow the EMA rule as before; a resumed statistics object draws the same."""
    codebook = torch.eye(4)
    vectors = F.normalize(torch.tensor([[1.0, 0.1, 0.0, 0.0], [0.1, 1.0, 0.0, 0.0], [0.7, 0.7, 0.1, 0.0]]), dim=-1)
    codes = torch.tensor([0, 1, 0])
    ema = NormEmaCodebook(4, decay=0.9, dead_after_updates=2, restart_dead_codes=True, seed=3)
    ema.update(codebook, vectors, codes)
    assert codebook[2:].tolist() == torch.eye(4)[2:].tolist() and int(ema.restarted_codes) == 0  # not dead yet
    state, before = {k: v.clone() for k, v in ema.state_dict().items()}, codebook.clone()
    ema.update(codebook, vectors, codes)
    assert int(ema.restarted_codes) == 2 and ema.num_dead_codes() == 0
    assert ema.updates_since_used.tolist() == [0, 0, 0, 0]
    nearest = (codebook[2:] @ vectors.t()).max(dim=1)
    assert (nearest.values > 0.99).all() and nearest.indices[0] != nearest.indices[1], codebook
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(4))

    resumed = NormEmaCodebook(4, decay=0.9, dead_after_updates=2, restart_dead_codes=True, seed=3)
    resumed.load_state_dict(state)
    resumed.update(before, vectors, codes)
    assert torch.equal(before, codebook)

    plain = NormEmaCodebook(4, decay=0.9, dead_after_updates=2)  # the official rule: dead codes stay where they are
    codebook = torch.eye(4)
    for _ in range(3):
        plain.update(codebook, vectors, codes)
    assert codebook[2:].tolist() == torch.eye(4)[2:].tolist() and plain.num_dead_codes() == 2


def test_spherical_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    vectors = F.normalize(centers.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 8, generator=generator), dim=-1)
    centroids, counts = spherical_kmeans(vectors, 4, num_iterations=10, generator=torch.Generator().manual_seed(1))
    best = (centroids @ centers.t()).max(0).values
    assert (best > 0.99).all(), best
    assert sorted(counts.tolist()) == [50.0, 50.0, 50.0, 50.0]
    torch.testing.assert_close(centroids.norm(dim=-1), torch.ones(4))


def test_spherical_kmeans_with_fewer_distinct_vectors_than_codes_gives_distinct_codes():
    """Silence gives identical patches: duplicated centroids would tie and stay dead, so they are jittered."""
    vectors = F.normalize(torch.randn(3, 8), dim=-1).repeat(20, 1)
    centroids, counts = spherical_kmeans(vectors, 16, generator=torch.Generator().manual_seed(0))
    assert torch.unique(centroids, dim=0).shape[0] == 16
    assert counts.sum() == 60


def test_codebook_perplexity():
    assert codebook_perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])) == pytest.approx(4.0)
    assert codebook_perplexity(torch.tensor([9.0, 0.0, 0.0])) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# The distillation model
# ---------------------------------------------------------------------------------------------------------------------


def tiny_model(**overrides) -> BeatsTokenizationDistillationModel:
    config = student_config_from_teacher(BeatsConfig(**TEACHER), **{**STUDENT, "layerdrop": 0.0, **overrides})
    return BeatsTokenizationDistillationModel(config, teacher_hidden_size=24)


def two_clips() -> list[np.ndarray]:
    """A 2 s clip and a 1.25 s clip."""
    rng = np.random.default_rng(1)
    return [generated_clip(rng)[:length].astype(np.float32) for length in (32000, 20000)]


def batch(clips: list[np.ndarray] | None = None) -> dict:
    clips = two_clips() if clips is None else clips
    return dict(BeatsFeatureExtractor()(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt"))


def test_first_training_forward_initialises_the_codebook_and_eval_leaves_it():
    model = tiny_model()
    inputs = batch()
    num_patches = inputs["input_features"].shape[1] // 16 * 8
    targets = torch.randn(2, num_patches, 24)
    random_codebook = model.student.quantizer.codebook.detach().clone()

    model.eval()
    with torch.no_grad():
        model(**inputs, teacher_hidden_states=targets)
    assert torch.equal(model.student.quantizer.codebook, random_codebook)
    assert not model.codebook_ema.is_initialized

    model.train()
    output = model(**inputs, teacher_hidden_states=targets)
    assert model.codebook_ema.is_initialized
    codebook = model.student.quantizer.codebook.detach()
    assert not torch.equal(codebook, random_codebook)
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(64))
    valid = output.patch_mask
    assert int(output.code_counts.sum()) == int(valid.sum())
    assert torch.equal(output.token_ids == -100, ~valid)
    assert (output.token_ids[valid] >= 0).all()


def test_every_trainable_parameter_gets_a_gradient_and_the_codebook_none():
    model = tiny_model(commitment_weight=0.25).train()
    inputs = batch()
    targets = torch.randn(2, inputs["input_features"].shape[1] // 16 * 8, 24)
    output = model(**inputs, teacher_hidden_states=targets)
    expected = output.distillation_loss.item() + 0.25 * output.commitment_loss.item()
    assert output.loss.item() == pytest.approx(expected, rel=1e-6)
    output.loss.backward()
    codebook = model.student.quantizer.codebook
    assert codebook.grad is None and not codebook.requires_grad
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.float_sensitive
def test_padding_does_not_change_the_losses():
    """A clip alone and the same clip padded in a batch next to a longer one: same ids, same per-clip losses. (Alone
    means its own frames cut out of the batch: the fbank's batch invariance holds to rounding, tested elsewhere.)"""
    model = tiny_model().eval()
    inputs = batch()
    frames = int(inputs["attention_mask"][1].sum())
    alone = {key: value[1:, :frames] for key, value in inputs.items()}
    num_patches = frames // 16 * 8
    targets = torch.randn(2, inputs["input_features"].shape[1] // 16 * 8, 24)
    with torch.no_grad():
        padded = model(**inputs, teacher_hidden_states=targets)
        single = model(**alone, teacher_hidden_states=targets[1:, :num_patches])
        short_only = model(
            input_features=inputs["input_features"][1:], attention_mask=inputs["attention_mask"][1:],
            teacher_hidden_states=targets[1:],
        )
    assert torch.equal(padded.token_ids[1, :num_patches], single.token_ids[0])
    assert (padded.token_ids[1, num_patches:] == -100).all()
    torch.testing.assert_close(short_only.distillation_loss, single.distillation_loss, atol=1e-5, rtol=1e-5)


def test_student_config_follows_the_teacher_with_overrides():
    teacher = BeatsConfig(**TEACHER)
    config = student_config_from_teacher(teacher, codebook_size=64, num_hidden_layers=1)
    assert (config.hidden_size, config.num_hidden_layers, config.codebook_size) == (32, 1, 64)
    with pytest.raises(ValueError, match="patch_size"):
        student_config_from_teacher(teacher, patch_size=8)
    (parsed,) = HfArgumentParser((StudentArguments,)).parse_args_into_dataclasses(
        args=["--student_codebook_size", "64", "--student_codebook_decay", "0.9"]
    )
    assert parsed.overrides() == {"codebook_size": 64, "codebook_decay": 0.9}


def test_teacher_from_a_classification_folder_is_its_encoder(tmp_path):
    """The iter3+ recipe: a fine-tuned classifier's encoder is the teacher."""
    torch.manual_seed(0)
    classifier = BeatsForAudioClassification(BeatsConfig(**TEACHER, num_labels=5))
    classifier.save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path)
    assert type(teacher) is BeatsModel
    expected = classifier.beats.state_dict()
    assert teacher.state_dict().keys() == expected.keys()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert load_teacher(classifier) is classifier.beats


def test_missing_teacher_gives_a_clear_error(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="No teacher model folder"):
        load_teacher(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_teacher(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "beats_hf.training.pretraining.train_tokenizer", "--teacher", str(tmp_path / "nowhere"),
         "--data", str(corpus), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert result.returncode != 0
    assert "No teacher model folder" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# End-to-end runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(corpus, teacher_dir, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("trained")
    metrics = run_tokenizer_training(
        teacher_dir, corpus, output_dir, student_overrides=TRAINED_STUDENT,
        training_args=training_args(output_dir, max_steps=40, save_steps=20),
    )
    return output_dir, metrics


def test_distillation_lowers_the_loss_and_logs_every_metric(trained):
    output_dir, metrics = trained
    losses = logged(output_dir, "distillation_loss")
    assert len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"distillation loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last < 0.7 * first, (first, last)
    for key in ("commitment_loss", "codebook_usage", "codebook_perplexity", "dead_codes"):
        assert len(logged(output_dir, key)) == 40, key
    assert metrics["last_distillation_loss"] == losses[-1]


def test_trained_tokenizer_keeps_most_codes_alive(trained, corpus):
    output_dir, _ = trained
    tokenizer = AutoModel.from_pretrained(output_dir)
    feature_extractor = BeatsFeatureExtractor.from_pretrained(output_dir)
    clips = [decode_audio(str(path)) for path in sorted(corpus.glob("*.wav"))]
    with torch.no_grad():
        ids = tokenizer(**feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")).token_ids
    used = ids[ids != -100].unique().numel()
    print(f"codes used by the trained tokenizer on the corpus: {used} of 64; logged usage per step "
          f"{np.mean(logged(output_dir, 'codebook_usage')[-5:]):.2f} (last 5)")
    # Measured: 39 (seed 0), 33-46 over seeds 0-3; a collapsed codebook uses a handful.
    assert used >= 0.4 * 64, used


def test_saved_tokenizer_holds_the_student_only(trained):
    output_dir, metrics = trained
    tokenizer = AutoModel.from_pretrained(output_dir)
    assert type(tokenizer) is BeatsForAudioTokenization
    config = tokenizer.config
    assert (config.codebook_size, config.codebook_dim, config.hidden_size) == (64, 16, 32)
    with safe_open(output_dir / "model.safetensors", "pt") as handle:
        saved_keys = set(handle.keys())
    assert saved_keys == set(BeatsForAudioTokenization(tokenizer.config).state_dict())
    assert not any(key.startswith(("estimator", "codebook_ema", "student.")) for key in saved_keys)
    assert (output_dir / "preprocessor_config.json").is_file()
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 40
    torch.testing.assert_close(tokenizer.quantizer.codebook.norm(dim=-1), torch.ones(64))
    assert metrics["codebook_sha256"]
    # The estimator and the EMA statistics are in the checkpoints, for resuming.
    with safe_open(output_dir / "checkpoint-40" / "model.safetensors", "pt") as handle:
        checkpoint_keys = set(handle.keys())
        assert int(handle.get_tensor("codebook_ema.initialized")) == 1
    assert any(key.startswith("estimator.") for key in checkpoint_keys)
    assert {"codebook_ema.cluster_size", "codebook_ema.updates_since_used"} <= checkpoint_keys


class StopAt(TrainerCallback):
    """Simulates a crash: raises once `global_step` reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped at step {state.global_step}")


class RecordStart(TrainerCallback):
    """Records the step and the codebook state the run starts from (after any checkpoint was loaded)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.global_step = state.global_step
        self.state = {key: value.clone() for key, value in model.state_dict().items() if "codebook" in key}


def test_killed_run_resumes_from_its_checkpoint(corpus, teacher_dir, tmp_path):
    """Stopped at step 12 with checkpoints every 5 steps, rerun with resume: it starts at step 10 with checkpoint-10's
    codebook and EMA statistics, ends at step 20, and ends exactly where an uninterrupted run ends."""
    dataset = datasets.Dataset.from_dict({"audio": [str(path) for path in sorted(corpus.glob("*.wav"))]})
    dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    arguments = dict(max_steps=20, save_steps=5, lr_scheduler_type="linear")

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_tokenizer_training(teacher_dir, dataset, interrupted, student_overrides=STUDENT,
                               training_args=training_args(interrupted, **arguments), callbacks=[StopAt(12)])
    assert sorted(path.name for path in interrupted.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert not (interrupted / "model.safetensors").exists()

    start = RecordStart()
    run_tokenizer_training(teacher_dir, dataset, interrupted, student_overrides=STUDENT,
                           training_args=training_args(interrupted, resume_from_checkpoint=True, **arguments),
                           callbacks=[start])
    assert start.global_step == 10
    with safe_open(interrupted / "checkpoint-10" / "model.safetensors", "pt") as handle:
        for key, value in start.state.items():
            assert torch.equal(value, handle.get_tensor(key)), key
    assert start.state["codebook_ema.updates_since_used"].sum() > 0  # not a fresh state
    steps = [entry["step"] for entry in json.loads((interrupted / "trainer_state.json").read_text())["log_history"]
             if "distillation_loss" in entry]
    assert steps == list(range(1, 21))

    uninterrupted = tmp_path / "uninterrupted"
    run_tokenizer_training(teacher_dir, dataset, uninterrupted, student_overrides=STUDENT,
                           training_args=training_args(uninterrupted, **arguments))
    resumed_codebook = AutoModel.from_pretrained(interrupted).quantizer.codebook
    assert torch.equal(resumed_codebook, AutoModel.from_pretrained(uninterrupted).quantizer.codebook)


_DDP_SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import torch
    from transformers import TrainerCallback

    from beats_hf.training.pretraining import quantization, train_tokenizer

    local_statistics = []
    _all_reduce_sum = quantization.all_reduce_sum


    def recording_all_reduce_sum(tensor):
        local_statistics.append(tensor.clone())  # this process's own code counts and sums, before the sum
        return _all_reduce_sum(tensor)


    quantization.all_reduce_sum = recording_all_reduce_sum


    class DumpRankState(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            torch.save(
                {
                    "codebook": model.student.quantizer.codebook.detach().clone(),
                    "cluster_size": model.codebook_ema.cluster_size.clone(),
                    "local_statistics": local_statistics,
                    "global_step": state.global_step,
                    "world_size": args.world_size,
                },
                os.path.join(args.output_dir, f"rank{args.process_index}.pt"),
            )


    sys.exit(train_tokenizer.main(sys.argv[1:], callbacks=[DumpRankState()]))
    """
)


def test_two_process_ddp_ends_with_identical_codebooks(corpus, teacher_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each process sees other clips (its local code statistics
    differ), yet both end with bit-identical codebooks, because the statistics are summed before every update."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_DDP_SCRIPT)
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
        "--teacher", str(teacher_dir), "--data", str(corpus), "--output_dir", str(output_dir), "--use_cpu", "true",
        "--max_steps", "8", "--per_device_train_batch_size", "2", "--learning_rate", "1e-4", "--logging_steps", "2",
        "--save_steps", "100", "--report_to", "none", "--disable_tqdm", "true",
        "--student_codebook_size", "64", "--student_codebook_dim", "16",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [torch.load(output_dir / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert [rank["global_step"] for rank in ranks] == [8, 8]
    local = [rank["local_statistics"] for rank in ranks]
    assert len(local[0]) == len(local[1]) == 8
    assert all(not torch.equal(a, b) for a, b in zip(*local))
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert torch.equal(ranks[0]["cluster_size"], ranks[1]["cluster_size"])
    # The saved tokenizer is rank 0's codebook.
    assert torch.equal(AutoModel.from_pretrained(output_dir).quantizer.codebook, ranks[0]["codebook"])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["last_codebook_usage"] > 0
