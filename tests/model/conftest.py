"""Shared helpers for the model tests: small fp32 models built fresh per test (fast on CPU)."""

from __future__ import annotations

import pytest
import torch


def make_model(preset: str = "tiny", seed: int = 0, **overrides):
    from mixlab.model import KimiLinearForCausalLM, get_preset

    torch.manual_seed(seed)
    model = KimiLinearForCausalLM(get_preset(preset, **overrides))
    # Non-trivial router bias and norms so tests exercise them (fresh init has them at 0 / 1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_model()


@pytest.fixture(name="make_model")
def make_model_fixture():
    return make_model


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny shapes here are faster single-threaded, and the CI box has 2 cores shared by many jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
