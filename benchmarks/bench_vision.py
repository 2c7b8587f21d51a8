"""LeNet targets on held-out real photos: batch 1 and batch 4 in one gradient, captured in another process.

Images: faces 80.. of scikit-image's `lfw_subset` (25x25 grey LFW crops, upscaled to 32x32 RGB; none of them
is used by the tests or the scripts), labels (3 i + 1) mod 100. `vision-dlg capture` writes the gradient
files in a subprocess; this process attacks them with the defaults (DLG, iDLG label / batch label counts,
L2, L-BFGS lr 1.0, 300 steps, stop at distance 1e-10) and scores against the images (Hungarian pairing).
Appends one JSON line per batch size to `benchmarks/results/vision.jsonl`.

    .venv/bin/python benchmarks/bench_vision.py [--batch-sizes 1 4] [--images 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--images", type=int, default=8, help="images per batch size (a multiple of each)")
    ap.add_argument("--first", type=int, default=80, help="first lfw_subset index (default: 80)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--no-normalize", dest="normalize", action="store_false",
                    help="no lifting of a distance that starts below 1 (MatchingConfig.normalize; LeNet's start above "
                         "1, so the rows are the same either way)")
    ap.add_argument("--init-std", type=float, default=None,
                    help="std of the initial pixels or pixel logits (default: the attack's)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vision.jsonl")
    args = ap.parse_args()
    from nlp_dlg.engine import MatchingConfig, find_gradient_files, load_observation
    from vision_dlg import ImageAttack, ImageAttackConfig, dataset_image, model_from_metadata, score_images

    indices = list(range(args.first, args.first + args.images))
    labels = [(3 * i + 1) % 100 for i in range(args.images)]
    truth = torch.stack([dataset_image("lfw-subset", i)[0] for i in indices])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bs in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "vision_dlg.cli", "-q", "capture", "--dataset", "lfw-subset",
                            "--index", *map(str, indices), "--labels", ",".join(map(str, labels)),
                            "--batch-size", str(bs), "--out", tmp], check=True)
            files = find_gradient_files(tmp)
            model, _ = model_from_metadata(dict(load_observation(files[0]).metadata["model"]))
            config = ImageAttackConfig(matching=MatchingConfig(steps=args.iters, tolerance=1e-10,
                                                                normalize=args.normalize),
                                        init_std=args.init_std)
            rows, seconds = [], []
            for b, path in enumerate(files):
                started = time.perf_counter()
                recs = ImageAttack(model, config).attack(load_observation(path),
                                                         generator=torch.Generator().manual_seed(b))
                seconds.append(time.perf_counter() - started)
                ref = truth[b * bs:(b + 1) * bs]
                scores = score_images(torch.stack([r.image for r in recs]), torch.tensor([r.label for r in recs]), ref,
                                      torch.tensor(labels[b * bs:(b + 1) * bs]))
                rows += [{"batch": b, "psnr": round(s["psnr"], 2), "ssim": round(s["ssim"], 4),
                          "label_correct": s["label_correct"], "steps": r.iterations,
                          "evaluations": r.evaluations} for r, s in zip(recs, scores)]
                print(f"B={bs} batch {b}: PSNR {[round(s['psnr'], 1) for s in scores]} labels ok "
                      f"{[s['label_correct'] for s in scores]} {seconds[-1]:.1f}s", flush=True)
        n = len(rows)
        summary = {"model": "lenet", "batch_size": bs, "images": n, "normalize": args.normalize,
                   "init_std": config.initial_std(config.uses_box(bs, train=False)),
                   "mean_psnr": round(sum(min(r["psnr"], 99.0) for r in rows) / n, 2),
                   "min_psnr": round(min(r["psnr"] for r in rows), 2),
                   "mean_ssim": round(sum(r["ssim"] for r in rows) / n, 4),
                   "label_accuracy": sum(r["label_correct"] for r in rows) / n,
                   "seconds_per_batch": round(sum(seconds) / len(seconds), 1),
                   "seconds_per_image": round(sum(seconds) / n, 1), "torch_threads": torch.get_num_threads(),
                   "rows": rows}
        with args.out.open("a") as fh:
            fh.write(json.dumps(summary) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)


if __name__ == "__main__":
    main()
