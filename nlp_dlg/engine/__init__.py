"""The shared gradient-matching engine: torch and numpy only, never transformers."""

from nlp_dlg.engine.distance import DISTANCES, gradient_distance
from nlp_dlg.engine.errors import (
    ConfigError,
    GradientFileError,
    GradientMismatchError,
    InputDataError,
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
    find_gradient_files,
    load_observation,
    save_observation,
    weights_checksum,
)

__all__ = [
    "DISTANCES", "FORMAT", "OPTIMIZERS", "SCHEDULES", "ConfigError", "GradientFileError",
    "GradientMatcher", "GradientMismatchError", "GradientObservation", "InputDataError",
    "MatchingConfig", "MatchingPlugin", "MatchingResult", "ModelMismatchError", "NlpDlgError",
    "NonFiniteGradientError", "StepRecord", "find_gradient_files", "gradient_distance",
    "load_observation", "save_observation", "weights_checksum",
]
