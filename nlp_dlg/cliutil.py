"""What ``nlp-dlg`` and ``vision-dlg`` share: argument types, logging set-up, and running a command so that
library errors become one line on stderr and a non-zero exit (no traceback). Imports nothing heavy."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

# the engine's DISTANCES and PRIORS, spelled out so that building a parser imports no torch (tests hold them equal)
DISTANCE_CHOICES = ("l2", "cosine", "l2+l1", "layer-l2")
PRIOR_CHOICES = ("add", "scale")
NOISY = ("transformers", "datasets", "absl", "huggingface_hub", "filelock", "fsspec", "PIL")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def setup_logging(quiet: bool) -> None:
    """Progress (INFO) on stderr unless ``quiet``; third-party chatter silenced."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


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
