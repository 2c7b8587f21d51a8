"""The text plugin on a tiny BERT (64 wide, 2 layers) with the real bert-base-uncased vocabulary."""

import json

import pytest
import torch
from conftest import SENTENCE

from nlp_dlg.engine import ConfigError, MatchingConfig, ModelMismatchError, gradient_distance
from nlp_dlg.text import (
    MaskedLMAttack,
    TextAttackConfig,
    decode_text,
    infer_priors,
    mask_tokens,
    model_from_metadata,
)


def test_masking_is_80_10_10_never_special_and_seeded():
    ids = torch.randint(1000, 2000, (200, 100))
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    masked, labels = mask_tokens(ids, special, probability=0.15, mask_token_id=103, vocab_size=30522, generator=gen())
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, -1].any()
    assert 0.13 < selected.float().mean() < 0.17
    assert torch.equal(labels[selected], ids[selected])
    frac_mask = (masked[selected] == 103).float().mean()
    frac_same = (masked[selected] == ids[selected]).float().mean()
    assert 0.77 < frac_mask < 0.83 and 0.08 < frac_same < 0.12
    assert torch.equal(masked[~selected], ids[~selected])
    again, _ = mask_tokens(ids, special, probability=0.15, mask_token_id=103, vocab_size=30522, generator=gen())
    assert torch.equal(masked, again)


def test_masking_selects_at_least_one_token_per_sequence():
    ids = torch.full((5, 4), 1500)
    special = torch.tensor([[1, 0, 0, 1]] * 5)
    _, labels = mask_tokens(ids, special, probability=1e-9, mask_token_id=103, vocab_size=30522,
                            generator=torch.Generator().manual_seed(0))
    assert ((labels != -100).sum(1) == 1).all()


def test_priors_length_labels_and_token_set_are_exact(capture, tiny_model, tokenizer):
    obs, truth = capture(["the cat and the other cat sat ."], mlm_probability=0.5, seed=3)[0]
    priors = infer_priors(obs.gradients, tiny_model, batch_size=1)
    assert priors.sequence_length == truth.input_ids.shape[1]
    labelled = truth.labels[truth.labels != -100]
    words, counts = labelled.unique(return_counts=True)
    assert priors.label_ids.tolist() == words.tolist()
    assert priors.label_counts.tolist() == counts.tolist()
    assert priors.num_labelled == len(labelled)
    expected = set(truth.masked_input_ids[0].tolist()) | set(labelled.tolist())
    assert priors.token_set_found and set(priors.token_set.tolist()) == expected


def test_token_set_sees_input_rows_under_a_larger_decoder_side():
    """Pretrained encoders: the tied decoder's part of the word gradient (rows in the span of the labelled
    positions' hidden states) can dwarf the input rows; projected out, the input rows stand alone."""
    from nlp_dlg.text.priors import token_set

    g = torch.Generator().manual_seed(0)
    vocab, hidden, inputs = 2000, 32, [5, 17, 300, 1234]
    hidden_states = torch.randn(2, hidden, generator=g)                        # M = 2 labelled positions
    coefficients = torch.rand(vocab, 2, generator=g) * 1e-3
    coefficients[[7, 8, 9, 10, 11, 12]] = torch.tensor([3.0, -2.0])               # peaked softmax rows
    word = coefficients @ hidden_states
    word[inputs] += 0.05 * torch.randn(len(inputs), hidden, generator=g)       # input side, smaller
    assert word.norm(dim=1)[inputs].max() < word.norm(dim=1)[7]
    tokens, found = token_set(word, max_size=8, num_labelled=2)
    assert found and tokens.tolist() == inputs
    assert token_set(word, max_size=8)[0].tolist() != inputs                   # without the projection: wrong


def test_length_and_label_priors_survive_noise(capture, tiny_model):
    from nlp_dlg.text.priors import label_words, sequence_length

    obs, truth = capture(["the cat and the other cat sat ."], mlm_probability=0.5, seed=3)[0]
    bias = obs.gradients["cls.predictions.bias"]
    labelled = truth.labels[truth.labels != -100]
    noisy = bias + 1e-4 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0))
    assert int((noisy < 0).sum()) > 1000                       # noise turns thousands of entries negative
    words, counts, m = label_words(noisy, max_labels=truth.input_ids.numel())
    assert words.tolist() == labelled.unique().tolist() and m == len(labelled)
    position = obs.gradients["bert.embeddings.position_embeddings.weight"]
    real = position.norm(dim=1)[: truth.input_ids.shape[1]]
    scale = float(real.min()) / (100 * position.shape[1] ** 0.5)     # noise rows at 1% of the weakest real row
    noisy_position = position + scale * torch.randn(position.shape, generator=torch.Generator().manual_seed(1))
    assert sequence_length(noisy_position) == truth.input_ids.shape[1] == sequence_length(position)


def test_gradient_file_metadata_never_holds_the_text_ids_or_masks(capture):
    obs, truth = capture([SENTENCE])[0]
    text = json.dumps(dict(obs.metadata))
    for word in ("quick", "brown", "lazy"):
        assert word not in text
    assert not {"input_ids", "labels", "attention_mask", "text", "mask_seed"} & set(obs.metadata)
    assert set(obs.metadata) >= {"model", "task", "mlm_probability", "loss_reduction", "batch_size", "mode",
                                 "toolkit_version"}
    assert obs.metadata["model"]["checksum"] and obs.metadata["model"]["source"] == "random-init"


def test_train_mode_restores_the_eval_flag(capture, tiny_model, tokenizer, tiny_info):
    from nlp_dlg.text import CaptureConfig, capture_gradients

    pairs = capture_gradients(tiny_model, tokenizer, [SENTENCE], CaptureConfig(train_mode=True),
                              model_info=tiny_info, generator=torch.Generator().manual_seed(0))
    assert pairs[0][0].metadata["mode"] == "train" and not tiny_model.training


def _truth_leaves(plugin, truth):
    x = plugin.embedding[truth.masked_input_ids].clone()
    z = torch.full((1, x.shape[1], len(plugin.occurrences)), -30.0)
    taken = set()
    for j, word in enumerate(plugin.occurrences.tolist()):
        pos = next(p for p in range(x.shape[1]) if truth.labels[0, p] == word and p not in taken)
        taken.add(pos)
        z[0, pos, j] = 30.0
    return {"inputs_embeds": x, "label_logits": z}


def test_ground_truth_has_zero_distance_and_decodes_to_the_sentence(capture, tiny_model, tokenizer):
    obs, truth = capture([SENTENCE], mlm_probability=0.3)[0]
    plugin = MaskedLMAttack(tiny_model, tokenizer).plugin_for(obs)
    leaves = _truth_leaves(plugin, truth)
    params = plugin.matched_parameters()
    grads = torch.autograd.grad(plugin.task_loss(leaves), list(params.values()))
    assert gradient_distance(grads, [obs.gradients[n] for n in params], "cosine").item() < 1e-5
    assert decode_text(tokenizer, plugin.decode(leaves)[0].tolist()) == decode_text(tokenizer, truth.input_ids[0])


def test_decoding_is_invariant_to_the_layernorm_scale_and_shift(capture, tiny_model, tokenizer):
    """The gradients see LayerNorm(word + position): decoding must see the same thing."""
    obs, truth = capture([SENTENCE])[0]
    plugin = MaskedLMAttack(tiny_model, tokenizer).plugin_for(obs)
    leaves = _truth_leaves(plugin, truth)
    emb = tiny_model.bert.embeddings
    extra = emb.position_embeddings.weight[: leaves["inputs_embeds"].shape[1]] + emb.token_type_embeddings.weight[0]
    moved = {**leaves, "inputs_embeds": 3.0 * (leaves["inputs_embeds"] + extra) + 0.7 - extra}
    assert torch.equal(plugin.decode(moved), plugin.decode(leaves))


def test_covering_assignment_decodes_every_token_of_the_set_once_at_least():
    from nlp_dlg.text.plugin import covering_assignment

    dist = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.8, 0.3], [0.9, 0.1, 0.9]])   # rows 0 and 1 both nearest to 0
    every = torch.ones(3, dtype=torch.bool)
    assert covering_assignment(dist, every).tolist() == [0, 2, 1]               # row 1 gives up the least (0.1)
    assert covering_assignment(dist, torch.tensor([True, True, False])).tolist() == [0, 0, 1]   # 2 not asked
    assert covering_assignment(dist[:2], every).tolist() == [0, 0]              # 3 asked of 2 rows: nearest
    assert covering_assignment(dist, torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0, 1]


def test_decoding_shows_every_token_the_gradient_holds(capture, tiny_model, tokenizer):
    """A position whose dummy is nearer a token used elsewhere, while a token of the set shows nowhere, decodes to
    the missing token: each token of the set read off the gradient is some position's input."""
    obs, truth = capture([SENTENCE])[0]
    plugin = MaskedLMAttack(tiny_model, tokenizer).plugin_for(obs)
    leaves = _truth_leaves(plugin, truth)
    ids = truth.masked_input_ids[0].tolist()
    labels = set(plugin.occurrences.tolist())
    q = next(p for p in range(1, len(ids) - 1) if ids.count(ids[p]) == 1 and ids[p] not in labels
             and truth.labels[0, p] < 0)
    w = ids[q - 1] if q > 1 else ids[q + 1]
    x = leaves["inputs_embeds"]
    x[0, q] = 0.65 * plugin.embedding[w] + 0.35 * plugin.embedding[ids[q]]     # nearest: w, shown twice
    options = plugin.first_layer_inputs(plugin.embedding[plugin.candidates].unsqueeze(1).expand(-1, len(ids), -1))
    nearest = plugin.candidates[torch.cdist(plugin.first_layer_inputs(x)[0, q:q + 1], options[:, q]).argmin()]
    assert int(nearest) == w                                                     # the plain nearest token is wrong
    assert decode_text(tokenizer, plugin.decode(leaves)[0].tolist()) == decode_text(tokenizer, truth.input_ids[0])


def test_tied_embedding_weight_is_not_matched(capture, tiny_model, tokenizer):
    obs, _ = capture([SENTENCE])[0]
    names = set(MaskedLMAttack(tiny_model, tokenizer).plugin_for(obs).matched_parameters())
    assert "bert.embeddings.word_embeddings.weight" not in names
    assert "bert.embeddings.position_embeddings.weight" in names and "cls.predictions.bias" in names


def test_dlg_matches_the_embeddings_and_first_layer_unless_told_otherwise(capture, tiny_model, tokenizer):
    obs, _ = capture([SENTENCE])[0]

    def matched(**options):
        return set(MaskedLMAttack(tiny_model, tokenizer, TextAttackConfig(**options)).plugin_for(obs)
                   .matched_parameters())
    every = matched()                                                     # span's matching: every parameter
    first = matched(method="dlg")
    assert first == {n for n in every if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert "bert.embeddings.position_embeddings.weight" in first and "cls.predictions.bias" not in first
    assert matched(method="dlg", use_priors=False) == every == matched(method="dlg", match_layers="all")
    assert matched(method="dlg", match_layers=0) == {n for n in every if n.startswith("bert.embeddings.")}
    with pytest.raises(ConfigError, match="match_layers"):
        TextAttackConfig(match_layers=-1)


def test_text_callbacks_see_decoded_text_and_patience_stops(capture, tiny_model, tokenizer):
    obs, _ = capture([SENTENCE], mlm_probability=1.0)[0]
    steps = []
    config = TextAttackConfig(method="dlg", matching=MatchingConfig(distance="cosine", steps=200), log_every=2,
                              patience=3)
    MaskedLMAttack(tiny_model, tokenizer, config, callbacks=[steps.append]).attack(
        obs, generator=torch.Generator().manual_seed(0))
    assert steps[0].record.step == 0 and all(isinstance(t, str) for t in steps[0].texts)
    assert steps[-1].record.step < 200  # patience stopped it
    assert steps[-1].token_ids.shape == (1, 12)


def test_naive_dlg_matches_over_the_whole_vocabulary_and_lowers_the_distance(capture, tiny_model, tokenizer):
    obs, _ = capture([SENTENCE])[0]
    config = TextAttackConfig(method="dlg", use_priors=False, matching=MatchingConfig(distance="l2", steps=3))
    steps: list = []
    attack = MaskedLMAttack(tiny_model, tokenizer, config, callbacks=[steps.append])
    rec = attack.attack(obs, generator=torch.Generator().manual_seed(0))[0]
    assert rec.steps == 3 and rec.evaluations > 3
    assert len(attack.plugin_for(obs).candidates) == tokenizer.vocab_size        # no token set: every word
    assert rec.distance < 0.8 * steps[0].record.distance    # the matching makes progress (54 -> 32 in 3 steps)


def test_checksum_mismatch_is_refused(tiny_info):
    meta = {**tiny_info, "seed": 1}  # another init than the one the gradient was computed on
    with pytest.raises(ModelMismatchError, match="checksum"):
        model_from_metadata(meta)
    model, _ = model_from_metadata(tiny_info)
    assert model.config.hidden_size == 64


def test_batch_of_two_reconstructs_two_sequences(capture, tiny_model, tokenizer):
    obs, _ = capture(["a short one .", "and another short one ."], batch_size=2)[0]
    config = TextAttackConfig(method="dlg", matching=MatchingConfig(distance="cosine", steps=2))
    recs = MaskedLMAttack(tiny_model, tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(0))
    assert [r.index for r in recs] == [0, 1] and all(r.batch == 0 for r in recs)
    length = infer_priors(obs.gradients, tiny_model, 2).sequence_length
    assert all(len(r.token_ids) == length and r.token_ids[0] == tokenizer.cls_token_id for r in recs)
