"""Which defences stop the leak: each defence over a range of strengths, text and vision, two attacks each.

Text: BERT-base architecture, random init, held-out sentences from `benchmarks/data/public_domain_sentences.txt`
(15% masking), batch 1, attacked with `dlg` (gradient matching) and the default `span` method. Vision: DLG's
LeNet, held-out LFW faces from scikit-image's `lfw_subset` (32x32), batch 1, attacked with the paper's DLG
(soft labels) and the default (iDLG label). The defence runs on the victim before the gradient leaves
(`--defense` of the capture CLIs). Utility: the cosine between the defended and the clean gradient (1: the
training signal is intact). DP rows also give ε for a training run of `--dp-steps` steps at sampling rate
`--dp-rate` (Opacus' RDP accountant, δ = 1e-5).

Writes `sweep.csv` (one row per modality × method × defence) and PNGs: quality vs strength per defence kind,
and the gradient-distance curves of the matching per defence (as the paper's defence figures). Each
(modality, method) is one pipeline run over every defended sample, batch `b` from the CPU generator seeded `b`:
`--workers N` attacks them in N processes and `--ray ADDRESS` on Ray actors, with the rows of one process.

    .venv/bin/python scripts/defense_sweep.py --quick        # every defence kind, both modalities, <= 10 min here
    .venv/bin/python scripts/defense_sweep.py --workers 2    # the full ranges (see the README for its time)
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from nlp_dlg.cliutil import positive_int
from nlp_dlg.engine import MatchingConfig, dp_epsilon, parse_defense
from nlp_dlg.engine.distance import gradient_distance
from nlp_dlg.engine.errors import NlpDlgError
from nlp_dlg.pipeline import run_attack, unless_interrupted

HERE = Path(__file__).resolve().parent
SENTENCES = HERE.parent / "benchmarks" / "data" / "public_domain_sentences.txt"

QUICK_VISION_STEPS = 100  # LeNet needs ~100 L-BFGS steps (40 leave a clean image at 13 dB)
QUICK = ["none", "gaussian:1e-4", "gaussian:1e-2", "gaussian:1e-1", "laplace:1e-2", "fp16", "bf16", "int8",
         "prune:0.5", "dp:1,0.01"]
FULL = ["none", "gaussian:1e-4", "gaussian:1e-3", "gaussian:1e-2", "gaussian:1e-1", "laplace:1e-4", "laplace:1e-3",
        "laplace:1e-2", "laplace:1e-1", "fp16", "bf16", "int8", "prune:0.1", "prune:0.2", "prune:0.5", "prune:0.7",
        "prune:0.9", "dp:1,0.001", "dp:1,0.01", "dp:1,0.1", "dp:1,1"]
FIELDS = ["modality", "method", "defense", "kind", "strength", "sample", "token_accuracy", "rouge1", "rouge2",
          "mse", "psnr", "ssim", "label_accuracy", "utility_cosine", "epsilon", "final_distance",
          "gradient_evaluations", "seconds"]


def kind_and_strength(spec: str) -> tuple[str, float]:
    defense = parse_defense(spec)
    if defense is None:
        return "none", 0.0
    t = defense.transforms[0]
    return t.kind, (t.params[-1] if t.params else 1.0)




def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    names = list(a)
    return 1.0 - float(gradient_distance([a[n] for n in names], [b[n] for n in names], "cosine"))


class CurveFile:
    """An ``on_step`` that appends each logged step's (evaluations, distance) to ``folder/batch-NNN.tsv``: it runs
    wherever the batch is attacked (a worker process, a Ray actor on a shared filesystem), and the sweep reads the
    curves back from the files."""

    def __init__(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)    # an earlier sweep's curves in the same --out
        self.folder = folder

    def __call__(self, batch: int, step) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"batch-{batch:03d}.tsv").open("a") as fh:
            fh.write(f"{step.record.evaluations}\t{step.record.distance!r}\n")
        return False

    def read(self, batch: int) -> list[tuple[float, float]]:
        path = self.folder / f"batch-{batch:03d}.tsv"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(float(e), float(d)) for e, d in (line.split("\t") for line in lines)]


def attack_all(task, pairs: list, out: Path, args: argparse.Namespace) -> tuple[dict[int, dict], dict[int, str]]:
    """Every defended sample of one (modality, method) in one pipeline run, on ``--workers`` processes or Ray
    actors: the scored row of each batch, and the refusal of each batch the attack refused (e.g. the priors are
    unreadable under heavy noise: nothing leaked). Batch ``b`` starts from the CPU generator seeded ``b``."""
    run = unless_interrupted(run_attack(task, pairs=pairs, out=out, seed=0, keep_going=True, workers=args.workers,
                                        threads=args.threads, ray=args.ray))
    refused = {int(source.split()[-1]): why for source, why in run.failed}
    return {r["batch"]: r for r in run.rows}, refused


def flatten(defended: dict[str, list], clean: list) -> list[tuple[str, int, tuple, object]]:
    """``(defence, sample, (observation, truth), clean observation)`` per defended sample, in the order the
    pipeline attacks them: batch ``b`` is the ``b``-th."""
    return [(d, i, pair, clean_pair[0]) for d, pairs in defended.items()
            for i, (pair, clean_pair) in enumerate(zip(pairs, clean))]


def in_process(args: argparse.Namespace, **victim) -> dict:
    """The victim's model (and tokenizer) for a serial sweep; none for workers or Ray actors, which build theirs
    from the observations' metadata."""
    return {} if args.workers > 1 or args.ray else victim


def text_rows(specs: list[str], samples: int, max_evals: int, args: argparse.Namespace, curves: dict) -> list[dict]:
    from nlp_dlg.text import (
        CaptureConfig,
        ModelSpec,
        capture_gradients,
        load_masked_lm,
        load_tokenizer,
        model_metadata,
    )

    spec = ModelSpec(seed=0)
    model, tokenizer = load_masked_lm(spec), load_tokenizer()
    info = model_metadata(model, spec)
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()][:samples]
    clean = capture_gradients(model, tokenizer, sentences, CaptureConfig(), model_info=info,
                              generator=torch.Generator().manual_seed(7))
    defended = {d: capture_gradients(model, tokenizer, sentences,
                                     CaptureConfig(defense=None if d == "none" else d), model_info=info,
                                     generator=torch.Generator().manual_seed(7),
                                     defense_generator=torch.Generator().manual_seed(11)) for d in specs}
    return text_attacks(defended, clean, in_process(args, model=model, tokenizer=tokenizer), max_evals, args, curves)


def text_attacks(defended: dict[str, list], clean: list, victim: dict, max_evals: int, args: argparse.Namespace,
                 curves: dict) -> list[dict]:
    from nlp_dlg.text import MaskedLMTask, TextAttackConfig

    rows = []
    samples = flatten(defended, clean)
    for method in [m for m in ("dlg", "span") if m in args.methods]:
        config = TextAttackConfig(method=method, matching=MatchingConfig(distance="cosine", steps=1000,
                                                                         max_evaluations=max_evals))
        curve = CurveFile(args.out / "curves" / f"text-{method}")
        task = MaskedLMTask(config, **victim, on_step=curve)
        recs, refused = attack_all(task, [pair for _, _, pair, _ in samples], args.out / "attacks" /
                                   f"text-{method}.jsonl", args)
        for b, (d, i, (obs, _), clean_obs) in enumerate(samples):
            row = {"modality": "text", "method": method, "defense": d, **dict(zip(("kind", "strength"),
                                                                                   kind_and_strength(d))),
                   "sample": i, "epsilon": _epsilon(d, args),
                   "utility_cosine": round(cosine(dict(obs.gradients), dict(clean_obs.gradients)), 6)}
            if b in refused:
                print(f"text   {method:5} {d:14} [{i}] attack refused: {refused[b]}", flush=True)
                rows.append({**row, "token_accuracy": 0.0, "rouge1": 0.0, "rouge2": 0.0})
                continue
            rec = recs[b]
            if method == "dlg" and i == 0:
                curves.setdefault(("text", "dlg"), {})[d] = curve.read(b)
            rows.append({**row, "token_accuracy": round(rec["token_accuracy"], 4), "rouge1": round(rec["rouge1"], 4),
                         "rouge2": round(rec["rouge2"], 4), "final_distance": rec["distance"],
                         "gradient_evaluations": rec["gradient_evaluations"], "seconds": round(rec["seconds"], 1)})
            print(f"text   {method:5} {d:14} [{i}] tokacc {rec['token_accuracy']:.3f} "
                  f"cos {row['utility_cosine']:.4f} {rec['seconds']:.0f}s  {rec['reconstruction'][:60]}", flush=True)
    return rows


def vision_rows(specs: list[str], samples: int, steps: int, args: argparse.Namespace, curves: dict) -> list[dict]:
    from vision_dlg import (
        VisionModelSpec,
        build_model,
        capture_images,
        dataset_image,
        model_metadata,
    )

    spec = VisionModelSpec()
    model = build_model(spec)
    info = model_metadata(model, spec)
    images = torch.stack([dataset_image("lfw-subset", 60 + i)[0] for i in range(samples)])
    labels = [(13 * i + 2) % 100 for i in range(samples)]
    clean = capture_images(model, images, labels, model_info=info)
    methods = [(m, lm) for m, lm in (("dlg", "dlg"), ("default", "analytic"))
               if m in args.methods or (m == "default" and "span" in args.methods)]
    defended = {d: capture_images(model, images, labels, model_info=info, defense=None if d == "none" else d,
                                  defense_generator=torch.Generator().manual_seed(11)) for d in specs}
    return vision_attacks(defended, clean, in_process(args, model=model), methods, steps, args, curves)


def vision_attacks(defended: dict[str, list], clean: list, victim: dict, methods: list, steps: int,
                   args: argparse.Namespace, curves: dict) -> list[dict]:
    from vision_dlg import ImageAttackConfig, ImageTask

    rows = []
    samples = flatten(defended, clean)
    for method, label_method in methods:
        config = ImageAttackConfig(label_method=label_method, log_every=1,
                                   matching=MatchingConfig(steps=steps, tolerance=1e-10))
        curve = CurveFile(args.out / "curves" / f"vision-{method}")
        task = ImageTask(config, images_dir=args.out / "images" / method, **victim, grid_every=steps // 6 or 1,
                         on_step=curve)
        recs, refused = attack_all(task, [pair for _, _, pair, _ in samples], args.out / "attacks" /
                                   f"vision-{method}.jsonl", args)
        for b, (d, i, (obs, _), clean_obs) in enumerate(samples):
            if b in refused:
                print(f"vision {method:7} {d:14} [{i}] attack failed: {refused[b]}", flush=True)
                continue
            rec = recs[b]
            if method == "dlg" and i == 0:
                curves.setdefault(("vision", "dlg"), {})[d] = curve.read(b)
            rows.append({"modality": "vision", "method": method, "defense": d,
                         **dict(zip(("kind", "strength"), kind_and_strength(d))), "sample": i, "mse": rec["mse"],
                         "psnr": round(min(rec["psnr"], 99.0), 2), "ssim": round(rec["ssim"], 4),
                         "label_accuracy": float(rec["label_correct"]),
                         "utility_cosine": round(cosine(dict(obs.gradients), dict(clean_obs.gradients)), 6),
                         "epsilon": _epsilon(d, args), "final_distance": rec["distance"],
                         "gradient_evaluations": rec["gradient_evaluations"], "seconds": round(rec["seconds"], 1)})
            print(f"vision {method:7} {d:14} [{i}] PSNR {rows[-1]['psnr']:.1f} SSIM {rec['ssim']:.3f} label "
                  f"{'ok' if rec['label_correct'] else 'wrong'} cos {rows[-1]['utility_cosine']:.4f} "
                  f"{rec['seconds']:.0f}s", flush=True)
    return rows


def _epsilon(spec: str, args: argparse.Namespace) -> float | str:
    defense = parse_defense(spec)
    if defense is None or not defense.needs_per_example:
        return ""
    return round(dp_epsilon(defense.transforms[0].params[1], sample_rate=args.dp_rate, steps=args.dp_steps), 3)


def plot(rows: list[dict], curves: dict, out: Path) -> list[Path]:
    from vision_dlg.report import save_curves

    paths = []
    for modality, metric in (("text", "token_accuracy"), ("vision", "ssim")):
        for method in sorted({r["method"] for r in rows if r["modality"] == modality}):
            series: dict[str, list[tuple[float, float]]] = {}
            for kind in sorted({r["kind"] for r in rows if r["modality"] == modality and r["kind"] != "none"}):
                pts: dict[float, list[float]] = {}
                for r in rows:
                    if r["modality"] == modality and r["method"] == method and r["kind"] == kind:
                        x = math.log10(r["strength"]) if kind in ("gaussian", "laplace", "dp") else r["strength"]
                        pts.setdefault(x, []).append(float(r[metric]))
                series[kind] = sorted((x, sum(v) / len(v)) for x, v in pts.items())
            paths.append(save_curves(series, out / f"{modality}-{method}-quality.png",
                                     xlabel="strength (log10 scale for noise and dp; fraction for prune; 1 for "
                                            "precision)", ylabel=f"{metric} ({modality}, {method})"))
    for (modality, method), per_defense in curves.items():
        paths.append(save_curves({d: [(e, v) for e, v in h if v > 0] for d, h in per_defense.items()},
                                 out / f"{modality}-{method}-distance.png", xlabel="gradient evaluations",
                                 ylabel=f"gradient distance ({modality}, {method})", log_y=True))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one strength or two per defence kind, one sample, short "
                    "attacks: <= 10 minutes on 2 CPU cores")
    ap.add_argument("--samples", type=int, default=1, help="sentences / images per defence (default: 1)")
    ap.add_argument("--max-evals", type=int, default=None,
                    help="text: gradient evaluations per attack (default: 30 quick, 100 full)")
    ap.add_argument("--modalities", nargs="+", choices=["text", "vision"], default=["text", "vision"])
    ap.add_argument("--methods", nargs="+", choices=["dlg", "span", "default"], default=["dlg", "span", "default"],
                    help="attacks to run: dlg (both modalities), span (text default), default (vision default)")
    ap.add_argument("--defenses", nargs="+", default=None, metavar="SPEC",
                    help="only these defences (e.g. none laplace:1e-2; default: the quick or full list)")
    ap.add_argument("--dp-rate", type=float, default=0.01, help="sampling rate for the epsilon column (default: 0.01)")
    ap.add_argument("--dp-steps", type=int, default=1000, help="training steps for the epsilon column (default: 1000)")
    ap.add_argument("--workers", type=positive_int, default=1,
                    help="attack the samples in N worker processes (same rows as one process; default: 1)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads per worker (default: the cores shared out)")
    ap.add_argument("--ray", metavar="ADDRESS", default=None,
                    help="attack on Ray actors instead (--workers of them): local, auto or a cluster address")
    ap.add_argument("--out", type=Path, default=Path("runs/defense_sweep"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    specs = args.defenses or (QUICK if args.quick else FULL)
    for spec in specs:  # a malformed spec fails here, in one line, not after minutes of attacks
        try:
            parse_defense(None if spec == "none" else spec)
        except NlpDlgError as exc:
            ap.error(str(exc))
    samples = args.samples
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict] = []
    curves: dict = {}
    if "text" in args.modalities:
        rows += text_rows(specs, samples, args.max_evals or (30 if args.quick else 100), args, curves)
    if "vision" in args.modalities:
        rows += vision_rows(specs, samples, QUICK_VISION_STEPS if args.quick else 300, args, curves)
    with (args.out / "sweep.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
    paths = plot(rows, curves, args.out)
    print(f"\n{len(rows)} rows in {args.out / 'sweep.csv'}; plots: {', '.join(p.name for p in paths)}; "
          f"{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
