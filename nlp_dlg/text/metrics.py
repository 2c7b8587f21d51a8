"""Scores of reconstructed text against the private ground truth.

Token accuracy (position-wise on token ids, special tokens excluded), ROUGE-1/2/L F-measures from
``rouge-score``, exact match, and Hungarian pairing of reconstructions to references inside a batch
(the order of sequences in a batch is not identifiable from its gradient).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from nlp_dlg.pipeline import Column, Row, format_table


def token_accuracy(predicted: Sequence[int], reference: Sequence[int], *, ignore: Collection[int] = ()) -> float:
    """Fraction of reference positions (ids in ``ignore`` skipped) where ``predicted`` has the same id.

    >>> token_accuracy([101, 5, 6, 102], [101, 5, 7, 102], ignore={101, 102})
    0.5
    """
    positions = [i for i, r in enumerate(reference) if r not in ignore]
    if not positions:
        return 1.0 if not [p for p in predicted if p not in ignore] else 0.0
    hits = sum(1 for i in positions if i < len(predicted) and predicted[i] == reference[i])
    return hits / len(positions)


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge(predicted: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (rouge-score, no stemming)."""
    scores = _scorer().score(reference, predicted)
    return {k: float(v.fmeasure) for k, v in scores.items()}


def pair_batch(score: np.ndarray) -> list[int]:
    """Hungarian pairing: ``pairs[i]`` is the reference index of prediction ``i`` maximising the total
    of ``score[i, j]`` (shape ``(n_pred, n_ref)``, square)."""
    score = np.asarray(score, dtype=float)
    if score.ndim != 2 or score.shape[0] != score.shape[1]:
        raise ValueError(f"score: expected a square matrix, got shape {score.shape}")
    rows, cols = linear_sum_assignment(-score)
    pairs = [0] * len(rows)
    for r, c in zip(rows, cols):
        pairs[int(r)] = int(c)
    return pairs


def score_batch(predicted_ids: Sequence[Sequence[int]], predicted_texts: Sequence[str],
                reference_ids: Sequence[Sequence[int]], reference_texts: Sequence[str],
                *, ignore: Collection[int] = ()) -> list[dict[str, Any]]:
    """Score each prediction against its Hungarian-paired reference.

    Returns one dict per prediction: ``reference``, ``token_accuracy``, ``rouge1``, ``rouge2``,
    ``rougeL``, ``exact_match``.
    """
    if len(predicted_ids) != len(reference_ids):
        raise ValueError(f"expected as many predictions as references, got {len(predicted_ids)} and "
                         f"{len(reference_ids)}")
    acc = np.array([[token_accuracy(p, r, ignore=ignore) for r in reference_ids] for p in predicted_ids])
    r1 = np.array([[rouge(p, r)["rouge1"] for r in reference_texts] for p in predicted_texts])
    pairs = pair_batch(acc + r1)
    out = []
    for i, j in enumerate(pairs):
        scores = rouge(predicted_texts[i], reference_texts[j])
        out.append({"reference": reference_texts[j], "token_accuracy": float(acc[i, j]), **scores,
                    "exact_match": predicted_texts[i] == reference_texts[j]})
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of the numeric scores over rows."""
    keys = ["token_accuracy", "rouge1", "rouge2", "rougeL", "exact_match", "seconds", "gradient_evaluations"]
    return {k: float(np.mean([float(r[k]) for r in rows])) for k in keys if rows and all(k in r for r in rows)}


SUMMARY = (
    Column("batch", lambda r: r["batch"]), Column("idx", lambda r: r["index"]),
    Column("tokacc", lambda r: r["token_accuracy"], ".3f", ".3f"), Column("R1", lambda r: r["rouge1"], ".2f", ".2f"),
    Column("R2", lambda r: r["rouge2"], ".2f", ".2f"), Column("RL", lambda r: r["rougeL"], ".2f", ".2f"),
    Column("exact", lambda r: r["exact_match"], "", ".2f"),
    Column("evals", lambda r: r["gradient_evaluations"], "d", ".0f"),
    Column("sec", lambda r: r["seconds"], ".1f", ".1f"),
    Column("reconstruction", lambda r: r["reconstruction"], align="<"),
)


def format_summary(rows: Sequence[Row]) -> str:
    """A plain-text table of scored rows: one line per sequence, then the means."""
    return format_table(rows, SUMMARY)
