"""Why the first layer cannot place a batch's tokens past a few sentences, and how the second layer's residual
answers to one wrong token on a random-init and on a pretrained encoder: masked-LM gradients of held-out Rotten
Tomatoes reviews, captured in this process, on BERT-base at random init and on the pretrained all-MiniLM-L6-v2.

First layer. ``LayerNorm(e_v + p_t + τ) = Γ·C(e_v + p_t + τ)/σ + β`` (``C`` centres): every first-layer input a
batch's tokens can make, at any position, lies in the span of the K tokens' ``ΓCe_v``, the L positions' ``ΓCp_t``,
``ΓCτ`` and ``β``: at most K + L + 2 dimensions. The layer's weight gradient spans the n inputs it saw. Once n
approaches K + L + 2 the span holds (nearly) every (token, position) pair of the batch's tokens, and the span test
(`position_candidates`, residual below `RESIDUAL_MAX`) accepts a token at positions it never held. Measured: that
bound, the numerical rank of all K·L pairs' inputs, the gradient's span rank, and the candidates per position
beside the true tokens per position.

Second layer. The sentence search (`nlp_dlg.text.analytic`) tries one token at a time against the second layer's
span. For sentences of the batch and inner positions q, q's input token is replaced by another batch token (one
the same position holds in another sentence where there is one): the second-layer residual at q itself, at its
neighbours q ± 1 and at the other positions (medians), and the first two as ratios to the third. A position
whose residual answers to its own token alone can be judged position by position; one whose residual rises with a
wrong neighbour is judged with its neighbours, pairs and not positions. One JSON line per (model, batch size) to
``benchmarks/results/span_limit.jsonl``.

    .venv/bin/python benchmarks/bench_span_limit.py [--models random minilm] [--batch-sizes 4 8 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import realtext
import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent
MAX_WORDS = 14
SUBSTITUTIONS = 64   # (sentence, position) substitutions tried per batch, spread evenly over the batch


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["random", "minilm"], choices=["random", "minilm"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "span_limit.jsonl")
    return ap.parse_args()


def capture(model_name: str, batch_size: int):
    """(model, gradients, the ids the model saw (B, L) ([MASK] where masked), attention mask (B, L)) of one
    masked-LM batch of reviews."""
    from nlp_dlg.text import CaptureConfig, ModelSpec, capture_gradients, load_masked_lm, load_tokenizer, model_metadata
    from nlp_dlg.text.model import default_tokenizer_dir

    spec = ModelSpec(name_or_path=str(default_tokenizer_dir())) if model_name == "minilm" else ModelSpec(seed=0)
    model = load_masked_lm(spec)
    tokenizer = load_tokenizer(str(default_tokenizer_dir()))
    sentences = realtext.reviews(batch_size, max_words=MAX_WORDS)
    obs, truth = capture_gradients(model, tokenizer, sentences, CaptureConfig(batch_size=batch_size),
                                   model_info=model_metadata(model, spec),
                                   generator=torch.Generator().manual_seed(1234))[0]
    return model, obs.gradients, truth.masked_input_ids, truth.attention_mask


def first_layer(model, grads, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """The K + L + 2 bound, the rank of every pair's input, the span's rank and the candidates it lets through."""
    from nlp_dlg.text.analytic import attention_input_span, first_layer_inputs, position_candidates

    b, length = ids.shape
    tokens = ids[mask.bool()].unique()
    span = attention_input_span(grads, model, 0, b * length)
    pairs = torch.cat([first_layer_inputs(model, tokens, p) for p in range(length)]).double()   # (L·K, H)
    sv = torch.linalg.svdvals(pairs)
    candidates = position_candidates(model, span, tokens, length)
    truth = [{int(ids[i, p]) for i in range(b) if mask[i, p]} for p in range(length)]
    return {"live_tokens": int(mask.sum()), "distinct_tokens": len(tokens), "positions": length,
            "pair_bound": len(tokens) + length + 2, "pair_rank": int((sv > sv[0] * 1e-6).sum()),
            "span_rank": span.rank,
            "candidates_per_position": round(sum(map(len, candidates)) / length, 1),
            "true_tokens_per_position": round(sum(map(len, truth)) / length, 1),
            "true_pairs_kept": sum(len(truth[p] & set(candidates[p].tolist())) for p in range(length)),
            "true_pairs": sum(map(len, truth))}


def second_layer(model, grads, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Median second-layer residuals after one wrong input token: at its own position, its neighbours, the rest."""
    from nlp_dlg.text.analytic import _FirstLayer, attention_input_span

    b, length = ids.shape
    span = attention_input_span(grads, model, 1, b * length)
    first = _FirstLayer(model)
    sites = [(i, q) for i in range(b) for q in range(1, int(mask[i].sum()) - 1)]
    sites = sites[:: max(1, len(sites) // SUBSTITUTIONS)][:SUBSTITUTIONS]
    own, near, far = [], [], []
    with torch.no_grad():
        clean = [float(span.residual(first.full(first.inputs(ids[i, : int(mask[i].sum())]))).max())
                 for i in sorted({i for i, _ in sites})]
        for i, q in sites:
            s = ids[i, : int(mask[i].sum())]
            others = [int(ids[j, q]) for j in range(b) if mask[j, q] and int(ids[j, q]) != int(s[q])]
            wrong = s.clone()
            wrong[q] = others[0] if others else int(s[q - 1] if int(s[q - 1]) != int(s[q]) else s[q + 1])
            r = span.residual(first.full(first.inputs(wrong)))
            own.append(float(r[q]))
            near.extend(float(r[p]) for p in (q - 1, q + 1))
            far.extend(float(r[p]) for p in range(len(s)) if abs(p - q) > 1)
    med = statistics.median
    return {"second_layer_rank": span.rank, "substitutions": len(sites),
            "residual_true_sentence_max": max(clean), "residual_wrong_own": med(own),
            "residual_wrong_neighbours": med(near), "residual_wrong_elsewhere": med(far),
            "own_over_elsewhere": round(med(own) / med(far), 1),
            "neighbours_over_elsewhere": round(med(near) / med(far), 1)}


def main() -> None:
    args = parse_args()
    for name in args.models:
        for batch_size in args.batch_sizes:
            started = time.perf_counter()
            model, grads, ids, mask = capture(name, batch_size)
            row = {"model": {"random": "BERT-base random init", "minilm": "all-MiniLM-L6-v2 pretrained"}[name],
                   "task": "masked-lm", "batch_size": batch_size,
                   "data": f"Rotten Tomatoes reviews 0-{batch_size - 1} (8-{MAX_WORDS} words)",
                   **first_layer(model, grads, ids, mask), **second_layer(model, grads, ids, mask)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            append_result(args.out, row)
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items() if k != "data"}, flush=True)


if __name__ == "__main__":
    main()
