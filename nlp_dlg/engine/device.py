"""Devices: which one to run on, and random draws that give the same numbers on every device.

Random numbers are drawn on the CPU from a ``torch.Generator`` and then moved (:func:`randn`, :func:`rand`,
:func:`randint`), so one seed gives one result whatever the device; the model decides where tensors live
(:func:`model_device`)."""

from __future__ import annotations

import torch

from nlp_dlg.engine.errors import ConfigError

DEVICE_CHOICES_HELP = "auto | cpu | cuda | cuda:N | mps"


class DeviceError(ConfigError):
    """The requested device does not exist on this machine or is not a device name."""


def _available(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here, or None when it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no CUDA device on this machine"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        return None
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "torch sees no MPS device on this machine"
    return f"expected one of {DEVICE_CHOICES_HELP}"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` stands for: ``auto`` (or None) is CUDA when present, else MPS, else the CPU.

    Raises:
        DeviceError: not a device name, or a device this machine does not have.
    """
    if name is None or (isinstance(name, str) and name == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device: expected one of {DEVICE_CHOICES_HELP}, got {name!r}") from exc
    why = _available(device)
    if why is not None:
        raise DeviceError(f"device: {str(name)!r} is not available: {why}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter or buffer; the CPU for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def randn(*shape: int, generator: torch.Generator, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws made on the CPU from ``generator`` and moved to ``device``."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def rand(*shape: int, generator: torch.Generator, device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws made on the CPU from ``generator`` and moved to ``device``."""
    return torch.rand(shape, generator=generator, dtype=dtype).to(device)


def randint(high: int, *shape: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Integers in [0, high) drawn on the CPU from ``generator`` and moved to ``device``."""
    return torch.randint(high, shape, generator=generator).to(device)
