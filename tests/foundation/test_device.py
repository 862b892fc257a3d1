"""The one device/precision resolver (mixlab/device.py) that recipes, evals, serve and bench go through."""

from __future__ import annotations

import pytest
import torch

from mixlab.device import cpu_name, describe_device, resolve_device, resolve_dtype, resolve_precision
from mixlab.errors import MixlabError

CUDA = torch.cuda.is_available()


def test_auto_device_and_precision():
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if CUDA else "cpu")
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_precision(torch.float32, "cpu") == resolve_precision("float32", "cpu") == "fp32"


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without a GPU")
def test_gpu_requests_without_a_gpu_are_errors_not_fallbacks():
    with pytest.raises(MixlabError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(MixlabError, match="bf16 needs a GPU"):
        resolve_precision("bf16", "cpu")


def test_bad_names_and_explicit_inference_dtypes():
    with pytest.raises(MixlabError, match="expected auto, cpu or cuda"):
        resolve_device("gpu0")
    with pytest.raises(MixlabError, match="precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(MixlabError, match="dtype 'int8'"):
        resolve_dtype("int8", "cpu")
    assert resolve_dtype("bfloat16", "cpu") == resolve_dtype("bf16", "cpu") == torch.bfloat16  # inference may
    assert resolve_dtype(torch.float16, "cpu") == torch.float16


def test_descriptions_name_the_processor():
    assert cpu_name()
    described = describe_device()
    assert (f"{torch.cuda.device_count()}x " in described) if CUDA else described.startswith(f"cpu ({cpu_name()}")
