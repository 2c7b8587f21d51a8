"""The shared gradient-matching engine: torch and numpy only, never transformers.

Names are imported on first use, so that ``nlp_dlg.engine.config`` and ``nlp_dlg.engine.errors`` (plain Python)
can be read by a command line without importing torch.
"""

from __future__ import annotations

from nlp_dlg.lazy import lazy_exports

_EXPORTS = {
    "nlp_dlg.engine.config": ("DEFAULT_LR", "DISTANCES", "OPTIMIZERS", "PRIORS", "SCHEDULES", "MatchingConfig"),
    "nlp_dlg.engine.defense": ("Defense", "dp_epsilon", "parse_defense"),
    "nlp_dlg.engine.device": ("DeviceError", "model_device", "resolve_device"),
    "nlp_dlg.engine.distance": ("gradient_distance",),
    "nlp_dlg.engine.errors": ("ConfigError", "GradientFileError", "GradientMismatchError", "InputDataError",
                              "MatchingDivergedError", "ModelMismatchError", "NlpDlgError", "NonFiniteGradientError",
                              "ClusterError"),
    "nlp_dlg.engine.matcher": ("GradientMatcher", "MatchingPlugin", "MatchingResult", "StepRecord"),
    "nlp_dlg.engine.observation": ("FORMAT", "GradientObservation", "as_gradient", "find_gradient_files",
                                   "load_observation", "load_weights", "read_metadata", "save_observation",
                                   "save_weights", "weights_checksum", "write_observations"),
}
__all__, __getattr__, __dir__ = lazy_exports("nlp_dlg.engine", _EXPORTS)
