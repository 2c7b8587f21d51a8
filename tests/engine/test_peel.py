"""Peeling: a batch gradient less the share of examples already known is the gradient of the others."""

from __future__ import annotations

import pytest
import torch

from nlp_dlg.engine.errors import ConfigError
from nlp_dlg.engine.peel import remove_share


def _example(rows: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.zeros(6, 4)
    g[rows] = torch.randn(len(rows), 4, generator=torch.Generator().manual_seed(seed))
    return {"emb": g, "w": torch.randn(3, 3, generator=torch.Generator().manual_seed(seed + 10))}


def test_removing_a_known_example_leaves_the_others_as_a_batch_and_its_own_rows_exactly_zero():
    known, a, b = _example([0, 1], 0), _example([1, 2], 1), _example([3], 2)
    batch = {n: (known[n] + a[n] + b[n]) / 3 for n in known}
    rest = remove_share(batch, known, 1 / 3)
    for n in batch:
        torch.testing.assert_close(rest[n], (a[n] + b[n]) / 2, rtol=1e-5, atol=1e-6)
    assert bool((rest["emb"][0] == 0).all())            # only the known example touched row 0
    assert bool((batch["emb"][0] != 0).any())           # and the observation itself is unchanged
    with pytest.raises(ConfigError, match="fraction"):
        remove_share(batch, known, 1.5)
