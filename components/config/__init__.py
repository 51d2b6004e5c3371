"""Configuration of the system in pure Python: no torch, and nothing else of components/ (an import-linter contract),
so `adm config`, `adm presets` and every check of a config run before any network is built.

* sections.py: the frozen dataclasses of each config section, grouped in a Preset; the lists of allowed values.
* presets.py: the presets as data, with the exact flags of the released checkpoints (flags.py reads those flags).
* overrides.py: values from text (`--override section.field=value`).
* validation.py: every rule a resolved config must satisfy, each problem reported with the others.
* kinds.py: the networks of the system as one table (which sections describe and train each).
* grid.py: the sampling grid's vocabulary (sampler strings, guidance methods, intervals, cells); respacing.py the
  timesteps a respacing string keeps.

The names most code needs are importable from the package itself.
"""

from .overrides import apply_overrides, override_section
from .sections import (
    AUTO,
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    ClassifierConfig,
    ConfigError,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    Preset,
    SampleConfig,
    TrainConfig,
    UNetConfig,
    UpsampleConfig,
    UpsamplerConfig,
    UserError,
    preset_from_dict,
    to_dict,
)

__all__ = ["AUTO", "HIGHER_IS_BETTER", "LOWER_IS_BETTER", "ClassifierConfig", "ConfigError", "DataConfig",
           "DiffusionConfig", "EvaluateConfig", "Preset", "SampleConfig", "TrainConfig", "UNetConfig", "UpsampleConfig",
           "UpsamplerConfig", "UserError",
           "apply_overrides", "override_section", "preset_from_dict", "to_dict"]
