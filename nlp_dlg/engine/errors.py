"""Typed errors. Every error the toolkit raises on purpose subclasses :class:`NlpDlgError` and one of
the built-in ``ValueError``/``TypeError``/``OSError`` so callers can catch either."""

from __future__ import annotations


class NlpDlgError(Exception):
    """Base of every error the toolkit raises on purpose."""


class ConfigError(NlpDlgError, ValueError):
    """An option or argument is out of its accepted range."""


class InputDataError(NlpDlgError, ValueError):
    """Input data (sentences, images, files of them) is missing, empty or malformed."""


class GradientFileError(NlpDlgError, ValueError):
    """A gradient file is missing, unreadable, not safetensors, or not written by this toolkit."""


class GradientMismatchError(GradientFileError):
    """A gradient file does not fit the model: missing, extra or wrongly shaped parameters."""


class NonFiniteGradientError(GradientFileError):
    """A gradient holds NaN or Inf values."""


class ModelMismatchError(NlpDlgError, ValueError):
    """The attacker's model is not the one the gradient was computed with (checksum differs)."""


class MatchingDivergedError(NlpDlgError, FloatingPointError):
    """The gradient distance was never finite (e.g. a dummy or an observation that overflows): nothing to
    return or restart from."""


class ClusterError(NlpDlgError, RuntimeError):
    """The cluster the files were handed to (Ray) lost a worker or could not run one."""
