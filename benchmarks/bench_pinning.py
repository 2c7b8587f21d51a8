"""Where the first attention layer's span test leaves a batch's tokens, and where the embedding rows pin them
(`nlp_dlg/text/pinning.py`): held-out Rotten Tomatoes reviews with their labels through the pretrained
all-MiniLM-L6-v2 encoder with a fresh 2-label head (the classification gradient, captured in this process).
Per batch size: candidate tokens per position after the span test alone and after the embedding rows, how many
tokens sit at one position, how many of those the rows pin to the right one (and the smallest runner-up margin),
and whether every true (token, position) pair is still a candidate. With `--oracle-search`, the second layer's
sentence search (`nlp_dlg.text.analytic.search_sentences`) is also run on the true tokens per position: what the
assembly achieves when the first layer's candidates are perfect. One JSON line per batch size to
`benchmarks/results/pinning.jsonl`.

    .venv/bin/python benchmarks/bench_pinning.py --batch-sizes 4 8 16 [--oracle-search]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import realtext
import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def measure(model, tokenizer, batch_size: int, search: bool) -> dict:
    from nlp_dlg.classify.analytic import batch_tokens
    from nlp_dlg.classify.victim import classification_gradient
    from nlp_dlg.text.analytic import attention_input_span, position_candidates
    from nlp_dlg.text.pinning import _centred_sums, _cosines, narrow_candidates, pin_tokens
    from nlp_dlg.text.priors import parameter_name

    data = realtext.labelled_reviews(batch_size)
    enc = tokenizer([t for t, _ in data], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    grads = classification_gradient(model, ids, mask, torch.tensor([y for _, y in data]))
    started = time.perf_counter()
    length, tokens = batch_tokens(grads, model)
    span = attention_input_span(grads, model, 0, batch_size * length)
    by_span = position_candidates(model, span, tokens, length)
    pins = pin_tokens(model, grads, tokens, length)
    narrowed = narrow_candidates(by_span, pins)
    seconds = time.perf_counter() - started
    where = {t: {p for b in range(batch_size) for p in range(length) if mask[b, p] and int(ids[b, p]) == t}
             for t in tokens.tolist()}
    single = [i for i, t in enumerate(tokens.tolist()) if len(where[t]) == 1]
    cos = _cosines(grads[parameter_name(model, model.bert.embeddings.word_embeddings.weight)].double()[tokens],
                   _centred_sums(model, tokens, length))
    two = cos[single].topk(2, dim=1, largest=False).values
    return {"model": "all-MiniLM-L6-v2 + fresh 2-label head", "batch_size": batch_size,
            "data": f"Rotten Tomatoes reviews 0-{batch_size - 1} (8-24 words)", "tokens": len(tokens),
            "live_tokens": int(mask.sum()), "positions": length, "span_rank": span.rank,
            "candidates_per_position_span": round(sum(map(len, by_span)) / length, 1),
            "candidates_per_position_pinned": round(sum(map(len, narrowed)) / length, 1),
            "true_tokens_per_position": round(sum(len({int(ids[b, p]) for b in range(batch_size) if mask[b, p]})
                                                  for p in range(length)) / length, 1),
            "tokens_at_one_position": len(single),
            "pinned_right": sum(pins.positions[i] == min(where[tokens[i].item()]) for i in single),
            "pinned_wrong": sum(p is not None and p not in where[t] for t, p in zip(tokens.tolist(), pins.positions)),
            "smallest_margin": round(float((two[:, 1] / two[:, 0]).min()), 1),
            "true_pairs_kept": all(t in narrowed[p].tolist() for t, ps in where.items() for p in ps),
            "seconds": round(seconds, 2),
            **(oracle_search(model, tokenizer, grads, ids, mask, length) if search else {})}


def oracle_search(model, tokenizer, grads, ids: torch.Tensor, mask: torch.Tensor, length: int) -> dict:
    """The sentence search given the true tokens per position: certified sentences, exact ones, seconds."""
    from nlp_dlg.text.analytic import attention_input_span, search_sentences

    batch_size = len(ids)
    truth = {tuple(ids[b][mask[b].bool()].tolist()) for b in range(batch_size)}
    options = [torch.tensor(sorted({int(ids[b, p]) for b in range(batch_size) if mask[b, p]})) for p in range(length)]
    started = time.perf_counter()
    span2 = attention_input_span(grads, model, 1, batch_size * length)
    found = search_sentences(model, span2, options, batch_size, cls_id=tokenizer.cls_token_id,
                             sep_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0)).result()
    return {"oracle_search_certified": sum(s.certified for s in found),
            "oracle_search_exact": sum(s.token_ids in truth for s in found),
            "oracle_search_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    from nlp_dlg.classify.model import ClassifierSpec, load_classifier
    from nlp_dlg.text.model import default_tokenizer_dir, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--oracle-search", action="store_true",
                    help="also run the sentence search on the true tokens per position (minutes per batch)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pinning.jsonl")
    args = ap.parse_args()
    model = load_classifier(ClassifierSpec(str(default_tokenizer_dir()), 0, None, 2))
    tokenizer = load_tokenizer()
    for batch_size in args.batch_sizes:
        print(append_result(args.out, measure(model, tokenizer, batch_size, args.oracle_search)), flush=True)


if __name__ == "__main__":
    main()
