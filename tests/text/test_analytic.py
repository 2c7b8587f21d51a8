"""The analytic leakage steps on a small random-init BERT (128 wide, 3 layers: the second layer must
not be the last, whose query gradient vanishes off the labelled positions): spans, candidates, batch
assembly, label placement, and the ``span`` attack with its fallback to gradient matching."""

from __future__ import annotations

import logging

import pytest
import torch

from nlp_dlg.engine import MatchingConfig
from nlp_dlg.text import MaskedLMAttack, TextAttackConfig, decode_text, infer_priors
from nlp_dlg.text.analytic import (
    SpanUnavailable,
    assemble_batch,
    attention_input_span,
    length_counts,
    pair_filter,
    place_labels,
    position_candidates,
)

PAIR = ["the cat sat on the mat .", "a dog ran far away ."]
SMALL = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 256}


@pytest.fixture(scope="module")
def small():
    from nlp_dlg.text import ModelSpec, load_masked_lm, model_metadata

    spec = ModelSpec(seed=0, config=dict(SMALL))
    model = load_masked_lm(spec)
    return model, model_metadata(model, spec)


@pytest.fixture
def capture(small, tokenizer):
    from nlp_dlg.text import CaptureConfig, capture_gradients

    def run(sentences, *, mlm_probability=0.15, batch_size=1, seed=0, train_mode=False):
        config = CaptureConfig(batch_size=batch_size, mlm_probability=mlm_probability, train_mode=train_mode)
        return capture_gradients(small[0], tokenizer, sentences, config, model_info=small[1],
                                 generator=torch.Generator().manual_seed(seed))
    return run


@pytest.fixture
def tiny_model(small):
    return small[0]


def test_first_layer_span_holds_every_input_and_rejects_others(capture, tiny_model, tokenizer):
    obs, truth = capture(["the quick brown fox jumps ."])[0]
    ids = truth.masked_input_ids[0]
    span = attention_input_span(obs.gradients, tiny_model, 0, max_rank=len(ids))
    # one sequence: every (token, position) input is distinct, so the rank is the sequence length
    assert span.rank == len(ids)
    priors = infer_priors(obs.gradients, tiny_model, 1)
    candidates = position_candidates(tiny_model, span, torch.arange(tokenizer.vocab_size), len(ids))
    for p, cand in enumerate(candidates):
        assert int(cand[0]) == int(ids[p])      # the true token fits best, out of the whole vocabulary
        assert len(cand) == 1                    # and alone: one sentence has no ambiguity here
    assert set(ids.tolist()) <= set(priors.token_set.tolist())


def test_labels_are_placed_exactly_from_the_head_gradient(capture, tiny_model):
    obs, truth = capture(PAIR, batch_size=2, mlm_probability=0.3, seed=3)[0]
    priors = infer_priors(obs.gradients, tiny_model, 2)
    labels, misfit = place_labels(tiny_model, obs.gradients, truth.masked_input_ids, truth.attention_mask, priors)
    assert torch.equal(labels, truth.labels)
    assert misfit < 1e-3


def test_wrong_input_gives_a_large_label_misfit(capture, tiny_model):
    obs, truth = capture(PAIR[:1], mlm_probability=0.3, seed=3)[0]
    priors = infer_priors(obs.gradients, tiny_model, 1)
    wrong = truth.masked_input_ids.clone()
    wrong[0, 1:-1] = wrong[0, 1:-1].flip(0)
    _, misfit = place_labels(tiny_model, obs.gradients, wrong, truth.attention_mask, priors)
    assert misfit > 1e-2


def _pair_batch(capture, model):
    """The PAIR batch's truth, second-layer span and first-layer candidates per position."""
    obs, truth = capture(PAIR, batch_size=2, seed=1)[0]
    priors = infer_priors(obs.gradients, model, 2)
    length = priors.sequence_length
    span1 = attention_input_span(obs.gradients, model, 0, 2 * length)
    span2 = attention_input_span(obs.gradients, model, 1, 2 * length)
    return truth, span2, position_candidates(model, span1, priors.token_set, length)


def test_batch_of_two_assembles_into_certified_sentences(capture, tiny_model, tokenizer):
    truth, span2, candidates = _pair_batch(capture, tiny_model)
    found = assemble_batch(tiny_model, span2, candidates, 2, cls_id=tokenizer.cls_token_id,
                           sep_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0))
    assert all(s.certified for s in found)
    expected = {tuple(row[m.bool()].tolist()) for row, m in zip(truth.masked_input_ids, truth.attention_mask)}
    assert {s.token_ids for s in found} == expected


def test_pair_filter_keeps_every_token_at_its_position(capture, tiny_model):
    truth, span2, candidates = _pair_batch(capture, tiny_model)
    kept = pair_filter(tiny_model, span2, candidates, 2, generator=torch.Generator().manual_seed(0))
    for row, mask in zip(truth.masked_input_ids, truth.attention_mask):
        for p in range(int(mask.sum())):
            assert int(row[p]) in kept[p].tolist()
    assert sum(len(k) for k in kept) <= sum(len(c) for c in candidates)


def test_pair_filter_keeps_every_candidate_in_order_when_the_second_layer_does_not_separate(capture, tiny_model):
    from nlp_dlg.text.analytic import Span

    _, span2, candidates = _pair_batch(capture, tiny_model)
    hidden = span2.basis.shape[0]
    everything = Span(torch.eye(hidden, dtype=torch.float64), span2.singular_values)   # every pair fits alike
    kept = pair_filter(tiny_model, everything, candidates, 2, generator=torch.Generator().manual_seed(0))
    assert [k.tolist() for k in kept] == [c.tolist() for c in candidates]


def test_length_counts_solves_the_lengths_when_unique():
    # 8 sentences of lengths {28, 27, 24, 21, 18}, 196 tokens in all: 27 x3, 24 x2 is the only fit
    assert length_counts([28, 27, 24, 21, 18], 8, 196) == {28: 1, 27: 3, 24: 2, 21: 1, 18: 1}
    assert length_counts([10, 8], 2, 18) == {10: 1, 8: 1}
    assert length_counts([10, 8, 6], 5, 10 + 8 + 6 + 16) is None       # 10+6 and 8+8: ambiguous
    assert length_counts([10, 8, 6], 2, 24) is None                    # more lengths than sentences


def test_span_is_unavailable_when_noise_fills_the_rank(capture, tiny_model):
    obs, _ = capture(["the quick brown fox jumps ."])[0]
    noisy = dict(obs.gradients)
    for name in list(noisy):
        if ".layer.0.attention.self." in name:
            noise = torch.randn(noisy[name].shape, generator=torch.Generator().manual_seed(0))
            noisy[name] = noisy[name] + 1e-2 * noise
    with pytest.raises(SpanUnavailable, match="noise fills the rank"):
        attention_input_span(noisy, tiny_model, 0, max_rank=8)
    missing = {k: v for k, v in obs.gradients.items() if ".layer.0.attention.self.query" not in k}
    with pytest.raises(SpanUnavailable, match="lacks"):
        attention_input_span(missing, tiny_model, 0, max_rank=8)


def test_span_attack_certifies_a_batch_without_gradient_matching(capture, tiny_model, tokenizer):
    obs, truth = capture(PAIR, batch_size=2, seed=1)[0]
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=5))
    recs = MaskedLMAttack(tiny_model, tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(0))
    assert all(r.certified and r.evaluations == 0 for r in recs)
    assert {r.reconstruction for r in recs} == {decode_text(tokenizer, row.tolist()) for row in truth.input_ids}
    assert max(r.distance for r in recs) < 1e-4   # the reconstruction's own gradient matches the observed one


def test_span_attack_falls_back_to_matching_in_train_mode(capture, tiny_model, tokenizer, caplog):
    assert tiny_model.config.hidden_dropout_prob > 0
    obs, _ = capture(PAIR[:1], train_mode=True)[0]
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=5))
    with caplog.at_level(logging.WARNING):
        recs = MaskedLMAttack(tiny_model, tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(0))
    assert not recs[0].certified and recs[0].evaluations > 0
    assert "gradient matching" in caplog.text
    assert recs[0].reconstruction  # never an empty string


def test_one_inexact_sentence_comes_back_from_the_nearest_tokens(small, tokenizer, caplog):
    """bf16 rounding leaves no exact span (no candidate within 1e-3 at some positions), but with the rank known
    from the length prior the right token is still the nearest at every position."""
    from nlp_dlg.text import CaptureConfig, capture_gradients
    from nlp_dlg.text.analytic import nearest_tokens

    model, info = small
    config = CaptureConfig(mlm_probability=0.3, defense="bf16")
    obs, truth = capture_gradients(model, tokenizer, ["the quick brown fox jumps over the lazy dog ."], config,
                                   model_info=info, generator=torch.Generator().manual_seed(2),
                                   defense_generator=torch.Generator().manual_seed(0))[0]
    priors = infer_priors(obs.gradients, model, 1)
    length = priors.sequence_length
    exact = position_candidates(model, attention_input_span(obs.gradients, model, 0, length), priors.token_set, length)
    assert any(len(c) == 0 for c in exact)    # no token within the exact threshold at some positions
    span = attention_input_span(obs.gradients, model, 0, length, rank=length)
    ids, margin = nearest_tokens(model, span, priors.token_set, length)
    # the attack sets [CLS] and [SEP] at the ends itself
    assert ids[1:-1].tolist() == truth.masked_input_ids[0, 1:-1].tolist() and bool((margin[1:-1] > 1).all())
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=5))
    with caplog.at_level(logging.INFO):
        rec = MaskedLMAttack(model, tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(0))[0]
    assert "nearest token" in caplog.text and rec.reconstruction


def test_span_method_refuses_the_no_priors_switch():
    from nlp_dlg.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="method 'dlg'"):
        TextAttackConfig(method="span", use_priors=False)
    assert TextAttackConfig(method="dlg", use_priors=False).method == "dlg"


def test_checkpoint_without_mlm_head_gets_a_reproducible_head(tmp_path, caplog):
    from transformers import BertConfig, BertModel

    from nlp_dlg.text import ModelSpec, load_masked_lm, weights_checksum

    torch.manual_seed(0)
    BertModel(BertConfig(**SMALL), add_pooling_layer=True).save_pretrained(tmp_path)  # an encoder only
    with caplog.at_level(logging.WARNING):
        first = load_masked_lm(ModelSpec(name_or_path=str(tmp_path)))
    assert "no masked-LM head" in caplog.text
    second = load_masked_lm(ModelSpec(name_or_path=str(tmp_path)))
    assert weights_checksum(first) == weights_checksum(second)   # victim and attacker rebuild the same head
    assert first.cls.predictions.decoder.weight is first.bert.embeddings.word_embeddings.weight


def test_matching_holds_certified_sentences_fixed_and_respects_the_padding(capture, tiny_model, tokenizer):
    """A partly certified guess: the certified sentence keeps its tokens whatever the leaves hold, the
    padded positions of the shorter one are not attended, carry no label and decode as [PAD]."""
    from nlp_dlg.text.plugin import MaskedLMPlugin

    obs, truth = capture(["the cat sat on the mat .", "a dog ran ."], batch_size=2, seed=1)[0]
    priors = infer_priors(obs.gradients, tiny_model, 2)
    mask = truth.attention_mask
    assert int(mask[1].sum()) < mask.shape[1]                     # the second sentence is padded
    plugin = MaskedLMPlugin(tiny_model, priors, 2, boundary=(tokenizer.cls_token_id, None),
                            initial_ids=truth.masked_input_ids, attention_mask=mask,
                            frozen_rows=torch.tensor([True, False]), pad_id=tokenizer.pad_token_id)
    leaves = plugin.init_leaves(torch.Generator().manual_seed(0))
    leaves["inputs_embeds"] = leaves["inputs_embeds"] + torch.randn(leaves["inputs_embeds"].shape)
    embeds = leaves["inputs_embeds"].requires_grad_(True)
    (grad,) = torch.autograd.grad(plugin.task_loss(leaves), embeds)
    assert float(grad[0].abs().max()) == 0.0                      # the certified sentence is not optimised
    assert float(grad[1][~mask[1].bool()].abs().max()) == 0.0     # nor the padding
    ids = plugin.decode({k: v.detach() for k, v in leaves.items()})
    words = set(priors.label_ids.tolist())
    assert all(int(a) == int(b) or int(b) in words for a, b in zip(truth.masked_input_ids[0], ids[0]))  # kept, or
    # a label word where the (here random) label logits place one
    assert bool((ids[1][~mask[1].bool()] == tokenizer.pad_token_id).all())
    where = plugin.label_positions(leaves["label_logits"].detach())
    assert float(where[1][~mask[1].bool()].max()) == 0.0          # no label on padding


def test_labels_of_known_sentences_without_the_rest_of_the_batch(capture, tiny_model):
    """Only the first sentence is known: its labelled positions and words still come out exactly, where the
    whole-batch solution given a wrong second sentence misplaces them."""
    from nlp_dlg.text.analytic import label_known_sentences

    obs, truth = capture(PAIR, batch_size=2, mlm_probability=0.3, seed=3)[0]
    priors = infer_priors(obs.gradients, tiny_model, 2)
    known = truth.labels[0] != -100
    assert bool(known.any()) and bool((truth.labels[1] != -100).any())   # both sentences carry labels
    labels, misfit = label_known_sentences(tiny_model, obs.gradients, truth.masked_input_ids[:1],
                                           truth.attention_mask[:1], priors)
    assert torch.equal(labels[0], truth.labels[0]) and misfit < 1e-3
    wrong = truth.masked_input_ids.clone()
    wrong[1, 1:int(truth.attention_mask[1].sum()) - 1] = wrong[1, 1:int(truth.attention_mask[1].sum()) - 1].flip(0)
    whole, _ = place_labels(tiny_model, obs.gradients, wrong, truth.attention_mask, priors)
    assert not torch.equal(whole[0], truth.labels[0])


def test_peeling_a_certified_sentence_leaves_the_others_gradient(capture, tiny_model, tokenizer):
    """The batch gradient less the certified sentence's share, rescaled, is the other sentence's own gradient."""
    from nlp_dlg.text.attack import AnalyticGuess
    from nlp_dlg.text.task import masked_lm_gradient

    obs, truth = capture(PAIR, batch_size=2, mlm_probability=0.3, seed=3)[0]
    priors = infer_priors(obs.gradients, tiny_model, 2)
    ids = torch.where(truth.labels != -100, truth.labels, truth.masked_input_ids)
    guess = AnalyticGuess(ids, truth.masked_input_ids, truth.attention_mask, truth.labels,
                          torch.tensor([True, False]), False, 0.5, False)
    from nlp_dlg.engine import GradientObservation

    # as a FedAvg delta (K = 1, η = 0.1) already converted: the peeled file must not be converted again
    update = {"kind": "weight-delta", "local_steps": 1, "local_lr": 0.1}
    obs = GradientObservation(obs.gradients, {**obs.metadata, "update": update})
    rest = MaskedLMAttack(tiny_model, tokenizer)._peel(obs, guess, priors)
    assert "update" not in rest.metadata
    alone = masked_lm_gradient(tiny_model, truth.masked_input_ids[1:], truth.attention_mask[1:], truth.labels[1:])
    assert rest.metadata["batch_size"] == 1
    scale = float(torch.cat([g.flatten() for g in alone.values()]).norm())
    for name, g in rest.gradients.items():   # float32 rounding; the key bias's gradient is zero up to it
        assert float((g - alone[name]).norm()) <= 1e-4 * float(alone[name].norm()) + 1e-7 * scale, name
    # what only the peeled sentence touched is exactly zero: the priors are the other sentence's alone
    peeled, own = infer_priors(rest.gradients, tiny_model, 1), infer_priors(alone, tiny_model, 1)
    assert peeled.sequence_length == own.sequence_length == int(truth.attention_mask[1].sum())
    assert peeled.label_ids.tolist() == own.label_ids.tolist() and peeled.num_labelled == own.num_labelled


def test_a_sign_flipped_gradient_keeps_the_span_sentences_instead_of_peeling_everything(capture, small, tokenizer):
    """Every sentence fits the spans but the certificate fails (a FedAvg delta read as a gradient: the sign and
    scale are off): the sentences come back, not certified; before, all were peeled and a batch of 0 crashed."""
    from nlp_dlg.engine import GradientObservation

    obs, truth = capture(PAIR, batch_size=2)[0]
    flipped = GradientObservation({n: -0.01 * g for n, g in obs.gradients.items()}, obs.metadata)
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=5))
    recs = MaskedLMAttack(small[0], tokenizer, config).attack(flipped, generator=torch.Generator().manual_seed(0))
    assert len(recs) == 2 and not any(r.certified for r in recs)
    inputs = {tuple(row.tolist()) for row in truth.masked_input_ids}
    # the unmasked tokens are the sentences' own: each reconstruction agrees with one input outside the labels
    for rec in recs:
        assert any(sum(a == b for a, b in zip(rec.token_ids, row)) >= len(row) - 3 for row in inputs)


def test_ctrl_c_in_the_sentence_search_keeps_the_sentences_found_so_far(capture, small, tokenizer, monkeypatch):
    """The span phase's best candidate survives an interrupt: the sentences assembled before it, reported
    interrupted, and no gradient matching after it."""
    from nlp_dlg.text import analytic

    obs, truth = capture(PAIR, batch_size=2)[0]
    original = analytic._SentenceSearch._keep

    def interrupted_after_one_sentence(self, ids, residual, length):
        if self.found:
            raise KeyboardInterrupt
        return original(self, ids, residual, length)

    monkeypatch.setattr(analytic._SentenceSearch, "_keep", interrupted_after_one_sentence)
    config = TextAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=5))
    recs = MaskedLMAttack(small[0], tokenizer, config).attack(obs, generator=torch.Generator().manual_seed(0))
    assert all(r.interrupted and r.evaluations == 0 for r in recs)
    references = {decode_text(tokenizer, row.tolist()) for row in truth.input_ids}
    assert any(r.reconstruction in references for r in recs)        # the sentence found before Ctrl-C


def test_options_projected_once_give_the_layer_output_of_each_substituted_sentence(capture, tiny_model):
    from nlp_dlg.text.analytic import _FirstLayer, _Options

    truth, _, candidates = _pair_batch(capture, tiny_model)
    first = _FirstLayer(tiny_model)
    ids = truth.masked_input_ids[0][truth.attention_mask[0].bool()]
    options = _Options.of(first, [c[:3] for c in candidates[:len(ids)]])
    with torch.no_grad():
        outputs = options.outputs(first, ids)                                             # (N, H)
        for n in range(0, len(options.ids), 5):
            changed = ids.clone()
            changed[options.positions[n]] = options.ids[n]
            expected = first.full_batch(first.inputs(changed)[None])[0, options.positions[n]]
            torch.testing.assert_close(outputs[n], expected, rtol=1e-4, atol=1e-5)
        # a mixture's queries, keys and values are the mixture of its options' (the projections are affine)
        weights = torch.rand(len(options.ids), generator=torch.Generator().manual_seed(0))
        mix = (weights / weights.sum())[None, None] @ torch.cat([options.inputs, *(t.flatten(1) for t in
                                                                                  options.projected)], -1)
        x, *projected = mix.chunk(4, -1)                                                  # (1, 1, H) each
        torch.testing.assert_close(first.full_batch(x, tuple(projected)), first.full_batch(x), rtol=1e-4, atol=1e-5)


class _Identity:
    """A stand-in for the second layer's span whose residuals are what it is given."""

    @staticmethod
    def residual(x):
        return x


@pytest.mark.parametrize("damped", [True, False])
def test_a_damped_descent_sweep_moves_the_half_of_the_changing_positions_that_gain_most(damped):
    from nlp_dlg.text.analytic import _descend, _flat_positions, _Options, _slots

    target = torch.tensor([101, 5, 6, 7, 8, 9, 102])
    start = torch.tensor([101, 1, 1, 1, 1, 1, 102])                # five inner positions wrong
    cost = torch.tensor([0.0, 0.1, 0.5, 0.2, 0.4, 0.3, 0.0])       # the own residual a wrong token leaves
    per_position = [torch.tensor([101]), *[torch.tensor([1, int(t)]) for t in target[1:-1]], torch.tensor([102])]
    positions, ids = _flat_positions(per_position), torch.cat(per_position)
    seen = []

    class Stub(_Options):
        def outputs(self, first, sentence):                        # residual per option, as the span would give
            seen.append(sentence.clone())
            return torch.where(ids == target[positions], torch.zeros(len(ids)), cost[positions]).double()

    options = Stub(positions, ids, torch.zeros(len(ids), 1), (torch.zeros(0),) * 3, _slots(per_position))
    found = _descend(None, _Identity(), start, options, max_sweeps=12, damped=damped)
    assert found.tolist() == target.tolist()
    # the positions each sweep moved: damped, 3 of 5 (the largest own residuals), then 1 of 2, then the last;
    # undamped, every position at once
    moved = [[p for p in range(7) if b[p] != a[p]] for a, b in zip(seen, seen[1:])]
    assert moved == ([[2, 4, 5], [3], [1]] if damped else [[1, 2, 3, 4, 5]])


def test_a_search_that_certifies_nothing_runs_again_with_the_other_descent(capture, tiny_model, tokenizer,
                                                                           monkeypatch):
    from nlp_dlg.text import analytic

    truth, span2, candidates = _pair_batch(capture, tiny_model)
    run, tried = analytic._SentenceSearch.run, []

    def first_finds_nothing(self, max_fruitless, *, peel_later):
        tried.append(self.damped)
        if len(tried) > 1:
            run(self, max_fruitless, peel_later=peel_later)
    monkeypatch.setattr(analytic._SentenceSearch, "run", first_finds_nothing)
    found = assemble_batch(tiny_model, span2, candidates, 2, cls_id=tokenizer.cls_token_id,
                           sep_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0))
    assert len(tried) == 2 and tried[0] != tried[1]
    expected = {tuple(row[m.bool()].tolist()) for row, m in zip(truth.masked_input_ids, truth.attention_mask)}
    assert all(s.certified for s in found) and {s.token_ids for s in found} == expected


def test_moves_change_one_inner_position_or_two_neighbouring_ones_to_their_nearest_options():
    from nlp_dlg.text.analytic import _moves

    picks = torch.tensor([0, 1, 4, 7, 9])
    tops = torch.tensor([[0, -1], [1, 2], [5, 6], [7, -1], [9, -1]])    # position 3 has no other option
    moves = _moves(picks, tops)
    changed = [tuple((m != picks).nonzero().flatten().tolist()) for m in moves]
    # singles: position 1 (one other option), position 2 (two); pairs: (1, 2) twice; position 3 cannot move
    assert sorted(changed) == [(1,), (1, 2), (1, 2), (2,), (2,)]
    assert all(int(m[p]) in tops[p].tolist() for m, c in zip(moves, changed) for p in c)
    assert len({tuple(m.tolist()) for m in moves}) == len(moves)


def _sentence_and_options(capture, tiny_model):
    from nlp_dlg.text.analytic import _FirstLayer, _Options

    truth, span2, candidates = _pair_batch(capture, tiny_model)
    ids = truth.masked_input_ids[0][truth.attention_mask[0].bool()]
    options = [candidates[0][:1], *candidates[1:len(ids) - 1], ids[-1:]]
    first = _FirstLayer(tiny_model)
    return first, span2, ids, _Options.of(first, options), options


def test_local_search_brings_back_a_sentence_with_two_wrong_tokens(capture, tiny_model):
    from nlp_dlg.text.analytic import CERTIFY_MAX, _local_search

    first, span2, ids, flat, options = _sentence_and_options(capture, tiny_model)
    start = ids.clone()
    for p in (2, 3):
        start[p] = options[p][options[p] != ids[p]][0]
    with torch.no_grad():
        found, residual = _local_search(first, span2, start, flat, max_moves=3 * len(ids))
    assert found.tolist() == ids.tolist() and residual < CERTIFY_MAX
    with torch.no_grad():       # no move at all: the start, and its own residual
        same, start_residual = _local_search(first, span2, start, flat, max_moves=0)
    assert same.tolist() == start.tolist() and start_residual > CERTIFY_MAX


def test_iterated_search_certifies_a_true_sentence_from_a_random_start(capture, tiny_model):
    from nlp_dlg.text.analytic import CERTIFY_MAX, _iterated_search

    first, span2, ids, flat, options = _sentence_and_options(capture, tiny_model)
    generator = torch.Generator().manual_seed(0)
    start = torch.stack([o[torch.randint(len(o), (1,), generator=generator)[0]] for o in options])
    assert start.tolist() != ids.tolist()
    with torch.no_grad():
        found, residual = _iterated_search(first, span2, start, flat, generator)
    assert residual < CERTIFY_MAX and found.tolist() == ids.tolist()


def test_a_search_that_wants_one_sentence_stops_at_the_first(capture, tiny_model, tokenizer):
    from nlp_dlg.text.analytic import _SentenceSearch

    truth, span2, candidates = _pair_batch(capture, tiny_model)
    search = _SentenceSearch(tiny_model, span2, candidates, 2, cls_id=tokenizer.cls_token_id,
                             sep_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0), starts=8,
                             max_sweeps=12, damped=True, iterate=True, enough=1)
    with torch.no_grad():
        search.run(3, peel_later=True)
    expected = {tuple(row[m.bool()].tolist()) for row, m in zip(truth.masked_input_ids, truth.attention_mask)}
    assert len(search.found) == 1 and set(search.found) <= expected


def test_the_iterated_search_waits_for_an_empty_round_unless_the_search_wants_fewer_sentences(
        capture, tiny_model, tokenizer, monkeypatch):
    from nlp_dlg.text import analytic

    truth, span2, candidates = _pair_batch(capture, tiny_model)
    calls = []

    def counted(first, span2, ids, options, generator, rounds=analytic.ITERATE_ROUNDS):
        calls.append(len(ids))
        return ids, 1.0
    monkeypatch.setattr(analytic, "_iterated_search", counted)
    for enough, expected in ((None, [False, True]), (1, [True, True])):
        search = analytic._SentenceSearch(tiny_model, span2, candidates, 2, cls_id=tokenizer.cls_token_id,
                                          sep_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0),
                                          starts=8, max_sweeps=0, damped=True, iterate=True, enough=enough)
        length = next(iter(search.searches))
        wrong = torch.tensor([tokenizer.cls_token_id] + [int(o[-1]) for o in search.searches[length][0][1:-1]]
                             + [tokenizer.sep_token_id])
        iterated = []
        for fruitless in (0, 1):
            search.fruitless[length], before = fruitless, len(calls)
            with torch.no_grad():
                residual = search._polish(wrong, length)[1]
            assert residual >= analytic.CERTIFY_MAX           # a start the descent (no sweeps) leaves uncertified
            iterated.append(len(calls) > before)
        assert iterated == expected
