"""The causal-LM model both sides use: a known decoder family built from its standard config with random weights
(``gpt2``: GPT-2 small's 12 layers x 768; ``llama``: a small LLaMA that fits a 2-core machine), config overrides
allowed, or a pretrained checkpoint loaded through transformers' Auto classes (safetensors only); eager
attention (sdpa has no double backward on CPU). The offline tokenizer is a byte-level BPE of 8,192 tokens
trained on real English (``scripts/train_bpe.py``), shipped in ``nlp_dlg/data/bpe``."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from nlp_dlg.engine.errors import ConfigError, ModelMismatchError
from nlp_dlg.engine.metadata import MetadataError, check_shapes_match, field
from nlp_dlg.engine.observation import weights_checksum

logger = logging.getLogger(__name__)

BPE_DIR = Path(__file__).resolve().parent.parent / "data" / "bpe"
DEFAULT_TOKENIZER = "bpe-8k"
# standard sizes of each family (transformers' own defaults for gpt2: GPT-2 small); llama: small, said so
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2"},
    "llama": {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
              "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 512},
}
# the maps LoRA adapts by default in each family (peft's own defaults for them)
LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
CONFIG_BOUNDS = {"vocab_size": (1, 1_000_000), "hidden_size": (1, 16_384), "n_embd": (1, 16_384),
                 "num_hidden_layers": (1, 96), "n_layer": (1, 96), "num_attention_heads": (1, 256),
                 "n_head": (1, 256), "intermediate_size": (1, 65_536), "max_position_embeddings": (1, 65_536),
                 "n_positions": (1, 65_536)}


@dataclass(frozen=True)
class CausalSpec:
    """How to obtain the decoder: ``name_or_path`` (a checkpoint directory or hub name), else ``architecture``
    (``gpt2`` or ``llama``) with random weights from ``seed`` and ``config`` overrides."""

    architecture: str = "gpt2"
    name_or_path: str | None = None
    seed: int = 0
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name_or_path is None and self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected a non-negative integer, got {self.seed!r}")


def build_config(architecture: str, overrides: Mapping[str, Any] | None, vocab_size: int) -> Any:
    """The family's standard config, the tokenizer's vocabulary, then ``overrides``."""
    base = dict(ARCHITECTURES[architecture])
    kind = base.pop("model_type")
    config = AutoConfig.for_model(kind, **{**base, "vocab_size": vocab_size, **dict(overrides or {})})
    config._attn_implementation = "eager"
    return config


def load_causal_lm(spec: CausalSpec, tokenizer: PreTrainedTokenizerBase | int) -> PreTrainedModel:
    """Build (random init, seeded without touching the global RNG; the vocabulary and special tokens are the
    ``tokenizer``'s, or a vocabulary size) or load the decoder, in eval mode."""
    if spec.name_or_path is None:
        config = build_config(spec.architecture, {**_special_ids(tokenizer), **(spec.config or {})},
                              tokenizer if isinstance(tokenizer, int) else len(tokenizer))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        logger.info("built a %s decoder, random init (seed %d), %.1fM parameters", spec.architecture, spec.seed,
                    sum(p.numel() for p in model.parameters()) / 1e6)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, attn_implementation="eager",
                                                         use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model: cannot load {spec.name_or_path!r} as a causal LM: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.loss_type = "ForCausalLM"      # GPT2LMHeadModel's name matches no loss: say which (the one it falls back to)
    return model.eval()


def add_lora(model: PreTrainedModel, *, rank: int, seed: int, architecture: str) -> PreTrainedModel:
    """``model`` with LoRA adapters of ``rank`` on its family's attention maps (peft; ``B`` starts at zero, ``A`` is
    drawn from ``seed`` without touching the global RNG): only the adapters train, so only their gradients are
    shared, as in federated LLM fine-tuning."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("--lora-rank needs peft: pip install 'nlp-dlg[lora]'") from exc
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=LORA_TARGETS[architecture],
                        fan_in_fan_out=architecture == "gpt2", bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, config)
    logger.info("LoRA rank %d on %s: %d adapter parameters train (of %d)", rank, ", ".join(LORA_TARGETS[architecture]),
                sum(p.numel() for p in wrapped.parameters() if p.requires_grad),
                sum(p.numel() for p in wrapped.parameters()))
    return wrapped.eval()          # a new wrapper starts in train mode (dropout on)


def _special_ids(tokenizer: PreTrainedTokenizerBase | int) -> dict[str, int]:
    if isinstance(tokenizer, int):
        return {}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def load_bpe_tokenizer(name_or_path: str | None = None) -> PreTrainedTokenizerBase:
    """The decoder tokenizer: ``None`` gives the shipped BPE; else a directory or hub name."""
    from transformers import AutoTokenizer

    target = str(BPE_DIR) if name_or_path in (None, DEFAULT_TOKENIZER) else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tokenizer: cannot load {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_metadata(model: PreTrainedModel, spec: CausalSpec, lora: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild or load the decoder (and its LoRA adapters: ``{"rank", "seed"}``), and its checksum."""
    config = model.config.to_dict()
    for key in ("_attn_implementation_autoset", "transformers_version", "architectures", "_name_or_path"):
        config.pop(key, None)
    return {"architecture": spec.architecture if spec.name_or_path is None else type(model).__name__,
            "source": "random-init" if spec.name_or_path is None else "pretrained",
            "name_or_path": spec.name_or_path, "seed": spec.seed if spec.name_or_path is None else None,
            "config": config, "checksum": weights_checksum(model), "lora": None if lora is None else dict(lora)}


def check_model_metadata(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A causal-LM file's model description, checked against its tensors before anything is built."""
    field(meta, "tokenizer", str, required=False)
    model = meta["model"]
    source = field(model, "source", str, where="model.", choices=("random-init", "pretrained"))
    field(model, "name_or_path", str, where="model.", required=source == "pretrained")
    field(model, "seed", int, where="model.", required=False, low=0, high=2**63 - 1)
    config = field(model, "config", dict, where="model.", required=source == "random-init")
    lora = field(model, "lora", dict, where="model.", required=False)
    rank = None if lora is None else field(lora, "rank", int, where="model.lora.", low=1, high=4096)
    if lora is not None:
        field(lora, "seed", int, where="model.lora.", low=0, high=2**63 - 1)
    if config is None:
        return
    field(model, "architecture", str, where="model.", choices=tuple(ARCHITECTURES))
    for key, (low, high) in CONFIG_BOUNDS.items():
        field(config, key, int, where="model.config.", required=False, low=low, high=high)
    check_shapes_match(expected_shapes(model["architecture"], json.dumps(config, sort_keys=True), rank), shapes,
                       "the model config")


@functools.lru_cache(maxsize=8)
def expected_shapes(architecture: str, config_json: str, lora_rank: int | None = None) -> dict[str, tuple[int, ...]]:
    """The trainable parameter shapes a config (and LoRA rank) describes, on the ``meta`` device (nothing
    allocated)."""
    config = dict(json.loads(config_json))
    config.pop("model_type", None)
    try:
        built = build_config(architecture, config, int(config.get("vocab_size", 1)))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(built, attn_implementation="eager")
            if lora_rank is not None:
                model = add_lora(model, rank=lora_rank, seed=0, architecture=architecture)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise MetadataError(f"metadata: model.config: not a {architecture} config ({exc})") from exc
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def model_from_metadata(meta: Mapping[str, Any], *, name_or_path: str | None = None,
                        verify: bool = True) -> PreTrainedModel:
    """Rebuild (random init) or load (``name_or_path``, which a pretrained file requires) the decoder a file
    names, and check its checksum."""
    if name_or_path is not None:
        model = load_causal_lm(CausalSpec(name_or_path=name_or_path), 1)
    elif meta.get("source") == "random-init":
        config = {k: v for k, v in meta["config"].items() if k != "model_type"}
        spec = CausalSpec(architecture=meta["architecture"], seed=int(meta.get("seed") or 0), config=config)
        model = load_causal_lm(spec, int(config["vocab_size"]))
    else:
        raise ConfigError(f"the gradient file was computed on the pretrained checkpoint {meta.get('name_or_path')!r}: "
                          "pass --model NAME_OR_PATH to load it (a path or hub name in a file is never followed)")
    if meta.get("lora"):
        family = meta.get("architecture") if meta.get("architecture") in LORA_TARGETS else model.config.model_type
        model = add_lora(model, rank=int(meta["lora"]["rank"]), seed=int(meta["lora"]["seed"]), architecture=family)
    if verify and meta.get("checksum") and weights_checksum(model) != meta["checksum"]:
        raise ModelMismatchError("model weights do not match the gradient file's checksum (pass the right --model, "
                                 "or --no-verify to attack anyway)")
    return model
