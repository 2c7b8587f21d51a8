"""Flower: a server strategy that records every client's update into gradient files, and a loopback runner.

:class:`RecordingStrategy` is Flower's ``FedAvg`` strategy that, before aggregating, writes each client's
update into the usual gradient file (safetensors + JSON), exactly what an honest-but-curious server holds:

* ``fedsgd``: each client sends the gradient of its batch; the file holds it as it came. The server steps
  the global weights by ``-lr`` times the example-weighted mean gradient.
* ``fedavg``: each client runs ``local_steps`` SGD steps at ``local_lr`` and sends its new weights; the
  file holds the weight delta ``W_client − W_global`` with ``update`` = ``{"kind": "weight-delta",
  "local_steps": K, "local_lr": η}`` in the metadata (:func:`nlp_dlg.engine.as_gradient` turns it into the
  mean gradient). The server averages the weights (FedAvg).

The server sends ``mode``, ``local_lr``, ``local_steps`` and ``round`` in each fit config; the global weights
a round starts from are saved beside the updates (``weights/global-round-RRR.safetensors``, named tensors),
since an attack on a later round needs them. The strategy knows nothing of text or images: the plugin describes
an update through ``describe(batch_size, round, global_weights) -> metadata``.

:func:`run_federation` runs a server and its clients as local processes on loopback (gRPC, a free port),
supervises them, and always ends them (also on error or Ctrl-C); a failing process surfaces as one
:class:`FederationError`. Needs the optional ``flower`` extra (``pip install 'nlp-dlg[flower]'``).
"""

from __future__ import annotations

import logging
import queue
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

try:
    from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg
except ImportError as exc:  # an optional extra
    raise ImportError("Flower is not installed: pip install 'nlp-dlg[flower]' (or flwr>=1.13)") from exc

from nlp_dlg.engine.distributed import free_port
from nlp_dlg.engine.errors import ConfigError, NlpDlgError
from nlp_dlg.engine.observation import GradientObservation, save_observation, save_weights

logger = logging.getLogger(__name__)

MODES = ("fedsgd", "fedavg")
Describe = Callable[[int, int, dict[str, torch.Tensor]], dict[str, Any]]


class FederationError(NlpDlgError, RuntimeError):
    """A server or client of a Flower federation failed (its error message is included)."""


def check_options(mode: str, lr: float, local_steps: int) -> None:
    """Raise :class:`ConfigError` unless ``mode``/``lr``/``local_steps`` describe FedSGD or FedAvg."""
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"lr: expected a positive number, got {lr!r}")
    if not isinstance(local_steps, int) or local_steps < 1 or (mode == "fedsgd" and local_steps != 1):
        raise ConfigError(f"local_steps: expected 1 for fedsgd or a positive integer for fedavg, got {local_steps!r}")


class RecordingStrategy(FedAvg):
    """FedAvg/FedSGD that records each client's update of each round as a gradient file.

    Args:
        parameter_names: the names of the model's parameters, in the order clients send them.
        initial_weights: the global weights of round 1, same order.
        out_dir: where ``round-RRR-client-NAME.safetensors`` and ``weights/global-round-RRR.safetensors`` go.
        describe: ``(batch_size, round, global weights by name) -> metadata`` of one update (the plugin's
            observation metadata: model id and checksum, task, ...).
        mode: ``fedsgd`` (clients send gradients) or ``fedavg`` (clients send weights after local steps).
        lr: FedSGD: the server's learning rate; FedAvg: the clients' local learning rate.
        local_steps: FedAvg: local SGD steps per round (1 for FedSGD).
        num_clients: clients sampled every round (all of them: the federation waits for this many).

    After a run, :attr:`recorded` lists one ``{"round", "client", "path", "global_weights"}`` per update.
    """

    def __init__(self, *, parameter_names: Sequence[str], initial_weights: Sequence[np.ndarray],
                 out_dir: str | Path, describe: Describe, mode: str = "fedsgd", lr: float = 1e-2,
                 local_steps: int = 1, num_clients: int = 2) -> None:
        check_options(mode, lr, local_steps)
        if not isinstance(num_clients, int) or num_clients < 1:
            raise ConfigError(f"num_clients: expected a positive integer, got {num_clients!r}")
        if len(parameter_names) != len(initial_weights):
            raise ConfigError(f"{len(parameter_names)} parameter names for {len(initial_weights)} weight arrays")
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_clients,
                         min_evaluate_clients=0, min_available_clients=num_clients, accept_failures=False,
                         initial_parameters=ndarrays_to_parameters(list(initial_weights)),
                         on_fit_config_fn=self._fit_config, fit_metrics_aggregation_fn=lambda metrics: {})
        self.names = list(parameter_names)
        self.out_dir = Path(out_dir)
        self.describe = describe
        self.mode, self.lr, self.local_steps = mode, float(lr), local_steps
        self.recorded: list[dict[str, Any]] = []
        self._global: list[np.ndarray] = []

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        return {"mode": self.mode, "local_lr": self.lr, "local_steps": self.local_steps, "round": server_round}

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self._global = parameters_to_ndarrays(parameters)
        self._check(self._global, "the global weights")
        save_weights(self._named(self._global), self.out_dir / _weights_name(server_round), round=str(server_round))
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if failures:
            first = failures[0]
            why = first if isinstance(first, BaseException) else getattr(first[1], "status", "no status")
            raise FederationError(f"round {server_round}: {len(failures)} client(s) failed ({why})")
        # One client at a time (decode, record, accumulate, drop): a BERT-base update is 440 MB in every form
        # it takes (protobuf bytes, arrays, tensors), and holding all of them at once exhausts the memory.
        global_named = self._named(self._global)
        total = sum(int(res.num_examples) for _, res in results)
        mean = [np.zeros_like(g) for g in self._global]  # FedSGD: of the gradients; FedAvg: of the weights
        for proxy, res in sorted(results, key=lambda r: str(r[1].metrics.get("client", r[0].cid))):
            client = str(res.metrics.get("client", proxy.cid))
            arrays = parameters_to_ndarrays(res.parameters)
            res.parameters.tensors = []  # the bytes are decoded: let them go
            self._check(arrays, f"client {client}'s update")
            sent = self._named(arrays)
            update = sent if self.mode == "fedsgd" else {n: sent[n] - global_named[n] for n in self.names}
            metadata = dict(self.describe(int(res.num_examples), server_round, global_named))
            metadata["federation"] = {"framework": "flower", "round": server_round, "client": client,
                                      "strategy": "FedSGD" if self.mode == "fedsgd" else "FedAvg",
                                      "clients": len(results), "global_weights": _weights_name(server_round)}
            if self.mode == "fedavg":
                metadata["update"] = {"kind": "weight-delta", "local_steps": self.local_steps, "local_lr": self.lr}
            path = self.out_dir / f"round-{server_round:03d}-client-{_safe(client)}.safetensors"
            save_observation(GradientObservation(update, metadata), path)
            self.recorded.append({"round": server_round, "client": client, "path": str(path),
                                  "global_weights": str(self.out_dir / metadata["federation"]["global_weights"])})
            weight = int(res.num_examples) / total
            for acc, a in zip(mean, arrays):
                acc += (weight * a).astype(acc.dtype)
            logger.info("round %d: recorded client %s's %s (%d example(s)) in %s", server_round, client,
                        "gradient" if self.mode == "fedsgd" else "weight delta", res.num_examples, path)
            del arrays, sent, update
        if self.mode == "fedsgd":  # one SGD step on the example-weighted mean gradient
            mean = [(g - self.lr * m).astype(g.dtype) for g, m in zip(self._global, mean)]
        return ndarrays_to_parameters(mean), {}

    def _named(self, arrays: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        # Flower's arrays are fresh, writable copies (np.load): share their memory rather than copy 4 bytes/weight
        return {n: torch.from_numpy(np.require(a, requirements=["C", "W"])) for n, a in zip(self.names, arrays)}

    def _check(self, arrays: Sequence[np.ndarray], what: str) -> None:
        if len(arrays) != len(self.names):
            raise FederationError(f"{what}: {len(arrays)} arrays for {len(self.names)} parameters")
        wrong = [n for n, a, g in zip(self.names, arrays, self._global) if a.shape != g.shape]
        if wrong:
            raise FederationError(f"{what}: wrong shape for {', '.join(wrong[:3])}")


def _weights_name(server_round: int) -> str:
    return f"weights/global-round-{server_round:03d}.safetensors"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "client"


def quiet_flower(level: int = logging.WARNING) -> None:
    """Flower logs every message exchange at INFO on its own handler: keep it to ``level``."""
    logging.getLogger("flwr").setLevel(level)


def wait_for_server(address: str, timeout: float = 300) -> None:
    """Block until something listens on ``address`` (``host:port``): a Flower client connecting before its
    server listens fails at once. Raises :class:`FederationError` after ``timeout`` seconds."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise FederationError(f"no Flower server listening on {address} after {timeout:.0f}s") from None
            time.sleep(0.2)


def _entry(role: str, fn: Callable[[str], Any], address: str, results: Any, flower_level: int) -> None:
    quiet_flower(flower_level)
    torch.set_num_threads(1)
    try:
        results.put((role, "ok", fn(address)))
    except BaseException as exc:  # noqa: BLE001 -- every failure must reach the supervisor as one message
        logger.debug("%s failed:\n%s", role, traceback.format_exc())
        results.put((role, "error", f"{type(exc).__name__}: {exc}"))


def run_federation(server: Callable[[str], Any], clients: Sequence[Callable[[str], Any]], *,
                   timeout: float = 600, flower_level: int = logging.ERROR) -> Any:
    """Run ``server(address)`` and each ``client(address)`` in its own local process; return the server's result.

    The callables must be picklable (module-level functions, ``functools.partial`` of them). The address is
    ``127.0.0.1:PORT`` on a free port. Raises :class:`FederationError` when a process fails, dies, or the
    server has not finished within ``timeout`` seconds; every process is ended before this returns.
    """
    if not clients:
        raise ConfigError("a federation needs at least one client")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    address = f"127.0.0.1:{free_port()}"
    roles = ["server"] + [f"client {i}" for i in range(len(clients))]
    procs = {role: ctx.Process(target=_entry, args=(role, fn, address, results, flower_level), daemon=True)
             for role, fn in zip(roles, [server, *clients])}
    deadline = time.monotonic() + timeout
    finished = False
    try:
        for p in procs.values():
            p.start()
        answered: set[str] = set()
        while not finished:
            try:
                role, status, value = results.get(timeout=1.0)
            except queue.Empty:
                for role, p in procs.items():
                    if role not in answered and p.exitcode not in (None, 0):
                        raise FederationError(f"{role} died (exit code {p.exitcode})") from None
                if time.monotonic() > deadline:
                    raise FederationError(f"the federation did not finish within {timeout:.0f}s") from None
                continue
            answered.add(role)
            if status == "error":
                raise FederationError(f"{role} failed: {value}")
            finished = role == "server"
        return value
    finally:
        started = [p for p in procs.values() if p.pid is not None]
        for p in started:  # after a clean finish the clients leave once the server says goodbye
            p.join(timeout=5 if finished else 0)
        for p in started:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
