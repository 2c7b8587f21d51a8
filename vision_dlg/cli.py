"""``vision-dlg``: capture image-classification gradients (victim) and reconstruct images from them.

    vision-dlg capture --image photo.png --labels 3 --out grads/
    vision-dlg attack --gradients grads/ --out results.jsonl --save-images recon/
    vision-dlg attack --dataset skimage --index 0 --labels 3 --out results.jsonl   # both sides, scored
    vision-dlg demo                                   # real photos shipped by scikit-image, LeNet, batch 1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from nlp_dlg.cliutil import (
    add_matching_options,
    add_run_options,
    add_victim_options,
    cli_main,
    int_list,
    matching_config,
    non_negative_int,
    positive_int,
    set_threads,
    task_parser,
)
from nlp_dlg.engine.config import PRIORS
from vision_dlg.config import (
    BATCH_TV,
    BOXED_INIT_STD,
    LABEL_METHODS,
    MODELS,
    SCALED_TV,
    SINGLE_TV,
    ImageAttackConfig,
    VisionModelSpec,
)

logger = logging.getLogger("vision_dlg.cli")
ATTACK, MODEL = ImageAttackConfig(), VisionModelSpec()
DATA_OPTIONS = ("--image", "--dataset")
BOX = {"auto": None, "on": True, "off": False}


def _add_victim_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("private images (victim side; with attack: both sides run here, scored)")
    src.add_argument("--image", action="append", type=Path, metavar="PATH", help="an image file (repeatable)")
    src.add_argument("--dataset", metavar="NAME",
                     help="skimage | lfw-subset | digits | an MNIST IDX / CIFAR .bin file | an image folder | a hub "
                          "name (mnist, cifar100, svhn, lfw) when reachable")
    src.add_argument("--index", type=int, nargs="+", metavar="I", help="image index(es) in --dataset")
    src.add_argument("--labels", type=int_list, metavar="3,7,...",
                     help="one label per image (default: the dataset's labels, else 0, 1, 2, ...)")
    add_victim_options(src)
    mod = p.add_argument_group("model")
    mod.add_argument("--model", default=MODEL.name, choices=MODELS,
                     help=f"victim network (default: {MODEL.name}, DLG's)")
    mod.add_argument("--num-classes", type=positive_int, default=MODEL.num_classes,
                     help=f"(default: {MODEL.num_classes}, as CIFAR-100)")
    mod.add_argument("--image-size", type=positive_int, default=MODEL.image_size,
                     help=f"input side in pixels (default: {MODEL.image_size})")
    mod.add_argument("--channels", type=int, choices=[1, 3], default=MODEL.channels,
                     help=f"input channels (default: {MODEL.channels})")


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("attack")
    a.add_argument("--label-method", choices=LABEL_METHODS, default=ATTACK.label_method,
                   help="analytic: iDLG's label (a batch: bias-gradient counts), pixels optimised; dlg: soft labels "
                        f"optimised with the pixels, as the paper (default: {ATTACK.label_method})")
    add_matching_options(a, ATTACK.matching)
    a.add_argument("--tv", type=float, default=ATTACK.tv,
                   help=f"weight of a total-variation prior (default: 0 for one image its gradient determines, "
                        f"{SINGLE_TV:g} added for one it cannot; for a batch {BATCH_TV:g} added to the distance, or "
                        f"{SCALED_TV:g} scaling it, see --prior)")
    a.add_argument("--prior", choices=PRIORS, default=ATTACK.prior,
                   help="how the prior enters the objective: added to the distance, or scaling it by (1 + prior), "
                        "which fades as the gradients match (default: scale where the gradient is blind to the "
                        "batch's contrast, as batch norm in train mode; else add)")
    a.add_argument("--box", choices=list(BOX), default="auto",
                   help="optimise pixel logits (pixels = their sigmoid, in (0, 1)) or raw pixels as DLG published "
                        "(default auto: raw for one image, logits for a batch, a train-mode gradient or an image the "
                        "gradient cannot determine)")
    a.add_argument("--init-std", type=float, default=ATTACK.init_std,
                   help="standard deviation of the initial pixels, or pixel logits with the box (default: 1, DLG's "
                        f"standard normal, for raw pixels; {BOXED_INIT_STD:g} for logits, which keeps their sigmoid "
                        "off saturation)")
    a.add_argument("--clamp", action="store_true", help="keep the pixels in [0, 1] after each step")
    a.add_argument("--polish-steps", type=non_negative_int, default=ATTACK.polish_steps,
                   help="after a batch's matching with its added prior, this many more steps without it (at most "
                        "--steps), where the gradient can determine the batch; 0: none, as the paper (default: "
                        f"{ATTACK.polish_steps})")
    a.add_argument("--chroma", type=positive_int, default=ATTACK.chroma, metavar="N",
                   help="solve for a full-resolution grey level and two colour planes N times coarser, as JPEG "
                        "stores a photo (a grey image loses nothing); 1: every pixel, as the paper (default: the "
                        "finest N that leaves the batch well inside what its gradient can determine; 1 for one 32x32 "
                        "image). Where the polish shows a photo's colour finer than that grid, every pixel's colour is "
                        "freed again under a prior of its own")
    a.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="let L-BFGS see the raw distance even when it starts below 1 (by default such a distance is "
                        "divided by its first value: same minimiser, but torch's absolute thresholds no longer freeze "
                        "it, as on ResNets at 32x32 in train mode, which start near 3e-2)")
    a.add_argument("--save-images", type=Path, metavar="DIR", help="write reconstructions and progress grids here "
                   "(default: next to --out)")
    add_run_options(a, ATTACK.log_every)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = task_parser("vision-dlg", "Deep Leakage from Gradients for images.", "images", _add_victim_options,
                              _add_attack_options)
    demo = sub.add_parser("demo", help="the embedded default: real photos from scikit-image, LeNet, batch 1",
                          description="Capture and attack four real photos shipped by scikit-image, one per gradient, "
                                      "and write the progress grid and results.")
    demo.add_argument("--out", type=Path, default=Path("runs/vision-demo"), metavar="DIR")
    demo.add_argument("--steps", type=positive_int, default=100, help="L-BFGS steps per image (default: 100)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _images(args: argparse.Namespace, spec: VisionModelSpec) -> tuple[Any, list[int]]:
    """The private images ``(N, C, S, S)`` and their labels."""
    import torch

    from nlp_dlg.engine.errors import ConfigError, InputDataError
    from vision_dlg.data import dataset_image, load_image

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
    return torch.stack(images), labels


def _victim(args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    """What the attack adopts of the victim (its model, on ``--device``) and the captured (observation, truth)
    pairs."""
    import torch

    from nlp_dlg.engine.device import resolve_device
    from nlp_dlg.engine.errors import ConfigError
    from nlp_dlg.engine.victim import fresh_generator
    from vision_dlg.models import build_model, model_metadata
    from vision_dlg.victim import capture_images

    spec = VisionModelSpec(args.model, args.num_classes, args.channels, args.image_size, args.seed)
    images, labels = _images(args, spec)
    set_threads(args.threads)
    device = resolve_device(args.device)
    model = build_model(spec).to(device)
    info = model_metadata(model, spec)
    if args.world_size > 1:
        from vision_dlg.distributed import capture_images_distributed

        if args.defense:
            raise ConfigError("a defence with --world-size is not supported: capture a single client for that")
        return {"model": model}, capture_images_distributed(spec, images, torch.tensor(labels),
                                                            batch_size=args.batch_size, world_size=args.world_size,
                                                            model_info=info, train_mode=args.train_mode,
                                                            device=str(device))
    noise = None if args.defense_seed is None else fresh_generator(args.defense_seed)
    return {"model": model}, capture_images(model, images, labels, batch_size=args.batch_size, model_info=info,
                                            train_mode=args.train_mode, defense=args.defense, defense_generator=noise)


def _task(args: argparse.Namespace, *, device: Any) -> Any:
    from vision_dlg.runner import ImageTask

    matching = dataclasses.replace(matching_config(args, ATTACK.matching), normalize=args.normalize)
    config = ImageAttackConfig(label_method=args.label_method, matching=matching, tv=args.tv, prior=args.prior,
                               clamp=args.clamp, box=BOX[args.box], init_std=args.init_std, log_every=args.log_every,
                               polish_steps=args.polish_steps, chroma=args.chroma)
    images_dir = args.save_images or args.out.parent / (args.out.stem + "-images")
    return ImageTask(config, images_dir=images_dir, device=device)


DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DEMO_LABELS = (3, 14, 15, 69)  # arbitrary CIFAR-100 style classes for the four photos


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from nlp_dlg.pipeline import run_attack
    from vision_dlg.data import skimage_photo
    from vision_dlg.models import build_model, model_metadata
    from vision_dlg.runner import ImageTask
    from vision_dlg.victim import capture_images

    spec = VisionModelSpec(seed=args.seed)
    model = build_model(spec)
    images = torch.stack([skimage_photo(name) for name in DEMO_PHOTOS])
    pairs = capture_images(model, images, list(DEMO_LABELS), batch_size=1, model_info=model_metadata(model, spec))
    config = ImageAttackConfig(matching=dataclasses.replace(ATTACK.matching, steps=args.steps))
    run = run_attack(ImageTask(config, images_dir=args.out, model=model, echo=print), pairs=pairs,
                     out=args.out / "results.jsonl", seed=args.seed)
    print(run.summary)
    print(f"photos: {', '.join(DEMO_PHOTOS)} (scikit-image); progress grids and reconstructions in {args.out}")
    return 130 if run.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    return cli_main("vision-dlg", build_parser(), argv, victim=_victim, make_task=_task, data_options=DATA_OPTIONS,
                    extra={"demo": cmd_demo})


if __name__ == "__main__":
    sys.exit(main())
