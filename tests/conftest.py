"""Shared test setup: the repo root on sys.path (for `conversion/`), fixture paths, deterministic threads."""

import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "float_sensitive: depends on the CPU's floating-point code paths (MKL's FFT and matmul); the README's test "
        "command runs these again under MKL_CBWR=AVX2 and MKL_CBWR=COMPATIBLE",
    )


def write_wav(path, waveform: np.ndarray, sampling_rate: int = 16000) -> None:
    """16-bit PCM WAV of float audio in [-1, 1] (clipped), mono `(samples,)` or `(channels, samples)`."""
    channels = np.atleast_2d(np.asarray(waveform, dtype=np.float64))
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(sampling_rate)
        handle.writeframes((np.clip(channels.T, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def one_thread():
    """Modules that use it (`pytestmark = pytest.mark.usefixtures("one_thread")`) run on one thread: tiny models are
    faster so, do not crawl when the other core is busy, and killed children and their reruns compute the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    """The tiny BEATs architecture the model tests share (2 layers, width 32, 4 heads); overrides win."""
    from beats_hf import BeatsConfig

    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, patch_embedding_dim=24,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=64,
        layerdrop=0.0,
    )
    return BeatsConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="session")
def reference_inputs() -> dict:
    return torch.load(OFFICIAL_TINY / "inputs.pt", weights_only=True)


def load_reference(name: str) -> tuple[dict, dict]:
    """(official checkpoint dict, official outputs per case) for `tiny_{name}.pt`."""
    checkpoint = torch.load(OFFICIAL_TINY / f"tiny_{name}.pt", weights_only=True)
    outputs = torch.load(OFFICIAL_TINY / f"outputs_{name}.pt", weights_only=True)["cases"]
    return checkpoint, outputs


def official_clip_features(reference_inputs: dict, index: int) -> dict:
    """The official fbank of reference clip `index` alone, as model inputs. The official code computes its padded
    batch clip by clip, and a frame inside a clip never reaches its padding, so the first frames of row `index` are
    exactly the clip's own fbank (the reference data proves it for clip 0, its `single_unpadded` case)."""
    from beats_hf.feature_extraction_beats import num_frames

    frames = num_frames(reference_inputs["individual_waveforms"][index].shape[-1])
    features = reference_inputs["preprocess"]["batch_padded"]["fbank"][index : index + 1, :frames]
    return {"input_features": features, "attention_mask": torch.ones(1, frames, dtype=torch.int32)}


def official_padded_batch(reference_inputs: dict, padding_value: float = 0.0) -> dict:
    """The three reference clips as one padded batch built from the official fbank: each clip's own frames, then
    `padding_value` and attention mask 0, as BeatsFeatureExtractor pads them."""
    from beats_hf.feature_extraction_beats import num_frames

    features = reference_inputs["preprocess"]["batch_padded"]["fbank"].clone()
    counts = torch.tensor([num_frames(waveform.shape[-1]) for waveform in reference_inputs["individual_waveforms"]])
    attention_mask = torch.arange(features.shape[1])[None, :] < counts[:, None]
    features[~attention_mask] = padding_value
    return {"input_features": features, "attention_mask": attention_mask.to(torch.int32)}


# Lines for the end of the pytest run (e.g. which MKL code paths change the fbank on this CPU).
RUN_NOTES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for note in RUN_NOTES:
        terminalreporter.write_line(note)


def finetune(argv: list[str]) -> dict:
    """Fine-tuning as `examples/run_audio_classification.py ARGV` runs it, returning the final metrics."""
    from transformers import HfArgumentParser, TrainingArguments

    from beats_hf.training.finetuning import DataArguments, ModelArguments, run_finetuning

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return run_finetuning(*parser.parse_args_into_dataclasses(args=argv))
