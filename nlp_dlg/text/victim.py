"""The victim: a participant computing a masked-LM gradient on its private sentences.

Only the gradient and what a participant legitimately shares (model id and checksum, task, masking
probability, loss reduction, batch size, mode) leave this module in a gradient file: never the text,
its token ids or its masks. The ground truth is returned separately for in-process scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertForMaskedLM, PreTrainedTokenizerBase

from nlp_dlg import __version__
from nlp_dlg.engine.defense import Defense, parse_defense
from nlp_dlg.engine.errors import ConfigError, InputDataError
from nlp_dlg.engine.observation import GradientObservation, save_observation

logger = logging.getLogger(__name__)

TASK = "masked-lm"


@dataclass(frozen=True)
class CaptureConfig:
    """Victim-side options.

    Args:
        batch_size: sentences per gradient (per file), in input order.
        mlm_probability: fraction of tokens selected for prediction (BERT's 80/10/10 masking).
        max_length: sentences are truncated to this many tokens, special tokens included.
        train_mode: compute the gradient with dropout on (the model's ``training`` flag is restored).
        defense: a defence applied before the gradient leaves (:mod:`nlp_dlg.engine.defense`), e.g.
            ``gaussian:1e-2`` or ``dp:1.0,0.5`` (DP-SGD: per-sentence gradients, each its own mean loss).
        local_steps, local_lr: FedAvg: the client runs ``local_steps`` SGD steps at ``local_lr`` on its batch
            and shares the weight delta (``local_lr`` None: FedSGD, the gradient itself).
    """

    batch_size: int = 1
    mlm_probability: float = 0.15
    max_length: int = 128
    train_mode: bool = False
    defense: str | None = None
    local_steps: int = 1
    local_lr: float | None = None

    def __post_init__(self) -> None:
        parse_defense(self.defense)  # raises ConfigError naming the accepted forms
        if not isinstance(self.local_steps, int) or self.local_steps < 1:
            raise ConfigError(f"local_steps: expected a positive integer, got {self.local_steps!r}")
        if self.local_lr is not None and not self.local_lr > 0:
            raise ConfigError(f"local_lr: expected a positive number, got {self.local_lr!r}")
        if self.local_lr is None and self.local_steps > 1:
            raise ConfigError("local_steps > 1 is FedAvg: give local_lr, the client's learning rate")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(f"mlm_probability: expected a number in (0, 1], got {self.mlm_probability!r}")
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ConfigError(f"max_length: expected an integer >= 3, got {self.max_length!r}")


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
    enc = tokenizer(list(chunk), padding=True, truncation=True, max_length=config.max_length, return_tensors="pt",
                    return_special_tokens_mask=True)
    masked, labels = mask_tokens(enc["input_ids"], enc["special_tokens_mask"], probability=config.mlm_probability,
                                 mask_token_id=tokenizer.mask_token_id, vocab_size=vocab_size, generator=generator)
    return VictimBatch(index, chunk, enc["input_ids"], masked, labels, enc["attention_mask"])


def masked_lm_gradient(model: BertForMaskedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor, *, train_mode: bool = False) -> dict[str, torch.Tensor]:
    """One participant's gradient: mean masked-LM loss over the selected tokens, per named parameter."""
    was_training = model.training
    model.train(train_mode)
    try:
        params = dict(model.named_parameters())
        flags = {n: p.requires_grad for n, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        for n, p in params.items():
            p.requires_grad_(flags[n])
    finally:
        model.train(was_training)
    return {n: g.detach() for n, g in zip(params, grads)}


def capture_gradients(
    model: BertForMaskedLM,
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
    if isinstance(sentences, str):
        raise InputDataError("sentences: expected a sequence of strings, got one string")
    sentences = [s for s in sentences]
    if not sentences:
        raise InputDataError("sentences: expected at least one sentence, got none")
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise InputDataError(f"sentences[{i}]: expected a non-empty string, got {s!r}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    defense = parse_defense(config.defense)
    if defense is not None and defense_generator is None:
        defense_generator = torch.Generator()
        defense_generator.seed()
    out = []
    for b, start in enumerate(range(0, len(sentences), config.batch_size)):
        truth = prepare_batch(tokenizer, sentences[start:start + config.batch_size], config, index=b,
                              vocab_size=model.config.vocab_size, generator=generator)
        chunk, masked, labels, attention = truth.sentences, truth.masked_input_ids, truth.labels, truth.attention_mask
        if config.local_lr is None:
            grads = masked_lm_gradient(model, masked, attention, labels, train_mode=config.train_mode)
        else:
            grads = _weight_delta(model, masked, attention, labels, config)
        if defense is not None:
            per_example = None
            if defense.needs_per_example:  # a sentence with no selected token contributes nothing
                zero = {n: torch.zeros_like(g) for n, g in grads.items()}
                per_example = [masked_lm_gradient(model, masked[i:i + 1], attention[i:i + 1],
                                                  labels[i:i + 1], train_mode=config.train_mode)
                               if bool((labels[i] != -100).any()) else zero for i in range(len(chunk))]
            grads = defense.apply(grads, generator=defense_generator, per_example=per_example)
        metadata = observation_metadata(config, model_info=model_info, tokenizer_name=tokenizer_name,
                                        batch_size=len(chunk), batch_index=b, defense=defense)
        out.append((GradientObservation(grads, metadata), truth))
        logger.info("captured batch %d: %d sentence(s), %d tokens each, %d selected for prediction",
                    b, len(chunk), masked.shape[1], int((labels != -100).sum()))
    return out


def observation_metadata(config: CaptureConfig, *, model_info: dict[str, Any], tokenizer_name: str | None,
                         batch_size: int, batch_index: int, defense: Defense | None = None) -> dict[str, Any]:
    """What a participant shares about one masked-LM gradient (never the text, its ids or its masks)."""
    metadata: dict[str, Any] = {
        "toolkit": "nlp_dlg",
        "toolkit_version": __version__,
        "task": TASK,
        "model": model_info,
        "tokenizer": tokenizer_name,
        "mlm_probability": config.mlm_probability,
        "loss_reduction": "mean",
        "batch_size": batch_size,
        "batch_index": batch_index,
        "mode": "train" if config.train_mode else "eval",
        "defense": None if defense is None else defense.metadata(),
    }
    if config.local_lr is not None:
        metadata["update"] = {"kind": "weight-delta", "local_steps": config.local_steps, "local_lr": config.local_lr}
    return metadata


def _weight_delta(model: BertForMaskedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """FedAvg client: ``local_steps`` plain SGD steps on the batch from the shared weights; ``W_K − W_0``.
    The caller's model is not changed (the steps run on a copy)."""
    import copy

    client = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in client.named_parameters()}
    local_sgd(client, input_ids, attention_mask, labels, config)
    return {n: (p.detach() - start[n]).clone() for n, p in client.named_parameters()}


def local_sgd(model: BertForMaskedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              config: CaptureConfig) -> None:
    """``config.local_steps`` plain SGD steps at ``config.local_lr`` on one batch, in place (a FedAvg client)."""
    if config.local_lr is None:
        raise ConfigError("local SGD needs local_lr, the client's learning rate")
    for _ in range(config.local_steps):
        grads = masked_lm_gradient(model, input_ids, attention_mask, labels, train_mode=config.train_mode)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= config.local_lr * grads[n]


def write_observations(pairs: Sequence[tuple[GradientObservation, VictimBatch]],
                       out_dir: str | Path) -> list[Path]:
    """Write ``batch-000.safetensors``, ``batch-001.safetensors``, … in input order."""
    out_dir = Path(out_dir)
    return [save_observation(obs, out_dir / f"batch-{i:03d}.safetensors") for i, (obs, _) in enumerate(pairs)]
