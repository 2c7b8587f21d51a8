"""Where the sentence search's descents lead: from a batch's true sentences with k tokens wrong, and from random
starts, on masked-LM gradients of held-out Rotten Tomatoes reviews (captured in this process, as
`bench_span_limit.py` does).

Each start is a true sentence of the batch with k inner tokens replaced by other options of the search at their
positions (drawn at random), or, for ``random``, every inner token drawn at random from its options. From each,
the search's four polishers of `nlp_dlg.text.analytic` run: `_descend` undamped and damped (each position judged
by its own second-layer residual), `_local_search` (single and neighbour-pair moves judged by the sentence's
residual) and `_iterated_search` (the local search with perturbations). Counted: how many end on the true
sentence (for random starts: on any true sentence of that length), and the mean seconds per start. One JSON line
per (model, batch size, start) to ``benchmarks/results/basin.jsonl``.

    .venv/bin/python benchmarks/bench_basin.py [--models minilm random] [--batch-sizes 8] [--wrong 1 3 5]
        [--trials 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_span_limit import MAX_WORDS, capture

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent
POLISHERS = ("undamped", "damped", "local", "iterated")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm"], choices=["random", "minilm"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--wrong", type=int, nargs="+", default=[1, 3, 5], help="wrong tokens per start (default: 1 3 5)")
    ap.add_argument("--trials", type=int, default=2, help="starts per sentence and start kind (default: 2)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "basin.jsonl")
    return ap.parse_args()


def search_options(model, grads, ids: torch.Tensor, mask: torch.Tensor):
    """(first layer, second span, per length of the batch its options and their `_Options`, as `_SentenceSearch`
    builds them)."""
    from nlp_dlg.text import analytic as an

    b, length = ids.shape
    span1 = an.attention_input_span(grads, model, 0, b * length)
    candidates = an.position_candidates(model, span1, ids[mask.bool()].unique(), length)
    span2 = an.attention_input_span(grads, model, 1, b * length)
    with torch.enable_grad():
        kept, _ = an._kept_candidates(model, span2, candidates, b, torch.Generator().manual_seed(0))
    cls_id, sep_id = int(ids[0, 0]), int(ids[0, int(mask[0].sum()) - 1])
    search = an._SentenceSearch(model, span2, kept, b, cls_id=cls_id, sep_id=sep_id, starts=8, max_sweeps=12,
                                generator=torch.Generator().manual_seed(0), damped=False)
    return search.first, span2, {n: search.searches[n] for n in sorted({int(m) for m in mask.sum(1)})}


def options_per_position(per_length) -> float:
    """Mean options per inner position, over the lengths' searches."""
    inner = [len(o) for options, _ in per_length.values() for o in options[1:-1]]
    return round(sum(inner) / max(len(inner), 1), 1)


def polish(name: str, first, span2, start: torch.Tensor, flat, generator: torch.Generator) -> torch.Tensor:
    from nlp_dlg.text import analytic as an

    if name in ("undamped", "damped"):
        return an._descend(first, span2, start, flat, 12, damped=name == "damped")
    if name == "local":
        return an._local_search(first, span2, start, flat, max_moves=3 * len(start))[0]
    return an._iterated_search(first, span2, start, flat, generator)[0]


def starts_for(wrong: int | None, truth: torch.Tensor, options, generator: torch.Generator) -> torch.Tensor:
    """``truth`` with ``wrong`` inner tokens replaced by other options, or (``None``) a random sentence."""
    start = truth.clone()
    inner = torch.arange(1, len(truth) - 1)
    chosen = inner if wrong is None else inner[torch.randperm(len(inner), generator=generator)[:wrong]]
    for p in chosen.tolist():
        pool = options[p] if wrong is None else options[p][options[p] != truth[p]]
        if len(pool):
            start[p] = pool[int(torch.randint(len(pool), (1,), generator=generator))]
    return start


def measure(first, span2, per_length, ids, mask, wrong: int | None, trials: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    back = dict.fromkeys(POLISHERS, 0)
    seconds = dict.fromkeys(POLISHERS, 0.0)
    starts = 0
    for i in range(len(ids)):
        n = int(mask[i].sum())
        options, flat = per_length[n]
        truths = [ids[j, :n] for j in range(len(ids)) if int(mask[j].sum()) == n] if wrong is None else [ids[i, :n]]
        for _ in range(trials):
            start = starts_for(wrong, ids[i, :n], options, generator)
            starts += 1
            for name in POLISHERS:
                began = time.perf_counter()
                end = polish(name, first, span2, start, flat, generator)
                seconds[name] += time.perf_counter() - began
                back[name] += any(torch.equal(end, t) for t in truths)
    return {"starts": starts, **{f"{k}_back": back[k] for k in POLISHERS},
            **{f"{k}_seconds": round(seconds[k] / starts, 2) for k in POLISHERS}}


def main() -> None:
    args = parse_args()
    for name in args.models:
        for batch_size in args.batch_sizes:
            model, grads, ids, mask = capture(name, batch_size)
            with torch.no_grad():
                first, span2, per_length = search_options(model, grads, ids, mask)
                for wrong in [*args.wrong, None]:
                    row = {"model": {"random": "BERT-base random init", "minilm": "all-MiniLM-L6-v2 pretrained"}[name],
                           "task": "masked-lm", "batch_size": batch_size,
                           "data": f"Rotten Tomatoes reviews 0-{batch_size - 1} (8-{MAX_WORDS} words)",
                           "start": "random" if wrong is None else f"truth, {wrong} wrong",
                           "options_per_position": options_per_position(per_length),
                           "torch_threads": torch.get_num_threads(),
                           **measure(first, span2, per_length, ids, mask, wrong, args.trials)}
                    append_result(args.out, row)
                    print({k: v for k, v in row.items() if k not in ("data", "task")}, flush=True)


if __name__ == "__main__":
    main()
