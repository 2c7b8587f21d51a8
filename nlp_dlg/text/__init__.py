"""The text plugin: BERT masked-LM victim simulation, DLG attack, decoding and metrics.

Example:
    >>> from nlp_dlg.text import ModelSpec, load_masked_lm, load_tokenizer, model_metadata
    >>> from nlp_dlg.text import capture_gradients, MaskedLMAttack  # doctest: +SKIP
"""

from nlp_dlg.text.attack import METHODS, MaskedLMAttack, Reconstruction, TextAttackConfig, TextStep, decode_text
from nlp_dlg.text.data import read_sentences
from nlp_dlg.text.metrics import pair_batch, rouge, score_batch, summarize, token_accuracy
from nlp_dlg.text.model import (
    ModelSpec,
    check_vocab,
    load_masked_lm,
    load_model_weights,
    load_tokenizer,
    model_from_metadata,
    model_metadata,
    weights_checksum,
)
from nlp_dlg.text.plugin import MaskedLMPlugin
from nlp_dlg.text.priors import MaskedLMPriors, infer_priors
from nlp_dlg.text.victim import CaptureConfig, VictimBatch, capture_gradients, mask_tokens, write_observations

__all__ = [
    "METHODS", "CaptureConfig", "MaskedLMAttack", "MaskedLMPlugin", "MaskedLMPriors", "ModelSpec",
    "Reconstruction", "TextAttackConfig", "TextStep", "VictimBatch", "capture_gradients", "check_vocab", "decode_text",
    "infer_priors", "load_masked_lm", "load_model_weights", "load_tokenizer", "mask_tokens", "model_from_metadata",
    "model_metadata", "pair_batch", "read_sentences", "rouge", "score_batch", "summarize",
    "token_accuracy", "weights_checksum", "write_observations",
]
