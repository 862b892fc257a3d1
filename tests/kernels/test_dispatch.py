"""The backend dispatcher: auto by default (fast path on CUDA tensors, references on CPU), triton refused with a clear
error where it cannot run."""

from __future__ import annotations

import pytest
import torch

from mixlab.errors import MixlabError
from mixlab.kernels import dispatch, fla_available, get_backend, set_backend


def test_default_backend_is_auto_and_cpu_tensors_take_the_references(monkeypatch):
    monkeypatch.setattr(dispatch, "_backend", None)
    monkeypatch.delenv("MIXLAB_KERNEL_BACKEND", raising=False)
    assert get_backend() == "auto"
    x = torch.ones(2)
    assert not dispatch.fast_path(x) and not dispatch.use_fused(x) and not dispatch.use_triton(x)


def test_fused_switch(monkeypatch):
    monkeypatch.setattr(dispatch, "_fused", None)
    monkeypatch.setenv("MIXLAB_FUSED_KERNELS", "0")
    assert not dispatch.fused_enabled()
    dispatch.set_fused(True)
    assert dispatch.fused_enabled()


@pytest.mark.parametrize("name", ["MIXLAB_FUSED_DECODE", "MIXLAB_MOE_AUTOCAST", "MIXLAB_FUSED_KERNELS"])
def test_on_off_switches_refuse_typos(monkeypatch, name):
    for raw, want in (("1", True), ("On", True), ("0", False), ("off", False)):
        monkeypatch.setenv(name, raw)
        assert dispatch.env_flag(name, not want) is want  # the value wins over the default
    for raw in ("", " "):  # empty: the default
        monkeypatch.setenv(name, raw)
        assert dispatch.env_flag(name, True) is True and dispatch.env_flag(name, False) is False
    monkeypatch.setenv(name, "ture")
    with pytest.raises(MixlabError, match=f"{name}='ture'.*did you mean 'true'"):
        dispatch.env_flag(name, False)


def test_switches_default_on(monkeypatch):
    from mixlab.model import get_preset
    from mixlab.model.modeling import KimiSparseMoeBlock

    for name in ("MIXLAB_FUSED_DECODE", "MIXLAB_MOE_AUTOCAST", "MIXLAB_FUSED_KERNELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dispatch, "_fused", None)
    assert dispatch.fused_enabled() and dispatch.fused_decode_enabled()
    config = get_preset("tiny")
    layer = next(i for i in range(config.num_hidden_layers) if config.is_moe_layer(i))
    assert KimiSparseMoeBlock(config, layer).autocast_experts
    monkeypatch.setenv("MIXLAB_MOE_AUTOCAST", "0")
    assert not KimiSparseMoeBlock(config, layer).autocast_experts


def test_fused_decode_switch_reads_env_flag(monkeypatch):
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "yes")
    assert dispatch.fused_decode_enabled()
    monkeypatch.setenv("MIXLAB_FUSED_DECODE", "2")
    with pytest.raises(MixlabError, match="MIXLAB_FUSED_DECODE='2'"):
        dispatch.fused_decode_enabled()


def test_unknown_backend_suggests_closest():
    with pytest.raises(MixlabError, match="did you mean 'triton'"):
        set_backend("trition")


@pytest.mark.skipif(torch.cuda.is_available() and fla_available(), reason="triton can run here")
def test_triton_backend_not_available_here():
    before = get_backend()
    with pytest.raises(MixlabError, match="not available"):
        set_backend("triton")
    assert get_backend() == before


def test_env_var_selects_initial_backend(monkeypatch):
    monkeypatch.setattr(dispatch, "_backend", None)
    monkeypatch.setenv("MIXLAB_KERNEL_BACKEND", "torch")
    assert get_backend() == "torch"


def test_backend_scope_restores_the_previous_choice(monkeypatch):
    monkeypatch.setattr(dispatch, "_backend", None)  # not chosen yet: read from MIXLAB_KERNEL_BACKEND on first use
    monkeypatch.setenv("MIXLAB_KERNEL_BACKEND", "auto")
    with dispatch.backend_scope("torch"):
        assert get_backend() == "torch"
    assert dispatch._backend is None and get_backend() == "auto"
    with pytest.raises(RuntimeError), dispatch.backend_scope("torch"):
        raise RuntimeError("a failing recipe")
    assert get_backend() == "auto"
    with pytest.raises(MixlabError, match="did you mean"), dispatch.backend_scope("trition"):
        raise AssertionError("an unknown backend must fail before the block runs")
    assert get_backend() == "auto"


def test_captured_step_needs_cuda():
    from mixlab.kernels.step_graph import CapturedStep

    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by test_fast_path_gpu.py")
    with pytest.raises(MixlabError, match="CUDA"):
        CapturedStep(lambda: torch.zeros(()), lambda **_: None)
