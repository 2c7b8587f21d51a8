"""``vision-dlg``: capture image-classification gradients (victim) and reconstruct images from them.

    vision-dlg capture --image photo.png --labels 3 --out grads/
    vision-dlg attack --gradients grads/ --out results.jsonl --save-images recon/
    vision-dlg attack --dataset skimage --index 0 --labels 3 --out results.jsonl   # both sides, scored
    vision-dlg demo                                   # real photos shipped by scikit-image, LeNet, batch 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from nlp_dlg import __version__
from nlp_dlg.cliutil import DISTANCE_CHOICES, PRIOR_CHOICES, positive_int, run_command, setup_logging

logger = logging.getLogger("vision_dlg.cli")




def _labels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,7, got {text!r}") from None


def _add_victim_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("private images (victim side)")
    src.add_argument("--image", action="append", type=Path, metavar="PATH", help="an image file (repeatable)")
    src.add_argument("--dataset", metavar="NAME",
                     help="skimage | lfw-subset | digits | an MNIST IDX / CIFAR .bin file | an image folder | a hub "
                          "name (mnist, cifar100, svhn, lfw) when reachable")
    src.add_argument("--index", type=int, nargs="+", metavar="I", help="image index(es) in --dataset")
    src.add_argument("--labels", type=_labels, metavar="3,7,...",
                     help="one label per image (default: the dataset's labels, else 0, 1, 2, ...)")
    src.add_argument("--batch-size", type=int, default=1, help="images per gradient (default: 1)")
    src.add_argument("--train-mode", action="store_true", help="compute the gradient in train mode (default: eval)")
    src.add_argument("--defense", metavar="SPEC",
                     help="defence applied before the gradient leaves: gaussian:SIGMA, laplace:B, fp16, bf16, int8, "
                          "prune:P, dp:C,Z, joined by '+'; recorded in the metadata")
    src.add_argument("--defense-seed", type=int, default=None, help="seed of the defence's noise (default: fresh)")
    src.add_argument("--world-size", type=positive_int, default=1,
                     help="run a real DDP step in W local processes (gloo, loopback) and record the all-reduced "
                          "gradient; --batch-size is the global batch, split evenly over the ranks (default: 1)")
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default="lenet", choices=["lenet", "resnet20", "resnet32", "resnet56"],
                     help="victim network (default: lenet, DLG's)")
    mod.add_argument("--num-classes", type=positive_int, default=100, help="(default: 100, as CIFAR-100)")
    mod.add_argument("--image-size", type=positive_int, default=32, help="input side in pixels (default: 32)")
    mod.add_argument("--channels", type=int, choices=[1, 3], default=3, help="input channels (default: 3)")
    mod.add_argument("--seed", type=int, default=0, help="seed of the model init and of the attack (default: 0)")


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("attack")
    a.add_argument("--label-method", choices=["analytic", "dlg"], default="analytic",
                   help="analytic: iDLG's label (a batch: bias-gradient counts), pixels optimised; dlg: soft labels "
                        "optimised with the pixels, as the paper (default: analytic)")
    a.add_argument("--iters", type=positive_int, default=300, help="optimizer steps (default: 300, as DLG)")
    a.add_argument("--max-evals", type=positive_int, default=None, help="cap on gradient evaluations (default: none)")
    a.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs", help="(default: lbfgs, as the paper)")
    a.add_argument("--lr", type=float, default=None, help="learning rate (default: 1.0 for lbfgs, 0.1 for adam)")
    a.add_argument("--distance", choices=DISTANCE_CHOICES, default="l2", help="(default: l2, as the paper)")
    a.add_argument("--tv", type=float, default=None,
                   help="weight of a total-variation prior (default: 0 for one image; for a batch 1e-3 added to "
                        "the distance, or 1 scaling it, see --prior)")
    a.add_argument("--prior", choices=PRIOR_CHOICES, default=None,
                   help="how the prior enters the objective: added to the distance, or scaling it by (1 + prior), "
                        "which fades as the gradients match (default: scale where the gradient is blind to the "
                        "batch's contrast, as batch norm in train mode; else add)")
    a.add_argument("--box", choices=["auto", "on", "off"], default="auto",
                   help="optimise pixel logits (pixels = their sigmoid, in (0, 1)) or raw pixels as DLG published "
                        "(default auto: raw for one image, logits for a batch or a train-mode gradient)")
    a.add_argument("--init-std", type=float, default=None,
                   help="standard deviation of the initial pixels, or pixel logits with the box (default: 1, DLG's "
                        "standard normal, for raw pixels; 0.01 for logits, which keeps their sigmoid off saturation)")
    a.add_argument("--clamp", action="store_true", help="keep the pixels in [0, 1] after each step")
    a.add_argument("--restarts", type=positive_int, default=1, help="random restarts, best kept (default: 1)")
    a.add_argument("--schedule", choices=["joint", "per-sample"], default="joint",
                   help="batches: update all images each step, or image step mod B (the paper) (default: joint)")
    a.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="let L-BFGS see the raw distance even when it starts below 1 (by default such a distance is "
                        "divided by its first value: same minimiser, but torch's absolute thresholds no longer freeze "
                        "it, as on ResNets at 32x32 in train mode, which start near 3e-2)")
    a.add_argument("--tolerance", type=float, default=1e-10,
                   help="stop once the gradient distance is at or below this (default: 1e-10)")
    a.add_argument("--log-every", type=positive_int, default=10, help="progress and grid frame every N steps")
    a.add_argument("--save-images", type=Path, metavar="DIR", help="write reconstructions and progress grids here "
                   "(default: next to --out)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vision-dlg", description="Deep Leakage from Gradients for images.")
    parser.add_argument("--version", action="version", version=f"vision-dlg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="victim: compute gradients of private images into files",
                         description="Write one gradient file per batch (batch-000.safetensors, ...): tensors named "
                                     "by parameter, JSON metadata; never the images or labels.")
    _add_victim_options(cap)
    cap.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the gradient files")
    att = sub.add_parser("attack", help="attacker: reconstruct images from gradient files (or from --image/--dataset)",
                         description="Reconstruct images with DLG. With --gradients only the files are used; with "
                                     "--image/--dataset both sides run here and the results are scored.")
    att.add_argument("--gradients", type=Path, metavar="DIR_OR_FILE", help="gradient file or directory of them")
    att.add_argument("--out", type=Path, required=True, metavar="FILE", help="results, one JSON line per image")
    _add_victim_options(att)
    _add_attack_options(att)
    demo = sub.add_parser("demo", help="the embedded default: real photos from scikit-image, LeNet, batch 1",
                          description="Capture and attack four real photos shipped by scikit-image, one per gradient, "
                                      "and write the progress grid and results.")
    demo.add_argument("--out", type=Path, default=Path("runs/vision-demo"), metavar="DIR")
    demo.add_argument("--iters", type=positive_int, default=100, help="L-BFGS steps per image (default: 100)")
    demo.add_argument("--seed", type=int, default=0)
    return parser




def _victim(args: argparse.Namespace):
    """The model, its spec/metadata and the captured (observation, truth) pairs."""
    import torch

    from nlp_dlg.engine.errors import ConfigError, InputDataError
    from vision_dlg.data import dataset_image, load_image
    from vision_dlg.models import VisionModelSpec, build_model, model_metadata
    from vision_dlg.victim import capture_images

    spec = VisionModelSpec(args.model, args.num_classes, args.channels, args.image_size, args.seed)
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if bool(args.image) == bool(args.dataset):
        raise ConfigError("pass --image PATH (repeatable) or --dataset NAME --index I, one of them")
    found: list[int | None] = []
    if args.image:
        images = [load_image(p, channels=spec.channels, size=spec.image_size) for p in args.image]
    else:
        if not args.index:
            raise ConfigError("--dataset needs --index I (one or more)")
        pairs = [dataset_image(args.dataset, i, channels=spec.channels, size=spec.image_size) for i in args.index]
        images, found = [p[0] for p in pairs], [p[1] for p in pairs]
    if args.labels is not None:
        if len(args.labels) != len(images):
            raise InputDataError(f"--labels: expected {len(images)} label(s), one per image, got {len(args.labels)}")
        labels = args.labels
    elif found and all(v is not None for v in found):
        labels = [int(v) % spec.num_classes for v in found]  # type: ignore[arg-type]
    else:
        labels = [i % spec.num_classes for i in range(len(images))]
        logger.info("no labels given: using %s", labels)
    model = build_model(spec)
    info = model_metadata(model, spec)
    noise = None if args.defense_seed is None else torch.Generator().manual_seed(args.defense_seed)
    if args.world_size > 1:
        from vision_dlg.distributed import capture_images_distributed

        if args.defense:
            raise ConfigError("a defence with --world-size is not supported: capture a single client for that")
        return model, spec, capture_images_distributed(spec, torch.stack(images), torch.tensor(labels),
                                                       batch_size=args.batch_size, world_size=args.world_size,
                                                       model_info=info, train_mode=args.train_mode)
    return model, spec, capture_images(model, torch.stack(images), labels, batch_size=args.batch_size,
                                       model_info=info, train_mode=args.train_mode, defense=args.defense,
                                       defense_generator=noise)


def cmd_capture(args: argparse.Namespace) -> int:
    from nlp_dlg.engine import save_observation

    _, _, pairs = _victim(args)
    args.out.mkdir(parents=True, exist_ok=True)
    for obs, _ in pairs:
        save_observation(obs, args.out / f"batch-{int(obs.metadata['batch_index']):03d}.safetensors")
    print(f"wrote {len(pairs)} gradient file(s) to {args.out}")
    return 0


def _attack_config(args: argparse.Namespace):
    from nlp_dlg.engine import MatchingConfig
    from vision_dlg.attack import ImageAttackConfig

    lr = args.lr if args.lr is not None else (1.0 if args.optimizer == "lbfgs" else 0.1)
    matching = MatchingConfig(steps=args.iters, max_evaluations=args.max_evals, optimizer=args.optimizer, lr=lr,
                              distance=args.distance, restarts=args.restarts, schedule=args.schedule,
                              tolerance=args.tolerance, normalize=args.normalize)
    return ImageAttackConfig(label_method=args.label_method, matching=matching, tv=args.tv, prior=args.prior,
                             clamp=args.clamp, box={"auto": None, "on": True, "off": False}[args.box],
                             init_std=args.init_std, log_every=args.log_every)


def attack_batches(model, config, batches, *, out: Path, images_dir: Path, seed: int,
                   echo=logger.info) -> tuple[list[dict[str, Any]], bool]:
    """Attack each ``(observation, truth or None)``; write PNGs (reconstructions, a progress grid per batch)
    and JSON lines; return the rows and whether the run was interrupted."""
    import torch

    from vision_dlg.attack import ImageAttack
    from vision_dlg.metrics import psnr, score_images
    from vision_dlg.report import save_grid, save_image

    rows: list[dict[str, Any]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for b, (observation, truth) in enumerate(batches):
            frames: list[tuple[int, torch.Tensor]] = []

            def progress(step, b=b, frames=frames) -> None:
                r = step.record
                frames.append((r.step, step.images))
                echo(f"batch {b} restart {r.restart} step {r.step} evals {r.evaluations} dist {r.distance:.4g} "
                     f"best {r.best_distance:.4g} {r.elapsed:.1f}s labels {step.labels.tolist()}")

            recs = ImageAttack(model, config, callbacks=[progress]).attack(
                observation, generator=torch.Generator().manual_seed(seed + b), batch=b)
            recon = torch.stack([r.image for r in recs])
            lines = []
            for r in recs:
                path = save_image(r.image, images_dir / f"batch-{b:03d}-{r.index}.png", scale=4)
                lines.append({**r.to_json(), "image": str(path)})
            rows_grid = [[f[1][i] for f in frames] for i in range(len(recs))]
            if truth is not None:
                # train mode: batch norm on the batch's statistics hides brightness and contrast, so the
                # scores follow the least-squares fit of both (the raw PSNR is kept beside them)
                fit = observation.metadata.get("mode") == "train"
                scores = score_images(recon, torch.tensor([r.label for r in recs]), truth.images, truth.labels,
                                      fit=fit)
                if fit:
                    scores = [{**s, "fit": "brightness-contrast",
                               "psnr_raw": psnr(x, truth.images[s["reference_index"]])}
                              for x, s in zip(recon, scores)]
                lines = [{**line, **s, "reference_label": int(truth.labels[s["reference_index"]])}
                         for line, s in zip(lines, scores)]
                rows_grid = [row + [truth.images[s["reference_index"]]] for row, s in zip(rows_grid, scores)]
            titles = [f"it {f[0]}" for f in frames] + (["truth"] if truth is not None else [])
            grid = save_grid(rows_grid, images_dir / f"progress-batch-{b:03d}.png", column_titles=titles)
            for line in lines:
                line["progress_grid"] = str(grid)
                fh.write(json.dumps(line) + "\n")
            fh.flush()
            rows.extend(lines)
            if any(r.interrupted for r in recs):
                return rows, True
    return rows, False


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One line per image, then the means (scored rows only)."""
    head = f"{'batch':>5} {'idx':>3} {'label':>5} {'ok':>3} {'MSE':>9} {'PSNR':>6} {'SSIM':>6} {'evals':>6} {'sec':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch']:>5} {r['index']:>3} {r['label']:>5} {'y' if r['label_correct'] else 'n':>3} "
                     f"{r['mse']:>9.2e} {min(r['psnr'], 99.0):>6.1f} {r['ssim']:>6.3f} {r['gradient_evaluations']:>6} "
                     f"{r['seconds']:>6.1f}")
    n = len(rows)
    lines.append("-" * len(head))
    lines.append(f"{'mean':>9} {'':>5} {sum(r['label_correct'] for r in rows) / n:>3.2f} "
                 f"{sum(r['mse'] for r in rows) / n:>9.2e} {sum(min(r['psnr'], 99.0) for r in rows) / n:>6.1f} "
                 f"{sum(r['ssim'] for r in rows) / n:>6.3f}")
    return "\n".join(lines)


def cmd_attack(args: argparse.Namespace) -> int:
    from nlp_dlg.engine import find_gradient_files, load_observation
    from nlp_dlg.engine.errors import ConfigError
    from vision_dlg.models import model_from_metadata

    config = _attack_config(args)
    if args.gradients is not None and (args.image or args.dataset):
        raise ConfigError("pass --gradients (attacker only) or --image/--dataset (both sides), not both")
    if args.gradients is not None:
        files = find_gradient_files(args.gradients)
        first = load_observation(files[0])
        model, _ = model_from_metadata(dict(first.metadata.get("model", {})))
        batches = ((load_observation(f) if i else first, None) for i, f in enumerate(files))
    else:
        model, _, pairs = _victim(args)
        batches = iter(pairs)
    images_dir = args.save_images or args.out.parent / (args.out.stem + "-images")
    rows, interrupted = attack_batches(model, config, batches, out=args.out, images_dir=images_dir, seed=args.seed)
    if rows and "mse" in rows[0]:
        print(format_summary(rows))
    print(f"wrote {len(rows)} reconstruction(s) to {args.out}, images in {images_dir}")
    return 130 if interrupted else 0


DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from nlp_dlg.engine import MatchingConfig
    from vision_dlg.attack import ImageAttackConfig
    from vision_dlg.data import skimage_photo
    from vision_dlg.models import VisionModelSpec, build_model, model_metadata
    from vision_dlg.victim import capture_images

    spec = VisionModelSpec(seed=args.seed)
    model = build_model(spec)
    images = torch.stack([skimage_photo(name) for name in DEMO_PHOTOS])
    labels = [3, 14, 15, 69]       # arbitrary CIFAR-100 style classes for the four photos
    pairs = capture_images(model, images, labels, batch_size=1, model_info=model_metadata(model, spec))
    config = ImageAttackConfig(matching=MatchingConfig(steps=args.iters, tolerance=1e-10), log_every=10)
    rows, interrupted = attack_batches(model, config, pairs, out=args.out / "results.jsonl",
                                       images_dir=args.out, seed=args.seed, echo=print)
    print(format_summary(rows))
    print(f"photos: {', '.join(DEMO_PHOTOS)} (scikit-image); progress grids and reconstructions in {args.out}")
    return 130 if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    commands = {"capture": cmd_capture, "attack": cmd_attack, "demo": cmd_demo}
    return run_command("vision-dlg", commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
