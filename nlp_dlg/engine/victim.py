"""What every victim shares, whatever the modality: a named gradient of a loss computed in a stated mode, the
metadata a participant legitimately shares about it, and a defence applied before it leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from nlp_dlg import __version__
from nlp_dlg.engine.defense import Defense


@contextmanager
def model_mode(model: nn.Module, *, train: bool) -> Iterator[None]:
    """Run ``model`` in train mode (dropout on, batch norm on the batch's statistics, as a training step) or
    eval mode. Forward passes in train mode move batch norm's running statistics: the buffers and the mode are
    restored on exit, so the weights (and their checksum) stay those a gradient file names."""
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def loss_gradients(model: nn.Module, loss: Callable[[], torch.Tensor], *, train_mode: bool = False,
                   trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The gradient of ``loss()`` (a closure running ``model``) per named parameter, computed in the victim's
    mode (:func:`model_mode`). ``trainable_only``: only parameters with ``requires_grad`` (frozen ones
    are not shared); otherwise every parameter, its ``requires_grad`` flag restored."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    flags = [p.requires_grad for _, p in named]
    for _, p in named:
        p.requires_grad_(True)
    try:
        with model_mode(model, train=train_mode):
            grads = torch.autograd.grad(loss(), [p for _, p in named])
    finally:
        for (_, p), flag in zip(named, flags):
            p.requires_grad_(flag)
    return {n: g.detach() for (n, _), g in zip(named, grads)}


def fresh_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or unpredictably when None (private masks, defence noise)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def defend(defense: Defense | None, gradients: dict[str, torch.Tensor], *, generator: torch.Generator | None,
           per_example: Callable[[], Sequence[Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """``gradients`` after ``defense`` (itself without one). ``per_example`` computes each example's own
    gradient, called only for a defence that needs them (DP-SGD)."""
    if defense is None:
        return gradients
    examples = per_example() if defense.needs_per_example else None
    return defense.apply(gradients, generator=generator or fresh_generator(), per_example=examples)


def shared_metadata(task: str, *, toolkit: str, model_info: Mapping[str, Any], batch_size: int, batch_index: int,
                    train_mode: bool, defense: Defense | None) -> dict[str, Any]:
    """What a participant shares about one gradient in any task (never its data): the task's own module adds
    its fields (masking probability, tokenizer, ...)."""
    return {"toolkit": toolkit, "toolkit_version": __version__, "task": task, "model": dict(model_info),
            "batch_size": batch_size, "batch_index": batch_index, "loss_reduction": "mean",
            "mode": "train" if train_mode else "eval", "defense": None if defense is None else defense.metadata()}
