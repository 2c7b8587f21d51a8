"""The classifier both sides use: a BERT-family encoder with a sequence-classification head of ``num_labels``
classes, at random init (the bert-base-uncased architecture, or config overrides) or loaded from a checkpoint
directory or hub name with a fresh head drawn from ``seed`` (where fine-tuning starts; e.g. the all-MiniLM-L6-v2
encoder shipped offline); eager attention, safetensors only."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from nlp_dlg.engine.errors import ConfigError, ModelMismatchError
from nlp_dlg.engine.metadata import MetadataError, check_shapes_match, field
from nlp_dlg.engine.observation import weights_checksum
from nlp_dlg.text.model import CONFIG_BOUNDS, FOREIGN_KEYS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierSpec:
    """``name_or_path`` (a checkpoint; its head is new, drawn from ``seed``) or a random-init BERT (``config``
    overrides), with ``num_labels`` classes."""

    name_or_path: str | None = None
    seed: int = 0
    config: dict[str, Any] | None = None
    num_labels: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ConfigError(f"num_labels: expected an integer >= 2, got {self.num_labels!r}")


def load_classifier(spec: ClassifierSpec) -> Any:
    """Build or load the classifier in eval mode (seeded without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.name_or_path is None:
            config = BertConfig(**{**(spec.config or {}), "num_labels": spec.num_labels})
            config._attn_implementation = "eager"
            model = BertForSequenceClassification(config)
        else:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    spec.name_or_path, num_labels=spec.num_labels, attn_implementation="eager", use_safetensors=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"model: cannot load {spec.name_or_path!r} as a classifier: "
                                  f"{str(exc).splitlines()[0]}") from exc
    if not hasattr(model, "bert"):
        raise ConfigError(f"{type(model).__name__}: the classification task attacks BERT-family encoders")
    return model.eval()


def model_metadata(model: Any, spec: ClassifierSpec) -> dict[str, Any]:
    config = model.config.to_dict()
    for key in ("_attn_implementation_autoset", "transformers_version", "id2label", "label2id"):
        config.pop(key, None)
    return {"architecture": "BertForSequenceClassification",
            "source": "random-init" if spec.name_or_path is None else "pretrained",
            "name_or_path": spec.name_or_path, "seed": spec.seed, "num_labels": spec.num_labels,
            "config": config, "checksum": weights_checksum(model)}


def check_model_metadata(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A classification file's model description, checked against its tensors before anything is built."""
    field(meta, "tokenizer", str, required=False)
    model = meta["model"]
    source = field(model, "source", str, where="model.", choices=("random-init", "pretrained"))
    field(model, "name_or_path", str, where="model.", required=source == "pretrained")
    field(model, "seed", int, where="model.", low=0, high=2**63 - 1)
    labels = field(model, "num_labels", int, where="model.", low=2, high=100_000)
    config = field(model, "config", dict, where="model.", required=source == "random-init")
    if config is None or source != "random-init":
        return
    for key, (low, high) in CONFIG_BOUNDS.items():
        field(config, key, int, where="model.config.", required=False, low=low, high=high)
    check_shapes_match(expected_shapes(json.dumps(config, sort_keys=True), labels), shapes, "the model config")


@functools.lru_cache(maxsize=8)
def expected_shapes(config_json: str, num_labels: int) -> dict[str, tuple[int, ...]]:
    config = {k: v for k, v in json.loads(config_json).items() if k not in FOREIGN_KEYS}
    try:
        with torch.device("meta"):
            model = BertForSequenceClassification(BertConfig(**{**config, "num_labels": num_labels}))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MetadataError(f"metadata: model.config: not a BERT config ({exc})") from exc
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def model_from_metadata(meta: Mapping[str, Any], *, name_or_path: str | None = None, verify: bool = True) -> Any:
    """Rebuild or load (``name_or_path``, which a pretrained file requires) the classifier a file names."""
    if meta.get("source") == "pretrained" and name_or_path is None:
        raise ConfigError(f"the gradient file was computed on the pretrained checkpoint {meta.get('name_or_path')!r}: "
                          "pass --model NAME_OR_PATH to load it (a path or hub name in a file is never followed)")
    config = None if name_or_path else {k: v for k, v in meta["config"].items() if k not in FOREIGN_KEYS}
    model = load_classifier(ClassifierSpec(name_or_path, int(meta["seed"]), config, int(meta["num_labels"])))
    if verify and meta.get("checksum") and weights_checksum(model) != meta["checksum"]:
        raise ModelMismatchError("model weights do not match the gradient file's checksum (pass the right --model, "
                                 "or --no-verify to attack anyway)")
    return model
