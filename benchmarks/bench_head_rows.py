"""What the head's gradient shows of a large causal-LM batch, where the span test cannot work (more tokens than
the model's width). An analysis with the truth at hand, not an attack: it measures the signals a head-based
attack would read, on GPT-2 (random init, tied head) and held-out Rotten Tomatoes reviews.

The head's gradient (times N, the predicted tokens) is ``R_v = Σ_t p_tv o_t − Σ_{t: y_t = v} o_t`` plus, with a
tied head, the input side ``Σ_{t: x_t = v} g_t``: row ``v`` holds the sum of the final states ``o_t`` of every
prefix that predicts ``v``. Measured:

* label counts: ``−R_v·μ / ‖μ‖²`` (``μ``: the mean final state) less its median over the vocabulary, rounded,
  against the true count of ``v`` as a label; ``μ`` from the batch's own states, or from the position-0 states
  of every vocabulary token (what an attacker can compute);
* the next-token test at the true prefixes: how often the true label's row is the nearest (cosine) of all rows;
  and the same with the rows made exact (the true background and input side taken off, ``−Σ_{t: y_t = v} o_t``
  alone): what a per-position test could reach at best, with many states summed in one row;
* rows of labels that occur once: cosine of ``−(R_v − background)`` with the true state, and the input side's
  norm there beside the state's;
* how alike the states of one sentence are (cosine after removing ``μ``).

One JSON line to ``benchmarks/results/head_rows.jsonl``.

    .venv/bin/python benchmarks/bench_head_rows.py [--batch-size 128] [--max-words 14]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import realtext
import torch

from nlp_dlg.results import append_result

HERE = Path(__file__).resolve().parent


def states(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The final states ``o (n, H)`` and next-token probabilities ``p (n, V)`` of every predicting position, and
    the positions ``(b, t)``."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    lengths = mask.sum(1).tolist()
    where = [(b, t) for b in range(len(lengths)) for t in range(lengths[b] - 1)]
    o, p = out.hidden_states[-1].double(), out.logits.double().softmax(-1)
    return torch.stack([o[b, t] for b, t in where]), torch.stack([p[b, t] for b, t in where]), where


def first_states(model, vocab: int, chunk: int = 1024) -> torch.Tensor:
    """The final state of every token alone at position 0 ``(V, H)``."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.arange(s, min(vocab, s + chunk))[:, None],
                                output_hidden_states=True).hidden_states[-1][:, 0]
                          for s in range(0, vocab, chunk)]).double()


def counts_exact(rows: torch.Tensor, mu: torch.Tensor, counts: torch.Tensor) -> float:
    """Share of the labels' rows whose count ``round(−R_v·μ/‖μ‖² − median)`` is right."""
    k = -(rows @ mu) / (mu @ mu)
    k = (k - k.median()).round()
    present = counts > 0
    return round(float((k[present] == counts[present]).double().mean()), 4)


def analyse(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    from nlp_dlg.causal.task import causal_lm_gradient

    grads = causal_lm_gradient(model, ids, mask)
    head = model.get_output_embeddings()
    name = next(n for n, p in model.named_parameters() if p is head.weight)
    o, p, where = states(model, ids, mask)
    labels = torch.tensor([int(ids[b, t + 1]) for b, t in where])
    vocab = head.weight.shape[0]
    rows = len(where) * grads[name].double()                                          # R (V, H)
    onehot = torch.zeros(vocab, len(where), dtype=torch.double)
    onehot[labels, torch.arange(len(where))] = 1
    background, counts = p.T @ o, onehot.sum(1)
    input_side = rows - (background - onehot @ o)
    mu = o.mean(0)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-30)
    nearest = (-(o / o.norm(dim=1, keepdim=True)) @ unit.T).argmax(1)
    exact = onehot @ o
    nearest_exact = ((o / o.norm(dim=1, keepdim=True)) @ (exact / exact.norm(dim=1, keepdim=True).clamp(min=1e-30)).T
                     ).argmax(1)
    once = (counts == 1).nonzero().flatten()
    state_of = {int(v): o[int((labels == v).nonzero()[0])] for v in once}
    cos_once = [float(torch.nn.functional.cosine_similarity(-(rows[v] - background[v]), state_of[int(v)], dim=0))
                for v in once]
    eps = o - torch.outer(o @ mu / (mu @ mu), mu)
    eps = eps / eps.norm(dim=1, keepdim=True)
    index = {bt: i for i, bt in enumerate(where)}
    neighbours = [float(eps[i] @ eps[index[(b, t + 1)]]) for (b, t), i in index.items() if (b, t + 1) in index]
    return {"tokens": int(mask.sum()), "predicted": len(where), "distinct_labels": int((counts > 0).sum()),
            "labels_once": len(once), "tied_head": head.weight is model.get_input_embeddings().weight,
            "counts_exact_batch_mean": counts_exact(rows, mu, counts),
            "counts_exact_vocab_mean": counts_exact(rows, first_states(model, vocab).mean(0), counts),
            "next_token_nearest_row": round(float((nearest == labels).double().mean()), 4),
            "next_token_nearest_exact_row": round(float((nearest_exact == labels).double().mean()), 4),
            "once_cosine_median": round(statistics.median(cos_once), 4),
            "once_cosine_p05": round(float(torch.tensor(cos_once).quantile(0.05)), 4),
            "once_input_side_norm": round(float(input_side[once].norm(dim=1).median()), 2),
            "state_norm": round(float(o.norm(dim=1).median()), 2),
            "neighbour_state_cosine": round(statistics.mean(neighbours), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architecture", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-words", type=int, default=14)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "head_rows.jsonl")
    args = ap.parse_args()
    from nlp_dlg.causal.model import CausalSpec, load_bpe_tokenizer, load_causal_lm

    torch.set_num_threads(2)
    tok = load_bpe_tokenizer()
    model = load_causal_lm(CausalSpec(args.architecture), tok)
    sentences = realtext.reviews(args.batch_size, max_words=args.max_words)
    enc = tok(sentences, padding=True, return_tensors="pt")
    started = time.perf_counter()
    row = {"architecture": args.architecture, "batch_size": args.batch_size,
           "data": f"Rotten Tomatoes reviews 0-{args.batch_size - 1} (8-{args.max_words} words)",
           **analyse(model, enc["input_ids"], enc["attention_mask"]),
           "seconds": round(time.perf_counter() - started, 1)}
    print(append_result(args.out, row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
