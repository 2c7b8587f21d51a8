"""Masked-LM gradients from a real DDP training step (gloo on loopback), as an all-reduce participant sees them.

``world_size`` local processes each build the same model; step ``s`` uses the global batch
``sentences[s·B:(s+1)·B]``, rank ``r`` its slice of ``B / W`` sentences (in input order), masked with a
generator seeded from ``(mask_seed, s, r)``. DDP all-reduces the gradients; :class:`AllReduceRecorder`
records the averaged buckets, which rank 0 returns. What differs from one client: the recorded gradient is
the mean over ranks of each rank's mean loss, i.e. the whole global batch's gradient (every sentence of
every rank is in it), not one rank's; with unequal numbers of masked tokens per rank it is not exactly the
token-mean loss of the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from nlp_dlg.engine.distributed import AllReduceRecorder, backend_for, ddp_metadata, run_ranks
from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.observation import GradientObservation
from nlp_dlg.text.config import CaptureConfig
from nlp_dlg.text.victim import VictimBatch, observation_metadata, prepare_batch

logger = logging.getLogger(__name__)


def rank_batch(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], config: CaptureConfig, *,
               step: int, rank: int, world_size: int, mask_seed: int, vocab_size: int) -> VictimBatch:
    """The slice of step ``step``'s global batch that rank ``rank`` trains on, tokenized and masked."""
    per_rank = config.batch_size // world_size
    start = step * config.batch_size + rank * per_rank
    generator = torch.Generator().manual_seed((mask_seed * 1_000_003 + step * 1009 + rank) % (2**63))
    return prepare_batch(tokenizer, sentences[start:start + per_rank], config, index=step, vocab_size=vocab_size,
                         generator=generator)


def _worker(rank: int, world_size: int, payload: dict[str, Any], device: torch.device) -> list[dict[str, torch.Tensor]]:
    from torch.nn.parallel import DistributedDataParallel

    from nlp_dlg.text.model import ModelSpec, load_masked_lm, load_tokenizer

    model = load_masked_lm(ModelSpec(**payload["spec"])).to(device)
    tokenizer = load_tokenizer(payload["tokenizer"])
    config = CaptureConfig(**payload["config"])
    model.train(config.train_mode)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    recorder = AllReduceRecorder(ddp)
    recorded = []
    for step in range(payload["steps"]):
        batch = rank_batch(tokenizer, payload["sentences"], config, step=step, rank=rank, world_size=world_size,
                           mask_seed=payload["mask_seed"], vocab_size=model.config.vocab_size)
        ddp.zero_grad(set_to_none=True)
        ddp(input_ids=batch.masked_input_ids.to(device), attention_mask=batch.attention_mask.to(device),
            labels=batch.labels.to(device)).loss.backward()
        recorded.append({n: g.cpu() for n, g in recorder.gradients.items()})
    return recorded


def capture_distributed(spec: Any, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str],
                        config: CaptureConfig, *, world_size: int, model_info: dict[str, Any],
                        tokenizer_name: str | None, vocab_size: int, mask_seed: int = 0, device: str = "cpu"
                        ) -> list[tuple[GradientObservation, VictimBatch]]:
    """One observation per DDP step (the all-reduced gradient) and the step's ground truth.

    Args:
        spec: the :class:`nlp_dlg.text.ModelSpec` every rank builds its model from.
        config: ``batch_size`` is the global batch of one step, split evenly over the ranks.
        world_size: local processes on loopback.
        device: ``cpu`` (gloo), or ``cuda``: nccl where every rank has a GPU of its own, else gloo on one GPU.
    """
    if config.batch_size % world_size:
        raise ConfigError(f"--batch-size {config.batch_size} must split evenly over --world-size {world_size}")
    if config.defense:
        raise ConfigError("a defence with --world-size is not supported: capture a single client for that")
    if config.local_lr is not None:
        raise ConfigError("FedAvg local steps with --world-size are not supported: capture a single client for that")
    steps = len(sentences) // config.batch_size
    if steps == 0:
        raise ConfigError(f"{len(sentences)} sentence(s) do not fill one global batch of {config.batch_size}")
    if len(sentences) % config.batch_size:
        logger.warning("the last %d sentence(s) do not fill a global batch and are left out",
                       len(sentences) % config.batch_size)
    payload = {"spec": asdict(spec), "tokenizer": tokenizer_name, "config": asdict(config), "steps": steps,
               "sentences": list(sentences), "mask_seed": mask_seed}
    recorded = run_ranks(_worker, world_size, payload, device=device)
    backend = backend_for(device, world_size)
    out = []
    for step, grads in enumerate(recorded):
        parts = [rank_batch(tokenizer, sentences, config, step=step, rank=r, world_size=world_size,
                            mask_seed=mask_seed, vocab_size=vocab_size) for r in range(world_size)]
        truth = _merge(step, parts, tokenizer.pad_token_id)
        meta = {**observation_metadata(config, model_info=model_info, tokenizer_name=tokenizer_name,
                                       batch_size=config.batch_size, batch_index=step),
                "distributed": ddp_metadata(world_size, config.batch_size, backend)}
        out.append((GradientObservation(grads, meta), truth))
        logger.info("recorded the all-reduced gradient of step %d (%d ranks x %d sentence(s))", step, world_size,
                    config.batch_size // world_size)
    return out


def _merge(step: int, parts: list[VictimBatch], pad_id: int) -> VictimBatch:
    """The ranks' slices as one padded batch (the ground truth of the global step)."""
    length = max(p.input_ids.shape[1] for p in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    return VictimBatch(step, tuple(s for p in parts for s in p.sentences),
                       torch.cat([pad(p.input_ids, pad_id) for p in parts]),
                       torch.cat([pad(p.masked_input_ids, pad_id) for p in parts]),
                       torch.cat([pad(p.labels, -100) for p in parts]),
                       torch.cat([pad(p.attention_mask, 0) for p in parts]))
