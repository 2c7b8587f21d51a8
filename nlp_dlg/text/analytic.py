"""Analytic leakage of a BERT masked-LM gradient: input tokens from attention spans, labels from the head.

* **Tokens** (DAGER, Petrov et al., NeurIPS 2024). The gradient of a linear map ``y = W x`` applied at
  every token is ``Σ_t δ_t x_tᵀ``: its row space is spanned by the inputs ``x_t``. For the first
  attention layer ``x_t = LayerNorm(word + position + token type)``, which the attacker computes for
  any (token, position); a token can sit at a position only if that vector lies in the span of the
  stacked query/key/value weight gradients (:func:`attention_input_span`, :func:`position_candidates`).
* **Sentences**. With a batch, the first-layer check is not enough: at random init the embedding
  LayerNorm is a plain centring and scaling, so the span is closed under ``x(v,p) − x(v,q) + x(w,q)`` and
  a token seen anywhere passes at many positions. The second layer decides: its span holds the first
  layer's *outputs*, which depend on the whole sequence. :func:`assemble_batch` searches, per sequence
  length, for sentences whose every first-layer output lies in the second layer's span (coordinate
  descent over the candidates, all positions updated at once); a sentence passes only when every
  position fits to float32 precision, so what it returns is certified, not guessed.
* **Labels**. The head computes ``z = dense(u)``, ``n = LN(gelu(z))``, ``logits = W n + b``. The dense
  weight gradient is ``K = Σ_t a_t u_tᵀ / M`` with ``a_t = ∂CE_t/∂z_t``, zero at unlabelled positions.
  Once the input is known a forward pass gives every ``u_t``; with the ``u_t`` independent (B·T ≤ H),
  ``a_t`` follows per position by least squares: the non-zero ones are the labelled positions, and
  ``a_t = J_tᵀ (Wᵀ p_t − W_y)`` names the word ``y`` (:func:`place_labels`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from transformers import BertForMaskedLM

from nlp_dlg.engine.errors import GradientMismatchError
from nlp_dlg.text.priors import MaskedLMPriors, parameter_name

logger = logging.getLogger(__name__)

MIN_SPAN_GAP = 10.0       # a span's smallest kept singular value stands this factor above the next one
RESIDUAL_MAX = 1e-3       # relative distance to a span below which a vector counts as inside it
CERTIFY_MAX = 1e-4        # mean second-layer residual of a certified sentence


class SpanUnavailable(GradientMismatchError):
    """The span check cannot work on this gradient (missing, full rank, or noise fills the rank)."""


@dataclass(frozen=True)
class Span:
    """An orthonormal basis of the inputs of one attention layer, read off its weight gradients."""

    basis: torch.Tensor            # (H, r) float64, orthonormal columns
    singular_values: torch.Tensor  # all singular values, descending, relative to the largest

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``‖x − P x‖ / ‖x‖`` per row of ``x (…, H)``: 0 inside the span, ~1 far from it."""
        x = x.double()
        inside = (x @ self.basis) @ self.basis.T
        return (x - inside).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-30)


def attention_input_span(gradients: Mapping[str, torch.Tensor], model: BertForMaskedLM, layer: int,
                         max_rank: int) -> Span:
    """The span of layer ``layer``'s inputs from its query/key/value weight gradients.

    The rank is the largest gap in the singular values among the first ``max_rank`` (at most B·T
    tokens feed the layer); it must be at least ``MIN_SPAN_GAP``, else noise fills the rank.
    """
    self_att = model.bert.encoder.layer[layer].attention.self
    names = [parameter_name(model, m.weight) for m in (self_att.query, self_att.key, self_att.value)]
    missing = [n for n in names if n not in gradients]
    if missing:
        raise SpanUnavailable(f"the gradient lacks {', '.join(missing)}: no span check")
    stacked = torch.cat([gradients[n] for n in names]).double()                     # (3H, H)
    _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    hidden = stacked.shape[1]
    if not bool(torch.isfinite(s).all()) or float(s[0]) == 0.0:
        raise SpanUnavailable(f"layer {layer}: the attention gradient is zero or not finite")
    rel = s / s[0]
    top = min(max_rank, hidden - 1)
    ratios = rel[:top] / rel[1:top + 1].clamp_min(1e-300)                           # ratios[i] = σ_i / σ_(i+1)
    rank = int(ratios.argmax()) + 1
    if float(ratios[rank - 1]) < MIN_SPAN_GAP:
        raise SpanUnavailable(f"layer {layer}: no gap in the singular values of the attention gradient "
                              f"(largest {float(ratios.max()):.3g}x at {rank}): noise fills the rank or the "
                              f"batch holds more tokens ({max_rank}) than the hidden size ({hidden})")
    logger.debug("layer %d span: rank %d, gap %.3g", layer, rank, float(ratios[rank - 1]))
    return Span(vh[:rank].T.contiguous(), rel)


def embedding_output(model: BertForMaskedLM, word: torch.Tensor, positions: int | torch.Tensor) -> torch.Tensor:
    """``LayerNorm(word + position + token type 0)``: what the first encoder layer sees, for word
    embeddings ``word (…, H)`` at ``positions`` (an index, or indices broadcasting against ``word``'s
    leading dimensions)."""
    emb = model.bert.embeddings
    return emb.LayerNorm(word + emb.position_embeddings.weight[positions] + emb.token_type_embeddings.weight[0])


def first_layer_inputs(model: BertForMaskedLM, token_ids: torch.Tensor, position: int) -> torch.Tensor:
    """:func:`embedding_output` of each token at ``position``: ``(K, H)``."""
    with torch.no_grad():
        return embedding_output(model, model.bert.embeddings.word_embeddings.weight[token_ids], position)


def position_candidates(model: BertForMaskedLM, span: Span, token_ids: torch.Tensor, length: int,
                        *, threshold: float = RESIDUAL_MAX, chunk: int = 8192) -> list[torch.Tensor]:
    """Per position ``0…length−1``: the tokens (of ``token_ids``) whose first-layer input lies in ``span``,
    sorted by residual."""
    out = []
    for p in range(length):
        ids, res = [], []
        for start in range(0, len(token_ids), chunk):
            part = token_ids[start:start + chunk]
            r = span.residual(first_layer_inputs(model, part, p))
            keep = r < threshold
            ids.append(part[keep])
            res.append(r[keep])
        ids_p, res_p = torch.cat(ids), torch.cat(res)
        out.append(ids_p[res_p.argsort()])
    return out


class _FirstLayer:
    """Outputs of BERT's first encoder layer (eval mode), full or for one substituted position."""

    def __init__(self, model: BertForMaskedLM) -> None:
        self.model = model
        self.layer = model.bert.encoder.layer[0]
        att = self.layer.attention.self
        self.heads, self.head_dim = att.num_attention_heads, att.attention_head_size

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """First-layer inputs of one unpadded sequence ``ids (L,)``: ``(L, H)``."""
        word = self.model.bert.embeddings.word_embeddings.weight[ids]
        return embedding_output(self.model, word, torch.arange(len(ids)))

    def _after_attention(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        a = lay.attention.output.LayerNorm(lay.attention.output.dense(context) + residual)
        return lay.output.LayerNorm(lay.output.dense(lay.intermediate(a)) + a)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """Layer output for the whole sequence ``x (L, H)``."""
        return self.substituted(x, torch.arange(len(x)), x)

    def substituted(self, x: torch.Tensor, positions: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
        """Output at ``positions[n]`` if the input there were ``options[n]`` (the rest of ``x`` kept): ``(N, H)``.

        One query per option over the sequence's keys, the key/value at its own position replaced."""
        att = self.layer.attention.self
        n, length = len(options), len(x)
        nh, hd = self.heads, self.head_dim
        q = att.query(options).view(n, nh, hd)
        k_opt, v_opt = att.key(options).view(n, nh, hd), att.value(options).view(n, nh, hd)
        keys, values = att.key(x).view(length, nh, hd), att.value(x).view(length, nh, hd)
        scores = torch.einsum("nhd,shd->nhs", q, keys)                                  # (N, nh, L)
        own = (q * k_opt).sum(-1)                                                        # (N, nh)
        scores[torch.arange(n), :, positions] = own
        weights = (scores / math.sqrt(hd)).softmax(-1)
        context = torch.einsum("nhs,shd->nhd", weights, values)
        w_own = weights[torch.arange(n), :, positions].unsqueeze(-1)                     # (N, nh, 1)
        context = context + w_own * (v_opt - values[positions])
        return self._after_attention(context.reshape(n, nh * hd), options)


@dataclass(frozen=True)
class AssembledSentence:
    """A sequence found by :func:`assemble_batch`: its token ids (``[CLS] … [SEP]``) and how well its
    first-layer outputs fit the second layer's span (mean relative residual; ~1e-7 when exact)."""

    token_ids: tuple[int, ...]
    residual: float

    @property
    def certified(self) -> bool:
        return self.residual < CERTIFY_MAX


def _descend(first: _FirstLayer, span2: Span, ids: torch.Tensor, flat_pos: torch.Tensor, flat_ids: torch.Tensor,
             flat_inputs: torch.Tensor, max_sweeps: int, keep: int, anchor: bool = False) -> torch.Tensor:
    """Coordinate descent, all inner positions at once: each takes the candidate whose substituted
    first-layer output is nearest the second layer's span, the rest of the sentence held fixed. After
    the first sweep only the ``keep`` best candidates per position stay in play. ``anchor``: the first
    word (position 1) stays as given."""
    length = len(ids)
    if anchor:
        other = flat_pos != 1
        flat_pos, flat_ids, flat_inputs = flat_pos[other], flat_ids[other], flat_inputs[other]
    for sweep in range(max_sweeps):
        x = first.inputs(ids)
        res = span2.residual(first.substituted(x, flat_pos, flat_inputs))                   # (N,)
        new = ids.clone()
        kept = []
        for p in range(2 if anchor else 1, length - 1):
            sel = (flat_pos == p).nonzero().flatten()
            order = sel[res[sel].argsort()]
            new[p] = flat_ids[order[0]]
            kept.append(order[:keep])
        if torch.equal(new, ids):
            break
        ids = new
        if sweep == 0:
            chosen = torch.cat(kept)
            flat_pos, flat_ids, flat_inputs = flat_pos[chosen], flat_ids[chosen], flat_inputs[chosen]
    return ids


def assemble_batch(model: BertForMaskedLM, span2: Span, candidates: Sequence[torch.Tensor], batch_size: int, *,
                   cls_id: int, sep_id: int, generator: torch.Generator, starts_per_length: int | None = None,
                   max_sweeps: int = 12) -> list[AssembledSentence]:
    """Find up to ``batch_size`` distinct sentences whose first-layer outputs lie in ``span2``.

    Sequence lengths are tried longest first, from where ``[SEP]`` is a candidate. Pass 1: each start
    draws a token per position from its candidates (preferring tokens no sentence found so far has
    there) and descends; a length is abandoned after three fruitless starts. Pass 2, while sentences
    are missing (a found sentence's prefix can attract every start at a shorter length): per length,
    the first word is held at each candidate no found sentence starts with. Returns the certified
    sentences, then, if fewer than ``batch_size`` were certified, the best uncertified ones.
    """
    first = _FirstLayer(model)
    starts_per_length = starts_per_length or 2 * batch_size + 2
    lengths = [p + 1 for p in range(len(candidates) - 1, 1, -1)
               if bool((candidates[p] == sep_id).any()) and bool((candidates[0] == cls_id).any())]
    found: dict[tuple[int, ...], AssembledSentence] = {}
    failures: list[AssembledSentence] = []
    def attempt(length: int, start: list[int], flat: tuple[torch.Tensor, ...], anchor: bool) -> bool:
        ids = _descend(first, span2, torch.tensor(start), *flat, max_sweeps, keep=batch_size + 2, anchor=anchor)
        residual = float(span2.residual(first.full(first.inputs(ids))).mean())
        sentence = AssembledSentence(tuple(ids.tolist()), residual)
        if sentence.certified and sentence.token_ids not in found:
            found[sentence.token_ids] = sentence
            logger.debug("assembled a certified sentence of %d tokens (residual %.2g)", length, residual)
            return True
        logger.debug("length %d: start ended at residual %.2g (%s)", length, residual,
                     "a sentence found before" if sentence.token_ids in found else "not certified")
        if sentence.token_ids not in found:
            failures.append(sentence)
        return False

    with torch.no_grad():
        flats = {}
        for length in lengths:
            inner = [candidates[p][candidates[p] != sep_id] for p in range(1, length - 1)]
            if any(len(c) == 0 for c in inner):
                continue
            flats[length] = (inner, (torch.cat([torch.full((len(c),), p + 1) for p, c in enumerate(inner)]),
                                     torch.cat(inner),
                                     torch.cat([first_layer_inputs(model, c, p + 1) for p, c in enumerate(inner)])))
        # pass 1: random starts per length, preferring tokens no found sentence has at that position
        for length, (inner, flat) in flats.items():
            fruitless = 0
            for _ in range(starts_per_length):
                if len(found) >= batch_size or fruitless >= 3:
                    break
                # a found sentence (or its prefix) attracts every start: draw other tokens where possible
                used = [{s.token_ids[p] for s in found.values() if p < len(s.token_ids)} for p in range(length)]
                start = [cls_id]
                for p, c in enumerate(inner, start=1):
                    fresh = torch.tensor([int(t) not in used[p] for t in c])
                    pool = c[fresh] if bool(fresh.any()) else c
                    start.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
                fruitless = 0 if attempt(length, start + [sep_id], flat, anchor=False) else fruitless + 1
        # pass 2: the first word held fixed at each candidate no found sentence starts with
        for length, (inner, flat) in flats.items():
            if len(found) >= batch_size:
                break
            firsts = {s.token_ids[1] for s in found.values() if len(s.token_ids) > 2}
            for word in inner[0].tolist():
                if len(found) >= batch_size:
                    break
                if word in firsts:
                    continue
                start = [cls_id, word] + [int(c[torch.randint(len(c), (1,), generator=generator)]) for c in inner[1:]]
                if attempt(length, start + [sep_id], flat, anchor=True):
                    firsts.add(found[next(reversed(found))].token_ids[1])
    result = list(found.values())
    if len(result) < batch_size:
        logger.warning("certified %d of %d sentence(s) from the attention spans", len(result), batch_size)
        result += sorted(failures, key=lambda s: s.residual)[: batch_size - len(result)]
    return result


def place_labels(model: BertForMaskedLM, gradients: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, priors: MaskedLMPriors) -> tuple[torch.Tensor, float]:
    """Which positions carry a label and which word, from the head's dense-weight gradient.

    Args:
        input_ids, attention_mask: ``(B, T)``, the (reconstructed) input the model saw.
        priors: label words and counts from the bias gradient.

    Returns:
        ``(labels, misfit)``: labels ``(B, T)`` with the word at labelled positions and -100 elsewhere,
        and the mean relative misfit of the chosen words (~1e-6 when the input is right).
    """
    head = model.cls.predictions
    dense_name = parameter_name(model, head.transform.dense.weight)
    if dense_name not in gradients:
        raise SpanUnavailable(f"the gradient lacks {dense_name!r}: labels cannot be placed analytically")
    live = attention_mask.bool().flatten()
    with torch.no_grad():
        hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    u = hidden.reshape(-1, hidden.shape[-1])[live].double()                               # (N, H)
    if u.shape[0] > u.shape[1]:
        raise SpanUnavailable(f"{u.shape[0]} tokens exceed the hidden size {u.shape[1]}: labels not separable")
    m = priors.num_labelled
    k = gradients[dense_name].double() * m                                                # Σ_t a_t u_tᵀ
    a = torch.linalg.lstsq(u.T, k.T).solution                                             # (N, H): a_t per row
    norms = a.norm(dim=1)
    labelled = norms.topk(min(m, len(norms))).indices.sort().values                     # (M,)
    # a_t = J_tᵀ (Wᵀ p_t − W_y): evaluate the right side for every label word y at each labelled t
    words = priors.label_ids
    w = head.decoder.weight.detach()
    tr = head.transform
    z = tr.dense(u[labelled].float()).detach()                                            # (M, H)
    with torch.no_grad():
        n_vec = tr.LayerNorm(tr.transform_act_fn(z))
        probs = (n_vec @ w.T + head.bias).softmax(-1)                                      # (M, V)
    mm, nw = len(labelled), len(words)
    outer = (probs @ w).unsqueeze(1) - w[words].unsqueeze(0)                              # (M, L, H) dCE/dn
    z_rep = z.unsqueeze(1).expand(mm, nw, -1).reshape(mm * nw, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        out = tr.LayerNorm(tr.transform_act_fn(z_rep))
        (predicted,) = torch.autograd.grad(out, z_rep, grad_outputs=outer.reshape(mm * nw, -1))
    predicted = predicted.reshape(mm, nw, -1).double()
    target = a[labelled]                                                                   # (M, H)
    misfit = (predicted - target.unsqueeze(1)).norm(dim=-1) / target.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    # each occurrence of a word labels one position: Hungarian over positions × occurrences
    occ = torch.arange(nw).repeat_interleave(priors.label_counts)                         # (M',)
    cost = misfit[:, occ].numpy()
    rows, cols = linear_sum_assignment(cost)
    flat = torch.full((int(live.sum()),), -100, dtype=torch.long)
    flat[labelled[torch.as_tensor(rows)]] = words[occ[torch.as_tensor(cols)]]
    labels = torch.full(input_ids.shape, -100, dtype=torch.long)
    labels.view(-1)[live.nonzero().flatten()] = flat
    return labels, float(cost[rows, cols].mean()) if len(rows) else float("inf")
