"""Every image, every time: the paper's algorithm as written beside the toolkit's defaults, on the same gradients.

Images: faces 80.. of scikit-image's `lfw_subset` (grey, as 32x32 RGB unless `--image-size`), or with `--dataset
skimage --first 0` its photos (6 of 8 in colour), labels (3 i + 1) mod 100,
captured by `vision-dlg capture` in a subprocess for each LeNet seed. Each file is attacked here twice:

* `paper`: DLG as published: one random start (pixels ~ N(0, 1), raw), soft labels learnt with the pixels, no
  prior (`--label-method dlg --restarts 1 --box off --tv 0`), L2, L-BFGS lr 1, 300 steps;
* `toolkit`: `vision-dlg attack`'s defaults (the label read off the gradient; a start whose distance has not
  fallen by `stall_drop` at `stall_step` is abandoned for a fresh one; the decision uses the distance alone).

The truth is used to score only: PSNR per logged step gives the gradient evaluations (all starts counted) to
30 dB; with the colour subsampled, `ceiling_psnr` is the best each image could come back at (99: grey, exact), in
the colour the attack kept (`colour_terms`: per batch, the DCT terms per plane of a finer-colour polish, or
0; S·S: every pixel's colour, under a prior of its own).
One JSON line per (config, image size, batch size) to `benchmarks/results/vision_restarts.jsonl`, and
a figure, truth over each config's images per seed, to `benchmarks/results/vision_restarts.png`.

    .venv/bin/python benchmarks/bench_vision_restarts.py [--seeds 0 1 2] [--images 8] [--batch-size 1]
        [--tv W] [--chroma N] [--dataset skimage --first 0]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent
SUCCESS_DB = 30.0
DATA = {"lfw-subset": "lfw_subset faces", "skimage": "scikit-image photos"}


def configs(tv: float | None = None, chroma: int | None = None) -> dict:
    from nlp_dlg.engine import MatchingConfig
    from vision_dlg import ImageAttackConfig

    # every step logged: the evaluations to 30 dB are counted to the step
    matching = MatchingConfig(distance="l2", steps=300, tolerance=1e-10, restarts=1)
    paper = ImageAttackConfig(label_method="dlg", box=False, init_std=1.0, tv=0.0, polish_steps=0, chroma=1,
                              log_every=1, matching=matching)
    return {"paper": paper, "toolkit": ImageAttackConfig(log_every=1, tv=tv, chroma=chroma)}


class Scorer:
    """Per logged step, the batch's worst paired PSNR, against the evaluations of every start (and the polish) so
    far."""

    def __init__(self, truth: torch.Tensor) -> None:
        self.truth, self.done, self.current, self.first_success = truth, 0, (0, 0), None

    def __call__(self, event) -> None:
        from vision_dlg import pair_images, psnr

        restart, evaluations = event.record.restart, event.record.evaluations
        if restart != self.current[0] or evaluations < self.current[1]:     # a new start, or the polish
            self.done += self.current[1]
        self.current = (restart, evaluations)
        order = pair_images(event.images, self.truth)
        worst = min(psnr(event.images[j], self.truth[i]) for i, j in enumerate(order))
        if worst >= SUCCESS_DB and self.first_success is None:
            self.first_success = self.done + evaluations


def ceiling(truth: torch.Tensor, chroma: int, terms: int = 0) -> list[float] | None:
    """Per image, the PSNR of the nearest image (least squares, in pixels) that colour subsampled ``chroma``-fold,
    or in ``terms`` DCT terms per plane, can hold: what the attack could reach at best (99 for a grey image); None
    at ``chroma`` 1 without terms."""
    import torch.nn.functional as F

    from vision_dlg import psnr
    from vision_dlg.capacity import chroma_side
    from vision_dlg.plugin import CHROMA_BASIS, dct_basis

    if (chroma == 1 and not terms) or truth.shape[1] != 3:
        return None
    side = truth.shape[-1]
    if terms:
        up = dct_basis(side, terms)                                                   # (S², terms)
    else:
        coarse = chroma_side(side, chroma)
        basis = torch.eye(coarse * coarse).view(-1, 1, coarse, coarse)
        up = F.interpolate(basis, size=(side, side), mode="bilinear", align_corners=False).flatten(1).T  # (S², s²)
    colour = CHROMA_BASIS @ truth.flatten(2)                                      # (B, 2, S²)
    fit = up @ torch.linalg.lstsq(up.expand(len(truth), -1, -1), colour.transpose(1, 2)).solution   # (B, S², 2)
    nearest = truth.flatten(2) + CHROMA_BASIS.T @ (fit.transpose(1, 2) - colour)
    return [round(min(psnr(x.view_as(t).clamp(0, 1), t), 99.0), 2) for x, t in zip(nearest, truth)]


def attack_file(path: Path, config, truth: torch.Tensor, labels: list[int]) -> dict:
    from nlp_dlg.engine import load_observation
    from vision_dlg import ImageAttack, model_from_metadata, pair_images, psnr

    obs = load_observation(path)
    model, _ = model_from_metadata(dict(obs.metadata["model"]))
    scorer = Scorer(truth)
    started = time.perf_counter()
    recs = ImageAttack(model, config, callbacks=[scorer]).attack(obs, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    images = torch.stack([r.image for r in recs])
    order = pair_images(images, truth)
    return {"psnr": [round(psnr(images[j], truth[i]), 2) for i, j in enumerate(order)],
            "labels_right": sum(recs[j].label == labels[i] for i, j in enumerate(order)),
            "evaluations_to_30db": scorer.first_success, "evaluations": recs[0].evaluations,
            "abandoned_starts": recs[0].abandoned, "chroma": recs[0].chroma, "colour_terms": recs[0].colour_terms,
            "ceiling": ceiling(truth, recs[0].chroma, recs[0].colour_terms),
            "seconds": round(seconds, 1), "images": images[order]}


def capture(work: Path, seed: int, indices: list[int], labels: list[int], args: argparse.Namespace) -> list[Path]:
    out = work / f"seed{seed}"
    subprocess.run([sys.executable, "-m", "vision_dlg.cli", "-q", "capture", "--dataset", args.dataset, "--index",
                    *map(str, indices), "--labels", ",".join(map(str, labels)), "--batch-size", str(args.batch_size),
                    "--image-size", str(args.image_size), "--seed", str(seed), "--out", str(out)], check=True)
    return sorted(out.glob("*.safetensors"))


def summary(name: str, config, runs: list[dict], args: argparse.Namespace) -> dict:
    psnrs = [p for r in runs for p in r["psnr"]]
    reached = [r["evaluations_to_30db"] for r in runs if r["evaluations_to_30db"] is not None]
    return {"config": name, "model": "lenet", "image_size": args.image_size, "batch_size": args.batch_size,
            "seeds": args.seeds, "data": f"{DATA[args.dataset]} {args.first}-{args.first + args.images - 1}",
            "tv": config.tv, "restarts": config.matching.restarts, "stall_step": config.matching.stall_step,
            "stall_drop": config.matching.stall_drop, "label_method": config.label_method,
            "polish_steps": config.polish_steps if args.batch_size > 1 or runs[0]["chroma"] > 1 else None,
            "images": len(psnrs), "at_30db": sum(p >= SUCCESS_DB for p in psnrs),
            "labels_right": sum(r["labels_right"] for r in runs), "min_psnr": min(psnrs),
            "median_psnr": round(statistics.median(psnrs), 2),
            "median_evaluations_to_30db": statistics.median(reached) if reached else None,
            "median_evaluations": statistics.median(r["evaluations"] for r in runs),
            "abandoned_starts": sum(r["abandoned_starts"] for r in runs), "chroma": runs[0]["chroma"],
            "colour_terms": [r["colour_terms"] for r in runs],
            "ceiling_psnr": None if runs[0]["ceiling"] is None else [c for r in runs for c in r["ceiling"]],
            "seconds_per_batch": round(sum(r["seconds"] for r in runs) / len(runs), 1),
            "torch_threads": torch.get_num_threads(), "psnr": psnrs}


def figure(path: Path, truth: torch.Tensor, grids: dict[str, torch.Tensor], psnrs: dict[str, list[float]]) -> None:
    """Truth over each (config, seed)'s images, each titled with its PSNR (green at 30 dB or more)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("truth", truth, None)] + [(name, imgs, psnrs[name]) for name, imgs in grids.items()]
    fig, axes = plt.subplots(len(rows), len(truth), figsize=(1.2 * len(truth), 1.35 * len(rows)), squeeze=False)
    for r, (name, imgs, scores) in enumerate(rows):
        for c in range(len(truth)):
            ax = axes[r][c]
            ax.imshow(imgs[c].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if scores is not None:
                ax.set_title(f"{scores[c]:.1f} dB", fontsize=7, color="green" if scores[c] >= SUCCESS_DB else "red")
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="LeNet init seeds")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--dataset", choices=list(DATA), default="lfw-subset",
                    help="grey faces, or scikit-image's photos (6 in colour; --first 0, at most 8 images)")
    ap.add_argument("--first", type=int, default=80, help="first image's index (default: 80)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--configs", nargs="+", default=["paper", "toolkit"], choices=["paper", "toolkit"])
    ap.add_argument("--tv", type=float, default=None, help="the toolkit's total-variation weight (default: its own)")
    ap.add_argument("--chroma", type=int, default=None, help="the toolkit's colour subsampling (default: its own)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vision_restarts.jsonl")
    ap.add_argument("--figure", type=Path, default=None, help="default: beside --out, .png")
    args = ap.parse_args()
    from vision_dlg import dataset_image

    indices = list(range(args.first, args.first + args.images))
    labels = [(3 * i + 1) % 100 for i in range(args.images)]
    truth = torch.stack([dataset_image(args.dataset, i, size=args.image_size)[0] for i in indices])
    chosen = {k: v for k, v in configs(args.tv, args.chroma).items() if k in args.configs}
    runs: dict[str, list[dict]] = {k: [] for k in chosen}
    grids: dict[str, torch.Tensor] = {}
    scores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            files = capture(Path(tmp), seed, indices, labels, args)
            for name, config in chosen.items():
                for b, path in enumerate(files):
                    part = slice(b * args.batch_size, (b + 1) * args.batch_size)
                    run = attack_file(path, config, truth[part], labels[part])
                    print(f"seed {seed} {name} batch {b}: PSNR {run['psnr']} to 30 dB after "
                          f"{run['evaluations_to_30db']} of {run['evaluations']} evaluations, {run['seconds']} s",
                          flush=True)
                    runs[name].append(run)
                grids[f"{name} seed {seed}"] = torch.cat([r["images"] for r in runs[name][-len(files):]])
                scores[f"{name} seed {seed}"] = [p for r in runs[name][-len(files):] for p in r["psnr"]]
    rows = {name: summary(name, config, runs[name], args) for name, config in chosen.items()}
    for row in rows.values():
        print({k: v for k, v in append_result(args.out, row).items() if k != "psnr"}, flush=True)
    figure(args.figure or args.out.with_suffix(".png"), truth, grids, scores)


if __name__ == "__main__":
    main()
