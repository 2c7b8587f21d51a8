"""Real distributed capture: what a torch.distributed all-reduce participant sees.

:class:`AllReduceRecorder` wraps a user's ``DistributedDataParallel`` model with a communication hook
that all-reduces each gradient bucket as DDP does by default (sum / world size) and records the averaged
bucket, mapped back to parameter names. Any rank of the all-reduce (and any server that aggregates it)
sees exactly this: the mean of the ranks' gradients, i.e. the gradient of the whole global batch, never
a single rank's.

:func:`run_ranks` starts ``world_size`` local processes over loopback (a free port is chosen; nccl where every
rank has a GPU, gloo otherwise), runs ``worker(rank, world_size, payload, device)`` in each and returns rank 0's
result. Processes are
always ended, also on error or Ctrl-C; a rank's failure surfaces as one :class:`DistributedError`.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nlp_dlg.engine.errors import NlpDlgError

logger = logging.getLogger(__name__)


class DistributedError(NlpDlgError, RuntimeError):
    """A rank of a distributed capture failed (its error message is included)."""


class AllReduceRecorder:
    """Record the all-reduced (averaged) gradient of a DDP model, per parameter name.

    Args:
        ddp_model: a ``torch.nn.parallel.DistributedDataParallel`` model, before its first backward.

    After each backward, :attr:`gradients` holds the averaged gradient of every parameter that took
    part (a copy, on CPU). The hook changes nothing in training: it performs DDP's default all-reduce.

    Example:
        >>> ddp = DistributedDataParallel(model)                        # doctest: +SKIP
        >>> recorder = AllReduceRecorder(ddp)                          # doctest: +SKIP
        >>> loss_fn(ddp(x)).backward(); recorder.gradients["fc.weight"]  # doctest: +SKIP
    """

    def __init__(self, ddp_model: torch.nn.parallel.DistributedDataParallel) -> None:
        if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
            raise TypeError(f"ddp_model: expected DistributedDataParallel, got {type(ddp_model).__name__}")
        self.names = {id(p): n for n, p in ddp_model.module.named_parameters()}
        self.gradients: dict[str, torch.Tensor] = {}
        def hook(state, bucket):
            return self._hook(state, bucket)
        # DDP checks the hook's annotations as objects (this module's are strings: postponed evaluation)
        hook.__annotations__ = {"state": object, "bucket": dist.GradBucket,
                                "return": torch.futures.Future[torch.Tensor]}
        ddp_model.register_comm_hook(None, hook)

    def _hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        world = dist.get_world_size()
        buffer = bucket.buffer().div_(world)
        params = bucket.parameters()
        fut = dist.all_reduce(buffer, async_op=True).get_future()

        def record(done: torch.futures.Future) -> torch.Tensor:
            averaged = done.value()[0]
            offset = 0
            for p in params:                     # a bucket's buffer holds its parameters' gradients in order
                n = p.numel()
                self.gradients[self.names[id(p)]] = averaged[offset:offset + n].view_as(p).detach().cpu().clone()
                offset += n
            return averaged

        return fut.then(record)


def ddp_metadata(world_size: int, batch_size: int, backend: str = "gloo") -> dict[str, Any]:
    """The ``distributed`` entry of a gradient file recorded from a DDP all-reduce."""
    return {"world_size": world_size, "backend": backend, "aggregation": "all-reduce mean",
            "per_rank_batch": batch_size // world_size}


def backend_for(device: str, world_size: int) -> str:
    """``nccl`` when the ranks run on CUDA and every rank has a GPU of its own, else ``gloo``."""
    if torch.device(device).type == "cuda" and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def rank_device(device: str, rank: int, backend: str) -> torch.device:
    """Rank ``rank``'s device: its own GPU under nccl, else ``device`` itself (the CPU, or one shared GPU)."""
    return torch.device("cuda", rank) if backend == "nccl" else torch.device(device)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world_size: int, port: int, worker: Callable, payload: Any, results: Any, collected: Any,
           device: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        backend = backend_for(device, world_size)
        here = rank_device(device, rank, backend)
        if here.type == "cuda":
            torch.cuda.set_device(here)
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        try:
            out = worker(rank, world_size, payload, here)
        finally:
            dist.destroy_process_group()
        results.put((rank, "ok", out if rank == 0 else None))
    except BaseException as exc:  # noqa: BLE001 -- every failure must reach the parent as one message
        logger.debug("rank %d failed:\n%s", rank, traceback.format_exc())
        results.put((rank, "error", f"{type(exc).__name__}: {exc}"))
    # tensors travel through shared memory: stay alive until the parent has read them
    collected.wait(timeout=60)


def run_ranks(worker: Callable[[int, int, Any, torch.device], Any], world_size: int, payload: Any, *,
              device: str = "cpu", timeout: float = 600) -> Any:
    """Run ``worker(rank, world_size, payload, rank_device)`` in ``world_size`` processes (nccl where every rank
    has a GPU of ``device``'s kind, else gloo: :func:`backend_for`); return rank 0's result, which must hold CPU
    tensors.

    ``worker`` and ``payload`` must be picklable (a module-level function, plain data). Raises
    :class:`DistributedError` when a rank fails or does not answer within ``timeout`` seconds.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise DistributedError(f"world_size: expected a positive integer, got {world_size!r}")
    ctx = mp.get_context("spawn")
    results, collected = ctx.Queue(), ctx.Event()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, worker, payload, results, collected, str(device)),
                         daemon=True)
             for r in range(world_size)]
    try:
        for p in procs:
            p.start()
        answers: dict[int, tuple[str, Any]] = {}
        while len(answers) < world_size:
            try:
                rank, status, value = results.get(timeout=timeout)
            except queue.Empty as exc:
                raise DistributedError(f"no answer from {world_size - len(answers)} rank(s) in {timeout:.0f}s") from exc
            answers[rank] = (status, value)
            if status == "error":
                raise DistributedError(f"rank {rank} failed: {value}")
        return answers[0][1]
    finally:
        collected.set()
        for p in procs:
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
