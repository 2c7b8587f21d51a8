"""Exact text from a causal-LM gradient, token by token (the observation behind DAGER, Petrov et al., NeurIPS 2024).

* **Tokens per position.** Layer 0's first projections read ``x_t = Norm(embedding(v_t, t))`` at every position
  whose output reaches the loss; their weight gradient holds every ``x_t`` in its row span. A token ``v`` can sit
  at position ``p`` only if ``x(v, p)`` lies in that span (for rotary models ``x`` does not depend on ``p``: the
  test gives the batch's token set).
* **Sentences, prefix by prefix.** The causal mask makes layer 1's input at position ``p`` a function of the
  tokens ``≤ p`` only. So a prefix extended by a candidate token is kept only if that input lies in layer 1's
  span: the batch's prefixes grow one token at a time, every step a test of a few candidates.
* **The last token.** A sequence's last token predicts nothing, so no layer sees it as an input: it is the label
  of the position before. With every other token known, a forward pass gives each position's head input ``o_t``
  and probabilities ``p_t``; the head's gradient (untied) is ``Σ_t (p_t − e_{y_t}) o_tᵀ / N`` and leaves only the
  unknown last labels, found by least squares; with a tied head, the final norm's gradients
  ``Σ_t g_t`` and ``Σ_t g_t ⊙ n_t`` (``g_t = Wᵀ(p_t − e_{y_t}) / N``) leave ``Σ_b w_{y_b}`` and
  ``Σ_b w_{y_b} ⊙ n_b``, matched greedily against the vocabulary.
* **Certificate.** The guess's own gradient is computed and compared with the observed one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nlp_dlg.causal.layers import DecoderLayers
from nlp_dlg.causal.task import causal_lm_gradient
from nlp_dlg.engine.distance import CERTIFY_DISTANCE, certificate_distance
from nlp_dlg.engine.span import Span, SpanUnavailable
from nlp_dlg.text.steps import padded_batch

logger = logging.getLogger(__name__)

RESIDUAL_MAX = 1e-3        # relative distance to a span below which an input counts as inside it
MAX_FRONTIER = 4096        # more extensions passing at one position: layer 1 does not separate the batch
CHUNK = 1024               # candidate tokens per forward pass


@dataclass(frozen=True)
class CausalGuess:
    """Recovered sequences (token ids, unpadded), whether their gradient equals the observed one, and its distance."""

    sequences: list[list[int]]
    certified: bool
    distance: float


def _device(layers: DecoderLayers) -> torch.device:
    return layers.model.get_input_embeddings().weight.device


def token_candidates(layers: DecoderLayers, span: Span, *, max_positions: int) -> list[torch.Tensor]:
    """Per position, the token ids whose layer-0 input lies in ``span``, up to the last position with any.

    Layer 0's input at a position depends on the token and the position only, so one forward pass of a chunk of
    tokens, each repeated over every position, tests them at all positions at once."""
    vocab, device = layers.model.get_input_embeddings().weight.shape[0], _device(layers)
    kept: list[list[torch.Tensor]] = [[] for _ in range(max_positions)]
    chunk = max(1, CHUNK * 16 // max_positions)
    for start in range(0, vocab, chunk):
        ids = torch.arange(start, min(start + chunk, vocab), device=device)
        inside = (span.residual(layers.inputs(ids[:, None].expand(-1, max_positions), 0)) < RESIDUAL_MAX)  # (n, P)
        for p in range(max_positions):
            kept[p].append(ids[inside[:, p].to(device)])
    out = [torch.cat(k) for k in kept]
    while out and len(out[-1]) == 0:
        out.pop()
    logger.info("layer-0 span (rank %d): candidate tokens per position %s", span.rank, [len(c) for c in out])
    return out


def grow_prefixes(layers: DecoderLayers, span: Span, candidates: Sequence[torch.Tensor]) -> list[list[int]]:
    """The batch's visible prefixes: grown one token at a time, each extension kept when layer 1's input at the
    new position lies in ``span``; a prefix that no candidate extends is complete.

    (A rotary model has no position in its residual stream: after a prefix of one repeated token, one more of it
    gives the same input again and adds nothing the gradient could show, so the span cannot tell how many there
    were; an extension whose input repeats the previous position's exactly is not taken.)"""
    device = _device(layers)
    frontier: list[list[int]] = [[]]
    complete: list[list[int]] = []
    for cands in candidates:
        kept: list[tuple[float, list[int]]] = []
        step = max(1, CHUNK // max(1, len(cands)))
        for i in range(0, len(frontier), step):
            group = frontier[i:i + step]
            x, last = layers.extension_inputs(torch.tensor(group, dtype=torch.long, device=device).reshape(
                len(group), -1), cands.to(device))
            res = span.residual(x).cpu()                                             # (F, C)
            if last is not None:
                x, last = x.double(), last.double()[:, None]
                res[((x - last).norm(dim=-1) <= 1e-6 * x.norm(dim=-1)).cpu()] = float("inf")
            kept += [(float(res[f, c]), prefix + [int(cands[c])]) for f, prefix in enumerate(group)
                     for c in (res[f] < RESIDUAL_MAX).nonzero().flatten().tolist()]
        extended = {tuple(prefix[:-1]) for _, prefix in kept}
        logger.debug("position %d: %d prefix(es) x %d candidate(s) -> %d kept", len(frontier[0]), len(frontier),
                     len(cands), len(kept))
        if len(kept) > MAX_FRONTIER:
            raise SpanUnavailable(f"layer 1 does not separate the batch: {len(kept)} extensions fit its span at "
                                  f"position {len(frontier[0])} (rank {span.rank} of {x.shape[-1]}: about as many "
                                  "tokens as dimensions)")
        complete += [prefix for prefix in frontier if prefix and tuple(prefix) not in extended]
        frontier = [prefix for _, prefix in sorted(kept, key=lambda k: k[0])]
        if not frontier:
            break
    complete += [prefix for prefix in frontier if prefix]
    logger.info("layer-1 span (rank %d): %d prefix(es), lengths %s", span.rank, len(complete),
                [len(c) for c in complete])
    return complete


def _visible_rows(layers: DecoderLayers, prefixes: Sequence[list[int]],
                  pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sequence, over its visible positions: the head inputs ``o (T, H)``, the next-token probabilities
    ``p (T, V)`` and the known labels ``y (T − 1,)`` (the next tokens inside the prefix)."""
    ids, mask = padded_batch(prefixes, pad_id, _device(layers))
    o, p = layers.head_inputs(ids, mask)                                           # (B, T, H), (B, T, V)
    return [(o[b, :len(s)].double(), p[b, :len(s)], torch.tensor(s[1:], dtype=torch.long, device=o.device))
            for b, s in enumerate(prefixes)]


def last_tokens(layers: DecoderLayers, gradients: Mapping[str, torch.Tensor], prefixes: Sequence[list[int]],
                pad_id: int) -> list[int]:
    """Each sequence's last token, read off the head's (untied) or the final norm's (tied head) gradient."""
    head = layers.model.get_output_embeddings()
    names = {m: n for n, m in layers.model.named_modules()}
    tied = head.weight is layers.model.get_input_embeddings().weight
    n_labels = sum(len(s) for s in prefixes)                                        # predicted tokens in the batch
    rows = _visible_rows(layers, prefixes, pad_id)
    w = head.weight.detach().double()                                               # (V, H)
    if not tied and f"{names[head]}.weight" in gradients:
        known = sum(p_t.T @ o_t - _onehot_rows(y, o_t[:-1], w.shape[0]) for o_t, p_t, y in rows)   # (V, H)
        r = n_labels * gradients[f"{names[head]}.weight"].double() - known          # = −Σ_b e_{y_b} o_bᵀ
        last = torch.stack([o_t[-1] for o_t, _, _ in rows])                          # (B, H)
        e = -r @ torch.linalg.pinv(last)                                            # (V, B)
        return [int(i) for i in e.argmax(0)]
    return _from_final_norm(layers, gradients, rows, w, n_labels)


def _onehot_rows(y: torch.Tensor, o: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.zeros(vocab, o.shape[1], dtype=o.dtype, device=o.device)
    return out.index_add_(0, y, o)


def _from_final_norm(layers: DecoderLayers, gradients: Mapping[str, torch.Tensor], rows: list, w: torch.Tensor,
                     n_labels: int) -> list[int]:
    found = layers.final_norm()
    if found is None or f"{found[0]}.weight" not in gradients or f"{found[0]}.bias" not in gradients:
        raise SpanUnavailable("a tied head without a final norm with weight and bias: last tokens not readable")
    name, norm = found
    gamma, beta = norm.weight.detach().double(), norm.bias.detach().double()
    n_rows = [((o_t - beta) / gamma, p_t, y) for o_t, p_t, y in rows]               # normalised states
    r_beta = sum((p_t @ w).sum(0) - w[y].sum(0) for _, p_t, y in n_rows)
    r_gamma = sum(((p_t @ w) * n_t).sum(0) - (w[y] * n_t[:-1]).sum(0) for n_t, p_t, y in n_rows)
    r_beta = r_beta - n_labels * gradients[f"{name}.bias"].double()                 # = Σ_b w_{y_b}
    r_gamma = r_gamma - n_labels * gradients[f"{name}.weight"].double()             # = Σ_b w_{y_b} ⊙ n_b
    return _pursue(torch.cat([r_gamma, r_beta]), [n_t[-1] for n_t, _, _ in n_rows], w)


def _pursue(residual: torch.Tensor, states: Sequence[torch.Tensor], w: torch.Tensor) -> list[int]:
    """Greedy matching pursuit: the (sequence b, token v) atom ``a = [w_v ⊙ n_b ; w_v]`` that leaves the smallest
    ``‖r − a‖`` first (each enters with coefficient exactly 1), then the next on what is left."""
    hidden = w.shape[1]
    squares = w * w                                                                  # (V, H)
    chosen: dict[int, int] = {}
    for _ in states:
        best = None
        r_gamma, r_beta = residual[:hidden], residual[hidden:]
        for b, n in enumerate(states):
            if b in chosen:
                continue
            # ‖r − a_v‖² − ‖r‖² = ‖a_v‖² − 2 a_v·r, for every v at once (two matrix-vector products)
            change = squares @ (n * n + 1) - 2 * (w @ (n * r_gamma + r_beta))         # (V,)
            v = int(change.argmin())
            if best is None or float(change[v]) < best[0]:
                best = (float(change[v]), b, v)
        _, b, v = best  # type: ignore[misc]
        chosen[b] = v
        residual = residual - torch.cat([w[v] * states[b], w[v]])
    return [chosen[b] for b in range(len(states))]


def certify(model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], sequences: Sequence[Sequence[int]],
            pad_id: int) -> float:
    """The cosine distance between the gradient of ``sequences`` and the observed one (over the shared tensors)."""
    ids, mask = padded_batch(sequences, pad_id, model.get_input_embeddings().weight.device)
    return certificate_distance(causal_lm_gradient(model, ids, mask), gradients)


def recover(model: torch.nn.Module, gradients: Mapping[str, torch.Tensor], *, batch_size: int,
            pad_id: int, max_positions: int) -> CausalGuess:
    """The batch's sequences from its gradient: tokens, prefixes, last tokens, certificate."""
    layers = DecoderLayers(model, gradients)
    hidden = model.get_input_embeddings().weight.shape[1]
    span0 = layers.span(gradients, 0, max_rank=hidden)
    candidates = token_candidates(layers, span0, max_positions=min(max_positions, span0.rank + 1))
    prefixes = grow_prefixes(layers, layers.span(gradients, 1, max_rank=hidden), candidates)
    if len(prefixes) != batch_size:
        logger.warning("found %d prefix(es) for a batch of %d", len(prefixes), batch_size)
    if not prefixes:
        raise SpanUnavailable("no prefix passed the layer-1 test")
    try:
        sequences = [p + [t] for p, t in zip(prefixes, last_tokens(layers, gradients, prefixes, pad_id))]
    except SpanUnavailable as exc:    # e.g. LoRA: neither the head nor the final norm is shared
        logger.warning("the last token of each sequence is not recoverable (%s): the prefixes are reported", exc)
        sequences = [list(p) for p in prefixes]
    distance = certify(model, gradients, sequences, pad_id)
    logger.info("guess's gradient at cosine distance %.3g from the observed one (%s)", distance,
                "certified" if distance < CERTIFY_DISTANCE else "not certified")
    return CausalGuess(sequences, distance < CERTIFY_DISTANCE, distance)
