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
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import torch

from nlp_dlg.engine.config import OPTIMIZERS, PRIORS, SCHEDULES, MatchingConfig
from nlp_dlg.engine.distance import gradient_distance
from nlp_dlg.engine.errors import ConfigError, GradientMismatchError, MatchingDivergedError

logger = logging.getLogger(__name__)

__all__ = ["OPTIMIZERS", "PRIORS", "SCHEDULES", "Callback", "GradientMatcher", "MatchingConfig", "MatchingPlugin",
           "MatchingResult", "StepRecord"]


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
    stalled: bool = False          # this restart was abandoned at ``stall_step`` (see :class:`MatchingConfig`)
    abandoned: int = 0             # restarts of the search abandoned as stalled
    total_evaluations: int = 0     # gradient evaluations of every restart of the search


Callback = Callable[[StepRecord], "bool | None"]
"""A callback returning True stops the current restart early."""


class _NonFinite(Exception):
    """Inside an optimizer step: the distance is NaN/Inf (the only way out of torch's L-BFGS closure)."""


class _BudgetSpent(Exception):
    """Inside an optimizer step: the evaluation cap is reached."""


class GradientMatcher:
    """Run DLG's gradient matching for one observed gradient, on the device of the matched parameters.

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
        """Match the observed gradients ``target`` (name -> tensor, on any device: they are moved to the
        parameters'). ``generator`` is a CPU generator. Ctrl-C returns the best so far."""
        params = dict(self.plugin.matched_parameters())
        missing = [n for n in params if n not in target]
        if missing:
            raise GradientMismatchError(f"observed gradient lacks matched parameter(s) {missing[:3]}")
        for name, p in params.items():
            if tuple(target[name].shape) != tuple(p.shape):
                raise GradientMismatchError(f"{name}: expected shape {tuple(p.shape)}, "
                                            f"got {tuple(target[name].shape)}")
        param_list = list(params.values())
        target_list = [target[n].detach().to(device=p.device, dtype=p.dtype) for n, p in params.items()]
        flags = [p.requires_grad for p in param_list]
        for p in param_list:
            p.requires_grad_(True)
        start = time.perf_counter()
        try:
            best = self._restarts(param_list, target_list, generator, start)
        finally:
            for p, flag in zip(param_list, flags):
                p.requires_grad_(flag)
        return best

    def _restarts(self, params: list[torch.Tensor], target: list[torch.Tensor], generator: torch.Generator,
                  start: float) -> MatchingResult:
        """The restarts, the best result first; with ``stall_step``, until one does not stall."""
        best: MatchingResult | None = None
        abandoned = evaluations = 0
        for restart in range(self.config.restarts):
            result = _Restart(self, restart, params, target, generator, start).run()
            if best is None or result.distance < best.distance or not math.isfinite(best.distance):
                best = result
            logger.info("restart %d/%d %s at distance %.4g after %d steps, %d evaluations", restart + 1,
                        self.config.restarts, "abandoned (stalled)" if result.stalled else "ended", result.distance,
                        result.steps, result.evaluations)
            abandoned, evaluations = abandoned + int(result.stalled), evaluations + result.evaluations
            if result.interrupted or (self.config.stall_step is not None and not result.stalled):
                break
        assert best is not None
        return replace(best, abandoned=abandoned, total_evaluations=evaluations)

    def emit(self, record: StepRecord) -> bool:
        """Call every callback with ``record``; True when one of them asks to stop."""
        stop = False
        for callback in self.callbacks:
            stop = bool(callback(record)) or stop
        return stop


class _Restart:
    """One restart: dummy leaves, their optimizers and the best point so far, advanced step by step.

    Leaves are kept per sample when the per-sample schedule steps one sample at a time (one optimizer per
    sample), else as one group."""

    def __init__(self, matcher: GradientMatcher, restart: int, params: list[torch.Tensor],
                 target: list[torch.Tensor], generator: torch.Generator, start: float) -> None:
        self.config, self.plugin, self.emit = matcher.config, matcher.plugin, matcher.emit
        self.restart, self.params, self.target, self.start = restart, params, target, start
        init = self.plugin.init_leaves(generator)
        if not init:
            raise ConfigError("plugin returned no dummy leaves")
        sizes = {t.shape[0] for t in init.values()}
        if len(sizes) != 1:
            raise ConfigError(f"dummy leaves must share their batch size, got sizes {sorted(sizes)}")
        n_samples = sizes.pop()
        self.per_sample = self.config.schedule == "per-sample" and n_samples > 1
        device = params[0].device if params else torch.device("cpu")
        self.parts: dict[str, list[torch.Tensor]] = {
            name: [t[i:i + 1].detach().to(device).clone().requires_grad_(True) for i in range(n_samples)]
            if self.per_sample else [t.detach().to(device).clone().requires_grad_(True)]
            for name, t in init.items()}
        self.groups = ([[self.parts[n][i] for n in self.parts] for i in range(n_samples)] if self.per_sample
                       else [[self.parts[n][0] for n in self.parts]])
        self.prior = _regularizer(self.plugin)
        self.evaluations, self.best, self.last, self.scale, self.first = 0, math.inf, math.inf, 1.0, math.inf
        self.best_leaves: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []
        self.recoveries = self.steps = 0
        self.optimizers = self._optimizers()
        self.closures = [self._closure(g) for g in self.groups]

    # -- the objective -------------------------------------------------------------------------
    def leaves(self) -> dict[str, torch.Tensor]:
        return {n: torch.cat(ps, 0) if len(ps) > 1 else ps[0] for n, ps in self.parts.items()}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.leaves().items()}

    def evaluate(self, create_graph: bool) -> torch.Tensor:
        """The distance at the current leaves (plus the prior); one gradient evaluation."""
        cfg = self.config
        if cfg.max_evaluations is not None and self.evaluations >= cfg.max_evaluations:
            raise _BudgetSpent  # strict cap, also inside an L-BFGS step
        leaves = self.leaves()
        grads = torch.autograd.grad(self.plugin.task_loss(leaves), self.params, create_graph=create_graph)
        dist = gradient_distance(grads, self.target, cfg.distance)
        if self.prior is not None:
            dist = dist * (1 + self.prior(leaves)) if cfg.prior == "scale" else dist + self.prior(leaves)
        self.evaluations += 1
        self.last = value = float(dist.detach())
        if not math.isfinite(value):
            raise _NonFinite(value)
        if value < self.best:
            self.best, self.best_leaves = value, self.snapshot()
        return dist

    def _closure(self, group: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            dist = self.evaluate(create_graph=True) * self.scale
            # gradients for the leaves only: never for the model's weights
            for leaf, g in zip(group, torch.autograd.grad(dist, group, allow_unused=True)):
                leaf.grad = torch.zeros_like(leaf) if g is None else g
            return dist.detach()
        return closure

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        cfg, lr = self.config, self.config.learning_rate
        if cfg.optimizer == "lbfgs":
            return [torch.optim.LBFGS(g, lr=lr, max_iter=cfg.lbfgs_max_iter, history_size=cfg.lbfgs_history)
                    for g in self.groups]
        return [torch.optim.Adam(g, lr=lr) for g in self.groups]

    def record(self, distance: float) -> StepRecord:
        return StepRecord(self.restart, self.steps, self.evaluations, distance, self.best,
                          time.perf_counter() - self.start, MappingProxyType(self.snapshot()), self.recoveries)

    # -- the named steps -----------------------------------------------------------------------
    def begin(self) -> None:
        """Evaluate the first point, lift a small objective for L-BFGS (``normalize``), report step 0."""
        try:
            initial = float(self.evaluate(create_graph=False).detach())
        except _NonFinite:
            initial = math.inf
        self.first = initial
        if self.config.normalize and 0 < initial < 1:
            self.scale = 1.0 / initial
        self.emit(self.record(initial))

    def advance(self) -> tuple[float, bool]:
        """One optimizer step (of sample ``step mod B`` with the per-sample schedule): the distance at its
        last evaluated point, and whether the evaluation cap ended it."""
        k = self.steps % len(self.groups)
        try:
            self.optimizers[k].step(self.closures[k])
            if not all(bool(torch.isfinite(leaf).all()) for group in self.groups for leaf in group):
                raise _NonFinite(self.last)
        except _BudgetSpent:
            return self.last, True
        except _NonFinite:
            return self.recover(), False
        return self.last, False

    def recover(self) -> float:
        """Back to the best point with fresh optimizers after a non-finite distance."""
        self.recoveries += 1
        logger.warning("non-finite distance at step %d (restart %d): back to the best point (distance %.4g), "
                       "optimizer reset (%d/%d)", self.steps + 1, self.restart, self.best, self.recoveries,
                       self.config.max_recoveries)
        if self.best_leaves is None:
            raise MatchingDivergedError("the gradient distance was never finite: nothing to restart from")
        with torch.no_grad():
            for name, ps in self.parts.items():
                chunks = self.best_leaves[name].split(1, 0) if self.per_sample else [self.best_leaves[name]]
                for leaf, value in zip(ps, chunks):
                    leaf.copy_(value)
                    leaf.grad = None
        self.optimizers = self._optimizers()
        return self.best

    def score_last(self) -> None:
        """Evaluate the point the last step moved to (an optimizer step ends with an update it has not
        evaluated, the candidate the last callback saw), so that the best point can be it; skipped when the
        evaluation cap is spent."""
        try:
            self.evaluate(create_graph=False)
        except (_BudgetSpent, _NonFinite):
            pass

    def finished(self) -> bool:
        cap = self.config.max_evaluations
        return (self.steps >= self.config.steps or (cap is not None and self.evaluations >= cap)
                or self.recoveries > self.config.max_recoveries)

    def run(self) -> MatchingResult:
        """Steps until the step or evaluation budget, the tolerance, a callback or Ctrl-C ends the restart."""
        interrupted = stalled = False
        self.begin()
        try:
            while not self.finished():
                dist, spent = self.advance()
                if self.recoveries > self.config.max_recoveries:
                    break
                self.steps += 1
                with torch.no_grad():
                    self.plugin.project(self.leaves())
                self.history.append(dist)
                if self.emit(self.record(dist)) or spent or self.best <= self.config.tolerance:
                    break
                if (self.steps == self.config.stall_step and self.best > self.config.stall_drop * self.first
                        and self.restart + 1 < self.config.restarts):     # the last start has no next: it runs on
                    logger.info("restart %d stalls: distance %.4g at step %d, above %.3g of its first %.4g",
                                self.restart, self.best, self.steps, self.config.stall_drop, self.first)
                    stalled = True
                    break
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted at step %d: keeping the best candidate so far (distance %.4g)",
                           self.steps, self.best)
        if not (interrupted or stalled):
            self.score_last()
        best = self.best_leaves if self.best_leaves is not None else self.snapshot()
        return MatchingResult(MappingProxyType(best), self.best, self.restart, self.steps, self.evaluations,
                              time.perf_counter() - self.start, interrupted, tuple(self.history), self.recoveries,
                              stalled)
