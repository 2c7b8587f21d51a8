"""The victim: a participant computing a masked-LM gradient on its private sentences.

Only the gradient and what a participant legitimately shares (model id and checksum, task, masking
probability, loss reduction, batch size, mode) leave this module in a gradient file: never the text,
its token ids or its masks. The ground truth is returned separately for in-process scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.engine.defense import Defense, parse_defense
from nlp_dlg.engine.errors import ConfigError, InputDataError
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.engine.victim import defend, fresh_generator, shared_metadata
from nlp_dlg.text.config import CaptureConfig
from nlp_dlg.text.task import TASK, masked_lm_gradient

__all__ = ["TASK", "CaptureConfig", "VictimBatch", "capture_gradients", "local_sgd", "mask_tokens",
           "masked_lm_gradient", "observation_metadata", "prepare_batch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VictimBatch:
    """Ground truth of one captured batch (kept in memory, never written to a gradient file)."""

    index: int
    sentences: tuple[str, ...]
    input_ids: torch.Tensor          # (B, T) the sentences' token ids
    masked_input_ids: torch.Tensor   # (B, T) what the model saw
    labels: torch.Tensor             # (B, T) target ids at selected positions, -100 elsewhere
    attention_mask: torch.Tensor     # (B, T)


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, *, probability: float,
                mask_token_id: int, vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: select each ordinary token with ``probability`` (at least one per sequence);
    of those, 80% become [MASK], 10% a random token, 10% stay. Returns ``(masked_ids, labels)``."""
    ids = input_ids.clone()                                                        # (B, T)
    selectable = ~special_mask.bool()
    selected = (torch.rand(ids.shape, generator=generator) < probability) & selectable
    for row in range(ids.shape[0]):  # a sequence with no selected token would give no loss
        if not selected[row].any() and selectable[row].any():
            choices = selectable[row].nonzero().flatten()
            pick = choices[torch.randint(len(choices), (1,), generator=generator)]
            selected[row, pick] = True
    labels = torch.where(selected, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    ids[to_mask] = mask_token_id
    ids[to_random] = torch.randint(vocab_size, (int(to_random.sum()),), generator=generator)
    return ids, labels


def prepare_batch(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], config: CaptureConfig, *,
                  index: int, vocab_size: int, generator: torch.Generator) -> VictimBatch:
    """Tokenize (padded, truncated to ``config.max_length``) and mask one batch of private sentences."""
    chunk = tuple(sentences)
    _warn_about(tokenizer, chunk, config.max_length, index)
    enc = tokenizer(list(chunk), padding=True, truncation=True, max_length=config.max_length, return_tensors="pt",
                    return_special_tokens_mask=True)
    masked, labels = mask_tokens(enc["input_ids"], enc["special_tokens_mask"], probability=config.mlm_probability,
                                 mask_token_id=tokenizer.mask_token_id, vocab_size=vocab_size, generator=generator)
    return VictimBatch(index, chunk, enc["input_ids"], masked, labels, enc["attention_mask"])


def _warn_about(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], max_length: int, batch: int) -> None:
    """Say what the gradient will not hold as written: a sentence truncated to ``max_length`` tokens, and words the
    vocabulary does not have (they become ``[UNK]`` and come back as ``[UNK]``)."""
    for i, ids in enumerate(tokenizer(list(sentences))["input_ids"]):
        if len(ids) > max_length:
            logger.warning("batch %d, sentence %d: %d tokens, truncated to --max-length %d: the rest never enters "
                           "the gradient", batch, i, len(ids), max_length)
        unknown = sum(t == tokenizer.unk_token_id for t in ids) if tokenizer.unk_token_id is not None else 0
        if unknown:
            logger.warning("batch %d, sentence %d: %d word(s) outside the vocabulary become %s", batch, i, unknown,
                           tokenizer.unk_token)


def capture_gradients(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    config: CaptureConfig | None = None,
    *,
    model_info: dict[str, Any],
    tokenizer_name: str | None = None,
    generator: torch.Generator | None = None,
    defense_generator: torch.Generator | None = None,
) -> list[tuple[GradientObservation, VictimBatch]]:
    """Compute one gradient observation per batch of ``sentences`` (in input order).

    Args:
        model: the masked-LM model (see :func:`nlp_dlg.text.load_masked_lm`).
        tokenizer: its tokenizer.
        sentences: private sentences.
        config: batch size, masking probability, max length, mode.
        model_info: :func:`nlp_dlg.text.model_metadata` of the model (how the attacker rebuilds it).
        tokenizer_name: recorded in the metadata so the attacker loads the same vocabulary.
        generator: draws the masks; a fresh unpredictable one when ``None`` (masks are private).
        defense_generator: draws the defence's noise; a fresh unpredictable one when ``None``.

    Returns:
        ``(observation, ground_truth)`` per batch. Only the observation is meant to be shared.

    Example:
        >>> model = load_masked_lm(spec := ModelSpec(seed=0))  # doctest: +SKIP
        >>> obs, truth = capture_gradients(model, load_tokenizer(), ["a private sentence ."],
        ...                                model_info=model_metadata(model, spec))[0]  # doctest: +SKIP
    """
    config = config or CaptureConfig()
    sentences = _checked(sentences)
    generator = generator or fresh_generator()
    defense = parse_defense(config.defense)
    out = []
    for b, start in enumerate(range(0, len(sentences), config.batch_size)):
        truth = prepare_batch(tokenizer, sentences[start:start + config.batch_size], config, index=b,
                              vocab_size=model.config.vocab_size, generator=generator)
        grads = defend(defense, _shared_update(model, truth, config), generator=defense_generator,
                       per_example=lambda truth=truth: _per_sentence(model, truth, config))
        metadata = observation_metadata(config, model_info=model_info, tokenizer_name=tokenizer_name,
                                        batch_size=len(truth.sentences), batch_index=b, defense=defense)
        out.append((GradientObservation(grads, metadata), truth))
        logger.info("captured batch %d: %d sentence(s), %d tokens each, %d selected for prediction",
                    b, len(truth.sentences), truth.masked_input_ids.shape[1], int((truth.labels != -100).sum()))
    return out


def _checked(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str):
        raise InputDataError("sentences: expected a sequence of strings, got one string")
    sentences = list(sentences)
    if not sentences:
        raise InputDataError("sentences: expected at least one sentence, got none")
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise InputDataError(f"sentences[{i}]: expected a non-empty string, got {s!r}")
    return sentences


def _shared_update(model: PreTrainedModel, truth: VictimBatch, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """What the client shares before any defence: the gradient (FedSGD) or the weight delta (FedAvg)."""
    if config.local_lr is None:
        return masked_lm_gradient(model, truth.masked_input_ids, truth.attention_mask, truth.labels,
                                  train_mode=config.train_mode)
    return _weight_delta(model, truth.masked_input_ids, truth.attention_mask, truth.labels, config)


def _per_sentence(model: PreTrainedModel, truth: VictimBatch, config: CaptureConfig) -> list[dict[str, torch.Tensor]]:
    """Each sentence's own gradient (DP-SGD); a sentence with no selected token contributes nothing."""
    out = []
    for i in range(len(truth.sentences)):
        if bool((truth.labels[i] != -100).any()):
            out.append(masked_lm_gradient(model, truth.masked_input_ids[i:i + 1], truth.attention_mask[i:i + 1],
                                          truth.labels[i:i + 1], train_mode=config.train_mode))
        else:
            out.append({n: torch.zeros_like(p) for n, p in model.named_parameters()})
    return out


def observation_metadata(config: CaptureConfig, *, model_info: dict[str, Any], tokenizer_name: str | None,
                         batch_size: int, batch_index: int, defense: Defense | None = None) -> dict[str, Any]:
    """What a participant shares about one masked-LM gradient (never the text, its ids or its masks)."""
    metadata = shared_metadata(TASK, toolkit="nlp_dlg", model_info=model_info, batch_size=batch_size,
                               batch_index=batch_index, train_mode=config.train_mode, defense=defense)
    metadata.update(tokenizer=tokenizer_name, mlm_probability=config.mlm_probability)
    if config.local_lr is not None:
        metadata["update"] = {"kind": "weight-delta", "local_steps": config.local_steps, "local_lr": config.local_lr}
    return metadata


def _weight_delta(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """FedAvg client: ``local_steps`` plain SGD steps on the batch from the shared weights; ``W_K − W_0``.
    The caller's model is not changed (the steps run on a copy)."""
    import copy

    client = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in client.named_parameters()}
    local_sgd(client, input_ids, attention_mask, labels, config)
    return {n: (p.detach() - start[n]).clone() for n, p in client.named_parameters()}


def local_sgd(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              config: CaptureConfig) -> None:
    """``config.local_steps`` plain SGD steps at ``config.local_lr`` on one batch, in place (a FedAvg client)."""
    if config.local_lr is None:
        raise ConfigError("local SGD needs local_lr, the client's learning rate")
    for _ in range(config.local_steps):
        grads = masked_lm_gradient(model, input_ids, attention_mask, labels, train_mode=config.train_mode)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= config.local_lr * grads[n]
