"""Shared fixtures: a tiny random-init BERT (64 wide, 2 layers) with the real bert-base-uncased vocab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
SENTENCE = "the quick brown fox jumps over the lazy dog ."


@pytest.fixture(scope="session")
def tokenizer():
    from nlp_dlg.text import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_spec():
    from nlp_dlg.text import ModelSpec

    return ModelSpec(seed=0, config=dict(TINY))


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from nlp_dlg.text import load_masked_lm

    return load_masked_lm(tiny_spec)


@pytest.fixture(scope="session")
def tiny_info(tiny_model, tiny_spec):
    from nlp_dlg.text import model_metadata

    return model_metadata(tiny_model, tiny_spec)


@pytest.fixture
def capture(tiny_model, tokenizer, tiny_info):
    """capture(sentences, mlm_probability=0.15, batch_size=1, seed=0) -> [(observation, truth)]"""
    from nlp_dlg.text import CaptureConfig, capture_gradients

    def run(sentences, *, mlm_probability=0.15, batch_size=1, seed=0):
        config = CaptureConfig(batch_size=batch_size, mlm_probability=mlm_probability)
        return capture_gradients(tiny_model, tokenizer, sentences, config, model_info=tiny_info,
                                 generator=torch.Generator().manual_seed(seed))
    return run


@pytest.fixture
def tiny_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch sees no GPU here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
