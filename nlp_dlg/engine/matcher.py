"""The gradient-matching loop (DLG, Algorithm 1), shared by every modality.

The engine knows nothing of text or images. A *plugin* says which model parameters are matched, how to
draw dummy leaves (batch-first tensors), the task loss on dummy data, how to project after a step, and
optionally a prior on the leaves (``regularizer``, e.g. total variation for images), added to the distance
or scaling it (``MatchingConfig.prior``).
The engine owns the rest: dummy gradients by double backprop, the distance to the observation, the
optimizer (L-BFGS as in the paper, or Adam), the paper's per-sample schedule for batches, restarts,
the non-finite guard, best-candidate tracking, callbacks and Ctrl-C.

Iteration accounting: a *step* is one ``optimizer.step()`` call. With L-BFGS one step runs up to
``lbfgs_max_iter`` inner updates, each one *gradient evaluation* (one dummy forward, backward and
double backward). Adam spends exactly one evaluation per step. Both counts are reported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import torch

from nlp_dlg.engine.distance import DISTANCES, gradient_distance
from nlp_dlg.engine.errors import ConfigError, GradientMismatchError, MatchingDivergedError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("lbfgs", "adam")
SCHEDULES = ("joint", "per-sample")
PRIORS = ("add", "scale")


@runtime_checkable
class MatchingPlugin(Protocol):
    """What the engine needs from a modality. Leaves are batch-first tensors ``(B, ...)``."""

    def matched_parameters(self) -> Mapping[str, torch.Tensor]:
        """Parameter name -> model parameter whose gradient is matched."""
        ...

    def init_leaves(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fresh dummy leaves (plain tensors, batch first), drawn from ``generator``."""
        ...

    def task_loss(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of the model on the dummy data (differentiable in leaves and weights)."""
        ...

    def project(self, leaves: Mapping[str, torch.Tensor]) -> None:
        """Project leaves in place after a step (called under ``torch.no_grad``)."""
        ...


def _regularizer(plugin: MatchingPlugin) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None:
    """A plugin may add a prior to the objective with ``regularizer(leaves) -> scalar`` (e.g. total
    variation for images); it is optional, so the protocol above does not list it."""
    fn = getattr(plugin, "regularizer", None)
    return fn if callable(fn) else None


@dataclass(frozen=True)
class MatchingConfig:
    """Options of the gradient-matching loop.

    Args:
        steps: optimizer steps per restart (L-BFGS: each runs up to ``lbfgs_max_iter`` evaluations).
        max_evaluations: a restart spends at most this many gradient evaluations, also mid-way through an
            L-BFGS step (None: no cap).
        optimizer: ``lbfgs`` (the paper, lr 1.0) or ``adam``.
        lr: learning rate.
        distance: ``l2`` (the paper), ``cosine`` or ``l2+l1``.
        restarts: independent random initialisations; the lowest final distance wins.
        schedule: ``joint`` updates the whole batch at each step; ``per-sample`` updates only sample
            ``step mod B`` (the paper's schedule for batches), each sample with its own optimizer.
            Identical for ``B = 1``. ``joint`` is the default: on the engine's test MLP it recovers a
            batch of two exactly where ``per-sample`` with L-BFGS stalls (tests/test_engine_matcher.py).
        lbfgs_max_iter, lbfgs_history: L-BFGS's ``max_iter`` and ``history_size``.
        tolerance: stop a restart once the distance is at or below this value.
        max_recoveries: non-finite losses survived per restart (each restarts from the best point).
        prior: how a plugin's ``regularizer`` enters the objective: ``add`` (``d + r``) or ``scale``
            (``d·(1 + r)``: the prior fades with the distance, so where the gradient cannot see a direction
            (a train-mode batch's contrast) it cannot pull the candidate along it once the gradients match).
        normalize: an objective whose value at the restart's first point is below 1 is divided by that value
            for the optimizer (same minimiser; distances are still reported unscaled); a larger one is left
            as it is. torch's L-BFGS has absolute thresholds (it drops every curvature pair with
            ``yᵀs <= 1e-10``, and ends a step on loss changes below 1e-9), so on an objective that starts
            small it degrades to gradient descent with step ``lr``: ResNet-20-sigmoid at 32x32 in train mode
            starts at L2 3e-2 and its image moved 7e-5 per step; lifted to 1, it moves 0.3 in the first step.
            Shrinking a large objective to 1 hits the same thresholds at the end instead (DLG's LeNet starts
            near 200: 8 faces at 32x32 came back at a mean 28.8 dB instead of 41.1 dB), hence lift only.
    """

    steps: int = 30
    max_evaluations: int | None = None
    optimizer: str = "lbfgs"
    lr: float = 1.0
    distance: str = "l2"
    restarts: int = 1
    schedule: str = "joint"
    lbfgs_max_iter: int = 20
    lbfgs_history: int = 100
    tolerance: float = 0.0
    max_recoveries: int = 5
    prior: str = "add"
    normalize: bool = False

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)
        _positive_int("restarts", self.restarts)
        _positive_int("lbfgs_max_iter", self.lbfgs_max_iter)
        _positive_int("lbfgs_history", self.lbfgs_history)
        if self.max_evaluations is not None:
            _positive_int("max_evaluations", self.max_evaluations)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"distance: expected one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior: expected one of {', '.join(PRIORS)}, got {self.prior!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: expected a positive finite number, got {self.lr!r}")
        if not (self.tolerance >= 0):
            raise ConfigError(f"tolerance: expected >= 0, got {self.tolerance!r}")
        if self.max_recoveries < 0:
            raise ConfigError(f"max_recoveries: expected >= 0, got {self.max_recoveries!r}")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class StepRecord:
    """What a callback sees after each step (and once before the first, with ``step == 0``).

    ``candidate`` holds detached copies of the current leaves: changing them changes nothing.
    """

    restart: int
    step: int
    evaluations: int
    distance: float
    best_distance: float
    elapsed: float
    candidate: Mapping[str, torch.Tensor]
    recoveries: int = 0


@dataclass(frozen=True)
class MatchingResult:
    """The best candidate over all restarts and how it was found."""

    leaves: Mapping[str, torch.Tensor]
    distance: float
    restart: int
    steps: int
    evaluations: int
    seconds: float
    interrupted: bool
    history: tuple[float, ...] = field(default=())
    recoveries: int = 0


Callback = Callable[[StepRecord], "bool | None"]
"""A callback returning True stops the current restart early."""


class _NonFinite(Exception):
    pass


class _BudgetSpent(Exception):
    pass


class GradientMatcher:
    """Run DLG's gradient matching for one observed gradient.

    Example:
        >>> matcher = GradientMatcher(plugin, MatchingConfig(distance="cosine"))  # doctest: +SKIP
        >>> result = matcher.run(observed_gradients, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    """

    def __init__(self, plugin: MatchingPlugin, config: MatchingConfig | None = None,
                 *, callbacks: Sequence[Callback] = ()) -> None:
        if not isinstance(plugin, MatchingPlugin):
            raise TypeError(f"plugin: expected a MatchingPlugin, got {type(plugin).__name__}")
        self.plugin = plugin
        self.config = config or MatchingConfig()
        self.callbacks = tuple(callbacks)

    def run(self, target: Mapping[str, torch.Tensor], *, generator: torch.Generator) -> MatchingResult:
        """Match the observed gradients ``target`` (name -> tensor). Ctrl-C returns the best so far."""
        params = dict(self.plugin.matched_parameters())
        missing = [n for n in params if n not in target]
        if missing:
            raise GradientMismatchError(f"observed gradient lacks matched parameter(s) {missing[:3]}")
        for name, p in params.items():
            if tuple(target[name].shape) != tuple(p.shape):
                raise GradientMismatchError(f"{name}: expected shape {tuple(p.shape)}, "
                                            f"got {tuple(target[name].shape)}")
        names = list(params)
        param_list = [params[n] for n in names]
        target_list = [target[n].detach().to(param_list[i].dtype) for i, n in enumerate(names)]
        flags = [p.requires_grad for p in param_list]
        for p in param_list:
            p.requires_grad_(True)
        best: MatchingResult | None = None
        start = time.perf_counter()
        try:
            for restart in range(self.config.restarts):
                result = self._one_restart(restart, param_list, target_list, generator, start)
                if best is None or result.distance < best.distance or not math.isfinite(best.distance):
                    best = result
                logger.info("restart %d/%d ended at distance %.4g after %d steps, %d evaluations",
                            restart + 1, self.config.restarts, result.distance, result.steps,
                            result.evaluations)
                if result.interrupted:
                    break
        finally:
            for p, flag in zip(param_list, flags):
                p.requires_grad_(flag)
        assert best is not None
        return best

    # -- one restart ---------------------------------------------------------------------------
    def _one_restart(self, restart: int, params: list[torch.Tensor], target: list[torch.Tensor],
                     generator: torch.Generator, start: float) -> MatchingResult:
        cfg = self.config
        init = self.plugin.init_leaves(generator)
        if not init:
            raise ConfigError("plugin returned no dummy leaves")
        batch = {t.shape[0] for t in init.values()}
        if len(batch) != 1:
            raise ConfigError(f"dummy leaves must share their batch size, got sizes {sorted(batch)}")
        n_samples = batch.pop()
        per_sample = cfg.schedule == "per-sample" and n_samples > 1
        # Leaves are kept per sample so that the per-sample schedule can step one sample at a time.
        parts: dict[str, list[torch.Tensor]] = {
            name: [t[i:i + 1].detach().clone().requires_grad_(True) for i in range(n_samples)]
            if per_sample else [t.detach().clone().requires_grad_(True)]
            for name, t in init.items()
        }
        groups = ([[parts[n][i] for n in parts] for i in range(n_samples)] if per_sample
                  else [[parts[n][0] for n in parts]])
        all_leaves = [leaf for group in groups for leaf in group]
        state = {"evals": 0, "best": math.inf, "best_leaves": None, "last": math.inf, "scale": 1.0}
        prior = _regularizer(self.plugin)

        def current() -> dict[str, torch.Tensor]:
            return {n: torch.cat(ps, 0) if len(ps) > 1 else ps[0] for n, ps in parts.items()}

        def snapshot() -> dict[str, torch.Tensor]:
            return {n: t.detach().clone() for n, t in current().items()}

        def evaluate(create_graph: bool) -> torch.Tensor:
            if cfg.max_evaluations is not None and state["evals"] >= cfg.max_evaluations:
                raise _BudgetSpent  # strict cap, also inside an L-BFGS step
            leaves = current()
            loss = self.plugin.task_loss(leaves)
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
            dist = gradient_distance(grads, target, cfg.distance)
            if prior is not None:
                dist = dist * (1 + prior(leaves)) if cfg.prior == "scale" else dist + prior(leaves)
            state["evals"] += 1
            value = float(dist.detach())
            state["last"] = value
            if not math.isfinite(value):
                raise _NonFinite(value)
            if value < state["best"]:
                state["best"], state["best_leaves"] = value, snapshot()
            return dist

        def closure_for(group: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
            def closure() -> torch.Tensor:
                dist = evaluate(create_graph=True) * state["scale"]
                # Gradients for the leaves only: never for the model's weights.
                leaf_grads = torch.autograd.grad(dist, group, allow_unused=True)
                for leaf, g in zip(group, leaf_grads):
                    leaf.grad = torch.zeros_like(leaf) if g is None else g
                return dist.detach()
            return closure

        def make_optimizers() -> list[torch.optim.Optimizer]:
            if cfg.optimizer == "lbfgs":
                return [torch.optim.LBFGS(g, lr=cfg.lr, max_iter=cfg.lbfgs_max_iter,
                                          history_size=cfg.lbfgs_history) for g in groups]
            return [torch.optim.Adam(g, lr=cfg.lr) for g in groups]

        optimizers = make_optimizers()
        closures = [closure_for(g) for g in groups]
        history: list[float] = []
        recoveries = 0
        interrupted = False
        step = 0
        try:
            initial = float(evaluate(create_graph=False).detach())
        except _NonFinite:
            initial = math.inf
        if cfg.normalize and 0 < initial < 1:
            state["scale"] = 1.0 / initial
        self._emit(StepRecord(restart, 0, state["evals"], initial, state["best"],
                              time.perf_counter() - start, MappingProxyType(snapshot()), 0))
        try:
            while step < cfg.steps:
                if cfg.max_evaluations is not None and state["evals"] >= cfg.max_evaluations:
                    break
                k = step % len(groups)
                spent = False
                try:
                    optimizers[k].step(closures[k])
                    dist = state["last"]  # the distance at the last evaluated point of this step
                    finite = all(bool(torch.isfinite(leaf).all()) for leaf in all_leaves)
                    if not finite:
                        raise _NonFinite(dist)
                except _BudgetSpent:
                    spent, dist = True, state["last"]
                except _NonFinite:
                    recoveries += 1
                    logger.warning("non-finite distance at step %d (restart %d): back to the best point "
                                   "(distance %.4g), optimizer reset (%d/%d)", step + 1, restart,
                                   state["best"], recoveries, cfg.max_recoveries)
                    self._restore(parts, state["best_leaves"], per_sample)
                    optimizers = make_optimizers()
                    if recoveries > cfg.max_recoveries:
                        break
                    dist = state["best"]
                step += 1
                with torch.no_grad():
                    self.plugin.project(current())
                history.append(dist)
                record = StepRecord(restart, step, state["evals"], dist, state["best"],
                                    time.perf_counter() - start, MappingProxyType(snapshot()), recoveries)
                if self._emit(record) or spent or state["best"] <= cfg.tolerance:
                    break
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted at step %d: keeping the best candidate so far (distance %.4g)",
                           step, state["best"])
        best_leaves = state["best_leaves"] if state["best_leaves"] is not None else snapshot()
        return MatchingResult(MappingProxyType(best_leaves), state["best"], restart, step, state["evals"],
                              time.perf_counter() - start, interrupted, tuple(history), recoveries)

    @staticmethod
    def _restore(parts: dict[str, list[torch.Tensor]], best: dict[str, torch.Tensor] | None,
                 per_sample: bool) -> None:
        if best is None:
            raise MatchingDivergedError("the gradient distance was never finite: nothing to restart from")
        with torch.no_grad():
            for name, ps in parts.items():
                chunks = best[name].split(1, 0) if per_sample else [best[name]]
                for leaf, value in zip(ps, chunks):
                    leaf.copy_(value)
                    leaf.grad = None

    def _emit(self, record: StepRecord) -> bool:
        stop = False
        for callback in self.callbacks:
            stop = bool(callback(record)) or stop
        return stop
