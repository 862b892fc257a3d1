"""The backend dispatcher: torch by default, triton refused with a clear error where it cannot run."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels import dispatch, fla_available, get_backend, set_backend


def test_default_backend_is_torch():
    assert get_backend() == "torch"


def test_unknown_backend_suggests_closest():
    with pytest.raises(MixlabError, match="did you mean 'triton'"):
        set_backend("trition")


@pytest.mark.skipif(torch.cuda.is_available() and fla_available(), reason="triton can run here")
def test_triton_backend_not_available_here():
    with pytest.raises(MixlabError, match="not available"):
        set_backend("triton")
    assert get_backend() == "torch"


def test_env_var_selects_initial_backend(monkeypatch):
    monkeypatch.setattr(dispatch, "_backend", None)
    monkeypatch.setenv("MIXLAB_KERNEL_BACKEND", "torch")
    assert get_backend() == "torch"
