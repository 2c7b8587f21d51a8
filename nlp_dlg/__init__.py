"""nlp_dlg: measure how much private training data leaks from shared gradients.

Reproduces *Deep Leakage from Gradients* (Zhu, Liu, Han, NeurIPS 2019). This module stays light:
``import nlp_dlg`` imports neither torch nor transformers. The shared gradient-matching engine lives in
:mod:`nlp_dlg.engine` and the BERT masked-LM plugin in :mod:`nlp_dlg.text`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
