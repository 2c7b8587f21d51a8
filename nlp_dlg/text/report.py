"""A report a person can look at, per attacked batch (``nlp-dlg attack --report DIR``).

``batch-BBB.png``: the gradient distance (log scale) and the token accuracy against the gradient evaluations, one
point per logged step and one for the final result. The accuracy is against the private text when it is known
(each reconstruction paired with its reference as the scores pair them), else the agreement with the final
reconstruction (said on the axis). ``batch-BBB.html``: the decoded text at every logged step, each token green
where it equals the reference token at its position and red where not (the paper's Table 2, for any run).
``index.html`` links every batch of the folder.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nlp_dlg.text.metrics import pair_batch, token_accuracy

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:3px 8px;"
         "border-bottom:1px solid #ddd;vertical-align:top;text-align:left}.hit{background:#c8f0c8}"
         ".miss{background:#f8c8c8}.special{color:#999}.seq{font-family:monospace;line-height:1.8}")


@dataclass
class Trace:
    """The logged steps of one batch: label, gradient evaluations, distance and decoded ids per step."""

    points: list[tuple[str, int, float, list[list[int]]]] = field(default_factory=list)

    def add(self, label: str, evaluations: int, distance: float, token_ids: Sequence[Sequence[int]]) -> None:
        self.points.append((label, int(evaluations), float(distance), [list(map(int, s)) for s in token_ids]))


def references(final: Sequence[Sequence[int]], truth: Sequence[Sequence[int]] | None,
               special: set[int]) -> tuple[list[list[int]], str]:
    """The reference of each reconstructed sequence: its Hungarian-paired private sequence when the truth is
    known, else the final reconstruction itself; and what the reference is called."""
    if truth is None:
        return [list(s) for s in final], "agreement with the final reconstruction"
    score = np.array([[token_accuracy(p, r, ignore=special) for r in truth] for p in final])
    return [list(truth[j]) for j in pair_batch(score)], "token accuracy"


def write_batch_report(directory: str | Path, batch: int, trace: Trace, tokenizer: Any,
                       truth: Sequence[Sequence[int]] | None = None) -> tuple[Path, Path]:
    """Write ``batch-BBB.png`` and ``batch-BBB.html`` for one batch's ``trace`` (its last point: the final
    result), and refresh ``index.html``. Returns the PNG and HTML paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special = set(tokenizer.all_special_ids)
    refs, measure = references(trace.points[-1][3], truth, special)
    accuracy = [float(np.mean([token_accuracy(s, r, ignore=special) for s, r in zip(ids, refs)]))
                for *_, ids in trace.points]
    png = _plot(directory / f"batch-{batch:03d}.png", batch, trace, accuracy, measure)
    page = directory / f"batch-{batch:03d}.html"
    _atomic_write(page, _page(batch, trace, accuracy, refs, tokenizer, special, png.name,
                              "private text" if truth is not None else "final reconstruction"))
    write_index(directory)
    return png, page


def _plot(path: Path, batch: int, trace: Trace, accuracy: list[float], measure: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [max(e, 1) for _, e, _, _ in trace.points]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.5))
    top.plot(evals, [max(d, 1e-30) for _, _, d, _ in trace.points], marker="o", markersize=3)
    top.set_yscale("log")
    top.set_ylabel("gradient distance")
    top.set_title(f"batch {batch}")
    bottom.plot(evals, accuracy, marker="o", markersize=3, color="tab:green")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel(measure)
    bottom.set_xlabel("gradient evaluations")
    if max(evals) > 10 * min(evals):
        bottom.set_xscale("log")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tokens(ids: Sequence[int], ref: Sequence[int], tokenizer: Any, special: set[int]) -> str:
    pieces = []
    for i, (token, text) in enumerate(zip(ids, tokenizer.convert_ids_to_tokens(list(ids)))):
        expected = ref[i] if i < len(ref) else None
        kind = ("special" if token in special and (expected is None or expected in special)
                else "hit" if expected == token else "miss")
        pieces.append(f'<span class="{kind}">{html.escape(text)}</span>')
    return " ".join(pieces)


def _page(batch: int, trace: Trace, accuracy: list[float], refs: list[list[int]], tokenizer: Any,
          special: set[int], png: str, against: str) -> str:
    rows = []
    for (label, evals, distance, ids), acc in zip(trace.points, accuracy):
        seqs = "<br>".join(f"[{i}] {_tokens(s, r, tokenizer, special)}" for i, (s, r) in enumerate(zip(ids, refs)))
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{evals}</td><td>{distance:.3e}</td><td>{acc:.3f}</td>"
                    f'<td class="seq">{seqs}</td></tr>')
    reference = "<br>".join(f"[{i}] {html.escape(tokenizer.decode(r, skip_special_tokens=True))}"
                            for i, r in enumerate(refs))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>batch {batch}</title><style>{STYLE}</style>"
            f"</head><body><h1>Batch {batch}</h1><p><a href='index.html'>all batches</a></p><img src='{png}'>"
            f"<p>Tokens are <span class='hit'>green</span> where they equal the {against} at their position, "
            f"<span class='miss'>red</span> where not.</p><p><b>{against}:</b><br>{reference}</p>"
            "<table><tr><th>step</th><th>evaluations</th><th>distance</th><th>accuracy</th><th>decoded text</th>"
            f"</tr>{''.join(rows)}</table></body></html>\n")


def write_index(directory: Path) -> Path:
    """``index.html``: every batch page of ``directory`` with its plot."""
    pages = sorted(directory.glob("batch-*.html"))
    items = "".join(f"<h2><a href='{p.name}'>{p.stem}</a></h2><img src='{p.stem}.png' width='500'>" for p in pages)
    index = directory / "index.html"
    _atomic_write(index, f"<!doctype html><html><head><meta charset='utf-8'><title>attack report</title>"
                         f"<style>{STYLE}</style></head><body><h1>Attack report</h1>{items}</body></html>\n")
    return index


def _atomic_write(path: Path, text: str) -> None:
    """Write under a temporary name and rename (worker processes may refresh the index at once)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
