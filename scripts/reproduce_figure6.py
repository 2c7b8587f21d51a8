"""The paper's Figure 6: how close DLG's reconstructions are (MSE to the original), beside a baseline.

Victim: DLG's LeNet, 100 classes, 32x32 RGB, one held-out real image per gradient (faces from
scikit-image's `lfw_subset` and its bundled photos). Attacker: DLG with iDLG's label, L2, L-BFGS lr 1.0.
Baseline (no gradient used, clearly not DLG): the mean of the other images of the set, the best guess a
prior over such images gives without any leakage. Writes per-image MSE as JSON lines and a PNG
(log-scale MSE per image: DLG vs the baseline).

    .venv/bin/python scripts/reproduce_figure6.py [--faces 6] [--steps 100] [--out runs/figure6]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from nlp_dlg.pipeline import run_attack, unless_interrupted
from vision_dlg import ImageAttackConfig, ImageTask, VisionModelSpec, build_model, capture_images, model_metadata
from vision_dlg.data import SKIMAGE_PHOTOS, dataset_image, skimage_photo
from vision_dlg.metrics import mse
from vision_dlg.report import save_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=6, help="LFW faces (lfw_subset indices 40, 41, ...)")
    ap.add_argument("--photos", type=int, default=4, help="scikit-image photos")
    ap.add_argument("--steps", type=int, default=100, help="L-BFGS steps per image (default: 100)")
    ap.add_argument("--out", type=Path, default=Path("runs/figure6"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    images = [dataset_image("lfw-subset", 40 + i)[0] for i in range(args.faces)]
    images += [skimage_photo(name) for name in SKIMAGE_PHOTOS[:args.photos]]
    spec = VisionModelSpec()
    model = build_model(spec)
    labels = [(11 * i + 5) % 100 for i in range(len(images))]
    pairs = capture_images(model, torch.stack(images), labels, model_info=model_metadata(model, spec))
    config = ImageAttackConfig(matching=replace(ImageAttackConfig().matching, steps=args.steps))
    args.out.mkdir(parents=True, exist_ok=True)
    # image i is attacked with seed i (batch i of the pipeline, seed 0)
    run = unless_interrupted(run_attack(ImageTask(config, images_dir=args.out / "images", model=model,
                                                  echo=lambda line: None),
                                        pairs=pairs, out=args.out / "attack.jsonl", seed=0))
    rows = []
    for i, rec in enumerate(run.rows):
        others = torch.stack([x for j, x in enumerate(images) if j != i]).mean(0)
        row = {"image": i, "dlg_mse": rec["mse"], "baseline_mse": mse(others, pairs[i][1].images[0]),
               "label_correct": rec["label_correct"], "seconds": round(rec["seconds"], 1)}
        rows.append(row)
        print(f"image {i}: DLG MSE {row['dlg_mse']:.2e}  baseline (mean of the other images) MSE "
              f"{row['baseline_mse']:.2e}", flush=True)
    (args.out / "figure6.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot = save_curves({"DLG": [(r["image"], r["dlg_mse"]) for r in rows],
                        "baseline: mean image": [(r["image"], r["baseline_mse"]) for r in rows]},
                       args.out / "figure6.png", xlabel="image", ylabel="MSE (log10)", log_y=True)
    dlg = sorted(r["dlg_mse"] for r in rows)[len(rows) // 2]
    base = sorted(r["baseline_mse"] for r in rows)[len(rows) // 2]
    print(f"median MSE: DLG {dlg:.2e}, baseline {base:.2e}; plot: {plot}")


if __name__ == "__main__":
    main()
