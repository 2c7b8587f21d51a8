"""Gradient observations: what one participant shares, saved as safetensors + JSON metadata.

A gradient file is a plain safetensors file. Tensors are named by parameter name; the header's
metadata holds ``format`` and a JSON document ``metadata`` (model id, task, batch size, ...). Loading
never unpickles: a pickle or ``torch.save`` archive posing as a gradient file is refused before any
byte of it is interpreted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nlp_dlg.engine.errors import GradientFileError, GradientMismatchError, NonFiniteGradientError
from nlp_dlg.engine.safefile import FLOAT_DTYPES, Header, read_header

logger = logging.getLogger(__name__)

FORMAT = "nlp_dlg.gradient/1"
WEIGHTS_FORMAT = "nlp_dlg.weights/1"


@dataclass(frozen=True)
class GradientObservation:
    """Named gradient tensors plus the metadata a participant legitimately shares.

    Args:
        gradients: parameter name -> gradient tensor (detached, on CPU once saved).
        metadata: JSON-serialisable description: model id/config/checksum, task, batch size,
            loss reduction, mode, defence. Never the private data.
    """

    gradients: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.gradients, Mapping) or not self.gradients:
            raise GradientFileError("expected a non-empty mapping of parameter name -> tensor, got "
                                    f"{type(self.gradients).__name__} of length {len(self.gradients or ())}")
        for name, tensor in self.gradients.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"gradient {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
        object.__setattr__(self, "gradients", MappingProxyType(dict(self.gradients)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __reduce__(self) -> tuple[type, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Sent whole to this toolkit's own worker processes (``run_attack(pairs=..., workers=N)``); a file is
        always safetensors plus JSON (:func:`save_observation`)."""
        return GradientObservation, (dict(self.gradients), dict(self.metadata))

    def to(self, device: torch.device | str) -> GradientObservation:
        """The same observation with its tensors on ``device`` (itself when they are already there)."""
        device = torch.device(device)
        if all(t.device == device for t in self.gradients.values()):
            return self
        return GradientObservation({n: t.to(device) for n, t in self.gradients.items()}, self.metadata)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteGradientError` naming the first tensor with NaN/Inf."""
        for name, tensor in self.gradients.items():
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteGradientError(f"gradient {name!r} holds {bad} NaN/Inf value(s)")

    def check_shapes(self, expected: Mapping[str, tuple[int, ...] | torch.Size]) -> None:
        """Check the gradient names and shapes against a model's parameters.

        Raises:
            GradientMismatchError: naming missing, extra or wrongly shaped parameters.
        """
        missing = [n for n in expected if n not in self.gradients]
        extra = [n for n in self.gradients if n not in expected]
        wrong = [
            f"{n}: expected shape {tuple(expected[n])}, got {tuple(self.gradients[n].shape)}"
            for n in expected
            if n in self.gradients and tuple(self.gradients[n].shape) != tuple(expected[n])
        ]
        problems = []
        if missing:
            problems.append(f"missing parameter(s) {_few(missing)}")
        if extra:
            problems.append(f"unexpected parameter(s) {_few(extra)}")
        if wrong:
            problems.append("wrong shape for " + _few(wrong))
        if problems:
            raise GradientMismatchError("gradient does not fit the model: " + "; ".join(problems))


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def save_observation(observation: GradientObservation, path: str | Path) -> Path:
    """Write ``observation`` to ``path`` as safetensors with JSON metadata. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in observation.gradients.items()}
    header = {"format": FORMAT, "metadata": json.dumps(dict(observation.metadata), sort_keys=True)}
    save_file(tensors, str(path), metadata=header)
    logger.debug("wrote %d gradient tensors to %s", len(tensors), path)
    return path


def _read(path: Path, expected: str, kind: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and tensors of a safetensors file of format ``expected`` (a ``kind`` file of this
    toolkit), after :func:`nlp_dlg.engine.safefile.read_header` refused anything else."""
    header = _checked_header(path, expected, kind)
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise GradientFileError(f"{path}: not a readable safetensors file ({exc})") from exc
    return header.metadata, tensors


def _checked_header(path: Path, expected: str, kind: str) -> Header:
    header = read_header(path)
    if header.metadata.get("format") != expected:
        raise GradientFileError(f"{path}: not an nlp_dlg {kind} file (expected format {expected!r}, "
                                f"got {header.metadata.get('format')!r})")
    odd = [f"{n} ({d})" for n, d in header.dtypes.items() if d not in FLOAT_DTYPES]
    if odd:
        raise GradientFileError(f"{path}: expected floating-point tensors, got {_few(odd)}")
    return header


def _metadata(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    try:
        metadata = json.loads(header.get("metadata", "{}"))
    except json.JSONDecodeError as exc:
        raise GradientFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise GradientFileError(f"{path}: metadata: expected a JSON object, got {type(metadata).__name__}")
    return metadata


def inspect_gradient_file(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The metadata and the tensors' shapes of a gradient file, read from its header alone (no tensor is read):
    what a folder is checked with before anything is built or allocated."""
    path = Path(path)
    header = _checked_header(path, FORMAT, "gradient")
    return _metadata(path, header.metadata), header.shapes


def load_observation(path: str | Path, *, check_finite: bool = True) -> GradientObservation:
    """Load a gradient file written by :func:`save_observation`.

    Raises:
        GradientFileError: missing path, not safetensors, a pickle, or no toolkit metadata.
        NonFiniteGradientError: a tensor holds NaN/Inf (when ``check_finite``).
    """
    path = Path(path)
    if not path.exists():
        raise GradientFileError(f"{path}: no such file")
    if not path.is_file():
        raise GradientFileError(f"{path}: expected a gradient file, got a directory or special file")
    header, tensors = _read(path, FORMAT, "gradient")
    metadata = _metadata(path, header)
    if not tensors:
        raise GradientFileError(f"{path}: holds no gradient tensors")
    observation = GradientObservation(tensors, metadata)
    if check_finite:
        try:
            observation.check_finite()
        except NonFiniteGradientError as exc:
            raise NonFiniteGradientError(f"{path}: {exc}") from None
    return observation


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a gradient file, without reading its tensors (cheap, for checking a folder)."""
    return inspect_gradient_file(path)[0]


def write_observations(observations: Iterable[GradientObservation], out_dir: str | Path) -> list[Path]:
    """Write ``batch-000.safetensors``, ``batch-001.safetensors``, … in order (any modality)."""
    out_dir = Path(out_dir)
    return [save_observation(obs, out_dir / f"batch-{i:03d}.safetensors") for i, obs in enumerate(observations)]


def find_gradient_files(path: str | Path) -> list[Path]:
    """A gradient file itself, or every ``*.safetensors`` file in a directory, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise GradientFileError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
        if not files:
            raise GradientFileError(f"{path}: directory holds no *.safetensors gradient files")
        return files
    return [path]


def save_weights(weights: Mapping[str, torch.Tensor], path: str | Path, **info: str) -> Path:
    """Write model weights (parameter name -> tensor) as safetensors, e.g. the global weights of a federated
    round, which an attack on that round's updates needs. ``info``: string metadata kept in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in weights.items()}
    save_file(tensors, str(path), metadata={**info, "format": WEIGHTS_FORMAT})
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file written by :func:`save_weights` (never unpickles).

    Raises:
        GradientFileError: missing, not safetensors, a pickle, or not a weights file of this toolkit.
    """
    path = Path(path)
    if not path.is_file():
        raise GradientFileError(f"{path}: no such weights file")
    return _read(path, WEIGHTS_FORMAT, "weights")[1]


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (sorted by name): identifies the exact weights a gradient
    was computed on, so the attacker can check that it rebuilt the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def as_gradient(observation: GradientObservation) -> GradientObservation:
    """The gradient an attacker matches. A FedAvg client shares the weight delta ``W_K − W_0`` of ``K``
    local SGD steps at learning rate ``η`` (metadata ``update``: ``{"kind": "weight-delta", "local_steps": K,
    "local_lr": η}``); ``−Δ / (η K)`` is the mean of its ``K`` gradients (exactly the gradient for ``K = 1``).
    Any other observation is returned as it is."""
    update = observation.metadata.get("update")
    if not update or update.get("kind") != "weight-delta":
        return observation
    try:
        scale = -1.0 / (float(update["local_lr"]) * int(update["local_steps"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise GradientFileError("weight-delta update: expected local_lr > 0 and local_steps >= 1, "
                                f"got {update}") from exc
    return GradientObservation({n: t * scale for n, t in observation.gradients.items()}, observation.metadata)
