"""LeNet targets on held-out real photos: batch 1 and batch 4 in one gradient, captured in another process.

Images: faces 80.. of scikit-image's `lfw_subset` (25x25 grey LFW crops, upscaled to 32x32 RGB; none of them
is used by the tests or the scripts), labels (3 i + 1) mod 100. `vision-dlg capture` writes the gradient
files in a subprocess; this process attacks them on the pipeline with the defaults (DLG, iDLG label / batch
label counts, L2, L-BFGS lr 1.0, 300 steps, stop at distance 1e-10) and scores against the images (Hungarian
pairing).
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
from dataclasses import replace
from pathlib import Path

import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def measure(args: argparse.Namespace, bs: int, indices: list[int], labels: list[int], truth: torch.Tensor):
    """Capture batches of ``bs`` in a subprocess, attack the files here on the pipeline: rows, the attack's seconds
    per batch, its config."""
    from nlp_dlg.engine import find_gradient_files, load_observation, read_metadata
    from nlp_dlg.pipeline import run_attack, unless_interrupted
    from vision_dlg import ImageAttackConfig, ImageTask, VisionBatch

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "vision_dlg.cli", "-q", "capture", "--dataset", "lfw-subset",
                        "--index", *map(str, indices), "--labels", ",".join(map(str, labels)),
                        "--batch-size", str(bs), "--out", tmp], check=True)
        files = find_gradient_files(tmp)
        defaults = ImageAttackConfig()
        config = ImageAttackConfig(matching=replace(defaults.matching, steps=args.steps, normalize=args.normalize),
                                   init_std=args.init_std)
        task = ImageTask(config, images_dir=Path(tmp) / "images", echo=lambda line: None)
        task.prepare(read_metadata(files[0]))           # the model is built before the clock starts
        # the files were captured in another process; the truth goes along only to score the reconstructions
        pairs = ((load_observation(f), VisionBatch(b, truth[b * bs:(b + 1) * bs],
                                                   torch.tensor(labels[b * bs:(b + 1) * bs])))
                 for b, f in enumerate(files))
        ends = [time.perf_counter()]

        def report(b: int, outcome) -> None:
            ends.append(time.perf_counter())
            print(f"B={bs} batch {b}: PSNR {[round(r['psnr'], 1) for r in outcome.rows]} labels ok "
                  f"{[r['label_correct'] for r in outcome.rows]} {ends[-1] - ends[-2]:.1f}s", flush=True)

        run = unless_interrupted(run_attack(task, pairs=pairs, out=Path(tmp) / "rows.jsonl", seed=0, on_batch=report))
    rows = [{"batch": r["batch"], "psnr": round(r["psnr"], 2), "ssim": round(r["ssim"], 4),
             "label_correct": r["label_correct"], "steps": r["steps"], "evaluations": r["gradient_evaluations"]}
            for r in run.rows]
    # the attack's own seconds per batch (as ImageAttack reports them), without scoring and PNG writing
    seconds = [max(r["seconds"] for r in run.rows if r["batch"] == b) for b in range(len(files))]
    return rows, seconds, config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--images", type=int, default=8, help="images per batch size (a multiple of each)")
    ap.add_argument("--first", type=int, default=80, help="first lfw_subset index (default: 80)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--no-normalize", dest="normalize", action="store_false",
                    help="no lifting of a distance that starts below 1 (MatchingConfig.normalize; LeNet's start above "
                         "1, so the rows are the same either way)")
    ap.add_argument("--init-std", type=float, default=None,
                    help="std of the initial pixels or pixel logits (default: the attack's)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vision.jsonl")
    args = ap.parse_args()
    from vision_dlg import dataset_image

    indices = list(range(args.first, args.first + args.images))
    labels = [(3 * i + 1) % 100 for i in range(args.images)]
    truth = torch.stack([dataset_image("lfw-subset", i)[0] for i in indices])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bs in args.batch_sizes:
        rows, seconds, config = measure(args, bs, indices, labels, truth)
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
        append_result(args.out, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)




if __name__ == "__main__":
    main()
