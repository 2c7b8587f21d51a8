"""A decoder's sentence from its gradient where no span test can work (LoRA of a rank below the token count), at
batch 1: a pursuit over next-token terms, then a search over the order.

* **The gradient is a sum of prefix terms.** The mean next-token loss is ``L = (1/N) Σ_t ℓ_t`` and, under the
  causal mask, ``ℓ_t`` depends on the tokens ``≤ t + 1`` only. So the observed gradient is
  ``G = (1/N) Σ_t F_t`` with ``F_t = ∇ℓ_t(v_≤t, v_{t+1})``, each term computable from a prefix and its label.
* **Pursuit.** Tokens are chosen left to right: the label ``v`` whose term ``F(prefix, v)`` best matches what is
  left, ``⟨G − ĉ S, F⟩`` with ``S`` the terms so far and ``ĉ`` their least-squares scale (``1/N`` once the
  sentence is whole). Every label is ranked at once by one directional derivative of the logits
  (``⟨u, ∇θ logit_v⟩`` for all ``v``, by double backprop), the best ``labels`` of them exactly. The first token
  is never a label: each of the ``first_tokens`` whose best label ranks highest starts a short pursuit of
  ``screen`` tokens, and the full pursuit starts from the one whose terms fit ``G`` best.
* **Order.** The pursuit finds the sentence's tokens far better than their order (each term is dominated by
  its label). A local search on the whole sentence's cosine gradient distance then tries every swap of
  neighbours and random edits up to ``candidates`` a round (drawn from a CPU generator): a block of 1–3 tokens
  moved, two tokens swapped, a token substituted, inserted or deleted from the pursuit's runners-up. The best
  is kept when it is nearer; the search ends at the certificate or after ``patience`` rounds without gain.

Measured on GPT-2 (random init) with LoRA rank 8: ``benchmarks/results/causal.jsonl``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from nlp_dlg.causal.config import PursuitConfig
from nlp_dlg.engine.distance import CERTIFY_DISTANCE
from nlp_dlg.engine.span import SpanUnavailable
from nlp_dlg.text.steps import padded_batch

logger = logging.getLogger(__name__)

CHUNK = 512            # first tokens per directional pass at the pursuit's first step


@dataclass(frozen=True)
class PursuitGuess:
    """The sentence found, its cosine gradient distance, gradient evaluations and seconds."""

    sequence: list[int]
    distance: float
    evaluations: int
    seconds: float

    @property
    def certified(self) -> bool:
        return self.distance < CERTIFY_DISTANCE


class Terms:
    """Per-sequence gradients of a decoder's shared linear weights (LoRA's ``A`` and ``B`` are ``nn.Linear``),
    from forward hooks: a weight's gradient for one sequence is ``Σ_t δ_t x_tᵀ``, so a batch of candidates
    costs one forward and one backward pass."""

    def __init__(self, model: nn.Module, gradients: Mapping[str, torch.Tensor], pad_id: int) -> None:
        modules = dict(model.named_modules())
        self.names = [n for n, g in gradients.items() if n.endswith(".weight")
                      and isinstance(modules.get(n.rsplit(".", 1)[0]), nn.Linear)]
        if len(self.names) != len(gradients):
            raise SpanUnavailable("the pursuit needs every shared tensor to be a linear map's weight (LoRA)")
        self.model, self.pad_id = model, pad_id
        self.modules = [modules[n.rsplit(".", 1)[0]] for n in self.names]
        self.device = model.get_input_embeddings().weight.device
        self.observed = torch.cat([gradients[n].double().flatten() for n in self.names])      # (P,)
        self.evaluations = 0

    def _run(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """Logits ``(B, T, V)``, the ids and mask, and each hooked map's (input, output) for right-padded
        ``sequences``."""
        ids, mask = padded_batch(sequences, self.pad_id, self.device)
        seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [m.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0], out)))
                 for m in self.modules]
        try:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        finally:
            for h in hooks:
                h.remove()
        self.evaluations += len(sequences)
        return logits.float(), ids, mask, [seen[m] for m in self.modules]

    def _last(self, prefixes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list]:
        """The logits at each prefix's last position ``(B, V)`` and the hooked maps' (input, output)."""
        logits, _, mask, pairs = self._run(prefixes)
        return logits[torch.arange(len(prefixes), device=self.device), mask.sum(1) - 1], pairs

    @staticmethod
    def _per_sequence(loss: torch.Tensor, pairs: list, *, create_graph: bool = False) -> torch.Tensor:
        grads = torch.autograd.grad(loss, [out for _, out in pairs], create_graph=create_graph)
        return torch.cat([torch.einsum("bto,bti->boi", g, x.detach()).flatten(1) for g, (x, _) in zip(grads, pairs)], 1)

    def sentences(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """``(B, P)``: each sequence's own gradient of its mean next-token loss."""
        logits, ids, mask, pairs = self._run(sequences)
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)                                  # (B, T-1)
        ce = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")   # (B, T-1)
        loss = (ce.sum(1) / (labels != -100).sum(1).clamp(min=1)).sum()
        return self._per_sequence(loss, pairs).double()

    def distances(self, sequences: Sequence[Sequence[int]], *, chunk: int = 64) -> list[float]:
        """Cosine distance of each sequence's gradient to the observed one."""
        out: list[float] = []
        for i in range(0, len(sequences), chunk):
            g = self.sentences(sequences[i:i + chunk])
            out += (1 - g @ self.observed / (g.norm(dim=1) * self.observed.norm()).clamp(min=1e-30)).tolist()
        return out

    def label_terms(self, prefixes: Sequence[Sequence[int]], labels: Sequence[int]) -> torch.Tensor:
        """``(B, P)``: ``F(prefix, label)``, the gradient of the loss at each prefix's last position only."""
        last, pairs = self._last(prefixes)                                                   # (B, V)
        loss = nn.functional.cross_entropy(last, torch.tensor(list(labels), device=self.device), reduction="sum")
        return self._per_sequence(loss, pairs).double()

    def directional(self, prefixes: Sequence[Sequence[int]], u: torch.Tensor) -> torch.Tensor:
        """``(B, V)``: ``⟨u_b, F(prefix_b, v)⟩`` for every label ``v`` (``u (B, P)``), by double backprop:
        ``F = Jᵀ(p − e_v)``, so it is ``p·d − d_v`` with ``d = J u`` read off a gradient with respect to a
        zero weight on the logits."""
        last, pairs = self._last(prefixes)                                                   # (B, V)
        weight = torch.zeros_like(last, requires_grad=True)
        per = self._per_sequence((weight * last).sum(), pairs, create_graph=True)               # (B, P)
        d, = torch.autograd.grad((per * u.to(per.dtype)).sum(), weight)
        d, p = d.double(), last.detach().double().softmax(-1)
        return (p * d).sum(1, keepdim=True) - d


def first_tokens(terms: Terms, count: int) -> list[int]:
    """The ``count`` first tokens whose best label's term points most along the gradient (directional ranking
    of every (first token, label) pair, ``CHUNK`` first tokens a pass)."""
    g, vocab = terms.observed, terms.model.get_input_embeddings().weight.shape[0]
    best = torch.cat([terms.directional([[v] for v in range(s, min(vocab, s + CHUNK))],
                                        g.expand(min(vocab, s + CHUNK) - s, -1)).max(1).values
                      for s in range(0, vocab, CHUNK)])
    return best.topk(min(count, vocab)).indices.tolist()


def pursue_from(terms: Terms, first: int, config: PursuitConfig) -> tuple[list[int], float, set[int]]:
    """The pursuit from ``first``: its sentence, the cosine of its terms' sum with the gradient, its runners-up
    (labels nearly as good at some step). It stops when no label raises that cosine."""
    g = terms.observed
    sequence, total, fit, spare = [first], torch.zeros_like(g), -1.0, set()
    while len(sequence) < config.max_length:
        u = g if not bool(total.any()) else g - float(g @ total / (total @ total)) * total
        labels = terms.directional([sequence], u[None])[0].topk(config.labels).indices.tolist()
        options = terms.label_terms([sequence] * len(labels), labels)                          # (M, P)
        ranked = (options @ u).argsort(descending=True).tolist()
        spare |= {labels[i] for i in ranked[:config.runners_up]}
        trial = total + options[ranked[0]]
        trial_fit = float(g @ trial / (g.norm() * trial.norm()))
        if trial_fit <= fit:
            break
        sequence, total, fit = sequence + [labels[ranked[0]]], trial, trial_fit
        logger.debug("pursuit: %d tokens, cosine %.4f", len(sequence), fit)
    return sequence, fit, spare


def pursue(terms: Terms, config: PursuitConfig) -> tuple[list[int], list[int]]:
    """The pursuit from the first token whose short pursuit fits best: its sentence and its runners-up."""
    firsts = first_tokens(terms, config.first_tokens)
    short = replace(config, max_length=min(config.screen, config.max_length))
    fits = [pursue_from(terms, first, short)[1] if len(firsts) > 1 else 0.0 for first in firsts]
    first = firsts[max(range(len(firsts)), key=fits.__getitem__)]
    logger.info("pursuit: first token %d, of %d whose %d-token pursuits fit at cosine %s", first, len(firsts),
                short.max_length, " ".join(f"{f:.3f}" for f in fits))
    sequence, _, spare = pursue_from(terms, first, config)
    return sequence, sorted(spare | set(sequence))


def _move(sequence: list[int], spare: Sequence[int], generator: torch.Generator) -> list[int]:
    """One random edit: a block of 1–3 tokens moved (40%), two tokens swapped, one substituted (20% each), one
    inserted or deleted (10% each)."""
    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    s, kind = list(sequence), float(torch.rand((), generator=generator))
    if kind < 0.4:
        n = (1, 1, 2, 3)[draw(4)]
        i = draw(max(1, len(s) - n + 1))
        block = s[i:i + n]
        del s[i:i + n]
        j = draw(len(s) + 1)
        s[j:j] = block
    elif kind < 0.6:
        i, j = draw(len(s)), draw(len(s))
        s[i], s[j] = s[j], s[i]
    elif kind < 0.8:
        s[draw(len(s))] = spare[draw(len(spare))]
    elif kind < 0.9:
        s.insert(draw(len(s) + 1), spare[draw(len(spare))])
    elif len(s) > 2:
        del s[draw(len(s))]
    return s


def reorder(terms: Terms, start: list[int], spare: Sequence[int], config: PursuitConfig, *,
            generator: torch.Generator, on_round: Callable[[int, list[int], float, int], None] | None = None
            ) -> tuple[list[int], float]:
    """The local search on the whole sentence's gradient distance, from ``start`` (``on_round(round, best,
    distance, evaluations)`` sees ``start`` as round 0, then the best after each round)."""
    best, distance = list(start), terms.distances([start])[0]
    if on_round is not None:
        on_round(0, best, distance, terms.evaluations)
    idle = 0
    for round_ in range(1, config.rounds + 1):
        if distance < CERTIFY_DISTANCE or idle >= config.patience:
            break
        moves = {tuple(best[:i] + [best[i + 1], best[i]] + best[i + 2:]): None for i in range(len(best) - 1)}
        moves.pop(tuple(best), None)                              # every swap of neighbours, then random edits
        for _ in range(20 * config.candidates):
            m = tuple(_move(best, spare, generator))
            if m != tuple(best):
                moves[m] = None
            if len(moves) >= config.candidates:
                break
        options = [list(m) for m in moves]
        found = terms.distances(options)
        i = min(range(len(found)), key=found.__getitem__)
        idle = idle + 1 if found[i] >= distance else 0
        if found[i] < distance:
            best, distance = options[i], found[i]
        if on_round is not None:
            on_round(round_, best, distance, terms.evaluations)
    return best, distance


def recover_one(model: nn.Module, gradients: Mapping[str, torch.Tensor], *, pad_id: int, generator: torch.Generator,
                config: PursuitConfig | None = None,
                on_round: Callable[[int, list[int], float, int], None] | None = None) -> PursuitGuess:
    """One sentence from a batch-1 gradient of shared linear weights: pursuit, then the order search."""
    config = config or PursuitConfig()
    started = time.perf_counter()
    shared = {n: g for n, g in gradients.items() if bool(g.detach().any())}
    terms = Terms(model, shared, pad_id)
    start, spare = pursue(terms, config)
    logger.info("pursuit: %d tokens, %d substitutes, %d evaluations", len(start), len(spare), terms.evaluations)
    sequence, distance = reorder(terms, start, spare, config, generator=generator, on_round=on_round)
    logger.info("order search: cosine distance %.4g (%s)", distance,
                "certified" if distance < CERTIFY_DISTANCE else "not certified")
    return PursuitGuess(sequence, distance, terms.evaluations, time.perf_counter() - started)
