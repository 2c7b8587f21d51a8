"""Where a stride-free ResNet's gradient stops seeing the layout: distances between one face's gradient and those of
rearranged copies of it, against a grey image's and a noisy copy's.

DLG's ResNets have no strides (twice differentiable, the paper's change) and pool globally: every weight gradient is
a sum over positions of local terms, each seeing a 39x39 window (19 3x3 convolutions). Where the image is larger
than that window, images whose regions are rearranged give nearly the same gradient, and the matching has no reason
to prefer the true layout. Measured in train mode (batch norm on the batch's statistics, as
`scripts/reproduce_table1.py`), one LFW face, seed 0; the relative distance is ``|g(x) - g(truth)|² / |g(truth)|²``
over every parameter. Appends one JSON line per size and image to `benchmarks/results/layout.jsonl`.

    .venv/bin/python benchmarks/bench_layout.py [--sizes 32 64] [--face 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nlp_dlg.results import append_result
from vision_dlg import VisionModelSpec, build_model, capture_images, model_metadata, psnr
from vision_dlg.data import dataset_image

HERE = Path(__file__).resolve().parent


def rearranged(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The images compared with ``image (1, C, S, S)``: a grey one, a noisy copy (about 30 dB), and three with the
    same content elsewhere."""
    h = image.shape[-1] // 2
    halves, quarters = image.clone(), image.clone()
    halves[..., :h, :], halves[..., h:, :] = image[..., h:, :], image[..., :h, :]
    quarters[..., :h, :h], quarters[..., h:, h:] = image[..., h:, h:], image[..., :h, :h]
    grey = 0.5 + 0.002 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    noisy = (image + 0.03 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    return {"grey": grey, "noise 0.03": noisy, "mirrored": image.flip(-1), "halves swapped": halves,
            "diagonal quarters swapped": quarters}


def gradient(model: torch.nn.Module, info: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The train-mode gradient of ``x (1, C, S, S)`` with label 3, per parameter."""
    [(obs, _)] = capture_images(model, x, [3], batch_size=1, model_info=info, train_mode=True)
    return dict(obs.gradients)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--face", type=int, default=20, help="lfw_subset index (default: 20, Table 1's first)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "layout.jsonl")
    args = ap.parse_args()
    for size in args.sizes:
        spec = VisionModelSpec("resnet20", num_classes=100, image_size=size, seed=0)
        model = build_model(spec)
        info = model_metadata(model, spec)
        truth = dataset_image("lfw-subset", args.face, size=size)[0][None]
        g0 = gradient(model, info, truth)
        norm = sum(float(g.double().pow(2).sum()) for g in g0.values())
        for name, x in rearranged(truth).items():
            g = gradient(model, info, x)
            distance = sum(float((g[n].double() - g0[n].double()).pow(2).sum()) for n in g0) / norm
            row = {"model": "resnet20", "mode": "train", "image_size": size, "face": args.face, "image": name,
                   "psnr": round(float(psnr(x[0], truth[0])), 2),
                   "relative_gradient_distance": float(f"{distance:.4g}")}
            append_result(args.out, row)
            print(f"{size}x{size} {name:26s} PSNR {row['psnr']:5.1f} dB  relative gradient distance {distance:.3e}")


if __name__ == "__main__":
    main()
