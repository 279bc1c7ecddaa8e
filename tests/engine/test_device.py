"""One device rule for training, prediction and benchmarks."""

from __future__ import annotations

import pytest
import torch

from medseg.engine.device import resolve_device
from medseg.errors import MedsegError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_device_names_the_key() -> None:
    with pytest.raises(MedsegError, match=r"^train\.device: expected auto, cpu or cuda, got 'gpu'$"):
        resolve_device("gpu", key="train.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(MedsegError, match=r"^--device: cuda was requested but no GPU"):
        resolve_device("cuda", key="--device")
