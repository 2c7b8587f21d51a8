"""The engine's options and their accepted values, in plain Python (no torch), so that a command line can
build its parser, its choices and its defaults from them without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nlp_dlg.engine.errors import ConfigError

OPTIMIZERS = ("lbfgs", "adam")
SCHEDULES = ("joint", "per-sample")
PRIORS = ("add", "scale")
DISTANCES = ("l2", "cosine", "l2+l1", "layer-l2")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.1}   # L-BFGS: the paper's; Adam: Inverting Gradients' 0.1


@dataclass(frozen=True)
class MatchingConfig:
    """Options of the gradient-matching loop.

    Args:
        steps: optimizer steps per restart (L-BFGS: each runs up to ``lbfgs_max_iter`` evaluations). A *step*
            is one ``optimizer.step()`` call everywhere: in the CLIs (``--steps``), here and in the results
            (``steps``).
        max_evaluations: a restart spends at most this many gradient evaluations, also mid-way through an
            L-BFGS step (None: no cap).
        optimizer: ``lbfgs`` (the paper) or ``adam``.
        lr: learning rate; None: the optimizer's default in :data:`DEFAULT_LR` (1.0 for L-BFGS as the paper,
            0.1 for Adam).
        distance: ``l2`` (the paper), ``cosine``, ``l2+l1`` or ``layer-l2``.
        restarts: independent random initialisations; the lowest final distance wins. With ``stall_step`` set,
            the most starts tried: a start that stalls is abandoned for the next (the last is never abandoned),
            and the first that does not runs to its end and ends the search.
        stall_step, stall_drop: a restart whose best distance at step ``stall_step`` has not fallen below
            ``stall_drop`` times its first distance is stalled (None: never checked). The attacker decides from
            the distance alone, never from the truth.
        schedule: ``joint`` updates the whole batch at each step; ``per-sample`` updates only sample
            ``step mod B`` (the paper's schedule for batches), each sample with its own optimizer.
            Identical for ``B = 1``. ``joint`` is the default: on the engine's test MLP it recovers a
            batch of two exactly where ``per-sample`` with L-BFGS stalls (tests/engine/test_matcher.py).
        lbfgs_max_iter: L-BFGS's ``max_iter`` (gradient evaluations per step).
        lbfgs_history: L-BFGS's ``history_size``.
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
    lr: float | None = None
    distance: str = "l2"
    restarts: int = 1
    schedule: str = "joint"
    lbfgs_max_iter: int = 20
    lbfgs_history: int = 100
    tolerance: float = 0.0
    max_recoveries: int = 5
    prior: str = "add"
    normalize: bool = False
    stall_step: int | None = None
    stall_drop: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("steps", "restarts", "lbfgs_max_iter", "lbfgs_history"):
            _positive_int(name, getattr(self, name))
        for name in ("max_evaluations", "stall_step"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not (isinstance(self.stall_drop, (int, float)) and 0 < self.stall_drop < 1):
            raise ConfigError(f"stall_drop: expected a number in (0, 1), got {self.stall_drop!r}")
        for name, value, accepted in (("optimizer", self.optimizer, OPTIMIZERS), ("distance", self.distance, DISTANCES),
                                      ("schedule", self.schedule, SCHEDULES), ("prior", self.prior, PRIORS)):
            if value not in accepted:
                raise ConfigError(f"{name}: expected one of {', '.join(accepted)}, got {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: expected a positive finite number or None, got {self.lr!r}")
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0):
            raise ConfigError(f"tolerance: expected >= 0, got {self.tolerance!r}")
        if not isinstance(self.max_recoveries, int) or self.max_recoveries < 0:
            raise ConfigError(f"max_recoveries: expected >= 0, got {self.max_recoveries!r}")

    @property
    def learning_rate(self) -> float:
        """The learning rate the optimizer runs with: ``lr``, or the optimizer's default."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
