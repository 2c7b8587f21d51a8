"""Devices: naming one, refusing one that is not there, and random draws that do not depend on the device."""

from __future__ import annotations

import pytest
import torch

from nlp_dlg.engine.device import DeviceError, model_device, randn, resolve_device
from nlp_dlg.engine.errors import ConfigError


def test_auto_and_cpu_resolve_and_a_missing_or_unknown_device_is_a_config_error():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="expected one of auto | cpu | cuda | cuda:N | mps, got 'tpu0'"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda:1' is not available: torch sees no CUDA device"):
            resolve_device("cuda:1")


def test_draws_come_from_the_cpu_generator_whatever_the_device():
    a = randn(3, 4, generator=torch.Generator().manual_seed(7), device="cpu")
    b = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Identity()) == torch.device("cpu")


@pytest.mark.gpu
def test_one_seed_gives_the_same_first_dummy_on_the_gpu():
    from nlp_dlg.engine.device import randn as draw

    cpu = draw(5, generator=torch.Generator().manual_seed(3), device="cpu")
    gpu = draw(5, generator=torch.Generator().manual_seed(3), device="cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
