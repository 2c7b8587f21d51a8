"""What ``nlp-dlg`` and ``vision-dlg`` share: every common option (defined once, its default and choices read from
the configs), logging set-up, the capture and attack commands on the one pipeline, and running a command so that
library errors become one line on stderr and a non-zero exit (no traceback). Building a parser imports no torch."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nlp_dlg import __version__
from nlp_dlg.engine.config import DEFAULT_LR, DISTANCES, OPTIMIZERS, SCHEDULES, MatchingConfig
from nlp_dlg.engine.errors import ConfigError, GradientFileError

NOISY = ("transformers", "datasets", "absl", "huggingface_hub", "filelock", "fsspec", "PIL")
DEVICE_HELP = ("auto | cpu | cuda | cuda:N | mps: where the model, the gradients and the attack live (default: auto, "
               "a GPU when there is one)")
DEFENSE_HELP = ("defence applied before the gradient leaves: gaussian:SIGMA, laplace:B, fp16, bf16, int8, prune:P, "
                "dp:C,Z, joined by '+' (e.g. prune:0.2+gaussian:1e-3); recorded in the metadata")
# the options of MatchingConfig the command lines expose, by their flag
MATCHING_FLAGS = {"steps": "steps", "max_evals": "max_evaluations", "optimizer": "optimizer", "lr": "lr",
                  "distance": "distance", "restarts": "restarts", "schedule": "schedule", "tolerance": "tolerance",
                  "stall_step": "stall_step", "stall_drop": "stall_drop"}


def _int_from(text: str, low: int, what: str) -> int:
    """``text`` as an integer of at least ``low``, else argparse's error naming ``what`` it should be."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_from(text, 0, "a non-negative integer")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _int_from(text, 1, "a positive integer")


def match_layers(text: str) -> int | str:
    """argparse type: ``auto``, ``all`` or a non-negative integer (``TextAttackConfig.match_layers``)."""
    return text if text in ("auto", "all") else _int_from(text, 0, "auto, all or a non-negative integer")


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers (``3,7``)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,7, got {text!r}") from None


def base_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    """The top-level parser (``--version``, ``--quiet``) and its sub-command collection."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return parser, parser.add_subparsers(dest="command", required=True)


def task_parser(prog: str, description: str, what: str, add_victim: Callable[[argparse.ArgumentParser], None],
                add_attack: Callable[[argparse.ArgumentParser], None]) -> tuple[argparse.ArgumentParser, Any]:
    """A command line with ``capture`` and ``attack`` for one task (and its sub-command collection, for more)."""
    parser, sub = base_parser(prog, description)
    add_capture_parser(sub, what, add_victim)
    add_attack_parser(sub, what, add_victim, add_attack)
    return parser, sub


def add_capture_parser(sub: Any, what: str, add_victim: Callable[[argparse.ArgumentParser], None]) -> None:
    """``capture``: the victim's options and ``--out DIR``."""
    cap = sub.add_parser("capture", help=f"victim: compute gradients of private {what} into files",
                         description="Write one gradient file per batch (batch-000.safetensors, ...): tensors named "
                                     f"by parameter, JSON metadata; never the {what}, nor anything derived from them.")
    add_victim(cap)
    cap.add_argument("--seed", type=int, default=0, help="seed of the model init (random-init models; default: 0)")
    cap.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for the gradient files")
    cap.add_argument("--overwrite", action="store_true",
                     help="replace the gradient files already in --out (default: refuse a folder that holds some)")


def add_attack_parser(sub: Any, what: str, add_victim: Callable[[argparse.ArgumentParser], None],
                      add_attack: Callable[[argparse.ArgumentParser], None]) -> None:
    """``attack``: ``--gradients``, ``--out FILE``, the victim's options (for an in-process, scored run) and the
    attack's."""
    att = sub.add_parser("attack", help=f"attacker: reconstruct {what} from gradient files (or capture them here)",
                         description=f"Reconstruct {what} from gradients. With --gradients only the files are used; "
                                     "with private data given, both sides run here and the results are scored.")
    att.add_argument("--gradients", type=Path, metavar="DIR_OR_FILE", help="gradient file or directory of them")
    att.add_argument("--out", type=Path, required=True, metavar="FILE", help="results, one JSON line per item")
    att.add_argument("--workers", type=positive_int, default=1, metavar="N",
                     help="attack the --gradients files in N processes at once, same results as one (default: 1); "
                          "each gets --threads torch threads, by default the cores shared out")
    att.add_argument("--ray", metavar="auto|local|ADDRESS", default=None,
                     help="attack the --gradients files on Ray actors (--workers of them, --threads CPUs each; pip "
                          "install 'nlp-dlg[ray]'): local starts Ray here, auto joins the running cluster, or a "
                          "cluster address; the folder must be visible to every node")
    add_victim(att)
    add_attack(att)


def add_victim_options(group: argparse._ArgumentGroup) -> None:
    """The victim options every task has."""
    group.add_argument("--batch-size", type=positive_int, default=1, help="items per gradient (default: 1)")
    group.add_argument("--train-mode", action="store_true",
                       help="compute the gradient in train mode (dropout, batch statistics; default: eval)")
    group.add_argument("--defense", metavar="SPEC", help=DEFENSE_HELP)
    group.add_argument("--defense-seed", type=int, default=None, help="seed of the defence's noise (default: fresh)")
    group.add_argument("--world-size", type=positive_int, default=1,
                       help="run a real DDP step in W local processes (nccl where every rank has a GPU, else gloo, on "
                            "loopback) and record the all-reduced gradient; --batch-size is the global batch, split "
                            "evenly over the ranks (default: 1)")
    group.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU threads of torch (default: OMP_NUM_THREADS when set, else torch's own choice: all "
                            "cores, which spin against other jobs on a shared machine)")


def add_matching_options(group: argparse._ArgumentGroup, defaults: MatchingConfig) -> None:
    """The engine's options, their defaults shown from ``defaults`` (a task's config); an option left out keeps
    the config's value (:func:`matching_config`)."""
    cap = defaults.max_evaluations
    group.add_argument("--steps", type=positive_int, default=None,
                       help=f"optimizer steps; one L-BFGS step runs up to {defaults.lbfgs_max_iter} gradient "
                            f"evaluations (default: {defaults.steps})")
    group.add_argument("--max-evals", type=positive_int, default=None,
                       help=f"cap on gradient evaluations per batch (default: {cap if cap is not None else 'none'})")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"(default: {defaults.optimizer})")
    group.add_argument("--lr", type=float, default=None,
                       help=f"learning rate (default: {DEFAULT_LR['lbfgs']:g} for lbfgs, as the paper; "
                            f"{DEFAULT_LR['adam']:g} for adam)")
    group.add_argument("--distance", choices=DISTANCES, default=None,
                       help=f"gradient distance (default: {defaults.distance}; the paper used l2)")
    group.add_argument("--restarts", type=positive_int, default=None,
                       help=f"random starts, the best kept; with --stall-step, the most tried, the first on track "
                            f"ending the search (default: {defaults.restarts})")
    group.add_argument("--stall-step", type=non_negative_int, default=None,
                       help="with --restarts above 1: abandon a start whose distance at this step has not fallen "
                            f"below --stall-drop of its first, for the next; 0: never (default: "
                            f"{defaults.stall_step or 0})")
    group.add_argument("--stall-drop", type=float, default=None,
                       help=f"the fall a start must show by --stall-step (default: {defaults.stall_drop:g})")
    group.add_argument("--schedule", choices=SCHEDULES, default=None,
                       help="batches: update every sample each step, or sample (step mod B) as the paper "
                            f"(default: {defaults.schedule})")
    group.add_argument("--tolerance", type=float, default=None,
                       help=f"stop once the gradient distance is at or below this (default: {defaults.tolerance:g})")


def matching_config(args: argparse.Namespace, defaults: MatchingConfig) -> MatchingConfig:
    """``defaults`` with the options given on the command line."""
    given = {field: getattr(args, flag) for flag, field in MATCHING_FLAGS.items() if getattr(args, flag) is not None}
    if given.get("stall_step") == 0:
        given["stall_step"] = None
    return dataclasses.replace(defaults, **given)


def add_run_options(group: argparse._ArgumentGroup, log_every: int) -> None:
    group.add_argument("--log-every", type=positive_int, default=log_every,
                       help=f"report progress every N steps (default: {log_every})")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the model init (random-init models) and of the attack (default: 0)")


def setup_logging(quiet: bool) -> None:
    """Progress (INFO) on stderr unless ``quiet``; third-party chatter silenced, their progress bars too (set
    before transformers is imported: an error stays one line on stderr)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # transformers sets its own level on import
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


def has_private_data(args: argparse.Namespace, *names: str) -> bool:
    return any(getattr(args, n, None) for n in names)


def set_threads(threads: int | None) -> None:
    """``--threads``, else ``OMP_NUM_THREADS`` (torch reads it itself), else torch's default."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    logging.getLogger("nlp_dlg").info("torch threads: %d (on a machine shared with other CPU-bound jobs, set "
                                      "--threads below the number of cores)", torch.get_num_threads())


def capture_command(args: argparse.Namespace, victim: Callable[[argparse.Namespace], tuple[Any, list]]) -> int:
    """Run the victim and write one gradient file per batch, into a folder holding none yet (``--overwrite``
    removes earlier ones: a later attack of the folder would take them for this capture's)."""
    earlier = sorted(args.out.glob("*.safetensors")) if args.out.is_dir() else []
    if earlier and not args.overwrite:
        raise ConfigError(f"--out {args.out}: holds {len(earlier)} gradient file(s) already; pass --overwrite to "
                          "replace them, or another folder")
    _, pairs = victim(args)         # the victim sets --threads once its input is read
    from nlp_dlg.engine.observation import write_observations

    for path in earlier:
        path.unlink()
    paths = write_observations([obs for obs, _ in pairs], args.out)
    print(f"wrote {len(paths)} gradient file(s) to {args.out}")
    return 0


def attack_command(args: argparse.Namespace, make_task: Callable[..., Any],
                   victim: Callable[[argparse.Namespace], tuple[dict[str, Any], list]],
                   data_options: tuple[str, ...]) -> int:
    """Attack the files of ``--gradients`` or, with private data given (``data_options``), capture here and attack
    with scores (the task adopts the victim's model), on the one pipeline; print the summary; exit 130 when
    interrupted. The attack's options and the device are checked before anything is built."""
    if args.gradients is not None and not args.gradients.exists():   # before torch is imported: at once
        raise GradientFileError(f"{args.gradients}: no such file or directory")
    private = has_private_data(args, *(o.lstrip("-").replace("-", "_") for o in data_options))
    if args.gradients is not None and private:
        raise ConfigError("pass --gradients (attacker only) or private data (both sides here), not both")
    if args.gradients is None and not private:
        raise ConfigError(f"nothing to attack: pass --gradients DIR, or private data ({', '.join(data_options)})")
    if args.gradients is None and (args.workers > 1 or args.ray):
        raise ConfigError("--workers and --ray attack --gradients files; an in-process capture is attacked here, "
                          "in one")
    from nlp_dlg.engine.device import resolve_device
    from nlp_dlg.pipeline import run_attack

    task = make_task(device=resolve_device(args.device))
    if args.gradients is not None:
        if args.workers == 1 and not args.ray:
            set_threads(args.threads)   # (an in-process victim sets them itself, once its input is read)
        run = run_attack(task, gradients=args.gradients, out=args.out, seed=args.seed, workers=args.workers,
                         threads=args.threads, ray=args.ray)
    else:
        adopted, pairs = victim(args)
        task.adopt(**adopted)
        run = run_attack(task, pairs=pairs, out=args.out, seed=args.seed)
    if run.summary:
        print(run.summary)
    print(f"wrote {len(run.rows)} reconstruction(s) to {args.out}")
    if run.failed:
        from nlp_dlg.pipeline import failure_message

        raise GradientFileError(failure_message(run.failed))
    return 130 if run.interrupted else 0


def cli_main(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None, *,
             victim: Callable[[argparse.Namespace], tuple[dict[str, Any], list]], make_task: Callable[..., Any],
             data_options: tuple[str, ...],
             extra: dict[str, Callable[[argparse.Namespace], int]] | None = None) -> int:
    """Parse ``argv``, set up logging and run ``capture``, ``attack`` (on the pipeline) or an ``extra`` command."""
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "capture": partial(capture_command, victim=victim),
        "attack": partial(attack_command, make_task=partial(make_task, args), victim=victim,
                          data_options=data_options),
        **(extra or {})}
    return run_command(prog, commands[args.command], args)


def run_command(prog: str, command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``: Ctrl-C exits 130, a library error (typed, ValueError, OSError) is one line and
    exit 2."""
    from nlp_dlg.engine.errors import NlpDlgError

    started = time.perf_counter()
    try:
        code = command(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (NlpDlgError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(prog).info("done in %.1fs", time.perf_counter() - started)
    return code
