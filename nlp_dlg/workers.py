"""Attack many gradient files at once: each file in its own worker process (``--workers N``), with the same
results as one process attacking them in order. In-process ``(observation, truth)`` pairs (a script's captures,
scored by the workers) go the same way: each pair is sent to its worker through the pool's pipe or Ray's object
store, never through a file.

Every worker receives the task (its options; no model yet), builds the model from the first file's metadata
once, and sets its torch thread count; then it attacks the files it is handed, batch ``b`` with a CPU generator
seeded ``seed + b`` exactly as :func:`nlp_dlg.pipeline.run_attack` does alone. Results come back in file order
(a finished later file waits for the earlier ones), so the JSON lines are the serial run's. A file whose attack
fails is reported and the rest are kept. The pool is the standard library's ``ProcessPoolExecutor`` with
``spawn`` workers (a forked torch can hang on its thread pool).

On a cluster (``--ray auto|local|ADDRESS``) the workers are Ray actors instead, one per ``--workers``, each
reserving its ``--threads`` CPUs; Ray's ``ActorPool`` hands them the files and returns the outcomes in file order.
The actors read the files by path: on several machines the folder must be on a filesystem they all see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from nlp_dlg.engine.errors import ClusterError, ConfigError, NlpDlgError

logger = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, threads: int | None) -> int:
    """Torch threads of each of ``workers`` processes: ``threads`` when given, else ``OMP_NUM_THREADS``, else the
    cores shared out (at least 1), so that workers x threads <= cores. A product above the cores is allowed (the
    user asked) but logged: on a shared CPU each spinning thread pool slows all of them."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    chosen = threads or _env_threads() or max(1, cpu_cores() // workers)
    if workers * chosen > cpu_cores():
        logger.warning("%d workers x %d threads = %d threads on %d cores: the thread pools will compete; pass "
                       "--threads %d or fewer --workers", workers, chosen, workers * chosen, cpu_cores(),
                       max(1, cpu_cores() // workers))
    return chosen


def _env_threads() -> int | None:
    text = os.environ.get("OMP_NUM_THREADS", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _start_worker(task: Any, metadata: Mapping[str, Any], threads: int, level: int) -> None:
    import torch

    from nlp_dlg.cliutil import NOISY

    logging.basicConfig(level=level, format="%(asctime)s [worker %(process)d] %(message)s", datefmt="%H:%M:%S")
    for noisy in NOISY:                 # as in the parent (cliutil.setup_logging): third-party chatter silenced
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    _WORKER.update(task=task, metadata=metadata, prepared=False)


def _attack_item(item: str | tuple[Any, Any], batch: int, seed: int) -> Any:
    """Attack one gradient file's path, or one in-process ``(observation, truth)`` pair (scored), as batch
    ``batch``."""
    import torch

    from nlp_dlg.engine.observation import load_observation

    task = _WORKER["task"]
    if not _WORKER["prepared"]:     # here, not in the initializer: its error then comes back with the file
        task.prepare(_WORKER["metadata"])
        _WORKER["prepared"] = True
    observation, truth = (load_observation(Path(item)), None) if isinstance(item, str) else item
    return task.attack_batch(observation, truth, batch=batch, generator=torch.Generator().manual_seed(seed + batch))


def _jobs(items: Sequence[Path | tuple[Any, Any]]) -> list[tuple[str | None, Any]]:
    """``(source, item)`` per item: a file's path (as a string, its own source), or a pair (no source)."""
    return [(None, item) if isinstance(item, tuple) else (str(item), str(item)) for item in items]


def pooled_outcomes(task: Any, items: Sequence[Path | tuple[Any, Any]], metadata: Mapping[str, Any], *, seed: int,
                    workers: int, threads: int | None) -> Iterator[tuple[int, str | None, Any]]:
    """``(batch, source, outcome)`` per item (a file, or an in-process pair) in order, attacked by ``workers``
    processes; ``outcome`` is the task's :class:`~nlp_dlg.pipeline.BatchOutcome`, or the library error that
    stopped that item's attack. ``source`` is a file's path, None for a pair."""
    per_worker = threads_per_worker(workers, threads)
    logger.info("attacking %d batch(es) in %d worker processes, %d torch thread(s) each", len(items), workers,
                per_worker)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=get_context("spawn"),
                               initializer=_start_worker,
                               initargs=(task, dict(metadata), per_worker, logging.getLogger().level))
    try:
        jobs = _jobs(items)
        futures = [pool.submit(_attack_item, item, b, seed) for b, (_, item) in enumerate(jobs)]
        for b, ((source, _), future) in enumerate(zip(jobs, futures)):
            yield b, source, _result(future)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _RayWorker:
    """One Ray actor: :func:`_start_worker` once, then :func:`_attack_item` per file or pair, library errors
    returned as values (as the process pool's :func:`_result` does)."""

    def __init__(self, task: Any, metadata: Mapping[str, Any], threads: int, level: int) -> None:
        _start_worker(task, metadata, threads, level)

    def attack(self, item: Any, batch: int, seed: int) -> Any:
        try:
            return _attack_item(item, batch, seed)
        except (NlpDlgError, ValueError, OSError) as exc:
            return exc


def connect_ray(address: str) -> Any:
    """The ``ray`` module, connected: ``local`` starts an instance on this machine, ``auto`` joins the running
    cluster (``RAY_ADDRESS`` or one started here with ``ray start``), anything else is a cluster address. An
    already connected driver (a test, a notebook) is used as it is."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'nlp-dlg[ray]'") from exc
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=logging.getLogger().isEnabledFor(logging.INFO))
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--ray {address}: cannot connect: {str(exc).splitlines()[0]}") from exc
    return ray


def ray_outcomes(task: Any, items: Sequence[Path | tuple[Any, Any]], metadata: Mapping[str, Any], *, seed: int,
                 address: str, workers: int, threads: int | None) -> Iterator[tuple[int, str | None, Any]]:
    """:func:`pooled_outcomes` on Ray actors (see the module's docstring). A lost actor stops the run with a
    :class:`~nlp_dlg.engine.errors.ClusterError` (the rows before it are kept)."""
    ray = connect_ray(address)
    from ray.exceptions import RayError
    from ray.util import ActorPool

    per_worker = threads or _env_threads() or 1
    count = min(workers, len(items))
    logger.info("attacking %d batch(es) on Ray (%s): %d actor(s), %d torch thread(s) each", len(items), address,
                count, per_worker)
    actor = ray.remote(num_cpus=per_worker)(_RayWorker)
    actors = [actor.remote(task, dict(metadata), per_worker, logging.getLogger().level) for _ in range(count)]
    try:
        jobs = _jobs(items)
        calls = [(item, b) for b, (_, item) in enumerate(jobs)]
        results = ActorPool(actors).map(lambda a, call: a.attack.remote(call[0], call[1], seed), calls)
        for b, (source, _) in enumerate(jobs):
            try:
                outcome = next(results)
            except RayError as exc:
                raise ClusterError(f"Ray lost the worker attacking {source or f'batch {b}'}: "
                                   f"{str(exc).splitlines()[0]}") from exc
            yield b, source, outcome
    finally:
        for a in actors:
            ray.kill(a)


def _result(future: Future) -> Any:
    try:
        return future.result()
    except (NlpDlgError, ValueError, OSError) as exc:
        return exc
