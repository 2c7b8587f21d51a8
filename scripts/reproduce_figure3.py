"""The paper's Figure 3: one image per dataset kind comes back out of a LeNet gradient, frame by frame.

Victim: DLG's LeNet (sigmoid, weights U(-0.5, 0.5)), 100 classes, 32x32 RGB, one image per gradient.
Attacker: DLG with iDLG's label, L2 distance, L-BFGS lr 1.0. Datasets: MNIST, CIFAR-100, SVHN and LFW
through `datasets` when a hub is reachable; offline, real stand-ins: scikit-learn's handwritten digits
(MNIST), scikit-image's cat photo `chelsea` (CIFAR-100), its `coins` photo (SVHN), an LFW face from
scikit-image's `lfw_subset` (LFW). Writes a grid PNG (rows: datasets; columns: iterations 0, 10, 20, ...
and the truth) and the results as JSON lines.

    .venv/bin/python scripts/reproduce_figure3.py [--steps 100] [--out runs/figure3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from nlp_dlg.engine.errors import InputDataError
from nlp_dlg.pipeline import run_attack, unless_interrupted
from vision_dlg import ImageAttackConfig, ImageTask, VisionModelSpec, build_model, capture_images, model_metadata
from vision_dlg.data import dataset_image, skimage_photo
from vision_dlg.report import save_grid

KINDS = [("MNIST", "mnist", 0, lambda: dataset_image("digits", 0)),
         ("CIFAR-100", "cifar100", 0, lambda: (skimage_photo("chelsea"), 3)),
         ("SVHN", "svhn", 0, lambda: (skimage_photo("coins"), 1)),
         ("LFW", "lfw", 0, lambda: dataset_image("lfw-subset", 0))]


def load(hub: str, index: int, offline) -> tuple[torch.Tensor, int, str]:
    try:
        image, label = dataset_image(hub, index)
        return image, int(label or 0) % 100, hub
    except InputDataError:
        image, label = offline()
        return image, int(label or 0) % 100, "offline stand-in"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="L-BFGS steps per image (default: 100)")
    ap.add_argument("--every", type=int, default=10, help="a grid column every N steps (default: 10)")
    ap.add_argument("--out", type=Path, default=Path("runs/figure3"))
    ap.add_argument("--offline", action="store_true", help="do not try the hub: use the offline stand-ins")
    args = ap.parse_args()
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec = VisionModelSpec()
    model = build_model(spec)
    info = model_metadata(model, spec)
    rows, titles, results = [], [], []
    for name, hub, index, offline in KINDS:
        image, label, source = load(hub, index, offline)
        [(obs, truth)] = capture_images(model, image[None], [label], model_info=info)
        frames: list[torch.Tensor] = []
        config = ImageAttackConfig(matching=replace(ImageAttackConfig().matching, steps=args.steps),
                                   log_every=args.every)
        task = ImageTask(config, images_dir=args.out / hub, model=model, echo=lambda line: None,
                         on_step=lambda b, step, f=frames: f.append(step.images[0]))
        rec = unless_interrupted(run_attack(task, pairs=[(obs, truth)], out=args.out / hub / "attack.jsonl",
                                            seed=0)).rows[0]
        rows.append((frames, truth.images[0]))
        titles.append(name)
        row = {"dataset": name, "source": source, "label": label, "label_recovered": rec["label"],
               "psnr": round(rec["psnr"], 2), "ssim": round(rec["ssim"], 4), "steps": rec["steps"],
               "gradient_evaluations": rec["gradient_evaluations"], "seconds": round(rec["seconds"], 1)}
        results.append(row)
        print(f"{name:10} ({source}): label {rec['label']}/{label}  PSNR {row['psnr']:.1f} dB  SSIM {row['ssim']:.3f}  "
              f"{rec['steps']} steps, {rec['gradient_evaluations']} evaluations, {rec['seconds']:.0f}s", flush=True)
    width = max(len(frames) for frames, _ in rows)          # a run that stopped early keeps its last frame
    grid_rows = [frames + frames[-1:] * (width - len(frames)) + [truth] for frames, truth in rows]
    columns = [f"it {i * args.every}" for i in range(width)] + ["truth"]
    grid = save_grid(grid_rows, args.out / "figure3.png", row_titles=titles, column_titles=columns)
    (args.out / "figure3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"grid: {grid}")


if __name__ == "__main__":
    main()
