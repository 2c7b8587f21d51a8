"""Which victims' gradients cannot see a batch's contrast: `vision_dlg.victim.contrast_sensitivity` per model,
input size, mode and batch size.

The ratio is |g(x/2) - g(x)| / |g(x') - g(x)| over every parameter's gradient, for random batches x, x' in
[0.25, 0.75]: near 0 where batch norm on the batch's statistics follows a bias-free first convolution (a
train-mode ResNet), so the attack's default prior scales the distance there (`CONTRAST_BLIND`,
`SCALED_TV` in `vision_dlg.attack`). Appends one JSON line per case to
`benchmarks/results/contrast.jsonl`.

    .venv/bin/python benchmarks/bench_contrast.py [--models resnet20 lenet] [--sizes 16 32] [--batch-sizes 1 2 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nlp_dlg.results import append_result
from vision_dlg import VisionModelSpec, build_model
from vision_dlg.attack import CONTRAST_BLIND
from vision_dlg.task import contrast_sensitivity

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "lenet"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "contrast.jsonl")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'model':>9} {'size':>4} {'mode':>5} {'batch':>5} {'ratio':>9}  blind (< {CONTRAST_BLIND:g})")
    for name in args.models:
        for size in args.sizes:
            spec = VisionModelSpec(name, num_classes=100, image_size=size)
            model = build_model(spec)
            for mode in ("train", "eval"):
                for bs in args.batch_sizes:
                    ratio = contrast_sensitivity(model, (spec.channels, size, size), bs, spec.num_classes,
                                                 train_mode=mode == "train")
                    row = {"model": name, "image_size": size, "mode": mode, "batch_size": bs,
                           "contrast_sensitivity": float(f"{ratio:.3g}"), "blind": ratio < CONTRAST_BLIND}
                    append_result(args.out, row)
                    print(f"{name:>9} {size:>4} {mode:>5} {bs:>5} {ratio:>9.2e}  {row['blind']}", flush=True)


if __name__ == "__main__":
    main()
