"""A/B of two code trees on the same gradient files: the attack alone, timed per file, and its results.

For a refactor that must not change what an attack does nor how fast: check out the earlier commit beside this
one (`git worktree add /tmp/old REV`), capture gradient files once, then run this script for each tree, in
alternation, in one session (the machine's speed drifts between sessions; compare ratios measured together).
`--code DIR` imports `nlp_dlg`/`vision_dlg` from DIR instead of this checkout. Only APIs both trees have are used
(`MaskedLMAttack`, `ImageAttack`, `load_observation`, `model_from_metadata`). Appends one JSON line per run to
`benchmarks/results/ab.jsonl`.

    git worktree add /tmp/old 8cdb08a
    .venv/bin/python -m nlp_dlg.cli -q capture --input S4.txt --mask-seed 1234 --out /tmp/abg/text
    .venv/bin/python -m vision_dlg.cli -q capture --dataset lfw-subset --index 80 81 82 83 --labels 1,4,7,10 \\
        --out /tmp/abg/vis
    .venv/bin/python benchmarks/bench_ab.py --text /tmp/abg/text --vision /tmp/abg/vis [--code /tmp/old]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def _import_from(code: Path | None) -> str:
    """Make ``code`` (a checkout) the source of ``nlp_dlg`` and ``vision_dlg`` (the editable install's finder
    would win over ``sys.path``); returns the commit it is at."""
    root = code or HERE.parent
    if code is not None:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, str(code))
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def text_run(folder: Path) -> dict:
    import torch

    from nlp_dlg.engine import MatchingConfig, find_gradient_files, load_observation
    from nlp_dlg.text import MaskedLMAttack, TextAttackConfig, load_tokenizer, model_from_metadata

    observations = [load_observation(f) for f in find_gradient_files(folder)]
    model, _ = model_from_metadata(dict(observations[0].metadata["model"]))
    tokenizer = load_tokenizer(observations[0].metadata.get("tokenizer"))
    config = TextAttackConfig(method="span", matching=MatchingConfig(distance="cosine", steps=1000,
                                                                     max_evaluations=600))
    seconds, texts = [], []
    for b, obs in enumerate(observations):
        started = time.perf_counter()
        recs = MaskedLMAttack(model, tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(b))
        seconds.append(round(time.perf_counter() - started, 2))
        texts += [r.reconstruction for r in recs]
    return {"text_seconds": seconds, "text_mean_seconds": round(sum(seconds) / len(seconds), 2), "texts": texts}


def vision_run(folder: Path, first: int) -> dict:
    import torch

    from nlp_dlg.engine import MatchingConfig, find_gradient_files, load_observation
    from vision_dlg import ImageAttack, ImageAttackConfig, dataset_image, model_from_metadata
    from vision_dlg.metrics import psnr

    observations = [load_observation(f) for f in find_gradient_files(folder)]
    model, _ = model_from_metadata(dict(observations[0].metadata["model"]))
    config = ImageAttackConfig(matching=MatchingConfig(steps=300, tolerance=1e-10, normalize=True))
    seconds, psnrs, evaluations = [], [], []
    for b, obs in enumerate(observations):
        started = time.perf_counter()
        rec = ImageAttack(model, config).attack(obs, generator=torch.Generator().manual_seed(b))[0]
        seconds.append(round(time.perf_counter() - started, 1))
        psnrs.append(round(psnr(rec.image, dataset_image("lfw-subset", first + b)[0]), 2))
        evaluations.append(rec.evaluations)
    return {"vision_seconds": seconds, "vision_psnr": psnrs, "vision_evaluations": evaluations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=None, help="the code tree to measure (default: this checkout)")
    ap.add_argument("--text", type=Path, help="a folder of masked-LM gradient files (BERT-base, batch 1)")
    ap.add_argument("--vision", type=Path, help="a folder of LeNet gradient files of lfw_subset faces")
    ap.add_argument("--first-face", type=int, default=80, help="lfw_subset index of the vision folder's first image")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ab.jsonl")
    args = ap.parse_args()
    row: dict = {"code": str(args.code or HERE.parent), "commit": _import_from(args.code),
                 "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.text:
        row.update(text_run(args.text))
    if args.vision:
        row.update(vision_run(args.vision, args.first_face))
    append_result(args.out, row)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
