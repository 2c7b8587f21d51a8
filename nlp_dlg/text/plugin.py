"""The masked-LM plugin of the engine: dummy BERT input embeddings and soft labels.

Leaves: ``inputs_embeds (B, T, H)`` (the word-embedding part of BERT's input; position and token-type
embeddings are added by the model) and label logits.

* With priors (the toolkit's ``dlg``): the bias gradient reveals the M labelled words (with repeats).
  Label logits ``(B, T, M)`` give each labelled occurrence ``j`` a softmax ``a_j`` over the batch's
  positions: "where is this word". The loss is ``Σ_j Σ_(b,t) a_j(b,t) · CE(logits_(b,t), w_j) / M``, BERT's
  mean masked-LM loss with exactly M labelled positions, relaxed. (Soft labels over words at every
  position leave the label mass free, which a scale-free distance such as cosine cannot pin down.)
* Without priors (the paper's algorithm as written): soft labels ``(B, T, V)`` at every position.

The tied word-embedding/decoder weight is not matched: its observed gradient has an input-side part
(rows of the tokens in the batch) that dummy ``inputs_embeds`` cannot produce, so matching it would pull
the dummy towards an unreachable target. It is read analytically instead (the token set, see
:mod:`nlp_dlg.text.priors`). Decoding maps each position to the candidate token whose first-layer input
``LayerNorm(word + position + type)`` is nearest (L2) to the dummy's, under one constraint the token set gives:
each of its tokens is some position's input, so each is decoded somewhere (:func:`covering_assignment`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from scipy.optimize import linear_sum_assignment
from transformers import BertForMaskedLM

from nlp_dlg.engine.blocks import leading_parameters
from nlp_dlg.engine.device import randn
from nlp_dlg.text.analytic import embedding_output
from nlp_dlg.text.priors import MaskedLMPriors, parameter_name


class MaskedLMPlugin:
    """Engine plugin for BERT masked-LM gradients.

    Args:
        model: the masked-LM model (eval mode, eager attention).
        priors: what the gradient gives away (:func:`nlp_dlg.text.priors.infer_priors`).
        batch_size: sequences in the observed batch.
        use_priors: restrict labels to the revealed label words and decode over the revealed token set;
            ``False`` is the paper's algorithm with no priors (full-vocabulary soft labels and decoding).
        boundary: ``(first, last)`` token ids every sequence starts/ends with (BERT: [CLS], [SEP]), or
            None where unknown; such positions are decoded as these tokens and carry no label.
            (With padding in a batch the last position varies: pass ``last=None``.)
        initial_ids: ``(B, T)`` token ids to start the first restart from (their embeddings), e.g. an
            analytic guess; later restarts start at random.
        attention_mask: ``(B, T)`` the padding of the batch where it is known (an analytic guess gives each
            sequence's length); padded positions are not attended, carry no label and decode as ``pad_id``.
            None: every position is a token.
        frozen_rows: ``(B,)`` bool, sequences of ``initial_ids`` known exactly (certified): they keep their
            embeddings in every restart and only the others are optimised.
        pad_id: the padding token id decoded at masked-out positions.
        matched_blocks: compare the gradients of the embeddings and the first K encoder layers only
            (:func:`nlp_dlg.engine.blocks.leading_parameters`); None: every parameter but the word embedding.
    """

    def __init__(self, model: BertForMaskedLM, priors: MaskedLMPriors, batch_size: int,
                 *, use_priors: bool = True, boundary: tuple[int | None, int | None] = (None, None),
                 initial_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 frozen_rows: torch.Tensor | None = None, pad_id: int = 0, matched_blocks: int | None = None) -> None:
        self.model = model
        self.matched_blocks = matched_blocks
        self.priors = priors
        self.batch_size = batch_size
        self.use_priors = use_priors
        self.embedding = model.get_input_embeddings().weight.detach()             # (V, H)
        self._word_name = parameter_name(model, model.get_input_embeddings().weight)
        device = self.embedding.device                                            # every tensor lives there
        vocab = self.embedding.shape[0]
        self.candidates = (priors.token_set if use_priors else torch.arange(vocab)).to(device)  # (K,)
        # one entry per labelled occurrence: label words repeated by their counts
        self.occurrences = priors.label_ids.repeat_interleave(priors.label_counts).to(device)  # (M,)
        self.boundary = boundary
        t = priors.sequence_length
        if initial_ids is not None and tuple(initial_ids.shape) != (batch_size, t):
            raise ValueError(f"initial_ids: expected shape {(batch_size, t)}, got {tuple(initial_ids.shape)}")
        for name, value, shape in (("attention_mask", attention_mask, (batch_size, t)),
                                   ("frozen_rows", frozen_rows, (batch_size,))):
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
        if frozen_rows is not None and initial_ids is None:
            raise ValueError("frozen_rows needs initial_ids: the token ids the frozen sequences keep")
        self._initial = None if initial_ids is None else initial_ids.to(device)
        self._mask = None if attention_mask is None else attention_mask.to(device)
        self._pad_id = pad_id
        self._frozen = (frozen_rows.bool().to(device) if frozen_rows is not None and bool(frozen_rows.any())
                        else None)
        self._frozen_ids = self._initial.clone() if self._frozen is not None else None
        self._fixed = {pos: tok for pos, tok in ((0, boundary[0]), (t - 1, boundary[1])) if tok is not None}
        self._label_mask = torch.zeros(batch_size, t, 1, device=device)            # (B, T, 1)
        for pos in self._fixed:
            self._label_mask[:, pos] = -torch.inf
        if self._mask is not None:
            self._label_mask[~self._mask.bool()] = -torch.inf

    def matched_parameters(self) -> dict[str, torch.Tensor]:
        named = {n: p for n, p in self.model.named_parameters() if n != self._word_name}
        return leading_parameters(self.model, named, self.matched_blocks)

    def init_leaves(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        b, t, h = self.batch_size, self.priors.sequence_length, self.embedding.shape[1]
        scale = float(self.embedding.std())
        device = self.embedding.device  # drawn on the CPU and moved: one seed, one start on every device
        embeds = randn(b, t, h, generator=generator, device=device) * scale         # (B, T, H)
        if self._initial is not None:
            embeds = self.embedding[self._initial].clone()
            self._initial = None
        if self.use_priors:
            logits = 0.01 * randn(b, t, len(self.occurrences), generator=generator, device=device)  # (B, T, M)
        else:
            logits = randn(b, t, self.embedding.shape[0], generator=generator, device=device)      # (B, T, V)
        return {"inputs_embeds": embeds, "label_logits": logits}

    def _embeds(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The input embeddings the model sees: the leaves, frozen sequences replaced by their tokens'."""
        embeds = leaves["inputs_embeds"]
        if self._frozen is None:
            return embeds
        return torch.where(self._frozen[:, None, None], self.embedding[self._frozen_ids], embeds)

    def task_loss(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(inputs_embeds=self._embeds(leaves), attention_mask=self._mask).logits  # (B, T, V)
        logp = logits.log_softmax(-1)
        if self.use_priors:
            where = self.label_positions(leaves["label_logits"])                   # (B, T, M)
            return -(where * logp[..., self.occurrences]).sum() / len(self.occurrences)
        soft = leaves["label_logits"].softmax(-1)                                   # (B, T, V)
        return -(soft * logp).sum(-1).mean()

    def label_positions(self, label_logits: torch.Tensor) -> torch.Tensor:
        """``a_j(b, t)``: a softmax over the batch's positions (boundaries excluded) per occurrence j."""
        b, t, m = label_logits.shape
        return (label_logits + self._label_mask).reshape(b * t, m).softmax(0).reshape(b, t, m)

    def project(self, leaves: Mapping[str, torch.Tensor]) -> None:
        return None

    def first_layer_inputs(self, embeds: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(word + position + token type)``, what the encoder sees, for ``embeds (B, T, H)``.

        The gradients only constrain this: the LayerNorm is invariant to a scale and shift of its
        input, so a dummy embedding is identifiable only up to those, and is decoded in this space."""
        return embedding_output(self.model, embeds, torch.arange(embeds.shape[-2]))

    def decode(self, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token ids ``(B, T)``: per position the candidate whose first-layer input is nearest (L2), every
        token of a token set read off the gradient at least once (:func:`covering_assignment`); each labelled
        occurrence shows its word at its most likely position (distinct positions, Hungarian assignment): the
        original word of a masked token."""
        with torch.no_grad():
            embeds = self._embeds(leaves)                                           # (B, T, H)
            b, t, _ = embeds.shape
            dummy = self.first_layer_inputs(embeds)                                 # (B, T, H)
            cand = self.embedding[self.candidates]                                  # (K, H)
            options = self.first_layer_inputs(cand.unsqueeze(1).expand(-1, t, -1))  # (K, T, H)
            dist = torch.cdist(dummy.transpose(0, 1), options.transpose(0, 1)).transpose(0, 1)  # (B, T, K)
            ids = self.candidates[dist.argmin(-1)]                                  # (B, T)
            free = torch.ones(b, t, dtype=torch.bool, device=ids.device)            # positions the dummy decides
            for pos, tok in self._fixed.items():
                ids[:, pos] = tok
                free[:, pos] = False
            if self._frozen is not None:
                ids[self._frozen] = self._frozen_ids[self._frozen]
                free[self._frozen] = False
            if self._mask is not None:
                ids[~self._mask.bool()] = self._pad_id
                free &= self._mask.bool()
            if self.use_priors and self.priors.token_set_found:
                ids[free] = self.candidates[covering_assignment(dist[free], self._must_cover(ids, free))]
            if self.use_priors:
                where = self.label_positions(leaves["label_logits"]).reshape(b * t, -1)  # (B*T, M)
                # each labelled position holds one word: occurrences go to distinct positions
                _, cols = linear_sum_assignment(-where.clamp_min(1e-30).log().T.cpu().numpy())
                ids.view(-1)[torch.as_tensor(cols, device=ids.device)] = self.occurrences
        return ids

    def _must_cover(self, ids: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """``(K,)`` bool: the candidates some free position must hold. The token set is read off the input side
        of the embedding gradient, so each of its tokens is some position's input, except the boundary tokens,
        tokens the fixed or frozen positions already hold, and label words (a masked word may have no input
        row: the candidates hold every label word anyway; they show where the labels are placed)."""
        held = torch.cat([ids[~free], self.occurrences])
        return ~torch.isin(self.candidates, held)


# Free positions above which the decode keeps the plain nearest tokens: the assignment is cubic (scipy, one
# thread, a third of the columns required, the rest tied per row: 0.12 s at 1024 positions, 1.5 s at 2048).
COVER_MAX = 2048


def covering_assignment(dist: torch.Tensor, must: torch.Tensor) -> torch.Tensor:
    """Per row of ``dist (N, K)`` (positions x candidates) a candidate index, with every candidate of ``must
    (K,)`` chosen at least once, at the least total distance; the nearest candidates where ``must`` asks more
    than ``N`` or ``N > COVER_MAX``.

    A Hungarian assignment of the N rows to the must-candidates' columns plus N − (their count) free columns,
    each costing a row's smallest distance: a row on a free column takes its nearest candidate. A dummy whose
    positions are each nearest to the right token is unchanged; one that is right but for a token used twice
    where the set has a token no position shows takes that token where it costs least."""
    nearest = dist.argmin(-1)
    columns = must.nonzero().flatten()
    n, k = dist.shape[0], len(columns)
    if k == 0 or k > n or n > COVER_MAX or bool(torch.isin(columns, nearest).all()):
        return nearest
    d = dist.double().cpu()
    cost = torch.cat([d[:, columns.cpu()], d.min(-1, keepdim=True).values.expand(n, n - k)], 1)
    rows, cols = linear_sum_assignment(cost.numpy())
    out = nearest.clone()
    picked = torch.as_tensor(cols[cols < k], device=dist.device)
    out[torch.as_tensor(rows[cols < k], device=dist.device)] = columns[picked]
    return out
