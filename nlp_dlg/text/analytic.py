"""Analytic leakage of a BERT masked-LM gradient: input tokens from attention spans, labels from the head.

* **Tokens** (DAGER, Petrov et al., NeurIPS 2024). The gradient of a linear map ``y = W x`` applied at
  every token is ``Σ_t δ_t x_tᵀ``: its row space is spanned by the inputs ``x_t``. For the first
  attention layer ``x_t = LayerNorm(word + position + token type)``, which the attacker computes for
  any (token, position); a token can sit at a position only if that vector lies in the span of the
  stacked query/key/value weight gradients (:func:`attention_input_span`, :func:`position_candidates`).
* **Sentences**. With a batch, the first-layer check is not enough: at random init the embedding
  LayerNorm is a plain centring and scaling, so the span is closed under ``x(v,p) − x(v,q) + x(w,q)`` and
  a token seen anywhere passes at many positions. The second layer decides: its span holds the first
  layer's *outputs*, which depend on the whole sequence. In any context, a (token, position) pair of
  the batch lands about twice as near that span as one that is not (:func:`pair_filter`, which leaves
  at most B tokens per position). :func:`assemble_batch` then searches, per sequence length, for
  sentences whose every first-layer output lies in the second layer's span: a relaxed start (a softmax
  mixture of the kept tokens per position, annealed to one-hot) polished by coordinate descent and, where
  the second layer does not separate the pairs (a pretrained encoder), by an iterated local search on the
  sentence's own residual; a sentence passes only when every position fits to float32 precision, so what it
  returns is certified, not guessed.
* **Labels**. The head computes ``z = dense(u)``, ``n = LN(gelu(z))``, ``logits = W n + b``. The dense
  weight gradient is ``K = Σ_t a_t u_tᵀ / M`` with ``a_t = ∂CE_t/∂z_t``, zero at unlabelled positions.
  Once the input is known a forward pass gives every ``u_t``; with the ``u_t`` independent (B·T ≤ H),
  ``a_t`` follows per position by least squares: the non-zero ones are the labelled positions, and
  ``a_t = J_tᵀ (Wᵀ p_t − W_y)`` names the word ``y`` (:func:`place_labels`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from transformers import BertForMaskedLM

from nlp_dlg.engine.device import randint, randn
from nlp_dlg.engine.span import Span, SpanUnavailable, input_span
from nlp_dlg.text.priors import MaskedLMPriors, parameter_name

logger = logging.getLogger(__name__)

RESIDUAL_MAX = 1e-3       # relative distance to a span below which a vector counts as inside it
CERTIFY_MAX = 1e-4        # mean second-layer residual of a certified sentence
PAIR_GAP = 1.5            # residual jump that separates a batch's (token, position) pairs from the rest
PAIR_CONTEXTS = 3         # random contexts of the pair filter; a token any of them keeps stays
CUT_FRACTION = 0.5        # the pair filter separates only when at least this share of positions shows a jump
SELECTIVE_FRACTION = 0.5  # below this mean share of the batch's tokens per position, no pair filter
RELAX_STEPS = 200         # Adam steps of one relaxed start after a fruitless round at its length
RELAX_STEPS_FIRST = 20    # and while the rounds at its length yield (at random init 20 find what 200 do)
RELAX_FINAL_TEMPERATURE = 0.05
DESCENT_PATIENCE = 4      # sweeps of the coordinate descent without a new lowest sentence residual: it stops
LABEL_RESIDUAL = 1e-2     # a known position is labelled when its final hidden state is this near the head's row space
AVOID_WEIGHT = 2e-3       # penalty on a found sentence's tokens (the residual² of a mixture is ~4e-4)
LOCAL_TOP = 3             # options per position (the nearest to the span in the sentence) that a local move tries
ITERATE_ROUNDS = 30       # perturbations of the iterated local search from one start
ITERATE_WIDTH = 3         # neighbouring positions one perturbation draws afresh
ITERATE_STARTS = 2        # relaxed starts per round where each start is searched this long
PEEL_FIRST_ABOVE = 4      # batch size above which a search that does not separate returns at its first sentence


def attention_input_span(gradients: Mapping[str, torch.Tensor], model: BertForMaskedLM, layer: int,
                         max_rank: int, *, rank: int | None = None) -> Span:
    """The span of layer ``layer``'s inputs from its query/key/value weight gradients.

    The rank is the largest gap in the singular values among the first ``max_rank`` (at most B·T
    tokens feed the layer); it must be at least ``MIN_SPAN_GAP``, else noise fills the rank. A known
    ``rank`` (a noisy gradient of one sentence of T distinct positions has rank T) skips the gap test.
    """
    layers = len(model.bert.encoder.layer)
    if layer >= layers:
        raise SpanUnavailable(f"the model has {layers} layer(s): no layer {layer + 1} to check against")
    self_att = model.bert.encoder.layer[layer].attention.self
    names = [parameter_name(model, m.weight) for m in (self_att.query, self_att.key, self_att.value)]
    missing = [n for n in names if n not in gradients]
    if missing:
        raise SpanUnavailable(f"the gradient lacks {', '.join(missing)}: no span check")
    return input_span([gradients[n] for n in names], max_rank=max_rank, rank=rank, what=f"layer {layer}")


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


def nearest_tokens(model: BertForMaskedLM, span: Span, token_ids: torch.Tensor, length: int,
                   *, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position ``0…length−1`` the token (of ``token_ids``) whose first-layer input is nearest to ``span``,
    and the margin ``second-nearest residual / nearest residual`` (large: unambiguous). For a noisy span,
    where no token lies inside it (:func:`position_candidates` finds none) but the right one is still the
    nearest by far."""
    best, margin = [], []
    for p in range(length):
        res = torch.cat([span.residual(first_layer_inputs(model, token_ids[i:i + chunk], p))
                         for i in range(0, len(token_ids), chunk)])
        two = res.topk(min(2, len(res)), largest=False)
        best.append(token_ids[two.indices[0]])
        margin.append(two.values[-1] / two.values[0].clamp_min(1e-30) if len(res) > 1
                      else torch.tensor(float("inf"), device=res.device))
    return torch.stack(best), torch.stack(margin).double()


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
        return embedding_output(self.model, word, torch.arange(len(ids), device=word.device))

    def _after_attention(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        a = lay.attention.output.LayerNorm(lay.attention.output.dense(context) + residual)
        return lay.output.LayerNorm(lay.output.dense(lay.intermediate(a)) + a)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """Layer output for the whole sequence ``x (L, H)``."""
        return self.substituted(x, torch.arange(len(x), device=x.device), x)

    def full_batch(self, x: torch.Tensor,
                   projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Layer outputs for sequences ``x (S, L, H)`` of one length (differentiable in ``x``). ``projected``: the
        attention's queries, keys and values of ``x``, each ``(S, L, H)``, when the caller has them (for a
        mixture of inputs, the same mixture of theirs: the projections are affine and the weights sum to 1)."""
        att = self.layer.attention.self
        s, length, _ = x.shape
        q, k, v = (t.reshape(s, length, self.heads, self.head_dim) for t in
                   (projected if projected is not None else (att.query(x), att.key(x), att.value(x))))
        scores = torch.einsum("slhd,sthd->shlt", q, k) / math.sqrt(self.head_dim)          # (S, nh, L, L)
        context = torch.einsum("shlt,sthd->slhd", scores.softmax(-1), v)                   # (S, L, nh, hd)
        return self._after_attention(context.reshape(s, length, -1), x)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's queries, keys and values of first-layer inputs ``x (N, H)``, each ``(N, nh, hd)``."""
        att = self.layer.attention.self
        return tuple(m(x).view(len(x), self.heads, self.head_dim)    # type: ignore[return-value]
                     for m in (att.query, att.key, att.value))

    def substituted(self, x: torch.Tensor, positions: torch.Tensor, options: torch.Tensor,
                    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Output at ``positions[n]`` if the input there were ``options[n]`` (the rest of ``x`` kept): ``(N, H)``.

        One query per option over the sequence's keys, the key/value at its own position replaced.
        ``projected``: the options' :meth:`project`, when the caller tries the same options in many sentences
        (three of the layer's six weight matrices, a quarter of its multiply-adds per option)."""
        n, nh, hd = len(options), self.heads, self.head_dim
        q, k_opt, v_opt = projected if projected is not None else self.project(options)
        _, keys, values = self.project(x)                                                 # (L, nh, hd)
        scores = torch.einsum("nhd,shd->nhs", q, keys)                                  # (N, nh, L)
        own = (q * k_opt).sum(-1)                                                        # (N, nh)
        rows = torch.arange(n, device=options.device)
        scores[rows, :, positions] = own
        weights = (scores / math.sqrt(hd)).softmax(-1)
        context = torch.einsum("nhs,shd->nhd", weights, values)
        w_own = weights[rows, :, positions].unsqueeze(-1)                                # (N, nh, 1)
        context = context + w_own * (v_opt - values[positions])
        return self._after_attention(context.reshape(n, nh * hd), options)


@dataclass(frozen=True)
class _Options:
    """The options of a sentence search at one length, flattened: each option's position, token id, first-layer
    input ``(N, H)`` and its :meth:`_FirstLayer.project`, computed once for every sentence they are tried in."""

    positions: torch.Tensor
    ids: torch.Tensor
    inputs: torch.Tensor
    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    slots: torch.Tensor          # (L, most options at a position): each position's option indices, padded with -1

    @classmethod
    def of(cls, first: _FirstLayer, options: Sequence[torch.Tensor]) -> _Options:
        inputs = torch.cat([first_layer_inputs(first.model, c, p) for p, c in enumerate(options)])
        return cls(_flat_positions(options), torch.cat(list(options)), inputs, first.project(inputs),
                   _slots(options).to(inputs.device))

    def outputs(self, first: _FirstLayer, ids: torch.Tensor) -> torch.Tensor:
        """Every option's first-layer output in the sentence ``ids``, substituted at its position: ``(N, H)``."""
        return first.substituted(first.inputs(ids), self.positions, self.inputs, self.projected)

    def table(self, residuals: torch.Tensor) -> torch.Tensor:
        """``residuals (N,)`` of the options laid out by position: ``(L, most options)``, inf where none."""
        return residuals[self.slots.clamp_min(0)].masked_fill(self.slots < 0, math.inf)

    def _own(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each position's slots hold its own token of the sentence ``ids (L,)``: ``(L, most options)``."""
        return (self.ids[self.slots.clamp_min(0)] == ids[:, None]) & (self.slots >= 0)

    def current(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """From a :meth:`table`, the residual of each position's own token in the sentence ``ids (L,)``: ``(L,)``."""
        return table.masked_fill(~self._own(ids), math.inf).min(1).values

    def picks(self, ids: torch.Tensor) -> torch.Tensor:
        """The option index at each position of the sentence ``ids (L,)`` (each token one of its position's
        options): ``(L,)``."""
        return self.slots.gather(1, self._own(ids).float().argmax(1, keepdim=True)).squeeze(1)

    def residuals(self, first: _FirstLayer, span2: Span, picks: torch.Tensor) -> torch.Tensor:
        """Mean second-layer residual of each sentence ``picks (S, L)`` (option indices): ``(S,)``."""
        projected = tuple(t[picks].flatten(-2) for t in self.projected)
        h = first.full_batch(self.inputs[picks], projected)                             # (S, L, H)
        return span2.residual(h).mean(1)

    def nearest(self, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From a :meth:`table`, each position's lowest residual and its option's token id: ``(L,)`` each."""
        lowest, where = table.min(1)
        return lowest, self.ids[self.slots.gather(1, where[:, None]).squeeze(1)]


@dataclass(frozen=True)
class AssembledSentence:
    """A sequence found by :func:`assemble_batch`: its token ids (``[CLS] … [SEP]``) and how well its
    first-layer outputs fit the second layer's span (mean relative residual; ~1e-7 when exact)."""

    token_ids: tuple[int, ...]
    residual: float

    @property
    def certified(self) -> bool:
        return self.residual < CERTIFY_MAX


def _descend(first: _FirstLayer, span2: Span, ids: torch.Tensor, options: _Options, max_sweeps: int, *,
             damped: bool) -> torch.Tensor:
    """Coordinate descent: at each sweep every inner position finds the option whose substituted first-layer
    output is nearest the second layer's span, the rest of the sentence held fixed, and takes it; ``damped``: only
    the half of the positions that would change (rounded up) with the largest drop in their own residual take
    theirs. Where the second layer separates the batch's pairs out of context (random init), moving every position
    at once makes the sweeps swing between two sentences where positions that see each other change together;
    moving half certifies about twice as many descents for 1.2-1.4x the sweeps (BERT-base random init, each start
    descended both ways, `benchmarks/bench_descent.py`: 108 starts of a batch of 16, 35 certified instead of 17,
    743 sweeps against 540; 98 of two batches of 8, 43 instead of 27, 635 against 512). Where it does not (the
    pretrained MiniLM), the undamped descent comes first: the second of two batches of 4 came back whole with it and
    not at all with the damped one (a batch of real reviews the other way round: :func:`search_sentences` tries the
    other descent where one certifies nothing).
    It finds the sentence from a start with about three quarters of its tokens right, not from a random one. It
    stops at a fixed point, where a sweep comes back to a sentence it visited (the sweeps are deterministic: they
    would cycle through the same sentences until ``max_sweeps``), or after ``DESCENT_PATIENCE`` sweeps without a
    new lowest residual of the sentence."""
    visited = {tuple(ids.tolist())}
    best, since = math.inf, 0
    for _ in range(max_sweeps):
        table = options.table(span2.residual(options.outputs(first, ids)))              # (L, most options)
        own = options.current(table, ids)                                               # (L,)
        current = float(own.mean())
        best, since = (current, 0) if current < best else (best, since + 1)
        if since >= DESCENT_PATIENCE:
            return ids
        lowest, nearest = options.nearest(table)                                        # (L,), (L,)
        want = nearest != ids
        want[0] = want[-1] = False                                                      # [CLS], [SEP] stay
        moving = int(want.sum())
        if not moving:
            return ids
        gain = torch.where(want, own - lowest, torch.full_like(own, -math.inf))
        pick = gain.topk((moving + 1) // 2 if damped else moving).indices
        new = ids.clone()
        new[pick] = nearest[pick]
        key = tuple(new.tolist())
        if key in visited:
            return new
        visited.add(key)
        ids = new
    return ids


def _moves(picks: torch.Tensor, tops: torch.Tensor) -> torch.Tensor:
    """The sentences one move from ``picks (L,)``: an inner position takes one of its ``tops (L, k)`` (option
    indices, -1 where none), or two neighbouring inner positions take one of theirs each: ``(M, L)``."""
    change = (tops != picks[:, None]) & (tops >= 0)                                     # (L, k)
    change[0] = change[-1] = False                                                      # [CLS], [SEP] stay
    p, j = change.nonzero(as_tuple=True)
    singles = picks.repeat(len(p), 1)
    singles[torch.arange(len(p), device=picks.device), p] = tops[p, j]
    q, a, b = (change[:-1, :, None] & change[1:, None, :]).nonzero(as_tuple=True)       # (q, a) with (q + 1, b)
    pairs = picks.repeat(len(q), 1)
    rows = torch.arange(len(q), device=picks.device)
    pairs[rows, q] = tops[q, a]
    pairs[rows, q + 1] = tops[q + 1, b]
    return torch.cat([singles, pairs])


def _local_search(first: _FirstLayer, span2: Span, ids: torch.Tensor, options: _Options,
                  max_moves: int) -> tuple[torch.Tensor, float]:
    """Best-improvement local search on the sentence's own second-layer residual (the mean over its positions):
    each step tries every move of :func:`_moves` among each position's ``LOCAL_TOP`` options nearest the span in
    the current sentence and takes the one that lowers the sentence's residual most; it stops where none lowers
    it. Where a wrong token moves its neighbours' residuals too (the pretrained MiniLM couples a position to its
    neighbours 2.2-2.5x, `benchmarks/bench_span_limit.py`), :func:`_descend`, which judges each position by its own
    residual, is misled: from a batch of 8 reviews' true sentences with 5 random tokens wrong it came back to the
    truth from 0 of 16 starts (damped: 4), this search from 14 (`benchmarks/bench_basin.py`). Returns the sentence
    and its residual."""
    picks = options.picks(ids)
    best = float(options.residuals(first, span2, picks[None])[0])
    for _ in range(max_moves):
        table = options.table(span2.residual(options.outputs(first, options.ids[picks])))   # (L, most options)
        tops = options.slots.gather(1, table.argsort(1)[:, :LOCAL_TOP])
        moves = _moves(picks, tops)
        if not len(moves):
            break
        residuals = options.residuals(first, span2, moves)
        k = int(residuals.argmin())
        if float(residuals[k]) >= best:
            break
        best, picks = float(residuals[k]), moves[k]
    return options.ids[picks], best


def _iterated_search(first: _FirstLayer, span2: Span, ids: torch.Tensor, options: _Options,
                     generator: torch.Generator, rounds: int = ITERATE_ROUNDS) -> tuple[torch.Tensor, float]:
    """Iterated local search: :func:`_local_search` from ``ids``, then up to ``rounds`` times: draw afresh the
    ``ITERATE_WIDTH`` positions around one inner position (drawn in proportion to its own residual: a wrong token
    fits worst) and search again; the new sentence replaces the old when its residual is lower. Stops once
    certified. Same batch as :func:`_local_search`'s figures: from 5 wrong tokens 16 of 16 starts came back (local
    search alone: 14); from random starts 2 of 16 (the local search and both descents: 0), 7.3 s per start on one
    thread (`benchmarks/bench_basin.py`). A search runs it only where the descent certified nothing."""
    length = len(ids)
    ids, best = _local_search(first, span2, ids, options, max_moves=3 * length)
    for _ in range(rounds):
        if best < CERTIFY_MAX or length < 3:
            break
        own = span2.residual(first.full(first.inputs(ids)))[1:-1].float().cpu()
        centre = 1 + int(torch.multinomial(own / own.sum(), 1, generator=generator))
        new = ids.clone()
        for p in range(max(1, centre - ITERATE_WIDTH // 2), min(length - 1, centre + ITERATE_WIDTH // 2 + 1)):
            slots = options.slots[p][options.slots[p] >= 0]
            new[p] = options.ids[slots[randint(len(slots), 1, generator=generator, device=slots.device)[0]]]
        new, residual = _local_search(first, span2, new, options, max_moves=3 * length)
        if residual < best:
            ids, best = new, residual
    return ids, best


def pair_filter(model: BertForMaskedLM, span2: Span, candidates: Sequence[torch.Tensor], batch_size: int, *,
                generator: torch.Generator, gap: float = PAIR_GAP, contexts: int = PAIR_CONTEXTS) -> list[torch.Tensor]:
    """Per position: the candidates that sit there in some sentence of the batch.

    The first layer's span is closed under moving a token to another position, so at random init every
    token of the batch passes everywhere. The second layer separates them: placed in any context (here a
    random sentence of candidates), a (token, position) pair of the batch has a first-layer output about
    half as far from the second layer's span as a pair that is not. Per context and position the kept
    tokens are those below the largest jump among the ``batch_size + 1`` nearest when that jump is at
    least ``gap``x; all of them when there is no such jump (small models separate less) or no more than
    ``batch_size``. A token is kept when some of the ``contexts`` random contexts keeps it: where the
    separation is real (random-init BERT) every context keeps the same tokens; where a jump is chance
    (a pretrained encoder, whose second layer does not tell the pairs apart out of context) the contexts
    disagree and the union keeps the right tokens. When fewer than ``CUT_FRACTION`` of the positions
    with more than ``batch_size`` candidates show a jump, the second layer does not separate the pairs out
    of context and every candidate is kept, in the given order; otherwise the kept ones are sorted by
    their median residual over the contexts.
    """
    first = _FirstLayer(model)
    length = len(candidates)
    if sum(len(c) for c in candidates) == 0:
        return list(candidates)
    pool = torch.cat(list(candidates))             # a position with no candidate borrows any token as context
    with torch.no_grad():
        flat = _Options.of(first, candidates)
        flat_pos = flat.positions
        residuals = []
        for _ in range(contexts):
            context = torch.stack([(c if len(c) else pool)[randint(len(c) or len(pool), 1, generator=generator,
                                                                   device=pool.device)][0] for c in candidates])
            residuals.append(span2.residual(flat.outputs(first, context)))
    res = torch.stack(residuals)                   # (contexts, N)
    kept, cut, open_positions = [], 0, 0
    for p in range(length):
        r = res[:, flat_pos == p]                  # (contexts, n_p)
        keep = torch.zeros(r.shape[1], dtype=torch.bool, device=r.device)
        for row in r:
            ordered, order = row.sort()
            k = len(ordered)                       # no more candidates than sentences: all may be right
            if len(ordered) > batch_size:
                ratios = ordered[1:batch_size + 1] / ordered[:batch_size].clamp_min(1e-30)
                if float(ratios.max()) >= gap:
                    k = int(ratios.argmax()) + 1
            keep[order[:k]] = True
        order = r.median(0).values.argsort()
        kept.append(candidates[p][order[keep[order]]])
        if r.shape[1] > batch_size:
            open_positions += 1
            cut += int(keep.sum()) < r.shape[1]
    if cut < CUT_FRACTION * open_positions:
        logger.debug("pair filter: a jump at only %d of %d positions: no separation, every candidate kept",
                     cut, open_positions)
        return list(candidates)
    return kept


def _relaxed_starts(first: _FirstLayer, span2: Span, options: Sequence[torch.Tensor], avoid: Sequence[torch.Tensor],
                    starts: int, generator: torch.Generator, steps: int = RELAX_STEPS) -> torch.Tensor:
    """Starts for :func:`_descend`, ``(starts, L)``: each position a softmax mixture over its ``options``
    (first-layer inputs mixed, ``[CLS]``/``[SEP]`` fixed), the mean squared second-layer residual of the
    layer's outputs minimised by Adam while the softmax temperature anneals to near one-hot, then
    rounded. ``avoid`` (sentences already found at this length) adds a penalty on their tokens, so the
    starts look for another sentence."""
    model = first.model
    with torch.no_grad():    # per position (n_p, 4H): each option's first-layer input, query, key and value
        tables = [torch.cat([x, *(t.flatten(1) for t in first.project(x))], -1)
                  for x in (first_layer_inputs(model, c, p) for p, c in enumerate(options))]
    basis = span2.basis.float()
    logits = [randn(starts, len(c), generator=generator, device=basis.device).requires_grad_(True) for c in options]
    fixed = [p for p, c in enumerate(options) if len(c) == 1]
    hits = [torch.stack([(c == s[p]).float() for s in avoid]) if avoid else None for p, c in enumerate(options)]
    optimizer = torch.optim.Adam(logits, lr=0.1)
    for it in range(steps):
        temperature = RELAX_FINAL_TEMPERATURE ** (it / steps)
        weights = [(lg / temperature).softmax(-1) for lg in logits]                         # per position (S, n_p)
        x, *projected = torch.stack([w @ t for w, t in zip(weights, tables)], dim=1).chunk(4, -1)  # (S, L, H) each
        h = first.full_batch(x, tuple(projected))                                           # (S, L, H)
        residual = (h - (h @ basis) @ basis.T).norm(dim=-1) / h.norm(dim=-1)                # (S, L)
        loss = residual.pow(2).mean(-1).sum()
        if avoid:
            overlap = torch.stack([w @ hit.T for p, (w, hit) in enumerate(zip(weights, hits))
                                   if p not in fixed]).mean(0)                              # (S, found)
            loss = loss + AVOID_WEIGHT * overlap.pow(2).sum()
        # gradients for the logits only: the model's parameters and their .grad stay untouched
        for lg, g in zip(logits, torch.autograd.grad(loss, logits)):
            lg.grad = g
        optimizer.step()
    return torch.stack([torch.stack([c[lg[s].argmax()] for c, lg in zip(options, logits)]) for s in range(starts)])


def length_counts(lengths: Sequence[int], batch_size: int, tokens: int) -> dict[int, int] | None:
    """How many sentences have each length, when the numbers say so unambiguously.

    Every length holds at least one sentence; the second layer's span has one dimension per token of the
    batch, so the lengths of the ``batch_size`` sentences sum to its rank ``tokens``. Returns the counts
    when exactly one multiset of lengths fits, else None."""
    extra = batch_size - len(lengths)
    rest = tokens - sum(lengths)
    if extra < 0 or not lengths or math.comb(len(lengths) + extra - 1, extra) > 200_000:
        return None
    fits = [combo for combo in itertools.combinations_with_replacement(sorted(lengths), extra) if sum(combo) == rest]
    if len(fits) != 1:
        return None
    return {n: 1 + fits[0].count(n) for n in lengths}


def _flat_positions(options: Sequence[torch.Tensor]) -> torch.Tensor:
    """The position of every option of ``options`` (one tensor of token ids per position), flattened."""
    device = options[0].device if len(options) else None
    return torch.cat([torch.full((len(c),), p, device=device) for p, c in enumerate(options)])


def _slots(options: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each position's indices into ``options`` flattened, ``(L, most options at a position)``, padded with -1."""
    starts = [0, *itertools.accumulate(len(c) for c in options)]
    slots = torch.full((len(options), max(len(c) for c in options)), -1, dtype=torch.long)
    for p, c in enumerate(options):
        slots[p, :len(c)] = torch.arange(starts[p], starts[p + 1])
    return slots


def _kept_candidates(model: BertForMaskedLM, span2: Span, candidates: Sequence[torch.Tensor], batch_size: int,
                     generator: torch.Generator) -> tuple[list[torch.Tensor], bool]:
    """The candidates per position that the search starts from: after :func:`pair_filter` where the first-layer
    test leaves more than ``SELECTIVE_FRACTION`` of the batch's tokens per position, else as they are; and whether
    the pair filter separated the batch's pairs (it removed a candidate)."""
    pool = len(torch.unique(torch.cat(list(candidates)))) if any(len(c) for c in candidates) else 0
    if sum(len(c) for c in candidates) <= SELECTIVE_FRACTION * pool * len(candidates):
        # a trained embedding LayerNorm makes the first-layer test selective by itself (the pretrained
        # MiniLM: 3 of 29 tokens per position in a batch of 2), and the pair filter's jump is not reliable there
        logger.debug("first-layer candidates already selective (%s of %d tokens): no pair filter",
                     [len(k) for k in candidates], pool)
        return list(candidates), False
    with torch.enable_grad():
        kept = pair_filter(model, span2, candidates, batch_size, generator=generator)
    logger.debug("pair filter: tokens per position %s", [len(k) for k in kept])
    return kept, any(len(k) < len(c) for k, c in zip(kept, candidates))


class _SentenceSearch:
    """The state of :func:`assemble_batch`'s search: per length its options, the sentences found (certified),
    the best failures, and how many rounds in a row found nothing."""

    def __init__(self, model: BertForMaskedLM, span2: Span, kept: Sequence[torch.Tensor], batch_size: int, *,
                 cls_id: int, sep_id: int, generator: torch.Generator, starts: int, max_sweeps: int,
                 damped: bool, iterate: bool = False, enough: int | None = None) -> None:
        self.first, self.span2, self.batch_size = _FirstLayer(model), span2, batch_size
        self.enough = batch_size if enough is None else enough
        self.generator, self.starts, self.max_sweeps, self.damped = generator, starts, max_sweeps, damped
        self.iterate = iterate
        self.found: dict[tuple[int, ...], AssembledSentence] = {}
        self.failures: list[AssembledSentence] = []
        device = kept[0].device
        # the lengths are where [SEP] is kept (longest first); each gets its options per position
        lengths = [p + 1 for p in range(len(kept) - 1, 1, -1)
                   if bool((kept[p] == sep_id).any()) and bool((kept[0] == cls_id).any())]
        self.searches: dict[int, tuple[list[torch.Tensor], _Options]] = {}
        for length in lengths:
            options = ([torch.tensor([cls_id], device=device)] + [k[k != sep_id] for k in kept[1:length - 1]]
                       + [torch.tensor([sep_id], device=device)])
            if all(len(o) for o in options):
                self.searches[length] = (options, _Options.of(self.first, options))
        if iterate:     # lengths nearest the batch's mean (the second span's rank per sentence) first, fewer starts
            mean = span2.rank / batch_size
            self.searches = dict(sorted(self.searches.items(), key=lambda item: (abs(item[0] - mean), -item[0])))
            self.starts = min(starts, ITERATE_STARTS)
        self.fruitless = dict.fromkeys(self.searches, 0)
        self.interrupted = False

    @property
    def complete(self) -> bool:
        """Whether the search has found what it looks for: the whole batch, or ``enough`` sentences."""
        return len(self.found) >= min(self.enough, self.batch_size)

    def count(self, length: int) -> int:
        return sum(len(s) == length for s in self.found)

    def _options(self, length: int) -> list[torch.Tensor]:
        """The options at ``length``; after a fruitless round, the tokens no found sentence has at each position
        (a token two sentences share there is still reachable by the descent, which sees every option)."""
        options = self.searches[length][0]
        if not self.fruitless[length] % 2:
            return options
        device = options[0].device
        used = [torch.tensor(sorted({s[p] for s in self.found if p < len(s) - 1}), dtype=torch.long, device=device)
                for p in range(length)]
        return [o if p in (0, length - 1) or not bool((~torch.isin(o, u)).any()) else o[~torch.isin(o, u)]
                for p, (o, u) in enumerate(zip(options, used))]

    def greedy(self) -> None:
        """Before any relaxed start: at each length, the sentence of each position's first option (the nearest to
        the span), polished by :func:`_descend`; kept when certified. Where the candidates are already all but
        unique (one sentence, a selective first layer) this finds the sentence without the relaxed starts."""
        with torch.no_grad():
            for length, (options, _) in self.searches.items():
                if self.complete:
                    return
                self._keep(*self._polish(torch.stack([o[0] for o in options]), length), length)

    def _residual(self, ids: torch.Tensor) -> float:
        """The sentence's mean second-layer residual (what certifies it)."""
        return float(self.span2.residual(self.first.full(self.first.inputs(ids))).mean())

    def _polish(self, start: torch.Tensor, length: int) -> tuple[torch.Tensor, float]:
        """:func:`_descend` from ``start``; with ``iterate``, where that certifies nothing, :func:`_iterated_search`
        from where it ended: at once in a search that wants fewer sentences than the batch (a batch above
        ``PEEL_FIRST_ABOVE``, whose relaxed starts are no better than random), else once a round at ``length`` has
        come back empty. MiniLM masked-LM, 16 reviews, 2 threads: batch 4, 56.5 s per batch (481.9 s with every
        uncertified start iterated, another job on the CPU); batch 8, 180.2 s (510.1 s waiting for an empty round
        there too). Returns the sentence and its :meth:`_residual`."""
        flat = self.searches[length][1]
        ids = _descend(self.first, self.span2, start, flat, self.max_sweeps, damped=self.damped)
        residual = self._residual(ids)
        hard = self.fruitless[length] or self.enough < self.batch_size
        if self.iterate and residual >= CERTIFY_MAX and hard:
            ids = _iterated_search(self.first, self.span2, ids, flat, self.generator)[0]
            residual = self._residual(ids)
        return ids, residual

    def _keep(self, ids: torch.Tensor, residual: float, length: int) -> bool:
        """Record the sentence ``ids`` of :meth:`_residual` ``residual``: found when certified (True), else among the
        failures."""
        sentence = AssembledSentence(tuple(ids.tolist()), residual)
        if sentence.token_ids in self.found or self.complete:
            return False
        if sentence.certified:
            self.found[sentence.token_ids] = sentence
            logger.debug("assembled a certified sentence of %d tokens (residual %.2g)", length, residual)
            return True
        if all(f.token_ids != sentence.token_ids for f in self.failures):
            self.failures.append(sentence)
        return False

    def round(self, length: int) -> int:
        """Relaxed starts at ``length``, each polished by :func:`_descend`; returns the new certified sentences.
        The starts are short (``RELAX_STEPS_FIRST``) while the rounds at this length yield, full after a fruitless
        one."""
        device = self.searches[length][0][0].device
        avoid = [torch.tensor(s, device=device) for s in self.found if len(s) == length]
        steps = RELAX_STEPS if self.fruitless[length] else RELAX_STEPS_FIRST
        with torch.enable_grad():
            begun = _relaxed_starts(self.first, self.span2, self._options(length), avoid, self.starts,
                                    self.generator, steps)
        new = 0
        with torch.no_grad():
            for start in dict.fromkeys(tuple(s.tolist()) for s in begun):     # a start drawn twice descends once
                if self.complete:
                    break
                new += self._keep(*self._polish(torch.tensor(start, device=device), length), length)
        self.fruitless[length] = 0 if new else self.fruitless[length] + 1
        return new

    def by_quota(self, quota: dict[int, int], max_fruitless: int) -> None:
        """Rounds at each length until its count is found (a sentence found at one length takes its tokens out of
        the others' starts: the short lengths are tried again while any round yields)."""
        logger.debug("sentences per length (from the second span's rank %d): %s", self.span2.rank, quota)
        while True:
            progress = False
            for length in quota:
                while (not self.complete and self.count(length) < quota[length]
                       and self.fruitless[length] < max_fruitless + 1):
                    progress = self.round(length) > 0 or progress
            short = [n for n in quota if self.count(n) < quota[n]]
            if not progress or not short:
                return
            self.fruitless.update(dict.fromkeys(short, 0))

    def while_yielding(self, *, once: bool = False) -> None:
        """Each length (longest first) again while its rounds find new sentences and it :meth:`fits`; ``once``: one
        round at each length that has not yet had a fruitless one."""
        for length in self.searches:
            while not self.complete and self.fruitless[length] == 0 and self.fits(length) and self.round(length):
                if once:
                    break

    def retry(self, max_fruitless: int) -> None:
        """While sentences are missing: lengths with no sentence yet first (each holds at least one), until every
        length had ``max_fruitless`` rounds in a row without a new sentence."""
        while not self.complete:
            open_lengths = [n for n in self.searches if self.fruitless[n] < max_fruitless and self.fits(n)]
            if not open_lengths:
                return
            have = {len(s) for s in self.found}
            self.round(min(open_lengths, key=lambda n: n in have))     # the first in the search's order

    def fits(self, length: int) -> bool:
        """Whether a missing sentence can have ``length`` tokens: the second span has one dimension per token of the
        batch, so the missing sentences' lengths sum to its rank less the found ones' (the last one's length is
        that rest). True for every length where none fits (a rank that does not count the tokens, e.g. two equal
        sentences)."""
        missing = self.batch_size - len(self.found)
        rest = self.span2.rank - sum(len(s) for s in self.found)
        shortest = min(self.searches, default=0)

        def possible(n: int) -> bool:
            return n == rest if missing == 1 else n <= rest - (missing - 1) * shortest
        return possible(length) or not any(possible(n) for n in self.searches)

    def run(self, max_fruitless: int, *, peel_later: bool) -> None:
        """The whole search (:func:`search_sentences`); Ctrl-C stops it where it is, the sentences found kept."""
        try:
            self.greedy()
            quota = length_counts(list(self.searches), self.batch_size, self.span2.rank)
            if quota is not None:
                self.by_quota(quota, max_fruitless)
            if peel_later:
                self.while_yielding(once=True)
                if self.found and self.batch_size - len(self.found) > 1:
                    return
            self.while_yielding()
            self.retry(max_fruitless)
        except KeyboardInterrupt:
            self.interrupted = True
            logger.warning("interrupted: %d sentence(s) assembled so far are kept", len(self.found))

    def result(self) -> list[AssembledSentence]:
        found = list(self.found.values())[:self.batch_size]
        if len(found) < self.batch_size:
            logger.warning("certified %d of %d sentence(s) from the attention spans", len(found), self.batch_size)
            found += sorted(self.failures, key=lambda s: s.residual)[: self.batch_size - len(found)]
        return found


def assemble_batch(model: BertForMaskedLM, span2: Span, candidates: Sequence[torch.Tensor], batch_size: int, *,
                   cls_id: int, sep_id: int, generator: torch.Generator, starts: int = 8,
                   max_sweeps: int = 12, max_fruitless: int = 3) -> list[AssembledSentence]:
    """Find up to ``batch_size`` distinct sentences whose first-layer outputs lie in ``span2``.

    :func:`pair_filter` keeps, per position, the tokens that sit there in some sentence; the lengths
    are where ``[SEP]`` is kept. First, at each length, the sentence of each position's nearest option is
    polished by :func:`_descend` (:meth:`_SentenceSearch.greedy`: where the candidates are all but unique, that is
    the sentence). A *round* at one length draws ``starts`` relaxed starts
    (:func:`_relaxed_starts`), polishes each by :func:`_descend` and keeps the new sentences whose
    second-layer residual certifies them. When :func:`length_counts` pins down how many sentences each
    length holds, each length gets rounds until they are found; otherwise lengths are visited longest
    first, a length again while its rounds find new sentences. Then, while sentences are missing, the
    lengths with none found yet (each holds at least one) and the others, until every length had
    ``max_fruitless`` rounds in a row without a new sentence. Returns the certified sentences, then, if
    fewer than ``batch_size`` were certified, the best uncertified ones.
    """
    return search_sentences(model, span2, candidates, batch_size, cls_id=cls_id, sep_id=sep_id, generator=generator,
                            starts=starts, max_sweeps=max_sweeps, max_fruitless=max_fruitless).result()


def search_sentences(model: BertForMaskedLM, span2: Span, candidates: Sequence[torch.Tensor], batch_size: int, *,
                     cls_id: int, sep_id: int, generator: torch.Generator, starts: int = 8, max_sweeps: int = 12,
                     max_fruitless: int = 3, peel_later: bool = False) -> _SentenceSearch:
    """:func:`assemble_batch`'s search, returned as it ended: Ctrl-C stops it where it is, with the sentences found
    so far kept (``interrupted``) for the caller to report. ``peel_later``: a caller that removes the found
    sentences' share of the gradient and searches the rest again (masked-LM peeling) gets the search back after
    one round at each length, when it found any sentence and more than one is missing (one missing sentence's
    length is known: its retries are few), instead of after more rounds and the retries: the rest of a peeled
    batch is a smaller, easier search, where the second span's rank often tells how many sentences each length
    holds (BERT-base random init, batch 16: 32 retry rounds found 7 sentences in 280 s where the peeled rest of 5
    took 24 s; of the 8 rounds repeated at a length because its last round had yielded, 7 found nothing, at 3 s
    a round). A search that certifies no sentence is run again with the other descent (damped where the pair filter
    did not separate, undamped where it did): on the pretrained MiniLM, of two batches of 4 that one of them left
    without a sentence, each came back whole with the other (``_descend``).

    Where the pair filter does not separate, a start the descent leaves uncertified goes on to
    :func:`_iterated_search` (when: :meth:`_SentenceSearch._polish`), and a search of more than
    ``PEEL_FIRST_ABOVE`` sentences with ``peel_later`` returns at its first certified sentence (a batch of 4 came
    back whole without it, 16 of 16 reviews): the deepest false fits at a shorter length are a found sentence's
    prefixes (with ``[SEP]`` moved in), which peeling removes from the gradient (MiniLM, a batch of 8 reviews: of 6
    uncertified ends at lengths 16-17, 5 were a longer sentence of the batch cut short)."""
    kept, separated = _kept_candidates(model, span2, candidates, batch_size, generator)
    # where the pair filter does not separate, a search of a batch above PEEL_FIRST_ABOVE that will be peeled
    # returns its first sentence: a found sentence's prefixes are the deepest false fits at the shorter lengths,
    # and peeling removes them
    early = peel_later and not separated and batch_size > PEEL_FIRST_ABOVE
    for damped in (separated, not separated):
        if damped != separated:
            logger.info("no sentence certified with the %s descent: the search again with the %s one",
                        *(("undamped", "damped") if damped else ("damped", "undamped")))
        search = _SentenceSearch(model, span2, kept, batch_size, cls_id=cls_id, sep_id=sep_id, generator=generator,
                                 starts=starts, max_sweeps=max_sweeps, damped=damped, iterate=not separated,
                                 enough=1 if early else None)
        search.run(max_fruitless, peel_later=peel_later)
        if search.found or search.interrupted:
            break
    return search


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
    dense = _dense_gradient(model, gradients)
    u, live = _final_states(model, input_ids, attention_mask)                             # (N, H), (B·T,)
    if u.shape[0] > u.shape[1]:
        raise SpanUnavailable(f"{u.shape[0]} tokens exceed the hidden size {u.shape[1]}: labels not separable")
    m = priors.num_labelled
    k = dense * m                                                                         # Σ_t a_t u_tᵀ
    a = torch.linalg.lstsq(u.T, k.T).solution                                             # (N, H): a_t per row
    norms = a.norm(dim=1)
    labelled = norms.topk(min(m, len(norms))).indices.sort().values                     # (M,)
    predicted = _head_signals(model, u[labelled], priors.label_ids)                         # (M, L, H)
    target = a[labelled]                                                                   # (M, H)
    misfit = (predicted - target.unsqueeze(1)).norm(dim=-1) / target.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return _assign_words(misfit, labelled, priors, input_ids, live)


def _dense_gradient(model: BertForMaskedLM, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The MLM head's dense-weight gradient ``Σ_t a_t u_tᵀ / M`` (float64), or :class:`SpanUnavailable`."""
    name = parameter_name(model, model.cls.predictions.transform.dense.weight)
    if name not in gradients:
        raise SpanUnavailable(f"the gradient lacks {name!r}: labels cannot be placed analytically")
    return gradients[name].double()


def _final_states(model: BertForMaskedLM, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's final hidden states at the live positions, ``(N, H)`` float64, and the flat live mask."""
    live = attention_mask.bool().flatten()
    with torch.no_grad():
        hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])[live].double(), live


def _head_signals(model: BertForMaskedLM, u: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """``a_t = J_tᵀ (Wᵀ p_t − W_y)``, the error signal at the head's dense output, for every label word
    ``y`` of ``words (L,)`` at each final hidden state ``u (M, H)``: ``(M, L, H)`` float64."""
    head = model.cls.predictions
    w = head.decoder.weight.detach()
    tr = head.transform
    z = tr.dense(u.float()).detach()                                                      # (M, H)
    with torch.no_grad():
        n_vec = tr.LayerNorm(tr.transform_act_fn(z))
        probs = (n_vec @ w.T + head.bias).softmax(-1)                                      # (M, V)
    mm, nw = len(u), len(words)
    outer = (probs @ w).unsqueeze(1) - w[words].unsqueeze(0)                              # (M, L, H) dCE/dn
    z_rep = z.unsqueeze(1).expand(mm, nw, -1).reshape(mm * nw, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        out = tr.LayerNorm(tr.transform_act_fn(z_rep))
        (predicted,) = torch.autograd.grad(out, z_rep, grad_outputs=outer.reshape(mm * nw, -1))
    return predicted.reshape(mm, nw, -1).double()


def _assign_words(misfit: torch.Tensor, labelled: torch.Tensor, priors: MaskedLMPriors, input_ids: torch.Tensor,
                  live: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Labels ``(B, T)`` from the misfit ``(M, L)`` of each label word at each labelled live position: each
    occurrence of a word labels one position (Hungarian over positions × occurrences); and the mean misfit."""
    words = priors.label_ids
    device = input_ids.device
    occ = torch.arange(len(words), device=words.device).repeat_interleave(priors.label_counts)  # (M',)
    cost = misfit[:, occ].cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    flat = torch.full((int(live.sum()),), -100, dtype=torch.long, device=device)
    flat[labelled[torch.as_tensor(rows, device=labelled.device)]] = words[occ[torch.as_tensor(cols, device=occ.device)]]
    labels = torch.full(input_ids.shape, -100, dtype=torch.long, device=device)
    labels.view(-1)[live.nonzero().flatten()] = flat
    return labels, float(cost[rows, cols].mean()) if len(rows) else float("inf")


def label_known_sentences(model: BertForMaskedLM, gradients: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                          attention_mask: torch.Tensor, priors: MaskedLMPriors) -> tuple[torch.Tensor, float]:
    """Labels of some sentences of a batch known exactly (certified) while the others are not.

    :func:`place_labels` needs every final hidden state of the batch. Without them: the head's
    dense-weight gradient ``K = Σ_t a_t u_tᵀ`` runs over the M labelled positions only, so it has rank M,
    its row space holds the ``u_t`` of the labelled positions and its column space their ``a_t``. A
    position of a known sentence is labelled when its ``u_t`` lies in the row space; the word ``y`` there
    is the one whose ``a_t(y)`` lies in the column space (a wrong word adds ``J_tᵀ (W_y' − W_y)``, which
    leaves it).

    Args:
        input_ids, attention_mask: ``(R, T)``, the known sentences as the model saw them.

    Returns:
        ``(labels (R, T), mean misfit)`` as :func:`place_labels`.
    """
    k = _dense_gradient(model, gradients)
    m = priors.num_labelled
    if m >= min(k.shape):
        raise SpanUnavailable(f"{m} labelled positions fill the head's width {min(k.shape)}: labels not separable")
    left, s, vh = torch.linalg.svd(k)
    rel = s / s[0].clamp_min(1e-300)
    rows_basis, cols_basis = Span(vh[:m].T.contiguous(), rel), Span(left[:, :m].contiguous(), rel)
    u, live = _final_states(model, input_ids, attention_mask)                             # (N, H), (R·T,)
    labelled = (rows_basis.residual(u) < LABEL_RESIDUAL).nonzero().flatten()              # (M_known,)
    misfit = cols_basis.residual(_head_signals(model, u[labelled], priors.label_ids))      # (M_known, L)
    return _assign_words(misfit, labelled, priors, input_ids, live)
