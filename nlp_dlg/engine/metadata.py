"""The schema of a gradient file's metadata: what every task shares, checked before anything is built.

A file's metadata comes from whoever wrote the file. Each field is checked for its type, its range and its known
values (:func:`check_shared`), the task's own fields by the task (``nlp_dlg.text.model``,
``vision_dlg.models``), and the parameter shapes the model description implies are compared with the tensors
stored in the file (:func:`check_shapes_match`) before any model is built: a small file cannot make the attacker
allocate a large model, and a bad value is one line naming the field, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nlp_dlg.engine.errors import GradientFileError

MAX_BATCH_SIZE = 4096
MODES = ("eval", "train")


class MetadataError(GradientFileError):
    """A gradient file's metadata has a field of the wrong type, out of range, or unknown."""


def field(meta: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, where: str = "",
          required: bool = True, low: float | None = None, high: float | None = None,
          choices: tuple[Any, ...] | None = None) -> Any:
    """``meta[name]`` after checking its type, range (``low <= v <= high``) and value; None when absent and not
    ``required``."""
    label = f"{where}{name}"
    if name not in meta or meta[name] is None:
        if required:
            raise MetadataError(f"metadata: {label}: expected a value, got none")
        return None
    value = meta[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise MetadataError(f"metadata: {label}: expected {names}, got {type(value).__name__} {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MetadataError(f"metadata: {label}: expected a finite number, got {value}")
    if low is not None and value < low or high is not None and value > high:
        raise MetadataError(f"metadata: {label}: expected a value in [{low}, {high}], got {value}")
    if choices is not None and value not in choices:
        raise MetadataError(f"metadata: {label}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_shared(meta: Any) -> None:
    """The fields every gradient file has (task, model, batch, mode, defence, FedAvg update)."""
    if not isinstance(meta, Mapping):
        raise MetadataError(f"metadata: expected a JSON object, got {type(meta).__name__}")
    field(meta, "task", str)
    field(meta, "model", dict)
    field(meta, "batch_size", int, low=1, high=MAX_BATCH_SIZE)
    field(meta, "batch_index", int, required=False, low=0)
    field(meta, "mode", str, required=False, choices=MODES)
    field(meta, "loss_reduction", str, required=False, choices=("mean",))
    field(meta, "defense", dict, required=False)
    field(meta, "distributed", dict, required=False)
    update = field(meta, "update", dict, required=False)
    if update is not None:
        field(update, "kind", str, where="update.", choices=("weight-delta",))
        field(update, "local_lr", (int, float), where="update.", low=1e-12)
        field(update, "local_steps", int, where="update.", low=1, high=1_000_000)


def check_shapes_match(expected: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]],
                       what: str) -> None:
    """The parameter shapes ``what`` implies (computed without allocating) must be those stored in the file."""
    missing = [n for n in expected if n not in stored]
    extra = [n for n in stored if n not in expected]
    wrong = [f"{n}: {tuple(stored[n])} stored, {tuple(expected[n])} implied" for n in expected
             if n in stored and tuple(stored[n]) != tuple(expected[n])]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
        ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + wrong[:3]
    if problems:
        raise MetadataError(f"metadata: {what} does not fit the tensors in the file ({'; '.join(problems)}): "
                            "nothing was built")
