"""Reading private sentences: one per line (.txt), or a column of csv/json/jsonl/parquet via datasets."""

from __future__ import annotations

import logging
from pathlib import Path

from nlp_dlg.engine.errors import InputDataError

logger = logging.getLogger(__name__)

_DATASET_KINDS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_sentences(path: str | Path, *, column: str | None = None) -> list[str]:
    """Sentences from a file.

    Args:
        path: a ``.txt`` file (one sentence per line, blank lines skipped) or a csv/json/jsonl/parquet
            file read with ``datasets.load_dataset``.
        column: the text column of a table; defaults to ``text``, or the only string column.

    Raises:
        InputDataError: missing/unreadable file, unknown column, or no sentence in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _DATASET_KINDS:
        sentences = _read_table(path, _DATASET_KINDS[suffix], column)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputDataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        sentences = [line.strip() for line in text.splitlines()]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise InputDataError(f"{path}: holds no sentence")
    logger.info("read %d sentences from %s", len(sentences), path)
    return sentences


def _read_table(path: Path, kind: str, column: str | None) -> list[str]:
    import datasets

    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise InputDataError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from exc
    names = list(table.column_names)
    if column is None:
        strings = [n for n, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        column = "text" if "text" in names else (strings[0] if len(strings) == 1 else None)
        if column is None:
            raise InputDataError(f"{path}: pass --column; the file has columns {names}")
    if column not in names:
        raise InputDataError(f"{path}: no column {column!r}; the file has columns {names}")
    return [str(v).strip() for v in table[column] if v is not None]


def read_labelled(path: str | Path, *, column: str | None = None, label_column: str) -> tuple[list[str], list[int]]:
    """Sentences and their integer labels from a csv/json/jsonl/parquet table (rows with an empty text dropped)."""
    path = Path(path)
    kind = _DATASET_KINDS.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise InputDataError(f"{path}: --label-column needs an existing csv/json/jsonl/parquet table")
    texts = _read_table(path, kind, column)
    raw = _read_table(path, kind, label_column)
    if len(raw) != len(texts):
        raise InputDataError(f"{path}: column {label_column!r} has {len(raw)} values for {len(texts)} texts")
    try:
        labels = [int(float(v)) for v in raw]
    except ValueError:
        raise InputDataError(f"{path}: column {label_column!r}: expected integer labels") from None
    kept = [(t, y) for t, y in zip(texts, labels) if t]
    if not kept:
        raise InputDataError(f"{path}: holds no sentence")
    return [t for t, _ in kept], [y for _, y in kept]
