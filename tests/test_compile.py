"""`torch.compile` of BeatsModel: one graph (fullgraph=True) that gives the eager outputs.

A tiny config and one input shape keep the compile short on a 2-core CPU (about 20-40 s with inductor).
"""

import pytest
import torch
from conftest import tiny_config

from beats_hf import BeatsModel

# Inductor's own imports use deprecated torch.jit APIs.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tiny_model() -> BeatsModel:
    torch.manual_seed(0)
    config = tiny_config()
    config._attn_implementation = "sdpa"
    return BeatsModel(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 64, 128, generator=generator)
    mask = torch.ones(2, 64, dtype=torch.int32)
    mask[1, 40:] = 0
    return {"input_features": features, "attention_mask": mask}


def test_compiled_model_has_no_graph_breaks():
    model, batch = tiny_model(), inputs()
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(**batch)
    reasons = [str(reason) for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, f"graph breaks: {reasons}"
    assert explanation.graph_count == 1


def test_compiled_model_matches_eager():
    model, batch = tiny_model(), inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(**batch)
        actual = compiled(**batch)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    assert torch.equal(actual.patch_mask, expected.patch_mask)
