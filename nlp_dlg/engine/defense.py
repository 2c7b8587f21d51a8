"""Defences a participant applies to its gradient before it leaves (modality-agnostic, composable, seeded).

A defence is written as a spec string, transforms joined by ``+`` and applied left to right:

* ``gaussian:σ`` — add N(0, σ²) to every entry (the paper's noise defence).
* ``laplace:b`` — add Laplace(0, b) to every entry.
* ``fp16`` / ``bf16`` — round every entry to half / bfloat16 precision (the attacker gets it back as float32).
* ``int8`` — per-tensor symmetric quantisation: scale ``max|g| / 127``, entries rounded to integers in
  [-127, 127], dequantised for the attacker (error at most half a scale step).
* ``prune:p`` — zero the fraction ``p`` (0 ≤ p < 1) of smallest-magnitude entries of each tensor (gradient
  compression, the paper's pruning defence).
* ``dp:C,z`` — DP-SGD (Abadi et al. 2016): each example's gradient (over all parameters) clipped to L2 norm
  ``C``, summed, Gaussian noise of standard deviation ``z·C`` added, divided by the batch size. It needs the
  per-example gradients, so it must come first; the privacy budget ε of a training run follows from ``z``,
  the sampling rate and the number of steps (:func:`dp_epsilon`, Opacus' RDP accountant).

Example: ``prune:0.2+gaussian:1e-3``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nlp_dlg.engine.device import rand, randn
from nlp_dlg.engine.errors import ConfigError

FORMS = ("gaussian:SIGMA", "laplace:B", "fp16", "bf16", "int8", "prune:P", "dp:C,Z")
_ARITY = {"gaussian": 1, "laplace": 1, "fp16": 0, "bf16": 0, "int8": 0, "prune": 1, "dp": 2}


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(f"defence {spec!r}: {why}; accepted forms: {', '.join(FORMS)}, joined by '+' "
                       "(e.g. prune:0.2+gaussian:1e-3)")


@dataclass(frozen=True)
class Transform:
    """One step of a defence: ``kind`` and its numeric parameters."""

    kind: str
    params: tuple[float, ...] = ()

    @property
    def spec(self) -> str:
        return self.kind + (":" + ",".join(f"{v:g}" for v in self.params) if self.params else "")


@dataclass(frozen=True)
class Defense:
    """A parsed defence (see the module docstring). Build it with :func:`parse_defense`."""

    transforms: tuple[Transform, ...]

    @property
    def spec(self) -> str:
        return "+".join(t.spec for t in self.transforms)

    @property
    def needs_per_example(self) -> bool:
        """True when the first transform is DP-SGD, which works on per-example gradients."""
        return bool(self.transforms) and self.transforms[0].kind == "dp"

    def metadata(self) -> dict[str, object]:
        """What the gradient file records about the defence."""
        meta: dict[str, object] = {"spec": self.spec}
        if self.needs_per_example:
            clip, z = self.transforms[0].params
            meta["dp"] = {"clip_norm": clip, "noise_multiplier": z}
        return meta

    def apply(self, gradients: Mapping[str, torch.Tensor] | None = None, *, generator: torch.Generator,
              per_example: Sequence[Mapping[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """The defended gradient.

        Args:
            gradients: the batch's (mean-reduced) gradient, per parameter name. Unused with ``dp``.
            generator: draws the noise (seed it for reproducible sweeps).
            per_example: with ``dp``: each example's gradient (its own mean loss), per parameter name.
        """
        steps = list(self.transforms)
        if self.needs_per_example:
            if not per_example:
                raise ConfigError("defence 'dp' needs the per-example gradients (per_example=...)")
            clip, z = steps.pop(0).params
            out = _dp_sgd(per_example, clip, z, generator)
        else:
            if gradients is None:
                raise ConfigError("defence: expected the batch gradient (gradients=...)")
            out = {n: g.detach().float().clone() for n, g in gradients.items()}
        for t in steps:
            out = {n: _apply_one(t, g, generator) for n, g in out.items()}
        return out


def parse_defense(spec: str | None) -> Defense | None:
    """Parse a defence spec (``None``, ``""`` or ``"none"``: no defence). Raises :class:`ConfigError` naming
    the accepted forms for an unknown name, a missing or extra value, or a value out of range."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    transforms = []
    for part in spec.split("+"):
        part = part.strip()
        name, _, values = part.partition(":")
        name = name.strip().lower()
        if name not in _ARITY:
            raise _bad(spec, f"unknown defence {name!r}")
        try:
            params = tuple(float(v) for v in values.split(",")) if values.strip() else ()
        except ValueError:
            raise _bad(spec, f"{part!r} has a value that is not a number") from None
        if len(params) != _ARITY[name]:
            raise _bad(spec, f"{name} takes {_ARITY[name]} value(s), got {len(params)}")
        if not all(math.isfinite(v) for v in params):
            raise _bad(spec, f"{part!r}: values must be finite")
        if name in ("gaussian", "laplace") and params[0] < 0:
            raise _bad(spec, f"{name} scale must be >= 0, got {params[0]:g}")
        if name == "prune" and not 0.0 <= params[0] < 1.0:
            raise _bad(spec, f"prune fraction must be in [0, 1), got {params[0]:g}")
        if name == "dp" and (params[0] <= 0 or params[1] < 0):
            raise _bad(spec, "dp needs a clip norm C > 0 and a noise multiplier z >= 0, "
                             f"got {params[0]:g},{params[1]:g}")
        transforms.append(Transform(name, params))
    if any(t.kind == "dp" for t in transforms[1:]):
        raise _bad(spec, "dp works on per-example gradients, so it must come first")
    return Defense(tuple(transforms))


def _apply_one(t: Transform, g: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if t.kind == "gaussian":
        return g + t.params[0] * randn(*g.shape, generator=generator, device=g.device)
    if t.kind == "laplace":
        # float64: in float32 a draw of exactly 0 (one in 2^24, a few per BERT-base gradient) becomes u = −0.5
        # after the clamp, and log1p(−1) = −inf
        u = rand(*g.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) - 0.5
        noise = t.params[0] * u.sign() * torch.log1p(-2 * u.abs())                  # the inverse CDF
        return g - noise.to(device=g.device, dtype=g.dtype)
    if t.kind == "fp16":
        return g.half().float()
    if t.kind == "bf16":
        return g.bfloat16().float()
    if t.kind == "int8":
        scale = g.abs().max() / 127.0
        if float(scale) == 0.0:
            return g.clone()
        return (g / scale).round().clamp(-127, 127) * scale
    if t.kind == "prune":
        k = int(t.params[0] * g.numel())
        if k == 0:
            return g.clone()
        flat = g.flatten().clone()
        flat[flat.abs().argsort()[:k]] = 0.0
        return flat.view_as(g)
    raise ConfigError(f"defence: unknown transform {t.kind!r}")  # parse_defense guards this


def _dp_sgd(per_example: Sequence[Mapping[str, torch.Tensor]], clip: float, z: float,
            generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Clip each example's gradient to L2 norm ``clip`` (over every parameter), sum, add N(0, (z·clip)²),
    divide by the number of examples."""
    names = list(per_example[0])
    total = {n: torch.zeros_like(per_example[0][n], dtype=torch.float32) for n in names}
    for grads in per_example:
        norm = math.sqrt(sum(float(grads[n].double().pow(2).sum()) for n in names))
        factor = min(1.0, clip / norm) if norm > 0 else 1.0
        for n in names:
            total[n] += grads[n].float() * factor
    b = len(per_example)
    return {n: (t + z * clip * randn(*t.shape, generator=generator, device=t.device)) / b for n, t in total.items()}


def dp_epsilon(noise_multiplier: float, *, sample_rate: float, steps: int, delta: float = 1e-5) -> float:
    """ε of DP-SGD with Gaussian noise ``noise_multiplier``, Poisson sampling rate ``sample_rate`` and
    ``steps`` steps, at ``delta`` (Opacus' RDP accountant; needs ``pip install opacus``)."""
    if noise_multiplier <= 0:
        return math.inf
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as exc:
        raise ConfigError("dp_epsilon needs opacus (pip install 'nlp-dlg[dp]')") from exc
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))
