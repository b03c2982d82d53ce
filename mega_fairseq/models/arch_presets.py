"""Named architecture presets, defined once as data, usable from ``--arch`` and hydra YAML.

A model's dataclass defaults ARE its base preset (``mega``, ``mega_lm``): fairseq registers the
model name itself as an architecture. Every other preset is a dict of overrides on top of the
dataclass defaults. From that one dict this module derives:

* the ``--arch NAME`` function (``register_model_architecture``): it fills each preset value
  that the user did not give on the command line (and, when a checkpoint is reloaded, keeps the
  values stored in it);
* the hydra YAML ``config/model/<model>/<preset>.yaml`` (``# @package model``, ``_name: <model>``
  plus the overrides), which ``fairseq-hydra-train`` needs because under hydra ``model._name:
  <preset>`` would silently build the base config. ``python -m mega_fairseq.models.arch_presets
  DIR`` writes them; ``tests`` check that the shipped files equal what this module derives.
"""
import argparse
import os
import sys
from typing import Any, Dict

from fairseq.models import register_model_architecture
from omegaconf import OmegaConf

#: model name -> {preset name -> overrides of the model's dataclass defaults}
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {}

#: Shipped YAML presets (hydra config group "model"): <CONFIG_DIR>/model/<model>/<preset>.yaml
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")


def _has_value(cfg, key: str) -> bool:
    if isinstance(cfg, argparse.Namespace):
        return getattr(cfg, key, None) is not None
    return key in cfg and cfg[key] is not None


def _arch_function(overrides: Dict[str, Any]):
    def apply_preset(cfg) -> None:
        for key, value in overrides.items():
            if not _has_value(cfg, key):
                setattr(cfg, key, value) if isinstance(cfg, argparse.Namespace) else cfg.__setitem__(key, value)

    return apply_preset


def register_presets(model_name: str, config_cls, presets: Dict[str, Dict[str, Any]]) -> None:
    """Register ``presets`` (preset name -> overrides) as architectures of ``model_name``.

    ``model_name`` itself must not appear in ``presets``: its values are the dataclass defaults.
    Unknown keys are rejected here, so a typo in a preset fails at import, not silently.
    """
    if model_name in presets:
        raise ValueError(f"preset '{model_name}' is the dataclass defaults of model '{model_name}'; "
                         "do not list it among the overrides")
    fields = set(config_cls.__dataclass_fields__)
    for arch, overrides in presets.items():
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"preset '{arch}' sets unknown {config_cls.__name__} fields: {unknown}")
        register_model_architecture(model_name, arch)(_arch_function(overrides))
    PRESETS[model_name] = {model_name: {}, **presets}


def preset_yaml(model_name: str, preset: str) -> str:
    """The hydra YAML text for ``preset`` of ``model_name`` (see the module docstring)."""
    body = OmegaConf.to_yaml(OmegaConf.create({"_name": model_name, **PRESETS[model_name][preset]}))
    return f"# @package model\n# generated from mega_fairseq.models.arch_presets ({preset})\n{body}"


def preset_yaml_path(model_name: str, preset: str, config_dir: str = CONFIG_DIR) -> str:
    return os.path.join(config_dir, "model", model_name, f"{preset}.yaml")


def write_preset_yamls(config_dir: str = CONFIG_DIR) -> None:
    for model_name, presets in PRESETS.items():
        for preset in presets:
            path = preset_yaml_path(model_name, preset, config_dir)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(preset_yaml(model_name, preset))
            print(path)


if __name__ == "__main__":
    import mega_fairseq  # noqa: F401  (registers every model's presets)
    # Run as a script this file is "__main__"; the registry that the models filled is the one of
    # the imported module, so call through it.
    from mega_fairseq.models import arch_presets

    arch_presets.write_preset_yamls(sys.argv[1] if len(sys.argv) > 1 else CONFIG_DIR)
