"""Image-classification gradients from a real DDP training step (gloo on loopback), as an all-reduce
participant sees them: step ``s`` uses images ``[s·B, (s+1)·B)``, rank ``r`` its slice of ``B / W``; the
recorded gradient is the mean over ranks of each rank's mean loss, i.e. the whole global batch's gradient."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from nlp_dlg.engine.distributed import AllReduceRecorder, backend_for, ddp_metadata, run_ranks
from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.observation import GradientObservation
from vision_dlg.config import VisionModelSpec
from vision_dlg.models import build_model
from vision_dlg.victim import VisionBatch, observation_metadata

logger = logging.getLogger(__name__)


def _worker(rank: int, world_size: int, payload: dict[str, Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    from torch.nn.parallel import DistributedDataParallel

    model = build_model(VisionModelSpec(**payload["spec"])).to(device)
    model.train(payload["train_mode"])
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    recorder = AllReduceRecorder(ddp)
    images, labels, batch = payload["images"].to(device), payload["labels"].to(device), payload["batch_size"]
    per_rank = batch // world_size
    recorded = []
    for step in range(len(images) // batch):
        start = step * batch + rank * per_rank
        ddp.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(images[start:start + per_rank]), labels[start:start + per_rank]).backward()
        recorded.append({n: g.cpu() for n, g in recorder.gradients.items()})
    return recorded


def capture_images_distributed(spec: VisionModelSpec, images: torch.Tensor, labels: torch.Tensor, *,
                               batch_size: int, world_size: int, model_info: dict[str, Any],
                               train_mode: bool = False, device: str = "cpu"
                               ) -> list[tuple[GradientObservation, VisionBatch]]:
    """One observation per DDP step (the all-reduced gradient of the global batch) and its ground truth; ``device``
    as :func:`nlp_dlg.text.distributed.capture_distributed`'s."""
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} must split evenly over --world-size {world_size}")
    steps = len(images) // batch_size
    if steps == 0:
        raise ConfigError(f"{len(images)} image(s) do not fill one global batch of {batch_size}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    payload = {"spec": asdict(spec), "images": images, "labels": labels, "batch_size": batch_size,
               "train_mode": train_mode}
    recorded = run_ranks(_worker, world_size, payload, device=device)
    backend = backend_for(device, world_size)
    out = []
    for step, grads in enumerate(recorded):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        meta = {**observation_metadata(model_info, batch_size=batch_size, batch_index=step, train_mode=train_mode),
                "distributed": ddp_metadata(world_size, batch_size, backend)}
        out.append((GradientObservation(grads, meta), VisionBatch(step, images[sl].clone(), labels[sl].clone())))
    return out
