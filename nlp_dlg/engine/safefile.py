"""Reading a safetensors header without trusting the file: what it is is decided by the header's own structure.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (tensor name -> dtype,
shape, data offsets, plus ``__metadata__``), then the data. :func:`read_header` accepts a file only when the
length fits in the file, the JSON parses into that shape, every tensor's byte size matches its dtype and shape,
and the offsets tile the data exactly. Only then is the file a safetensors file; anything else is named (a
pickle, a zip or ``torch.save`` archive, a truncated or foreign file) and refused before any of it is
interpreted. Nothing is allocated beyond the header, whose size is bounded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from nlp_dlg.engine.errors import GradientFileError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
PICKLE_OPENERS = b"(]}cIFLSVN"  # first opcodes of protocol 0/1 pickles; protocol 2+ start with 0x80


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: the string metadata and each tensor's dtype and shape."""

    metadata: dict[str, str]
    dtypes: dict[str, str]
    shapes: dict[str, tuple[int, ...]]


def _what_else(head: bytes, tail: bytes) -> str:
    """What a file that is not safetensors looks like, from its first and last bytes (never unpickled)."""
    if head[:4] == b"PK\x03\x04":
        return "a zip or torch.save archive (pickle inside)"
    if (head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5 or head[:1] and head[0] in PICKLE_OPENERS) \
            and tail.endswith(b"."):
        return "a pickle"
    return ""


def _entries_problem(entries: object, data_bytes: int) -> str | None:
    """Why the header's tensor entries do not describe a safetensors data section of ``data_bytes``."""
    if not isinstance(entries, dict):
        return "the header is not a JSON object"
    spans = []
    for name, entry in entries.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "__metadata__ is not a map of strings"
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            return f"tensor {name!r}: expected dtype, shape and data_offsets"
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list) \
                or not all(isinstance(d, int) and d >= 0 for d in shape) or len(offsets) != 2 \
                or not all(isinstance(o, int) for o in offsets):
            return f"tensor {name!r}: malformed dtype, shape or offsets"
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            return f"tensor {name!r}: its offsets do not hold {dtype} of shape {tuple(shape)}"
        spans.append(offsets)
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            return "the tensors' offsets do not tile the data"
        end = stop
    return None if end == data_bytes else "the tensors' offsets do not cover the data"


def read_header(path: str | Path) -> Header:
    """The validated header of the safetensors file at ``path`` (see the module docstring).

    Raises:
        GradientFileError: no such file, or not a safetensors file (naming what it is where that is clear).
    """
    path = Path(path)
    if not path.is_file():
        raise GradientFileError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
        fh.seek(max(size - 16, 0))
        tail = fh.read(16)
        problem = "shorter than a header" if size < 10 else ""
        if not problem:
            (n,) = struct.unpack("<Q", head[:8])
            problem = "its header length does not fit in the file" if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8) \
                else ""
        if not problem:
            fh.seek(8)
            try:
                entries = json.loads(fh.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                entries, problem = None, "its header is not JSON"
            problem = problem or _entries_problem(entries, size - 8 - n) or ""
    if problem:
        kind = _what_else(head, tail)
        if kind:
            raise GradientFileError(f"{path}: refused: this is {kind}, not safetensors; gradient files are "
                                    "never unpickled")
        raise GradientFileError(f"{path}: not a safetensors file ({problem})")
    tensors = {k: v for k, v in entries.items() if k != "__metadata__"}
    return Header(dict(entries.get("__metadata__") or {}), {k: v["dtype"] for k, v in tensors.items()},
                  {k: tuple(v["shape"]) for k, v in tensors.items()})
