"""Sequence classification on a BERT-family encoder: sentences and labels read off the gradient (span), the
paper's matching (dlg), and the command line."""

from __future__ import annotations

import json

import torch

from nlp_dlg.classify.analytic import recover
from nlp_dlg.classify.model import ClassifierSpec, load_classifier, model_metadata
from nlp_dlg.classify.victim import capture_classification

TINY = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 128}
REVIEW = "a gripping thriller that never lets go of its audience ."


def test_one_sentence_and_its_label_come_back_exactly(tokenizer):
    spec = ClassifierSpec(config=TINY, num_labels=3)
    model = load_classifier(spec)
    for label in (0, 2):
        [(obs, _)] = capture_classification(model, tokenizer, [REVIEW], [label], model_info=model_metadata(model, spec))
        guess = recover(model, tokenizer, obs.gradients, batch_size=1, generator=torch.Generator().manual_seed(0))
        assert tokenizer.decode(guess.sequences[0], skip_special_tokens=True) == REVIEW.replace(" .", ".")
        assert guess.labels == [label] and guess.certified


def test_the_command_line_captures_and_attacks_a_classifier(tmp_path, capsys):
    from nlp_dlg.cli import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    common = ["--task", "classification", "--model-config", str(cfg), "--text", REVIEW]
    assert main(["-q", "capture", *common, "--label", "1", "--out", str(tmp_path / "g")]) == 0
    assert main(["-q", "attack", "--gradients", str(tmp_path / "g"), "--out", str(tmp_path / "r.jsonl")]) == 0
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["label"] == 1 and row["certified"] and row["reconstruction"] == REVIEW.replace(" .", ".")
    assert main(["-q", "attack", *common, "--label", "1", "--method", "dlg", "--max-evals", "3",
                 "--out", str(tmp_path / "d.jsonl")]) == 0
    assert json.loads((tmp_path / "d.jsonl").read_text())["method"] == "dlg"
    capsys.readouterr()
    assert main(["-q", "capture", *common, "--out", str(tmp_path / "x")]) == 2
    assert "expected one --label per sentence" in capsys.readouterr().err
