"""Configuration: typed schemas (`codecx.config.schema`) and the pre-flight check of every
override and sweep value before anything runs (`codecx.config.check`)."""
from codecx.config.check import (STORED_KEYS, ConfigError, check_targets, group_option,
                                 hydra_run_dir, main_with_precheck, one_line, precheck,
                                 to_container)
from codecx.config.schema import (CheckpointConfig, DataConfig, EvalConfig, FidOptions,
                                  LpipsOptions, MetricsOptions, ModelConfig, TrainConfig,
                                  TrainerConfig, TrainEvalConfig, register_configs, run_name)

__all__ = ["STORED_KEYS", "CheckpointConfig", "ConfigError", "DataConfig", "EvalConfig",
           "FidOptions", "LpipsOptions", "MetricsOptions", "ModelConfig", "TrainConfig",
           "TrainEvalConfig", "TrainerConfig", "check_targets", "group_option", "hydra_run_dir",
           "main_with_precheck", "one_line", "precheck", "register_configs", "run_name",
           "to_container"]
