"""Victim models of the paper's image experiments, in plain torch (torchvision has no CPU build here).

* :class:`LeNet`: the network of the public DLG code: three 5x5 convolutions of 12 channels (strides
  2, 2, 1, padding 2), sigmoid after each, one linear layer; weights and biases uniform in [-0.5, 0.5].
* :class:`ResNet`: the CIFAR ResNets of He et al. (ResNet-20/32/56: 3 stages of n basic blocks, 16/32/64
  channels) as the DLG paper modified them: ReLU replaced by sigmoid (twice differentiable everywhere)
  and every stride removed, so the last stage still sees the full image before global average pooling.
  Batch norm runs in eval mode by default (running statistics), as the victim's default mode.

Any other ``nn.Module`` works through the Python API; :func:`build_model` and
:func:`model_from_metadata` cover the named ones so that the attacker rebuilds the exact victim from a
gradient file's metadata (name, classes, input shape, seed) and checks the weights' checksum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from nlp_dlg.engine.errors import ModelMismatchError
from nlp_dlg.engine.metadata import MetadataError, check_shapes_match, field
from nlp_dlg.engine.observation import weights_checksum
from vision_dlg.config import MODELS, RESNET_DEPTHS, VisionModelSpec

__all__ = ["MODELS", "LeNet", "ResNet", "VisionModelSpec", "build_model", "model_from_metadata", "model_metadata"]

logger = logging.getLogger(__name__)



class LeNet(nn.Module):
    """DLG's LeNet: ``(B, C, S, S)`` images to ``(B, num_classes)`` logits."""

    def __init__(self, num_classes: int = 100, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1), nn.Sigmoid(),
        )
        side = math.ceil(math.ceil(image_size / 2) / 2)
        self.fc = nn.Linear(12 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))                                  # (B, K)


class _Block(nn.Module):
    """A basic residual block (two 3x3 convolutions), sigmoid instead of ReLU, stride 1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                         if cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.bn1(self.conv1(x)))
        return torch.sigmoid(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with ``blocks`` blocks per stage (3: ResNet-20, 5: ResNet-32, 9: ResNet-56), sigmoid,
    no strides."""

    def __init__(self, blocks: int, num_classes: int = 100, channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Sigmoid())
        layers, cin = [], 16
        for cout in (16, 32, 64):
            for _ in range(blocks):
                layers.append(_Block(cin, cout))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))                  # (B, K)


def _construct(spec: VisionModelSpec) -> nn.Module:
    if spec.name == "lenet":
        model: nn.Module = LeNet(spec.num_classes, spec.channels, spec.image_size)
        for p in model.parameters():        # the DLG code's init: every weight and bias U(-0.5, 0.5)
            nn.init.uniform_(p, -0.5, 0.5)
        return model
    return ResNet(RESNET_DEPTHS[spec.name], spec.num_classes, spec.channels)


def build_model(spec: VisionModelSpec | None = None) -> nn.Module:
    """The model of ``spec``, initialised from its seed (reproducibly, without touching global RNG state),
    in eval mode."""
    spec = spec or VisionModelSpec()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _construct(spec)
    logger.info("built %s (%d classes, %dx%dx%d input, seed %d), %d parameters", spec.name, spec.num_classes,
                spec.channels, spec.image_size, spec.image_size, spec.seed, sum(p.numel() for p in model.parameters()))
    return model.eval()


MAX_IMAGE_SIZE = 1024
MAX_DUMMY_ELEMENTS = 2**25   # batch x channels x side² of the dummy images (and of each L-BFGS history vector):
# 128 images of 3x224x224 fit (19M)


def check_model_metadata(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """An image gradient file's model description, checked against the tensors it stores before anything is
    built (:mod:`nlp_dlg.engine.metadata`)."""
    model = meta["model"]
    name = field(model, "name", str, where="model.", choices=MODELS)
    classes = field(model, "num_classes", int, where="model.", low=2, high=1_000_000)
    channels = field(model, "channels", int, where="model.", choices=(1, 3))
    side = field(model, "image_size", int, where="model.", low=1, high=MAX_IMAGE_SIZE)
    seed = field(model, "seed", int, where="model.", low=0, high=2**63 - 1)
    if meta["batch_size"] * channels * side * side > MAX_DUMMY_ELEMENTS:
        raise MetadataError(f"metadata: batch_size x channels x image_size² = {meta['batch_size'] * channels * side**2}"
                            f" dummy pixels, more than {MAX_DUMMY_ELEMENTS}")
    with torch.device("meta"):
        built = _construct(VisionModelSpec(name, classes, channels, side, seed))
    check_shapes_match({n: tuple(p.shape) for n, p in built.named_parameters() if p.requires_grad}, shapes,
                       f"the {name} description")


def model_metadata(model: nn.Module, spec: VisionModelSpec) -> dict[str, Any]:
    """What a participant shares about its model: how to rebuild it and a checksum of the exact weights."""
    return {**asdict(spec), "checksum": weights_checksum(model)}


def model_from_metadata(meta: dict[str, Any]) -> tuple[nn.Module, VisionModelSpec]:
    """Rebuild the victim model from a gradient file's ``model`` metadata and check its checksum."""
    try:
        spec = VisionModelSpec(**{k: meta[k] for k in ("name", "num_classes", "channels", "image_size", "seed")})
    except KeyError as exc:
        raise ModelMismatchError(f"gradient metadata lacks model field {exc}: not a vision-dlg gradient file?") from exc
    model = build_model(spec)
    expected = meta.get("checksum")
    if expected and weights_checksum(model) != expected:
        raise ModelMismatchError(f"the rebuilt {spec.name} (seed {spec.seed}) does not match the gradient file's "
                                 "weights checksum: the victim used other weights")
    return model, spec
