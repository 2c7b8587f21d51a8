"""Causal-LM leakage on real text: held-out Rotten Tomatoes reviews (`benchmarks/realtext.py`), captured by
`nlp-dlg capture --task causal-lm` in one process and attacked from the files in another (a fresh process per
setting, which reports its own peak RSS), Hungarian pairing inside a batch. One JSON line per (architecture,
batch size, method) to `benchmarks/results/causal.jsonl`.

    .venv/bin/python benchmarks/bench_causal.py --architecture gpt2 --batch-sizes 1 8 [--batches 8 2] \
        [--methods span dlg] [--max-evals 300] [--offset 0] [--lora-rank R] [--max-words 24] [--rounds N]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import realtext

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def attack(folder: str, method: str, max_evals: int, rounds: int | None = None) -> tuple[list[dict], float, float]:
    """In a fresh process: attack every file of ``folder``; the rows, the seconds and this process's peak RSS."""
    from nlp_dlg.causal.config import CausalAttackConfig, PursuitConfig
    from nlp_dlg.causal.runner import CausalLMTask
    from nlp_dlg.cliutil import setup_logging
    from nlp_dlg.engine.config import MatchingConfig
    from nlp_dlg.pipeline import run_attack

    setup_logging(quiet=False)
    pursuit = PursuitConfig() if rounds is None else PursuitConfig(rounds=rounds)
    config = CausalAttackConfig(method=method, log_every=10, pursuit=pursuit,
                                matching=MatchingConfig(distance="cosine", max_evaluations=max_evals))
    started = time.perf_counter()
    run = run_attack(CausalLMTask(config), gradients=folder, out=Path(folder) / f"{method}.jsonl")
    return run.rows, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def score(rows: list[dict], sentences: list[str], batch_size: int) -> dict:
    """Scores of the rows (each batch paired with its own sentences) against the private reviews."""
    from nlp_dlg.causal.model import load_bpe_tokenizer
    from nlp_dlg.causal.task import decode_text
    from nlp_dlg.text.metrics import score_batch, summarize

    tok = load_bpe_tokenizer()
    scored = []
    for b in sorted({r["batch"] for r in rows}):
        group = [r for r in rows if r["batch"] == b]
        refs = [tok(s)["input_ids"] for s in sentences[b * batch_size:(b + 1) * batch_size]]
        scored += score_batch([r["token_ids"] for r in group], [r["reconstruction"] for r in group], refs,
                              [decode_text(tok, ids) for ids in refs], ignore=set(tok.all_special_ids))
    means = summarize([{**s, "seconds": 0.0, "gradient_evaluations": 0} for s in scored])
    return {"token_accuracy": round(means["token_accuracy"], 4), "rouge1": round(means["rouge1"], 4),
            "rouge2": round(means["rouge2"], 4), "exact": sum(bool(s["exact_match"]) for s in scored)}


def tokens_per_batch(sentences: list[str], batch_size: int) -> int:
    """The most tokens in one batch (the span test needs no more than the model's width: 768 for GPT-2)."""
    from nlp_dlg.causal.model import load_bpe_tokenizer

    tok = load_bpe_tokenizer()
    counts = [len(tok(s)["input_ids"]) for s in sentences]
    return max(sum(counts[i:i + batch_size]) for i in range(0, len(counts), batch_size))


def run_setting(args: argparse.Namespace, batch_size: int, batches: int, work: Path) -> None:
    sentences = realtext.reviews(batch_size * batches, start=args.offset, max_words=args.max_words)
    folder = work / f"b{batch_size}"
    (work / f"b{batch_size}.txt").write_text("\n".join(sentences) + "\n")
    lora = ["--lora-rank", str(args.lora_rank)] if args.lora_rank else []
    subprocess.run([sys.executable, "-m", "nlp_dlg.cli", "-q", "capture", "--task", "causal-lm", "--architecture",
                    args.architecture, "--input", str(work / f"b{batch_size}.txt"), "--batch-size", str(batch_size),
                    *lora, "--out", str(folder)], check=True)
    for method in args.methods:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows, seconds, peak = pool.submit(attack, str(folder), method, args.max_evals, args.rounds).result()
        row = {"architecture": args.architecture, "lora_rank": args.lora_rank, "batch_size": batch_size,
               "batches": batches, "method": method,
               "sentences": len(sentences), "data": f"Rotten Tomatoes reviews {args.offset}-"
                                                    f"{args.offset + len(sentences) - 1} (8-{args.max_words} words)",
               "tokens_per_batch": tokens_per_batch(sentences, batch_size),   # the span test needs <= the width
               "attacks_run": sorted({r["method"] for r in rows}),    # span falls back to dlg where it cannot work
               **score(rows, sentences, batch_size), "certified": sum(bool(r.get("certified")) for r in rows),
               "seconds_per_batch": round(seconds / batches, 1), "peak_rss_gib": round(peak, 2),
               "max_evals": args.max_evals, **({"pursuit_rounds": args.rounds} if args.rounds else {})}
        print(append_result(args.out, row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architecture", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batches per size (default: 8 of 1, "
                                                                          "else 1)")
    ap.add_argument("--methods", nargs="+", default=["span"], choices=["span", "dlg"])
    ap.add_argument("--max-evals", type=int, default=300)
    ap.add_argument("--offset", type=int, default=0, help="first review used")
    ap.add_argument("--max-words", type=int, default=24, help="longest review used, in words")
    ap.add_argument("--lora-rank", type=int, default=None, help="the client fine-tunes LoRA adapters of this rank")
    ap.add_argument("--rounds", type=int, default=None, help="the pursuit's order-search rounds (default: its own)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "causal.jsonl")
    args = ap.parse_args()
    batches = args.batches or [8 if b == 1 else 1 for b in args.batch_sizes]
    work = Path(tempfile.mkdtemp(prefix="bench-causal-"))
    for batch_size, count in zip(args.batch_sizes, batches):
        run_setting(args, batch_size, count, work)


if __name__ == "__main__":
    main()
