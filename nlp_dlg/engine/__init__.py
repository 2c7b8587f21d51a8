"""The shared gradient-matching engine: torch and numpy only, never transformers."""

from nlp_dlg.engine.defense import Defense, dp_epsilon, parse_defense
from nlp_dlg.engine.distance import DISTANCES, gradient_distance
from nlp_dlg.engine.errors import (
    ConfigError,
    GradientFileError,
    GradientMismatchError,
    InputDataError,
    MatchingDivergedError,
    ModelMismatchError,
    NlpDlgError,
    NonFiniteGradientError,
)
from nlp_dlg.engine.matcher import (
    OPTIMIZERS,
    SCHEDULES,
    GradientMatcher,
    MatchingConfig,
    MatchingPlugin,
    MatchingResult,
    StepRecord,
)
from nlp_dlg.engine.observation import (
    FORMAT,
    GradientObservation,
    as_gradient,
    find_gradient_files,
    load_observation,
    load_weights,
    save_observation,
    save_weights,
    weights_checksum,
)

__all__ = [
    "DISTANCES", "FORMAT", "OPTIMIZERS", "SCHEDULES", "ConfigError", "Defense", "GradientFileError",
    "GradientMatcher", "GradientMismatchError", "GradientObservation", "InputDataError", "MatchingDivergedError",
    "MatchingConfig", "MatchingPlugin", "MatchingResult", "ModelMismatchError", "NlpDlgError",
    "NonFiniteGradientError", "StepRecord", "as_gradient", "find_gradient_files", "gradient_distance",
    "dp_epsilon", "load_observation", "load_weights", "parse_defense", "save_observation", "save_weights",
    "weights_checksum",
]
