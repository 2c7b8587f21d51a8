"""The image task's options, in plain Python (no torch): the command line builds its parser, its choices and its
defaults from them, so there is no second default to drift."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nlp_dlg.engine.config import PRIORS, MatchingConfig
from nlp_dlg.engine.errors import ConfigError

RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}
MODELS = ("lenet", *RESNET_DEPTHS)
LABEL_METHODS = ("analytic", "dlg")
# Initial pixel logits: std 1 saturates many sigmoid pixels, where the matching's gradient is small. ResNet-20
# (train mode, 32x32, scripts/reproduce_table1.py): batches 1, 2, 4 restored at steps 36, 57, 388 instead of 128,
# 101 and a stall near 16 dB; LeNet batch 4 (benchmarks/bench_vision.py): mean 29.0 dB instead of 28.5 dB.
BOXED_INIT_STD = 0.01
BATCH_TV = 1e-3  # LeNet, 4 LFW faces at 32x32: 13 dB without, 29 dB with (boxed pixels, 300 L-BFGS steps)
# One image with more pixels than its gradient has directions (vision_dlg/capacity.py: DLG's LeNet at 64x64,
# 12,288 pixels, 11,208 directions): boxed pixels and this prior added. LeNet 64x64, 8 faces x 3 seeds: 23/24 at
# 30 dB or more, median 35.6 dB (benchmarks/results/vision_restarts.jsonl; raw pixels without a prior: 6.0-6.3 dB).
# Exploratory, faces 80-81, seed 0 (CHANGELOG 2026-12-06): 16 dB at 1e-4, 23-26 dB at 1e-3, 33 dB at 3e-3.
SINGLE_TV = 1e-2
# contrast_sensitivity below this: the gradient is blind to the batch's contrast (benchmarks/bench_contrast.py:
# train-mode ResNet-20 5.5e-4 to 1.1e-3; its eval mode and LeNet 0.62 to 2.1). There an added prior shrinks the
# contrast along that blind direction: a train-mode ResNet-20 batch of 8 at 16x16 went from pixel std 0.15 to
# 0.03 (mean 0.5 to 0.09) and stalled at 28.7 dB. The default there scales the distance by (1 + SCALED_TV·TV)
# instead (``prior="scale"``), a prior that fades as the gradients match: restored at step 29.
CONTRAST_BLIND = 1e-2
SCALED_TV = 1.0
# A start that fails is visible early: on LeNet with one 32x32 face (8 faces x 3 seeds, an exploratory run of
# the distance per step), the failing L-BFGS starts of DLG's N(0, 1) pixels (2 of 24) climbed above their first
# distance within 5 steps and stayed, while every start that succeeded had fallen 50-80x by step 10. Abandoned
# there, a failing start costs at most 10 steps; the next start is fresh. With these defaults 2 starts of 24
# were abandoned and every face came back (benchmarks/bench_vision_restarts.py).
RESTARTS = 8
STALL_STEP = 10
STALL_DROP = 0.1
# A batch's prior (total variation) finds the images but biases them: LeNet, 8 faces at 16x16, all 27.2-29.6 dB
# with it; 50 more L-BFGS steps without it, from there: 30.7-34.1 dB, 100 steps: 31.3-34.9 dB. Only where the
# gradient determines the batch (vision_dlg/capacity.py): at 32x32 a batch of 4 stays near 29 dB.
POLISH_STEPS = 100


@dataclass(frozen=True)
class VisionModelSpec:
    """A named victim model: ``name`` in :data:`MODELS`, classes, input shape, init seed."""

    name: str = "lenet"
    num_classes: int = 100
    channels: int = 3
    image_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ConfigError(f"model: expected one of {', '.join(MODELS)}, got {self.name!r}")
        for field_name in ("num_classes", "channels", "image_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field_name}: expected a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: expected at least 2, got {self.num_classes}")


@dataclass(frozen=True)
class ImageAttackConfig:
    """Attacker options.

    Args:
        label_method: ``analytic`` (labels read off the classifier's gradient; pixels optimised) or
            ``dlg`` (soft labels optimised with the pixels, as the paper).
        matching: the engine's options; the default is the paper's (L2, L-BFGS lr 1.0, 300 steps; stop at a
            distance of 1e-10) with an objective that starts below 1 lifted to 1 for L-BFGS (``normalize``:
            same minimiser), and up to ``RESTARTS`` starts: one whose distance has not fallen below
            ``STALL_DROP`` of its first by step ``STALL_STEP`` is abandoned for a fresh one (``restarts=1``: the
            paper's single start).
        tv: weight of a total-variation prior on the images; None (default): 0 for one image its gradient
            determines, ``SINGLE_TV`` for one it cannot (:mod:`vision_dlg.capacity`); for a batch ``BATCH_TV``
            added to the distance (a batch's gradient leaves room for noise-like images that match it), or
            ``SCALED_TV`` scaling it (also for one undetermined image).
        prior: how the prior enters the objective, ``add`` or ``scale`` (the attack sets the engine's
            ``MatchingConfig.prior`` from this); None (default): ``scale`` where the gradient is blind to the
            batch's contrast (train-mode batch norm: an added prior shrinks the contrast along that blind
            direction), else ``add``.
        clamp: keep the pixels in [0, 1] after each step (unboxed pixels only).
        box: optimise pixel logits (pixels = their sigmoid, always in (0, 1)); None (default): raw pixels as
            DLG published for one image (they converge faster there), logits for a batch, a train-mode
            gradient (batch norm on the batch's statistics ignores the image's scale, so raw pixels drift
            out of range there) or an image the gradient cannot determine.
        init_std: standard deviation of the initial pixels (or pixel logits with ``box``); None (default): 1,
            DLG's standard normal, for raw pixels, and ``BOXED_INIT_STD`` for logits.
        log_every: call the callbacks every this many steps (and at step 0 and the last).
        polish_steps: after a matching with an added prior, this many more steps without it (at most the
            matching's ``steps``), from where it ended (0: none), when the gradient can determine the batch
            (:mod:`vision_dlg.capacity`). Where that polish shows colour finer than the grid: the matching's steps
            again with every pixel's colour free under a prior of its own, then this many with a tenth of it
            (``ImageAttack._finer_colour``).
        chroma: colour subsampling of 3-channel images: the attack solves for a full-resolution grey level and
            two colour planes on a grid this many times coarser (1: every pixel, as the paper). None (default):
            the finest subsampling that leaves the batch well inside what the gradient can determine
            (:func:`vision_dlg.capacity.chroma_for`; LeNet at 32x32: 1 for one or two images, 2 for 3 or 4,
            4 for 8); 1 with ``clamp``, which projects pixels.
    """

    label_method: str = "analytic"
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(
        distance="l2", steps=300, tolerance=1e-10, normalize=True, restarts=RESTARTS, stall_step=STALL_STEP,
        stall_drop=STALL_DROP))
    tv: float | None = None
    prior: str | None = None
    clamp: bool = False
    box: bool | None = None
    init_std: float | None = None
    log_every: int = 10
    polish_steps: int = POLISH_STEPS
    chroma: int | None = None

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
        if not isinstance(self.polish_steps, int) or self.polish_steps < 0:
            raise ConfigError(f"polish_steps: expected a non-negative integer, got {self.polish_steps!r}")
        if self.chroma is not None and (not isinstance(self.chroma, int) or isinstance(self.chroma, bool)
                                        or self.chroma <= 0):
            raise ConfigError(f"chroma: expected a positive integer, got {self.chroma!r}")
        if self.clamp and self.chroma not in (None, 1):
            raise ConfigError("clamp: projects pixels, and subsampled colour has none to project (chroma 1, or box)")

    def uses_box(self, batch_size: int, *, train: bool, undetermined: bool = False) -> bool:
        """Whether the pixels are boxed (the sigmoid of optimised logits) for this batch size and mode
        (``undetermined``: the gradient cannot determine the pixels, :mod:`vision_dlg.capacity`)."""
        return self.box if self.box is not None else (batch_size > 1 or train or undetermined)

    def prior_for(self, batch_size: int, *, contrast_blind: bool = False,
                  undetermined: bool = False) -> tuple[float, str]:
        """The total-variation weight and how it enters the objective (``add`` or ``scale``) for a batch of
        ``batch_size`` (``contrast_blind``: the gradient does not see the batch's contrast,
        :func:`vision_dlg.victim.contrast_sensitivity`; ``undetermined``: it cannot determine the pixels)."""
        form = self.prior or ("scale" if contrast_blind else "add")
        if self.tv is not None:
            return self.tv, form
        if form == "scale":
            return (SCALED_TV if batch_size > 1 or undetermined else 0.0), form
        if batch_size == 1:
            return (SINGLE_TV if undetermined else 0.0), form
        return BATCH_TV, form

    def probes_contrast(self, batch_size: int, *, undetermined: bool = False) -> bool:
        """Whether the attack must measure the gradient's contrast sensitivity to choose how the prior enters:
        the form is not given and the prior's weight is not 0."""
        return self.prior is None and (bool(self.tv) if self.tv is not None else batch_size > 1 or undetermined)

    def initial_std(self, box: bool) -> float:
        """The std of the initial pixels (``box``: pixel logits) this config gives."""
        if self.init_std is not None:
            return self.init_std
        return BOXED_INIT_STD if box else 1.0
