"""The text plugin: BERT masked-LM victim simulation, DLG attack, decoding and metrics.

Names are imported on first use, so that ``nlp_dlg.text.config`` (the options, plain Python) can be read by a
command line without importing torch or transformers.

Example:
    >>> from nlp_dlg.text import ModelSpec, load_masked_lm, load_tokenizer, model_metadata
    >>> from nlp_dlg.text import capture_gradients, MaskedLMAttack  # doctest: +SKIP
"""

from __future__ import annotations

from nlp_dlg.lazy import lazy_exports

_EXPORTS = {
    "nlp_dlg.text.attack": ("MaskedLMAttack", "Reconstruction", "TextStep"),
    "nlp_dlg.text.config": ("METHODS", "CaptureConfig", "TextAttackConfig"),
    "nlp_dlg.text.data": ("read_sentences",),
    "nlp_dlg.text.metrics": ("format_summary", "pair_batch", "rouge", "score_batch", "summarize", "token_accuracy"),
    "nlp_dlg.text.model": ("ModelSpec", "check_vocab", "load_masked_lm", "load_model_weights", "load_tokenizer",
                           "model_from_metadata", "model_metadata", "weights_checksum"),
    "nlp_dlg.text.plugin": ("MaskedLMPlugin",),
    "nlp_dlg.text.priors": ("MaskedLMPriors", "infer_priors"),
    "nlp_dlg.text.runner": ("MaskedLMTask",),
    "nlp_dlg.text.task": ("TASK", "decode_text", "masked_lm_gradient"),
    "nlp_dlg.text.victim": ("VictimBatch", "capture_gradients", "mask_tokens"),
}
__all__, __getattr__, __dir__ = lazy_exports("nlp_dlg.text", _EXPORTS)
