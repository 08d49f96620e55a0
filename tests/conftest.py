"""Shared test setup: the repo root on sys.path (for `conversion/`), fixture paths, deterministic threads."""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)


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
