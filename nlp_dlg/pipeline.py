"""One attack pipeline for every modality and task.

A *task* (masked-LM text, image classification, ...) implements the small :class:`AttackTask` contract: build or
load the model a gradient file names, attack one observation (decode it, and score it when the truth is known),
and summarise scored rows. :func:`run_attack` drives any task: it reads the header of every gradient file first
and refuses, in one line and before anything is built, metadata that does not fit the schema or the tensors
stored, and a folder whose files name different tasks or different weights; then it attacks each batch, streams
one JSON line per reconstructed item to a temporary file that replaces ``out`` once the run ends (a file whose
attack fails is reported and the others kept; a run with no row leaves an earlier results file as it was), and
returns the rows, the failures and the summary. Both CLIs, the benchmarks
and the scripts call it. Nothing here knows text or images.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from nlp_dlg.engine.errors import ConfigError, GradientFileError, ModelMismatchError, NlpDlgError

logger = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True)
class BatchOutcome:
    """What a task returns for one attacked observation: one JSON row per reconstructed item (scored when the
    truth was given), and whether Ctrl-C cut the attack short (the rows then hold the best candidate so far)."""

    rows: list[Row]
    interrupted: bool = False


@runtime_checkable
class AttackTask(Protocol):
    """What a modality/task gives the pipeline."""

    task_names: tuple[str, ...]
    """The ``task`` values of the gradient files this task attacks (e.g. ``("masked-lm",)``)."""

    def check_metadata(self, metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Check a file's task-specific metadata, and the parameter shapes its model description implies against
        the ``shapes`` of the tensors it stores, without building or allocating anything
        (:class:`nlp_dlg.engine.metadata.MetadataError` otherwise). The shared fields are checked already."""
        ...

    def prepare(self, metadata: Mapping[str, Any]) -> None:
        """Build or load the model that the files' ``metadata`` names, check its checksum, put it on the device.
        Called once per run with the first file's metadata; a task given its model already keeps it."""
        ...

    def attack_batch(self, observation: Any, truth: Any | None, *, batch: int, generator: Any) -> BatchOutcome:
        """Attack one gradient observation (``generator``: a seeded CPU ``torch.Generator``); decode, and score
        against ``truth`` when it is not None."""
        ...

    def summary(self, rows: Sequence[Row]) -> str | None:
        """A plain-text table of scored ``rows`` (None when they are not scored)."""
        ...


class PlacedModel:
    """What every task does with its model: keep the one it is given (an in-process victim's) or builds, and put
    it on the task's device (None: where it is)."""

    model: Any = None
    device: Any = None

    def place(self) -> None:
        if self.model is not None and self.device is not None:
            self.model.to(self.device)


@dataclass(frozen=True)
class AttackRun:
    """The rows of a run (in order), whether it was interrupted, the summary table of scored rows, and the files
    that failed."""

    rows: list[Row] = field(default_factory=list)
    interrupted: bool = False
    summary: str | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(file, error)`` of each file whose attack failed (the others' rows are kept)."""


def model_key(metadata: Mapping[str, Any]) -> str | None:
    """What identifies the weights a gradient file was computed on: the checksum in its ``model`` entry."""
    model = metadata.get("model")
    return model.get("checksum") if isinstance(model, Mapping) else None


def check_files(files: Sequence[Path], task: AttackTask) -> list[dict[str, Any]]:
    """The metadata of every file, read from the headers alone, after refusing: metadata that does not fit the
    schema or the tensors stored (:mod:`nlp_dlg.engine.metadata`), files of another task, and files of other weights
    than the first file's (e.g. two federated rounds, or two model seeds, in one folder)."""
    from nlp_dlg.engine.metadata import MetadataError, check_shared
    from nlp_dlg.engine.observation import inspect_gradient_file

    metas = []
    for path in files:
        meta, shapes = inspect_gradient_file(path)
        try:
            check_shared(meta)
            if meta["task"] not in task.task_names:
                raise GradientFileError(f"a gradient file of task {meta['task']!r}; this command attacks "
                                        f"{' or '.join(repr(t) for t in task.task_names)}")
            task.check_metadata(meta, shapes)
        except MetadataError as exc:
            raise MetadataError(f"{path}: {exc}") from None
        except GradientFileError as exc:
            raise GradientFileError(f"{path}: {exc}") from None
        if model_key(meta) != model_key(metas[0] if metas else meta):
            raise ModelMismatchError(f"{path}: computed on other model weights than {files[0].name} (checksum "
                                     f"{str(model_key(meta))[:12]}… vs {str(model_key(metas[0]))[:12]}…): attack files "
                                     "of different weights (e.g. federated rounds or model seeds) separately")
        metas.append(meta)
    return metas


def pair_outcomes(task: AttackTask, pairs: Iterable[tuple[Any, Any]],
                  seed: int) -> Iterator[tuple[int, str | None, BatchOutcome | Exception]]:
    """``(batch, None, outcome)`` per in-process ``(observation, truth)``, attacked here in order; a pair whose
    attack raises a library error gives that error as its outcome."""
    import torch

    for b, (observation, truth) in enumerate(pairs):
        try:
            outcome: BatchOutcome | Exception = task.attack_batch(
                observation, truth, batch=b, generator=torch.Generator().manual_seed(seed + b))
        except (NlpDlgError, ValueError, OSError) as exc:
            outcome = exc
        yield b, None, outcome


def file_outcomes(task: AttackTask, files: Sequence[Path],
                  seed: int) -> Iterator[tuple[int, str | None, BatchOutcome | Exception]]:
    """``(batch, path, outcome)`` per gradient file, loaded one at a time and attacked here in order; a file whose
    loading or attack raises a library error gives that error as its outcome (the run goes on)."""
    import torch

    from nlp_dlg.engine.observation import load_observation

    for b, path in enumerate(files):
        try:
            outcome: BatchOutcome | Exception = task.attack_batch(
                load_observation(path), None, batch=b, generator=torch.Generator().manual_seed(seed + b))
        except (NlpDlgError, ValueError, OSError) as exc:
            outcome = exc
        yield b, str(path), outcome


def _failed_pairs(outcomes: Iterable[tuple[int, str | None, BatchOutcome | Exception]],
                  keep_going: bool) -> Iterator[tuple[int, str | None, BatchOutcome | Exception]]:
    """Pairs' outcomes: a failed pair raises its error, or with ``keep_going`` is reported as ``batch b``."""
    for b, source, outcome in outcomes:
        if isinstance(outcome, Exception):
            if not keep_going:
                raise outcome
            source = f"batch {b}"
        yield b, source, outcome


def run_attack(task: AttackTask, *, out: str | Path, seed: int = 0, gradients: str | Path | None = None,
               pairs: Iterable[tuple[Any, Any]] | None = None,
               on_batch: Callable[[int, BatchOutcome], None] | None = None, workers: int = 1,
               threads: int | None = None, ray: str | None = None, keep_going: bool = False) -> AttackRun:
    """Attack the gradient files under ``gradients`` (a file or a folder; nothing known of the data), or the
    in-process ``(observation, truth)`` ``pairs`` (scored), and write one JSON line per item to ``out``.

    Batch ``b`` is attacked with a CPU generator seeded ``seed + b``, so one seed gives one result. Rows from
    files carry their ``source`` path. ``on_batch(b, outcome)`` is called after each batch (progress). Files and
    pairs are attacked by ``workers`` processes of ``threads`` torch threads each when ``workers > 1``
    (:mod:`nlp_dlg.workers`; the rows are the same as one process's), on Ray actors with ``ray`` (``local``,
    ``auto`` or a cluster address). A file whose attack fails is reported in :attr:`AttackRun.failed` and the
    others are kept; a pair's failure raises its error, unless ``keep_going`` (then it is reported as
    ``batch b``, as a file would be).

    Raises:
        GradientFileError, MetadataError, ModelMismatchError: before any attack, for a file whose metadata does
            not fit the schema or its tensors, and a folder that is not one task's files on one set of weights.
    """
    if (gradients is None) == (pairs is None):
        raise ConfigError("run_attack: pass gradient files (gradients=...) or captured pairs (pairs=...), one of them")
    if pairs is not None:
        items = list(pairs) if ray is not None or workers > 1 else pairs
        total = len(items) if isinstance(items, Sequence) else None
        if total and (ray is not None or (workers > 1 and total > 1)):
            outcomes = _parallel(task, items, items[0][0].metadata, seed, workers, threads, ray)  # type: ignore[index]
        else:
            outcomes = pair_outcomes(task, items, seed)
        outcomes = _failed_pairs(outcomes, keep_going)
    else:
        from nlp_dlg.engine.observation import find_gradient_files

        files = find_gradient_files(gradients)  # type: ignore[arg-type]
        metas, total = check_files(files, task), len(files)
        if ray is not None or (workers > 1 and len(files) > 1):
            outcomes = _parallel(task, files, metas[0], seed, workers, threads, ray)
        else:
            task.prepare(metas[0])
            outcomes = file_outcomes(task, files, seed)
    with progress_bar(total, "batch") as bar:
        return _write_rows(task, bar(outcomes), Path(out), on_batch)


def _parallel(task: AttackTask, items: Sequence[Any], metadata: Mapping[str, Any], seed: int, workers: int,
              threads: int | None, ray: str | None) -> Iterator[tuple[int, str | None, BatchOutcome | Exception]]:
    """Files or pairs attacked by worker processes, or by Ray actors when ``ray`` is given."""
    if ray is not None:
        from nlp_dlg.workers import ray_outcomes

        return ray_outcomes(task, items, metadata, seed=seed, address=ray, workers=workers, threads=threads)
    from nlp_dlg.workers import pooled_outcomes

    return pooled_outcomes(task, items, metadata, seed=seed, workers=workers, threads=threads)


@contextmanager
def progress_bar(total: int | None, unit: str) -> Iterator[Callable[[Iterable[Any]], Iterable[Any]]]:
    """A wrapper that shows a progress bar with an ETA (tqdm, on stderr) over an iterable of more than one item,
    with the log lines printed above it; none when progress is not logged (``--quiet``) or for a single item."""
    if total is not None and total <= 1 or not logging.getLogger("nlp_dlg").isEnabledFor(logging.INFO):
        yield lambda items: items
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield lambda items: tqdm(items, total=total, unit=unit, dynamic_ncols=True, mininterval=1.0)


def _write_rows(task: AttackTask, outcomes: Iterable[tuple[int, str | None, BatchOutcome | Exception]], out: Path,
                on_batch: Callable[[int, BatchOutcome], None] | None) -> AttackRun:
    rows: list[Row] = []
    failed: list[tuple[str, str]] = []
    interrupted = False
    with _atomic_lines(out) as fh:
        for b, source, outcome in outcomes:
            if isinstance(outcome, Exception):
                logger.info("%s: failed, going on with the other files: %s", source, outcome)
                failed.append((str(source), str(outcome)))
                continue
            for row in outcome.rows:
                row = {**row, "source": source} if source is not None else row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
            fh.flush()
            if on_batch is not None:
                on_batch(b, outcome)
            if outcome.interrupted:
                interrupted = True
                break
        if failed and not rows:     # nothing to keep: an earlier results file stays as it was
            raise GradientFileError(failure_message(failed))
    return AttackRun(rows, interrupted, task.summary(rows) if rows else None, failed)


def failure_message(failed: Sequence[tuple[str, str]]) -> str:
    """One line for the files whose attack failed: the error itself for one file; else how many, and the first."""
    first, why = failed[0]
    why = why if why.startswith(first) else f"{first}: {why}"
    return why if len(failed) == 1 else f"{len(failed)} files failed, the other rows are written (first: {why})"


def unless_interrupted(run: AttackRun) -> AttackRun:
    """``run``, or ``SystemExit(130)`` where Ctrl-C cut it short (its rows are written): a script that attacks many
    times stops there instead of going on with the next attack and exiting 0."""
    if run.interrupted:
        logger.warning("interrupted: the rows done are written; stopping")
        raise SystemExit(130)
    return run


@dataclass(frozen=True)
class Column:
    """One column of a summary table: its title, the value of a row, its format spec, the format of its mean over
    the rows (None: no mean, e.g. an index or a text), and its alignment."""

    title: str
    value: Callable[[Row], Any]
    spec: str = ""
    mean_spec: str | None = None
    align: str = ">"


def format_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """A plain-text table: a header, one line per row, then the means of the columns that have one."""
    cells = [[format(c.value(r), c.spec) for c in columns] for r in rows]
    means = [format(sum(float(c.value(r)) for r in rows) / len(rows), c.mean_spec) if c.mean_spec and rows else ""
             for c in columns]
    widths = [max(len(t) for t in [c.title, m, *(row[i] for row in cells)])
              for i, (c, m) in enumerate(zip(columns, means))]

    def line(texts: Sequence[str]) -> str:
        return " ".join(f"{t:{c.align}{w}}" for t, c, w in zip(texts, columns, widths)).rstrip()

    head = line([c.title for c in columns])
    rule = "-" * len(head)
    return "\n".join([head, rule, *map(line, cells), rule, line(["mean", *means[1:]])])


class _atomic_lines:
    """A text file written under a temporary name beside ``path`` and renamed over it on exit, also after Ctrl-C
    (what was done is kept); on any other error the temporary file is removed and ``path`` is left as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        return self.fh

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.fh.close()
        if kind is None or issubclass(kind, KeyboardInterrupt):
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
