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


def test_the_embedding_rows_pin_each_token_used_at_one_position_and_keep_every_true_token(tokenizer):
    from nlp_dlg.classify.analytic import batch_tokens
    from nlp_dlg.text.pinning import narrow_candidates, pin_tokens

    spec = ClassifierSpec(config=TINY)
    model = load_classifier(spec)
    # "the" sits at two positions (free); "a" starts two sentences (one position, pinned); the rest once each
    texts = ["a dull film , the worst .", "a bright gem", "quiet and the moving"]
    [(obs, truth)] = capture_classification(model, tokenizer, texts, [0, 1, 1], batch_size=3,
                                            model_info=model_metadata(model, spec))
    length, tokens = batch_tokens(obs.gradients, model)
    pins = pin_tokens(model, obs.gradients, tokens, length)
    ids, mask = truth.input_ids, truth.attention_mask
    where = {t: {p for b in range(3) for p in range(length) if mask[b, p] and int(ids[b, p]) == t}
             for t in tokens.tolist()}
    for t, p in zip(tokens.tolist(), pins.positions):
        assert p == (min(where[t]) if len(where[t]) == 1 else None), tokenizer.convert_ids_to_tokens(t)
    assert pins.positions[tokens.tolist().index(tokenizer.convert_tokens_to_ids("a"))] == 1
    everywhere = [tokens] * length
    narrowed = narrow_candidates(everywhere, pins)
    assert all(t in narrowed[p].tolist() for t, ps in where.items() for p in ps)
    assert sum(map(len, narrowed)) < sum(map(len, everywhere)) / 2
    # on a noisy gradient the rows pin (almost) nothing, and what they keep still holds every true token
    noisy = {n: g + 1e-2 * g.std() * torch.randn(g.shape, generator=torch.Generator().manual_seed(0))
             for n, g in obs.gradients.items()}
    loose = pin_tokens(model, noisy, tokens, length)
    assert sum(p is not None for p in loose.positions) <= 1
    assert all(t in narrow_candidates(everywhere, loose)[p].tolist() for t, ps in where.items() for p in ps)


def test_a_classification_file_recording_another_tokenizer_is_refused_until_one_is_named(tmp_path, capsys):
    from nlp_dlg.cli import main
    from nlp_dlg.engine.observation import load_observation, save_observation

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["-q", "capture", "--task", "classification", "--model-config", str(cfg), "--text", REVIEW,
                 "--label", "0", "--out", str(tmp_path / "g")]) == 0
    [path] = sorted((tmp_path / "g").glob("*.safetensors"))
    obs = load_observation(path)
    save_observation(type(obs)(dict(obs.gradients), {**obs.metadata, "tokenizer": "/home/someone/evil-tok"}), path)
    capsys.readouterr()
    assert main(["-q", "attack", "--gradients", str(tmp_path / "g"), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "tokenized with '/home/someone/evil-tok': pass --tokenizer" in capsys.readouterr().err


def test_peeling_a_known_sentence_finds_its_label_and_leaves_the_others_gradient(tokenizer):
    from nlp_dlg.classify.analytic import peel_sentence
    from nlp_dlg.classify.victim import classification_gradient
    from nlp_dlg.engine.distance import certificate_distance

    spec = ClassifierSpec(config=TINY)
    model = load_classifier(spec)
    texts = ["a dull film , the worst .", "a bright gem", "quiet and the moving"]
    for labels in ([0, 1, 1], [1, 0, 1]):
        [(obs, truth)] = capture_classification(model, tokenizer, texts, labels, batch_size=3,
                                                model_info=model_metadata(model, spec))
        first = truth.input_ids[0][truth.attention_mask[0].bool()].tolist()
        rest, label = peel_sentence(model, obs.gradients, first, 3, tokenizer.pad_token_id)
        assert label == labels[0]
        others = classification_gradient(model, truth.input_ids[1:], truth.attention_mask[1:], truth.labels[1:])
        assert certificate_distance(others, rest) < 1e-6
