"""The image-classification task in the pipeline (:class:`nlp_dlg.pipeline.AttackTask`): rebuild the model a
gradient file names, attack one observation with :class:`ImageAttack`, write the reconstructions and a progress
grid (the paper's Figure 3) as PNG files, score against the truth when it is known, and summarise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nlp_dlg.pipeline import BatchOutcome, Column, PlacedModel, Row, format_table
from vision_dlg.attack import ImageAttack, ImageReconstruction, ImageStep
from vision_dlg.config import ImageAttackConfig
from vision_dlg.metrics import psnr, score_images
from vision_dlg.models import check_model_metadata, model_from_metadata
from vision_dlg.report import save_grid, save_image
from vision_dlg.task import TASK
from vision_dlg.victim import VisionBatch

logger = logging.getLogger(__name__)


class ImageTask(PlacedModel):
    """Attack image-classification gradients in the pipeline.

    Args:
        config: the attack's options.
        images_dir: where reconstructions (``batch-BBB-I.png``) and progress grids go.
        model: the model to attack with (the in-process victim's); None: rebuilt from the first gradient file's
            metadata by :meth:`prepare` (its checksum checked).
        device: where the attack runs (None: where the model is).
        echo: where progress lines go (default: this module's logger at INFO).
        on_step: also called with ``(batch, step)`` at every logged step; returning True stops the attack there
            (e.g. once a criterion on the images holds).
        grid_every: a progress-grid column every this many steps (default: every logged step).
    """

    task_names = (TASK,)

    def __init__(self, config: ImageAttackConfig | None = None, *, images_dir: str | Path,
                 model: nn.Module | None = None, device: torch.device | str | None = None,
                 echo: Callable[[str], Any] | None = None,
                 on_step: Callable[[int, ImageStep], bool | None] | None = None,
                 grid_every: int | None = None) -> None:
        self.config = config or ImageAttackConfig()
        self.on_step, self.grid_every = on_step, grid_every or self.config.log_every
        self.images_dir = Path(images_dir)
        self.model, self.device = model, device
        self.echo = echo or logger.info
        self.place()

    def adopt(self, model: nn.Module) -> None:
        """Attack with the in-process victim's model (moved to the device, if one was given)."""
        self.model = model
        self.place()

    def check_metadata(self, metadata: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_model_metadata(metadata, shapes)

    def prepare(self, metadata: Mapping[str, Any]) -> None:
        if self.model is None:
            self.model, _ = model_from_metadata(dict(metadata.get("model", {})))
        self.place()

    def attack_batch(self, observation: Any, truth: VisionBatch | None, *, batch: int,
                     generator: torch.Generator) -> BatchOutcome:
        if self.model is None:
            self.prepare(observation.metadata)
        frames: list[tuple[int, torch.Tensor]] = []
        recs = ImageAttack(self.model, self.config, callbacks=[self._progress(batch, frames)]).attack(
            observation, generator=generator, batch=batch)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        rows = [{**r.to_json(), "image": str(save_image(r.image, self.images_dir / f"batch-{batch:03d}-{r.index}.png",
                                                        scale=4))} for r in recs]
        grid = [[f[1][i] for f in frames] for i in range(len(recs))]
        titles = [f"it {f[0]}" for f in frames]
        if truth is not None:
            rows, references = self._scored(rows, recs, truth, observation.metadata.get("mode") == "train")
            grid, titles = [row + [ref] for row, ref in zip(grid, references)], titles + ["truth"]
        path = save_grid(grid, self.images_dir / f"progress-batch-{batch:03d}.png", column_titles=titles)
        return BatchOutcome([{**row, "progress_grid": str(path)} for row in rows], any(r.interrupted for r in recs))

    def _progress(self, batch: int, frames: list[tuple[int, torch.Tensor]]) -> Callable[[ImageStep], bool]:
        def report(step: ImageStep) -> bool:
            r = step.record
            if r.step % self.grid_every == 0 or r.step == self.config.matching.steps:
                frames.append((r.step, step.images))
            self.echo(f"batch {batch} restart {r.restart} step {r.step} evals {r.evaluations} dist {r.distance:.4g} "
                      f"best {r.best_distance:.4g} {r.elapsed:.1f}s labels {step.labels.tolist()}")
            return bool(self.on_step(batch, step)) if self.on_step is not None else False
        return report

    @staticmethod
    def _scored(rows: list[Row], recs: Sequence[ImageReconstruction], truth: VisionBatch,
                fit: bool) -> tuple[list[Row], list[torch.Tensor]]:
        """Rows with their scores (Hungarian pairing inside the batch), and each row's reference image. Train
        mode: batch norm on the batch's statistics hides brightness and contrast, so the scores follow the
        least-squares fit of both (the raw PSNR is kept beside them)."""
        recon = torch.stack([r.image for r in recs])
        scores = score_images(recon, torch.tensor([r.label for r in recs]), truth.images, truth.labels, fit=fit)
        if fit:
            scores = [{**s, "fit": "brightness-contrast", "psnr_raw": psnr(x, truth.images[s["reference_index"]])}
                      for x, s in zip(recon, scores)]
        rows = [{**row, **s, "reference_label": int(truth.labels[s["reference_index"]])}
                for row, s in zip(rows, scores)]
        return rows, [truth.images[s["reference_index"]] for s in scores]

    def summary(self, rows: Sequence[Row]) -> str | None:
        return format_summary(rows) if rows and "mse" in rows[0] else None


SUMMARY = (
    Column("batch", lambda r: r["batch"]), Column("idx", lambda r: r["index"]),
    Column("label", lambda r: r["label"]), Column("label ok", lambda r: r["label_correct"], "", ".2f"),
    Column("MSE", lambda r: r["mse"], ".2e", ".2e"), Column("PSNR", lambda r: min(r["psnr"], 99.0), ".1f", ".1f"),
    Column("SSIM", lambda r: r["ssim"], ".3f", ".3f"), Column("evals", lambda r: r["gradient_evaluations"], "d", ".0f"),
    Column("sec", lambda r: r["seconds"], ".1f", ".1f"),
)


def format_summary(rows: Sequence[Row]) -> str:
    """One line per image, then the means (scored rows only; PSNR capped at 99 dB for exact images)."""
    return format_table(rows, SUMMARY)
