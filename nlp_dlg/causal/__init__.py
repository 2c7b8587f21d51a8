"""The causal-LM task: decoders (GPT-2, LLaMA, any Hugging Face causal LM) fine-tuned on next-token loss.

``nlp_dlg.causal.config`` is plain Python (the command line reads it without torch); the other modules import
torch and transformers: :mod:`~nlp_dlg.causal.model`, :mod:`~nlp_dlg.causal.victim`,
:mod:`~nlp_dlg.causal.analytic` (the exact attack), :mod:`~nlp_dlg.causal.plugin` (the paper's matching),
:mod:`~nlp_dlg.causal.attack` and :mod:`~nlp_dlg.causal.runner` (the task in the pipeline).
"""
