"""mega_lm presets: defined once, every one builds, ``--arch`` and the hydra YAML give the same model."""
import argparse
import copy
import functools
from pathlib import Path

import pytest
import torch
from fairseq import models, options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

import mega_fairseq
from mega_fairseq.models.arch_presets import PRESETS, preset_yaml, preset_yaml_path
from mega_fairseq.models.mega_lm_config import MEGA_LM_PRESETS, MegaLMConfig
from mega_fairseq.models.mega_settings import read_settings

from helpers import StubTask, word_dictionary


def resolve_lm_settings(cfg):
    return read_settings(cfg, MegaLMConfig)

OFFICIAL_PRESETS = ["mega_lm", "mega_lm_big", "mega_lm_adaptive_big", "mega_lm_wiki103", "mega_lm_adaptive_base",
                    "mega_lm_enwik8_base", "mega_lm_enwik8_large"]
# The adaptive presets cut the vocabulary at 20000 and 60000 tokens.
VOCAB = 60100


@pytest.fixture(scope="module")
def task():
    return StubTask(word_dictionary(VOCAB - len(Dictionary())))


def test_every_official_preset_is_registered_once():
    assert sorted(PRESETS["mega_lm"]) == sorted(OFFICIAL_PRESETS)
    assert MEGA_LM_PRESETS["mega_lm_wiki103"] == MEGA_LM_PRESETS["mega_lm_adaptive_big"]


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_shipped_yaml_equals_the_preset(preset):
    path = Path(preset_yaml_path("mega_lm", preset))
    assert path.read_text() == preset_yaml("mega_lm", preset)


def arch_cfg(preset: str, extra=()):
    """The config ``fairseq-train --arch preset ...`` makes (a copy: two tests read each preset's,
    and fairseq's parser takes a second or more to build)."""
    return copy.deepcopy(_parsed_arch_cfg(preset, tuple(extra)))


@functools.lru_cache(maxsize=None)
def _parsed_arch_cfg(preset: str, extra: tuple):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "/nonexistent-data", "--user-dir", mega_fairseq.USER_DIR, "--task", "language_modeling",
        "--arch", preset, "--tokens-per-sample", "512", *extra])
    return convert_namespace_to_omegaconf(args)


def yaml_cfg(preset: str):
    """The model node hydra composes from config/model/mega_lm/<preset>.yaml (+ the task it reads)."""
    root = OmegaConf.create({"task": {"tokens_per_sample": 512, "max_target_positions": None}})
    root.model = OmegaConf.load(preset_yaml_path("mega_lm", preset))
    return root


def build_on_meta(cfg, task):
    with torch.device("meta"):
        model = models.build_model(cfg.model, task)
    return model


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_arch_flag_and_yaml_build_the_same_model(preset, task):
    from_arch, from_yaml = arch_cfg(preset), yaml_cfg(preset)
    assert vars(resolve_lm_settings(from_arch.model)) == vars(resolve_lm_settings(
        OmegaConf.merge(OmegaConf.structured(MegaLMConfig), from_yaml.model, {"tokens_per_sample": 512})))
    arch_model, yaml_model = build_on_meta(from_arch, task), build_on_meta(from_yaml, task)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(arch_model) == shapes(yaml_model)
    assert repr(arch_model) == repr(yaml_model)  # dropout rates, norms, activations, chunking


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_every_preset_builds_with_official_values_and_no_extra_flags(preset, task):
    settings = resolve_lm_settings(arch_cfg(preset).model)
    for key, value in MEGA_LM_PRESETS.get(preset, {}).items():
        assert getattr(settings, key) == value, key
    for key in ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout"):
        assert isinstance(getattr(settings, key), float)
    model = build_on_meta(arch_cfg(preset), task)
    assert len(model.decoder.layers) == settings.decoder_layers
    assert (model.decoder.adaptive_softmax is not None) == bool(settings.adaptive_softmax_cutoff)


def test_command_line_values_win_over_the_preset(task):
    settings = resolve_lm_settings(arch_cfg("mega_lm_enwik8_base", ["--decoder-layers", "3", "--dropout", "0.25"]).model)
    assert settings.decoder_layers == 3 and settings.dropout == 0.25
    assert settings.decoder_hidden_dim == MEGA_LM_PRESETS["mega_lm_enwik8_base"]["decoder_hidden_dim"]


def test_base_preset_derives_ffn_and_input_dims_like_the_official_code():
    settings = resolve_lm_settings(arch_cfg("mega_lm", ["--decoder-hidden-dim", "96"]).model)
    assert settings.decoder_ffn_embed_dim == 96
    assert settings.decoder_input_dim == settings.decoder_embed_dim
    namespace = resolve_lm_settings(argparse.Namespace(decoder_embed_dim=64))
    assert namespace.decoder_ffn_embed_dim == MegaLMConfig.decoder_hidden_dim
    assert namespace.max_target_positions == 1024
