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
:func:`vision_dlg.task.contrast_sensitivity`) an added prior shrinks it: there the prior scales the
distance instead, and fades as the gradients match. The logits start near 0 (``init_std``), every pixel
near 0.5 where the sigmoid is steepest.
Options: cosine distance, clamping to [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from nlp_dlg.engine.device import model_device
from nlp_dlg.engine.errors import ConfigError, GradientMismatchError
from nlp_dlg.engine.matcher import GradientMatcher, MatchingResult, StepRecord
from nlp_dlg.engine.observation import GradientObservation, as_gradient
from vision_dlg.capacity import (
    chroma_for,
    gradient_capacity,
    image_unknowns,
    warn_if_undetermined,
)
from vision_dlg.config import (
    BATCH_TV,
    BOXED_INIT_STD,
    CONTRAST_BLIND,
    LABEL_METHODS,
    SCALED_TV,
    ImageAttackConfig,
)
from vision_dlg.labels import check_batch_claim, infer_labels, labels_are_exact
from vision_dlg.plugin import ImagePlugin
from vision_dlg.task import TASK, contrast_sensitivity, victim_mode

__all__ = ["BATCH_TV", "BOXED_INIT_STD", "CONTRAST_BLIND", "LABEL_METHODS", "SCALED_TV", "ImageAttack",
           "ImageAttackConfig", "ImageReconstruction", "ImageStep"]

logger = logging.getLogger(__name__)

# A polish with subsampled colour that the images can hold falls far below the prior stage's distance; one whose
# photos carry finer colour stalls. LeNet 32x32, batches of 4, colour 2-fold: grey faces fell 150x and 440x (to
# 1-3e-6), scikit-image colour photos 7.5x and 16x (to 5e-5-1.4e-4; with every pixel free, 1e-6, and 0.3-0.6 dB
# better where the subsampled polish lost 2-4 dB). Measured 2026-12-07 with the polish of both kinds.
COLOUR_FIT_DROP = 50.0
# The colour the gradient cannot see: a photo batch has more pixels than its gradient can determine (LeNet 32x32,
# 4 photos: 12,288 pixels, bound 11,208), and the images that match it differ from the truth by colour noise at
# the scale of a pixel. A prior on the colour planes COLOUR_TV times the grey level's chooses smooth colour. Photos
# 0-3 in one gradient (exploratory, 2026-12-07, 100 + 100 steps from the grid's planes, the two priors apart):
# 32.0-36.2 dB, where the colour in 538 DCT terms gave 29.7-32.4 (truncated colour makes the gradient's fit distort
# the rest). Photos 0-7 in one gradient, 300 + 100 steps from the grid: the priors apart 5/8 at 30 dB (28.3-37.2),
# joint (vectorial TV) 7/8 (28.5-37.3); 100 + 100 steps: 5/8 either way. Colour weight 1e-2 with grey 1e-3 (apart,
# from noise) 1.4-3.7 dB below 3e-3; joint from noise, 3e-3 7/8, 5e-3 or twice both weights 6/8. The polish keeps
# POLISH_PRIOR of both weights (without the grey's: 0.6 dB lower or less; a second polish at 0.01: +0.2 dB at most).
COLOUR_TV = 3.0
POLISH_PRIOR = 0.1


@dataclass(frozen=True)
class ImageStep:
    """What an image callback sees: the engine's step record and the decoded candidate."""

    record: StepRecord
    images: torch.Tensor    # (B, C, S, S) in [0, 1]
    labels: torch.Tensor    # (B,)


ImageCallback = Callable[[ImageStep], "bool | None"]


@dataclass(frozen=True)
class ImageReconstruction:
    """One reconstructed image (``steps``: optimizer steps of the start kept; ``evaluations``: gradient evaluations
    of every start; ``distance``: the final gradient distance)."""

    batch: int
    index: int
    image: torch.Tensor     # (C, S, S) in [0, 1]
    label: int
    distance: float
    steps: int
    evaluations: int
    seconds: float
    label_method: str
    interrupted: bool = False
    tv: float = 0.0         # weight of the total-variation prior the attack used
    prior: str = "add"      # and how it entered the objective
    abandoned: int = 0      # starts abandoned as stalled (their evaluations are counted in ``evaluations``)
    chroma: int = 1         # colour subsampling the attack searched under (1: every pixel)
    colour_terms: int = 0   # DCT terms per colour plane of the kept polish (0: none, :meth:`ImageAttack._polish`)
    colour_tv: float = 0.0  # the colour planes' prior weight in the kept polish (0: no prior of their own)

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "index": self.index, "label": self.label, "distance": self.distance,
                "steps": self.steps, "gradient_evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "label_method": self.label_method,
                "interrupted": self.interrupted, "tv": self.tv, "prior": self.prior, "abandoned_starts": self.abandoned,
                "chroma": self.chroma, "colour_terms": self.colour_terms, "colour_tv": self.colour_tv}


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
        """Reconstruct every image of the observed batch (shape and classes from the metadata unless given), on
        the model's device; ``generator`` is a CPU generator."""
        meta = observation.metadata
        if meta.get("task", TASK) != TASK:
            raise ConfigError(f"gradient task: expected {TASK!r}, got {meta.get('task')!r}")
        observation.check_shapes({n: p.shape for n, p in self.model.named_parameters() if p.requires_grad})
        observation = as_gradient(observation).to(model_device(self.model))  # a FedAvg delta: its mean gradient
        image_shape, num_classes = _shape_and_classes(meta.get("model", {}), image_shape, num_classes)
        batch_size = int(meta.get("batch_size", 1))
        if batch_size <= 0:
            raise ConfigError(f"batch_size in gradient metadata: expected a positive integer, got {batch_size}")
        batch = int(meta.get("batch_index", 0)) if batch is None else batch
        train = meta.get("mode") == "train"
        plugin, tv, form = self._plugin(observation.gradients, batch_size, image_shape, num_classes, train)
        chroma = plugin.chroma                                  # the search's (a polish may free every pixel)
        with victim_mode(self.model, train=train):
            result = self._match(plugin, replace(self.config.matching, prior=form), observation.gradients, generator)
            if tv > 0 and form == "add" and self.config.polish_steps and not result.interrupted:
                plugin, result = self._polish(plugin, result, observation.gradients, generator)
            images, labs = plugin.decode(result.leaves)
        images, labs = images.cpu(), labs.cpu()
        return [ImageReconstruction(batch, i, images[i], int(labs[i]), result.distance, result.steps,
                                    result.total_evaluations, result.seconds, self.config.label_method,
                                    result.interrupted, tv, form, result.abandoned, chroma, plugin.colour_terms,
                                    plugin.colour_tv)
                for i in range(batch_size)]

    def _polish(self, plugin: ImagePlugin, found: MatchingResult, gradients: Mapping[str, torch.Tensor],
                generator: torch.Generator) -> tuple[ImagePlugin, MatchingResult]:
        """``polish_steps`` more steps (at most the matching's) without the prior from where it ended, where the
        gradient can determine the batch (else the prior's choice is kept: the gradient alone would drift among
        equals). A polish of subsampled colour that does not fall ``COLOUR_FIT_DROP`` times below the prior stage
        leaves a residual the grid cannot hold (a photo's fine colour): every pixel's colour is then freed under a
        prior of its own (:meth:`_finer_colour`), and that is kept."""
        if not gradient_capacity(self.model, plugin.image_shape, plugin.batch_size, chroma=plugin.chroma).determined:
            logger.info("no polish without the prior: the gradient cannot determine this batch")
            return plugin, found
        steps = min(self.config.polish_steps, self.config.matching.steps)
        logger.info("polishing without the prior: %d more steps from distance %.4g", steps, found.distance)
        config = replace(self.config.matching, steps=steps, restarts=1, stall_step=None)
        kept = plugin.variant(tv=0.0, start=found.leaves)
        run = self._match(kept, config, gradients, generator)
        spent, before = [run], 0                # every run paid for; the refit's steps before the kept polish
        if plugin.chroma > 1 and run.distance > found.distance / COLOUR_FIT_DROP:
            logger.info("the polish with colour subsampled %d-fold fell only %.3gx (to %.4g): the colour is finer "
                        "than the grid", plugin.chroma, found.distance / run.distance, run.distance)
            refit, kept, run = self._finer_colour(plugin, found, config, gradients, generator)
            spent, before = [*spent, refit, run], refit.steps
        return kept, replace(run, steps=found.steps + before + run.steps, abandoned=found.abandoned,
                             total_evaluations=found.total_evaluations + sum(r.total_evaluations for r in spent),
                             seconds=found.seconds + sum(r.seconds for r in spent))

    def _finer_colour(self, plugin: ImagePlugin, found: MatchingResult, config: Any,
                      gradients: Mapping[str, torch.Tensor], generator: torch.Generator
                      ) -> tuple[MatchingResult, ImagePlugin, MatchingResult]:
        """Every pixel's colour free, from the grid's planes, under a joint prior: the search's weight on the grey
        level and ``COLOUR_TV`` times it on the colour planes (where the batch has more pixels than its gradient can
        determine, that prior chooses the colour the gradient cannot see). The matching's steps with that prior,
        then ``config``'s with ``POLISH_PRIOR`` of it: the refit's run, the polish's plugin and its run."""
        side, steps = plugin.image_shape[1], self.config.matching.steps
        fine = plugin.with_colour_terms(found.leaves, side * side, colour_tv=COLOUR_TV * plugin.tv)
        logger.info("every pixel's colour free (%d unknowns), the prior %.3g on the grey level and %.3g on the "
                    "colour: %d steps, then %d with %.3g of it", plugin.batch_size * image_unknowns(plugin.image_shape),
                    fine.tv, fine.colour_tv, steps, config.steps, POLISH_PRIOR)
        refit = self._match(fine, replace(config, steps=steps), gradients, generator)
        polish = fine.variant(tv=POLISH_PRIOR * fine.tv, colour_tv=POLISH_PRIOR * fine.colour_tv, start=refit.leaves)
        polished = self._match(polish, config, gradients, generator)
        logger.info("the polish with every pixel's colour ended at distance %.4g (from %.4g)", polished.distance,
                    refit.distance)
        return refit, polish, polished

    def _match(self, plugin: ImagePlugin, config: Any, gradients: Mapping[str, torch.Tensor],
               generator: torch.Generator) -> MatchingResult:
        """One engine run of ``plugin`` under ``config``, its steps decoded to our callbacks."""
        return GradientMatcher(plugin, config, callbacks=[self._on_step(plugin)]).run(gradients, generator=generator)

    def _plugin(self, gradients: Mapping[str, torch.Tensor], batch_size: int, image_shape: tuple[int, int, int],
                num_classes: int, train: bool) -> tuple[ImagePlugin, float, str]:
        """The engine plugin for this batch: labels read off the gradient (``analytic``), the prior's weight and
        form (probing the gradient's contrast sensitivity where the form is open), boxed pixels or not."""
        labels, exact = None, False
        check_batch_claim(gradients, self.model, batch_size)
        undetermined = not gradient_capacity(self.model, image_shape, batch_size).determined
        chroma = self.config.chroma or (1 if self.config.clamp else chroma_for(self.model, image_shape, batch_size))
        warn_if_undetermined(self.model, image_shape, batch_size, chroma=chroma)
        if self.config.label_method == "analytic":
            labels = infer_labels(gradients, self.model, batch_size)
            exact = labels_are_exact(gradients, self.model, batch_size)
        blind = (self.config.probes_contrast(batch_size, undetermined=undetermined)
                 and contrast_sensitivity(self.model, image_shape, batch_size, num_classes,
                                          train_mode=train) < CONTRAST_BLIND)
        if blind:
            logger.info("the gradient is blind to the batch's contrast (batch norm on the batch's statistics): "
                        "the total-variation prior scales the distance")
        tv, form = self.config.prior_for(batch_size, contrast_blind=blind, undetermined=undetermined)
        box = self.config.uses_box(batch_size, train=train, undetermined=undetermined)
        plugin = ImagePlugin(self.model, batch_size, image_shape, num_classes, labels=labels,
                             learn_labels=labels is not None and not exact, tv=tv,
                             clamp=self.config.clamp, box=box, init_std=self.config.initial_std(box), chroma=chroma)
        return plugin, tv, form

    def _on_step(self, plugin: ImagePlugin) -> Callable[[StepRecord], bool]:
        """The engine's callback: the decoded images to ours every ``log_every`` steps."""
        every, steps = self.config.log_every, self.config.matching.steps

        def on_step(record: StepRecord) -> bool:
            if not self.callbacks or not (record.step % every == 0 or record.step == steps):
                return False
            images, labs = plugin.decode(record.candidate)
            event = ImageStep(record, images.cpu(), labs.cpu())
            return any([bool(cb(event)) for cb in self.callbacks])
        return on_step


def _shape_and_classes(model_meta: Mapping[str, Any], image_shape: tuple[int, int, int] | None,
                       num_classes: int | None) -> tuple[tuple[int, int, int], int]:
    """The input shape and the number of classes: given, or from the file's model metadata."""
    if image_shape is None:
        try:
            side = int(model_meta["image_size"])
            image_shape = (int(model_meta["channels"]), side, side)
        except KeyError as exc:
            raise GradientMismatchError(f"gradient metadata lacks {exc}: pass image_shape") from exc
    num_classes = num_classes or int(model_meta.get("num_classes", 0)) or None
    if num_classes is None:
        raise GradientMismatchError("gradient metadata lacks num_classes: pass num_classes")
    return image_shape, num_classes
