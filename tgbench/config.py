"""Compatibility names for plug-ins written against tgbench <= 0.3: the suite's public names, now in
:mod:`tgbench.suite` (one module per job). New code imports from there; tgbench's own modules do too, except
``tgbench.identity``, whose imports ``tests/test_identity.py`` pins. Only re-exports live here.
"""
from tgbench.strict import Strict
from tgbench.suite.by_kind import Suite, suite_from_dict, suite_model  # (kind-checked, as it was)
from tgbench.suite.checks import arm_with, check_data_sizes, check_space
from tgbench.suite.loading import load_suite
from tgbench.suite.messages import format_error
from tgbench.suite.names import INSTALLED_SUITES, PROFILES, installed_suites, resolve_suite
from tgbench.suite.overrides import Setting, apply_overrides
from tgbench.suite.schema import (FULL_HORIZON_SETTINGS, MAX_BATCH, MAX_COUNT, MAX_INNER_STEPS,
                                  MAX_OUTER_ITERATIONS, MAX_SEEDS, MAX_SWEEP_VALUES, MAX_WIDTH, SWEEPABLE,
                                  Architecture, Beta, Count, DatasetConfig, Evaluation, GroundTruthSchedule,
                                  InnerLoop, LearnerSpace, OuterLoop, PrunerSettings, SamplerSettings,
                                  SearchDimension, SearchSpace, SourceEntry, StudySettings, Sweep,
                                  TuningStage, Width, check_setting_key, sampler_key)
from tgbench.suite.yaml_text import MAX_YAML_VALUES

__all__ = [
    "Strict", "suite_from_dict", "suite_model", "arm_with", "check_data_sizes", "check_space",
    "load_suite", "format_error", "INSTALLED_SUITES", "PROFILES", "installed_suites", "resolve_suite", "Setting",
    "apply_overrides", "FULL_HORIZON_SETTINGS", "MAX_BATCH", "MAX_COUNT", "MAX_INNER_STEPS", "MAX_OUTER_ITERATIONS",
    "MAX_SEEDS", "MAX_SWEEP_VALUES", "MAX_WIDTH", "SWEEPABLE", "Architecture", "Beta", "Count", "DatasetConfig",
    "Evaluation", "GroundTruthSchedule", "InnerLoop", "LearnerSpace", "OuterLoop", "PrunerSettings",
    "SamplerSettings", "SearchDimension", "SearchSpace", "SourceEntry", "StudySettings", "Suite", "Sweep",
    "TuningStage", "Width", "check_setting_key", "sampler_key", "MAX_YAML_VALUES",
]
