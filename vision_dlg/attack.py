"""The attacker: reconstruct images (and labels) from one image-classification gradient observation.

DLG (Zhu et al., 2019): dummy images drawn from a normal distribution and, unless the labels are read
off the gradient, dummy soft labels; L-BFGS (lr 1.0) on the L2 distance between the dummy's gradient and
the observed one, on the shared engine (restarts, non-finite guard, per-sample schedule for batches).
``label_method="analytic"`` (the default) takes iDLG's exact label for one image, and for a batch of B
distinct classes the B negative bias-gradient entries (exact too), and optimises the pixels only; other
batches get bias-gradient label counts (:mod:`vision_dlg.labels`, an estimate when the softmax is far
from uniform) as the start of soft labels that the matching optimises with the pixels. ``"dlg"``
optimises soft labels from random logits as the paper. Departures from the paper for batches, all
switchable: the pixels are the sigmoid of the optimised logits (``box``), and a small total-variation
prior (``tv``); without them a batch's matching settles on noise-like images whose gradient matches the
observed one (measured on LeNet: batch 2, 7 dB; with the box, 19 dB; batch 4 with the box and the prior,
29 dB). Where the gradient cannot see the batch's contrast (batch norm on the batch's statistics,
:func:`vision_dlg.victim.contrast_sensitivity`) an added prior shrinks it: there the prior scales the
distance instead, and fades as the gradients match. The logits start near 0 (``init_std``), every pixel
near 0.5 where the sigmoid is steepest.
Options: cosine distance, clamping to [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from nlp_dlg.engine.errors import ConfigError, GradientMismatchError
from nlp_dlg.engine.matcher import PRIORS, GradientMatcher, MatchingConfig, StepRecord
from nlp_dlg.engine.observation import GradientObservation, as_gradient
from vision_dlg.labels import infer_labels, labels_are_exact
from vision_dlg.plugin import ImagePlugin
from vision_dlg.victim import TASK, contrast_sensitivity, victim_mode

logger = logging.getLogger(__name__)

LABEL_METHODS = ("analytic", "dlg")
# Initial pixel logits: std 1 saturates many sigmoid pixels, where the matching's gradient is small. ResNet-20
# (train mode, 32x32, scripts/reproduce_table1.py): batches 1, 2, 4 restored at steps 36, 57, 388 instead of 128,
# 101 and a stall near 16 dB; LeNet batch 4 (benchmarks/bench_vision.py): mean 29.0 dB instead of 28.5 dB.
BOXED_INIT_STD = 0.01
BATCH_TV = 1e-3  # LeNet, 4 LFW faces at 32x32: 13 dB without, 29 dB with (boxed pixels, 300 L-BFGS steps)
# contrast_sensitivity below this: the gradient is blind to the batch's contrast (benchmarks/bench_contrast.py:
# train-mode ResNet-20 5.5e-4 to 1.1e-3; its eval mode and LeNet 0.62 to 2.1). There an added prior shrinks the
# contrast along that blind direction: a train-mode ResNet-20 batch of 8 at 16x16 went from pixel std 0.15 to
# 0.03 (mean 0.5 to 0.09) and stalled at 28.7 dB. The default there scales the distance by (1 + SCALED_TV·TV)
# instead (``prior="scale"``), a prior that fades as the gradients match: restored at step 29.
CONTRAST_BLIND = 1e-2
SCALED_TV = 1.0


@dataclass(frozen=True)
class ImageStep:
    """What an image callback sees: the engine's step record and the decoded candidate."""

    record: StepRecord
    images: torch.Tensor    # (B, C, S, S) in [0, 1]
    labels: torch.Tensor    # (B,)


ImageCallback = Callable[[ImageStep], "bool | None"]


@dataclass(frozen=True)
class ImageAttackConfig:
    """Attacker options.

    Args:
        label_method: ``analytic`` (labels read off the classifier's gradient; pixels optimised) or
            ``dlg`` (soft labels optimised with the pixels, as the paper).
        matching: the engine's options; the default is the paper's (L2, L-BFGS lr 1.0, 300 steps) with an
            objective that starts below 1 lifted to 1 for L-BFGS (``normalize``: same minimiser).
        tv: weight of a total-variation prior on the images; None (default): 0 for one image; for a batch
            ``BATCH_TV`` added to the distance (a batch's gradient leaves room for noise-like images that
            match it), or ``SCALED_TV`` scaling it.
        prior: how the prior enters the objective, ``add`` or ``scale`` (the attack sets the engine's
            ``MatchingConfig.prior`` from this); None (default): ``scale`` where the gradient is blind to the
            batch's contrast (train-mode batch norm: an added prior shrinks the contrast along that blind
            direction), else ``add``.
        clamp: keep the pixels in [0, 1] after each step (unboxed pixels only).
        box: optimise pixel logits (pixels = their sigmoid, always in (0, 1)); None (default): raw pixels as
            DLG published for one image (they converge faster there), logits for a batch or a train-mode
            gradient (batch norm on the batch's statistics ignores the image's scale, so raw pixels drift
            out of range there).
        init_std: standard deviation of the initial pixels (or pixel logits with ``box``); None (default): 1,
            DLG's standard normal, for raw pixels, and ``BOXED_INIT_STD`` for logits.
        log_every: call the callbacks every this many steps (and at step 0 and the last).
    """

    label_method: str = "analytic"
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(distance="l2", steps=300,
                                                                            normalize=True))
    tv: float | None = None
    prior: str | None = None
    clamp: bool = False
    box: bool | None = None
    init_std: float | None = None
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.label_method not in LABEL_METHODS:
            raise ConfigError(f"label_method: expected one of {', '.join(LABEL_METHODS)}, got {self.label_method!r}")
        if self.tv is not None and not (self.tv >= 0):
            raise ConfigError(f"tv: expected a non-negative number, got {self.tv!r}")
        if self.prior is not None and self.prior not in PRIORS:
            raise ConfigError(f"prior: expected one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.init_std is not None and not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ConfigError(f"init_std: expected a positive finite number, got {self.init_std!r}")
        if not isinstance(self.log_every, int) or self.log_every <= 0:
            raise ConfigError(f"log_every: expected a positive integer, got {self.log_every!r}")

    def uses_box(self, batch_size: int, *, train: bool) -> bool:
        """Whether the pixels are boxed (the sigmoid of optimised logits) for this batch size and mode."""
        return self.box if self.box is not None else (batch_size > 1 or train)

    def prior_for(self, batch_size: int, *, contrast_blind: bool = False) -> tuple[float, str]:
        """The total-variation weight and how it enters the objective (``add`` or ``scale``) for a batch of
        ``batch_size`` (``contrast_blind``: the gradient does not see the batch's contrast,
        :func:`vision_dlg.victim.contrast_sensitivity`)."""
        form = self.prior or ("scale" if contrast_blind else "add")
        if self.tv is not None:
            return self.tv, form
        if batch_size == 1:
            return 0.0, form
        return (SCALED_TV if form == "scale" else BATCH_TV), form

    def probes_contrast(self, batch_size: int) -> bool:
        """Whether the attack must measure the gradient's contrast sensitivity to choose how the prior enters:
        the form is not given and the prior's weight is not 0."""
        return self.prior is None and (bool(self.tv) if self.tv is not None else batch_size > 1)

    def initial_std(self, box: bool) -> float:
        """The std of the initial pixels (``box``: pixel logits) this config gives."""
        if self.init_std is not None:
            return self.init_std
        return BOXED_INIT_STD if box else 1.0


@dataclass(frozen=True)
class ImageReconstruction:
    """One reconstructed image (``iterations``: optimizer steps; ``evaluations``: gradient evaluations)."""

    batch: int
    index: int
    image: torch.Tensor     # (C, S, S) in [0, 1]
    label: int
    distance: float
    iterations: int
    evaluations: int
    seconds: float
    label_method: str
    interrupted: bool = False
    tv: float = 0.0         # weight of the total-variation prior the attack used
    prior: str = "add"      # and how it entered the objective

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "index": self.index, "label": self.label, "loss": self.distance,
                "iterations": self.iterations, "gradient_evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "label_method": self.label_method,
                "interrupted": self.interrupted, "tv": self.tv, "prior": self.prior}


class ImageAttack:
    """Reconstruct the images behind an image-classification gradient.

    Args:
        model: the model the gradient was computed on; the attack runs it in the mode the gradient file records
            (``train``: batch norm on the batch's statistics, as the victim's training step; else eval).
        config: label method and engine options.
        callbacks: called every ``config.log_every`` steps with the decoded images.

    Example:
        >>> attack = ImageAttack(model)  # doctest: +SKIP
        >>> recs = attack.attack(observation, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, config: ImageAttackConfig | None = None,
                 *, callbacks: Sequence[ImageCallback] = ()) -> None:
        self.model = model
        self.config = config or ImageAttackConfig()
        self.callbacks = tuple(callbacks)

    def attack(self, observation: GradientObservation, *, generator: torch.Generator, batch: int | None = None,
               image_shape: tuple[int, int, int] | None = None, num_classes: int | None = None
               ) -> list[ImageReconstruction]:
        """Reconstruct every image of the observed batch (shape and classes from the metadata unless given)."""
        meta = observation.metadata
        task = meta.get("task", TASK)
        if task != TASK:
            raise ConfigError(f"gradient task: expected {TASK!r}, got {task!r}")
        observation.check_shapes({n: p.shape for n, p in self.model.named_parameters() if p.requires_grad})
        observation = as_gradient(observation)  # a FedAvg weight delta becomes its mean gradient
        model_meta = meta.get("model", {})
        if image_shape is None:
            try:
                side = int(model_meta["image_size"])
                image_shape = (int(model_meta["channels"]), side, side)
            except KeyError as exc:
                raise GradientMismatchError(f"gradient metadata lacks {exc}: pass image_shape") from exc
        num_classes = num_classes or int(model_meta.get("num_classes", 0)) or None
        if num_classes is None:
            raise GradientMismatchError("gradient metadata lacks num_classes: pass num_classes")
        batch_size = int(meta.get("batch_size", 1))
        if batch_size <= 0:
            raise ConfigError(f"batch_size in gradient metadata: expected a positive integer, got {batch_size}")
        batch = int(meta.get("batch_index", 0)) if batch is None else batch
        labels, exact = None, False
        if self.config.label_method == "analytic":
            labels = infer_labels(observation.gradients, self.model, batch_size)
            exact = labels_are_exact(observation.gradients, self.model, batch_size)
        train = meta.get("mode") == "train"
        blind = (self.config.probes_contrast(batch_size)
                 and contrast_sensitivity(self.model, image_shape, batch_size, num_classes,
                                          train_mode=train) < CONTRAST_BLIND)
        if blind:
            logger.info("the gradient is blind to the batch's contrast (batch norm on the batch's statistics): "
                        "the total-variation prior scales the distance")
        tv, form = self.config.prior_for(batch_size, contrast_blind=blind)
        matching = replace(self.config.matching, prior=form)
        box = self.config.uses_box(batch_size, train=train)
        plugin = ImagePlugin(self.model, batch_size, image_shape, num_classes, labels=labels,
                             learn_labels=labels is not None and not exact, tv=tv,
                             clamp=self.config.clamp, box=box, init_std=self.config.initial_std(box))
        every, steps = self.config.log_every, matching.steps

        def on_step(record: StepRecord) -> bool:
            if not self.callbacks or not (record.step % every == 0 or record.step == steps):
                return False
            images, labs = plugin.decode(record.candidate)
            event = ImageStep(record, images, labs)
            return any([bool(cb(event)) for cb in self.callbacks])

        with victim_mode(self.model, train=train):
            result = GradientMatcher(plugin, matching, callbacks=[on_step]).run(
                observation.gradients, generator=generator)
            images, labs = plugin.decode(result.leaves)
        return [ImageReconstruction(batch, i, images[i], int(labs[i]), result.distance, result.steps,
                                    result.evaluations, result.seconds, self.config.label_method, result.interrupted,
                                    tv, form)
                for i in range(batch_size)]
