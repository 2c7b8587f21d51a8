"""Sequence classification on a BERT-family encoder (BERT, MiniLM): the task fine-tuning on labelled text.

``nlp_dlg.classify.model`` builds or loads the classifier, ``victim`` captures its gradient, ``analytic`` reads the
text and the labels back, ``runner`` is the task in the pipeline.
"""
