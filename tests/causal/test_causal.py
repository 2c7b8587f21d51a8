"""The causal-LM task: capture, the exact span attack (GPT-2 and LLaMA families, tied and untied heads), the
paper's matching, the command line, and metadata refused before anything is built."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from nlp_dlg.causal.attack import CausalLMAttack
from nlp_dlg.causal.config import CausalAttackConfig, PursuitConfig
from nlp_dlg.causal.layers import DecoderLayers
from nlp_dlg.causal.model import CausalSpec, load_bpe_tokenizer, load_causal_lm, model_metadata
from nlp_dlg.causal.pursuit import Terms, first_tokens, pursue_from, reorder
from nlp_dlg.causal.victim import capture_causal
from nlp_dlg.engine import MatchingConfig, load_observation, save_observation
from nlp_dlg.engine.distance import CERTIFY_DISTANCE
from nlp_dlg.engine.span import SpanUnavailable

REVIEWS = ["a gripping thriller that never lets go of its audience .",
           "the acting is wooden and the plot makes no sense."]
TINY = {"gpt2": {"n_embd": 64, "n_layer": 3, "n_head": 2},
        "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
                  "num_key_value_heads": 2}}


@pytest.fixture(scope="module")
def bpe():
    return load_bpe_tokenizer()


def _victim(bpe, architecture):
    spec = CausalSpec(architecture=architecture, config=TINY[architecture])
    model = load_causal_lm(spec, bpe)
    return model, capture_causal(model, bpe, REVIEWS, batch_size=2, model_info=model_metadata(model, spec))[0]


@pytest.mark.parametrize("architecture, projections", [("gpt2", ["transformer.h.0.attn.c_attn.weight"]),
                                                       ("llama", ["model.layers.0.self_attn.q_proj.weight",
                                                                  "model.layers.0.self_attn.k_proj.weight",
                                                                  "model.layers.0.self_attn.v_proj.weight"])])
def test_the_layers_are_found_by_running_the_model(bpe, architecture, projections):
    model = load_causal_lm(CausalSpec(architecture=architecture, config=TINY[architecture]), bpe)
    layers = DecoderLayers(model)
    assert [p.name for p in layers.projections[0]] == projections
    assert layers.projections[0][0].transposed == (architecture == "gpt2")
    assert layers.inputs(torch.tensor([[5, 6, 7]]), 1).shape == (1, 3, 64)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])   # tied head (final norm read) / untied head
def test_the_span_attack_recovers_a_batch_exactly_and_certifies_it(bpe, architecture):
    model, (obs, truth) = _victim(bpe, architecture)
    recs = CausalLMAttack(model, bpe).attack(obs, generator=torch.Generator().manual_seed(0))
    assert sorted(r.reconstruction for r in recs) == sorted(REVIEWS)
    assert all(r.certified and r.evaluations == 0 for r in recs)
    assert sorted(r.token_ids for r in recs) == sorted(tuple(ids[m.bool()].tolist())
                                                      for ids, m in zip(truth.input_ids, truth.attention_mask))


def test_dlg_matches_and_reports_decoded_text_per_step(bpe):
    model, (obs, _) = _victim(bpe, "gpt2")
    steps = []
    config = CausalAttackConfig(method="dlg", log_every=2, matching=MatchingConfig(distance="cosine", steps=4))
    recs = CausalLMAttack(model, bpe, config, callbacks=[steps.append]).attack(
        obs, generator=torch.Generator().manual_seed(0))
    assert [s.record.step for s in steps] == [0, 2, 4] and len(steps[0].texts) == 2
    assert steps[-1].record.distance < steps[0].record.distance
    assert all(r.method == "dlg" and r.evaluations > 0 for r in recs) and recs[0].token_ids[0] < len(bpe)


def test_the_command_line_captures_and_attacks_a_causal_lm(tmp_path, capsys, caplog):
    from nlp_dlg.cli import main

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY["llama"]))
    common = ["--task", "causal-lm", "--architecture", "llama", "--model-config", str(cfg)]
    assert main(["-q", "capture", *common, "--text", REVIEWS[0], "--text", REVIEWS[1], "--batch-size", "2",
                 "--out", str(tmp_path / "g")]) == 0
    caplog.set_level(logging.INFO)
    assert main(["attack", "--gradients", str(tmp_path / "g"), "--out", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["reconstruction"] for r in rows) == sorted(REVIEWS) and all(r["certified"] for r in rows)
    assert main(["-q", "attack", *common, "--text", REVIEWS[0], "--out", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads((tmp_path / "s.jsonl").read_text())["exact_match"]
    capsys.readouterr()
    defended = ["--text", REVIEWS[0], "--defense", "fp16", "--out", str(tmp_path / "d")]
    assert main(["-q", "capture", *common, *defended]) == 2
    assert "--defense is not available with --task causal-lm" in capsys.readouterr().err


def test_a_causal_file_asking_for_a_deep_model_is_refused_before_it_is_built(bpe, tmp_path, capsys):
    from nlp_dlg.cli import main

    _, (obs, _) = _victim(bpe, "gpt2")
    meta = dict(obs.metadata)
    meta["model"] = {**meta["model"], "config": {**meta["model"]["config"], "n_layer": 90}}
    save_observation(type(obs)(obs.gradients, meta), tmp_path / "deep.safetensors")
    assert load_observation(tmp_path / "deep.safetensors").metadata["task"] == "causal-lm"
    code = main(["-q", "attack", "--gradients", str(tmp_path / "deep.safetensors"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "model config" in err and len(err.strip().splitlines()) == 1


def test_lora_shares_only_adapters_whose_span_shows_the_prefix_when_the_rank_exceeds_the_tokens(bpe, caplog):
    from nlp_dlg.causal.model import add_lora

    spec = CausalSpec(architecture="gpt2", config={"n_embd": 128, "n_layer": 3, "n_head": 2})
    recs, steps = {}, {8: [], 64: []}
    for rank in (8, 64):
        model = add_lora(load_causal_lm(spec, bpe), rank=rank, seed=0, architecture="gpt2")
        [(obs, _)] = capture_causal(model, bpe, REVIEWS[:1], model_info={})
        assert obs.gradients and all(".lora_" in n for n in obs.gradients)
        config = CausalAttackConfig(matching=MatchingConfig(distance="cosine", max_evaluations=2),
                                    pursuit=PursuitConfig(labels=4, first_tokens=2, screen=2, candidates=4,
                                                           rounds=1))
        recs[rank] = CausalLMAttack(model, bpe, config, callbacks=[steps[rank].append]).attack(
            obs, generator=torch.Generator().manual_seed(0))[0]
    assert recs[64].method == "span" and REVIEWS[0].startswith(recs[64].reconstruction)
    assert recs[64].reconstruction == REVIEWS[0][:-2] and not recs[64].certified  # the last token is not shared
    assert recs[8].method == "pursuit" and "more inputs fed it than its 8 dimensions" in caplog.text
    assert recs[8].evaluations > 0 and 0 <= recs[8].distance < 2
    assert [s.record.step for s in steps[8]] == [0, 1] and steps[8][-1].texts == (recs[8].reconstruction,)
    assert steps[8][-1].record.distance == recs[8].distance and not steps[64]      # the order search's rounds


def _lora_victim(bpe, text, rank=2):
    from nlp_dlg.causal.model import add_lora

    spec = CausalSpec(architecture="gpt2", config={"n_embd": 128, "n_layer": 3, "n_head": 2})
    model = add_lora(load_causal_lm(spec, bpe), rank=rank, seed=0, architecture="gpt2")
    [(obs, truth)] = capture_causal(model, bpe, [text], model_info={})
    shared = {n: g for n, g in obs.gradients.items() if bool(g.any())}          # B; A's gradient is zero
    return model, Terms(model, shared, bpe.pad_token_id), truth.input_ids[0].tolist()


def test_a_decoder_gradient_is_the_mean_of_its_prefix_terms_and_labels_rank_by_one_directional_pass(bpe):
    model, terms, ids = _lora_victim(bpe, REVIEWS[1])
    observed = terms.observed
    assert torch.allclose(terms.sentences([ids, ids[:4]])[0], observed, rtol=1e-4, atol=1e-7)
    parts = terms.label_terms([ids[:t + 1] for t in range(len(ids) - 1)], ids[1:])          # (N, P)
    assert torch.allclose(parts.mean(0), observed, rtol=1e-4, atol=1e-7)
    u = torch.randn(observed.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = [ids[4], 7, 123]
    exact = terms.label_terms([ids[:4]] * 3, labels) @ u
    ranked = terms.directional([ids[:4]], u[None])[0]                                         # (V,)
    assert torch.allclose(ranked[labels], exact, rtol=1e-3, atol=1e-6)
    with pytest.raises(SpanUnavailable, match="linear map"):
        Terms(model, {"transformer.wte.weight": torch.ones(1)}, bpe.pad_token_id)


def test_the_pursuit_from_the_true_first_token_fits_better_than_from_the_best_ranked_others(bpe):
    _, terms, ids = _lora_victim(bpe, REVIEWS[1], rank=8)
    config = PursuitConfig(labels=8, max_length=len(ids) + 4)
    ranked = first_tokens(terms, 3)
    fits = {f: pursue_from(terms, f, config)[1] for f in [ids[0], *ranked]}
    assert ids[0] not in ranked and all(fits[f] < fits[ids[0]] for f in ranked)


def test_the_order_search_puts_swapped_tokens_back_and_certifies(bpe):
    _, terms, ids = _lora_victim(bpe, REVIEWS[0], rank=8)
    start = list(ids)
    start[2], start[5] = start[5], start[2]
    assert terms.distances([start])[0] > 1e-3
    found, distance = reorder(terms, start, sorted(set(ids)), PursuitConfig(candidates=32, rounds=12),
                              generator=torch.Generator().manual_seed(0))
    assert found == ids and distance < CERTIFY_DISTANCE
