"""lra / sc_raw presets: defined once as data, the official values, ``--arch`` and the hydra YAML give
the same model, the command line wins, ``mega_lra_aan`` builds without ``--norm-type`` (B7)."""
import argparse
import functools
from pathlib import Path

import pytest
import torch
from fairseq import models, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

import mega_fairseq
from helpers import StubTask, word_dictionary
from mega_fairseq.models.lra import LRAModel
from mega_fairseq.models.sc_raw import SCRawModel
from mega_fairseq.models.arch_presets import PRESETS, preset_yaml, preset_yaml_path
from mega_fairseq.models.lra_config import LRA_PRESETS, LRAConfig
from mega_fairseq.models.mega_settings import read_settings
from mega_fairseq.models.sc_raw_config import SC_RAW_PRESETS, SCRawConfig

LRA_ARCHS = ["lra", "mega_lra_listop", "mega_lra_imdb", "mega_lra_aan", "mega_lra_cifar10", "mega_lra_pf32",
             "mega_lra_pf128"]
SC_ARCHS = ["sc_raw", "mega_sc_raw", "mega_sc_raw_base", "mega_sc_raw_big"]
TEXT_ARCHS = ["lra", "mega_lra_listop", "mega_lra_imdb", "mega_lra_aan"]
CONFIG = {"lra": LRAConfig, "sc_raw": SCRawConfig}
MODEL = {"lra": LRAModel, "sc_raw": SCRawModel}

#: official values (SPEC: preset table; sc_raw base_architecture), independent of the preset data
OFFICIAL = {
    "mega_lra_listop": dict(encoder_hidden_dim=160, z_dim=64, n_dim=16, encoder_layers=6, encoder_embed_dim=80,
                            classifier_out_dim=160, chunk_size=-1, truncation_length=1024, max_positions=2002,
                            norm_type="scalenorm", sentence_class_num=10, classifier_in_dim=80),
    "mega_lra_imdb": dict(encoder_hidden_dim=256, z_dim=64, encoder_layers=4, encoder_embed_dim=128,
                          max_positions=4002, sentence_class_num=2, classifier_in_dim=128),
    "mega_lra_aan": dict(encoder_hidden_dim=256, encoder_layers=6, encoder_embed_dim=128, classifier_in_dim=256,
                         max_positions=4002),
    "mega_lra_cifar10": dict(encoder_hidden_dim=320, z_dim=96, encoder_layers=8, encoder_embed_dim=160,
                             chunk_size=1024, max_positions=1024, norm_type="batchnorm", sentence_class_num=10),
    "mega_lra_pf32": dict(encoder_hidden_dim=256, encoder_layers=6, encoder_embed_dim=128, chunk_size=1024,
                          norm_type="batchnorm", sentence_class_num=2),
    "mega_lra_pf128": dict(encoder_hidden_dim=128, z_dim=32, encoder_layers=4, encoder_embed_dim=64,
                           chunk_size=16384, truncation_length=4096, max_positions=16384),
    "mega_sc_raw": dict(encoder_layers=6, encoder_embed_dim=60, encoder_hidden_dim=120, encoder_ffn_embed_dim=120,
                        z_dim=30, n_dim=16, attention_activation_fn="laplace", norm_type="batchnorm",
                        encoder_normalize_before=True, classifier_out_dim=120, sentence_class_num=10,
                        chunk_size=1000, truncation_length=1000, max_positions=16000, activation_fn="silu"),
    "mega_sc_raw_big": dict(encoder_embed_dim=72, encoder_hidden_dim=144, z_dim=36, classifier_out_dim=144),
}


def model_of(arch):
    return models.ARCH_MODEL_NAME_REGISTRY[arch]


def task_args(arch):
    if model_of(arch) == "sc_raw":
        return ["--task", "speech_commands"]
    return ["--task", "lra-text" if arch in TEXT_ARCHS else "lra-image"]


def arch_args(arch, extra=()):
    """The argparse namespace of ``--arch arch`` (the preset applied), as fairseq-train parses it."""
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["/nonexistent-data", "--user-dir", mega_fairseq.USER_DIR,
                                                *task_args(arch), "--arch", arch, *extra])


@functools.lru_cache(maxsize=None)
def arch_cfg(arch):
    """The config fairseq-train builds from it (hydra compose: slow, so once per preset)."""
    return convert_namespace_to_omegaconf(arch_args(arch))


def arch_cfg_with(arch, *extra):
    return convert_namespace_to_omegaconf(arch_args(arch, extra))


def stub_task(arch):
    if arch not in TEXT_ARCHS:
        return StubTask(None)
    return StubTask(word_dictionary(30, prefix="t"))


def build_on_meta(cfg_model, arch):
    """On the meta device (no memory)."""
    with torch.device("meta"):
        return models.build_model(cfg_model, stub_task(arch))


def test_every_official_preset_is_registered_once():
    assert sorted(PRESETS["lra"]) == sorted(LRA_ARCHS)
    assert sorted(PRESETS["sc_raw"]) == sorted(SC_ARCHS)


@pytest.mark.parametrize("arch", LRA_ARCHS + SC_ARCHS)
def test_shipped_yaml_equals_the_preset(arch):
    path = Path(preset_yaml_path(model_of(arch), arch))
    assert path.read_text() == preset_yaml(model_of(arch), arch)


@pytest.mark.parametrize("arch", sorted(OFFICIAL))
def test_presets_carry_the_official_values(arch):
    settings = MODEL[model_of(arch)].read_config(arch_args(arch))
    for key, value in OFFICIAL[arch].items():
        assert getattr(settings, key) == value, key
    if arch.startswith("mega_lra"):
        assert settings.activation_fn == "silu" and settings.apply_bert_init is False and settings.n_dim == 16
        assert settings.encoder_ffn_embed_dim == settings.encoder_hidden_dim
        assert settings.classifier_out_dim == settings.encoder_hidden_dim
        assert settings.attention_activation_fn == "relu2"  # base default, never set by a preset


@pytest.mark.parametrize("arch", LRA_ARCHS + SC_ARCHS)
def test_arch_flag_and_yaml_build_the_same_model(arch):
    model_name = model_of(arch)
    from_arch = arch_cfg(arch)
    yaml_model = OmegaConf.merge(OmegaConf.structured(CONFIG[model_name]),
                                 OmegaConf.load(preset_yaml_path(model_name, arch)))
    assert vars(read_settings(from_arch.model, CONFIG[model_name])) == vars(read_settings(yaml_model,
                                                                                          CONFIG[model_name]))
    if arch == "lra":
        return  # its BERT initialisation needs real tensors (20M parameters): the settings are equal
    arch_model, yaml_built = build_on_meta(from_arch.model, arch), build_on_meta(yaml_model, arch)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(arch_model) == shapes(yaml_built)
    assert repr(arch_model) == repr(yaml_built)


def test_aan_builds_without_norm_type_and_takes_two_documents():
    """B7: officially an AttributeError at build time without --norm-type."""
    model = build_on_meta(arch_cfg("mega_lra_aan").model, "mega_lra_aan")
    assert model.settings.norm_type == "scalenorm"
    assert model.num_documents == 2
    assert model.classifier[0][0].in_features == 256


def test_aan_classifier_input_follows_a_command_line_width():
    """Officially classifier_in_dim = 2 x encoder_embed_dim after the command line (was a fixed 256)."""
    settings = LRAModel.read_config(arch_args("mega_lra_aan", ["--encoder-embed-dim", "8"]))
    assert (settings.encoder_embed_dim, settings.classifier_in_dim) == (8, 16)
    model = build_on_meta(arch_cfg_with("mega_lra_aan", "--encoder-embed-dim", "8").model, "mega_lra_aan")
    assert model.num_documents == 2 and model.classifier[0][0].in_features == 16


def test_command_line_values_win_over_the_preset():
    settings = read_settings(arch_args("mega_lra_cifar10", ["--encoder-layers", "3", "--norm-type", "layernorm",
                                                            "--chunk-size", "256", "--act-dropout", "0.25"]),
                             LRAConfig)
    assert (settings.encoder_layers, settings.norm_type, settings.chunk_size, settings.act_dropout) == \
        (3, "layernorm", 256, 0.25)
    assert settings.encoder_hidden_dim == LRA_PRESETS["mega_lra_cifar10"]["encoder_hidden_dim"]


def test_derived_settings_follow_the_official_rules():
    sc = SCRawModel.read_config(arch_args("mega_sc_raw", ["--encoder-embed-dim", "40"]))
    assert sc.encoder_normalize_before is True and sc.apply_bert_init is False
    assert LRAModel.read_config(arch_args("lra")).apply_bert_init is True
    assert LRAModel.read_config(arch_args("lra", ["--apply-bert-init"])).apply_bert_init is True
    assert LRAModel.read_config(arch_args("mega_lra_imdb")).apply_bert_init is False
    assert sc.classifier_out_dim == 80 and sc.classifier_in_dim == 40
    assert sc.encoder_ffn_embed_dim == sc.encoder_hidden_dim == 120
    namespace = read_settings(argparse.Namespace(encoder_embed_dim=32, tokens_per_sample=300), LRAConfig)
    assert namespace.max_positions == 300 and namespace.classifier_in_dim == 32
    assert namespace.classifier_out_dim == LRAConfig.classifier_out_dim
    assert SC_RAW_PRESETS["mega_sc_raw"] == SC_RAW_PRESETS["mega_sc_raw_base"] == {}


def test_bad_choices_are_one_line_errors():
    with pytest.raises(ValueError, match="norm_type='groupnorm' is not supported; allowed values: layernorm"):
        read_settings(argparse.Namespace(norm_type="groupnorm"), LRAConfig)
    with pytest.raises(ValueError, match="chunk_size=-3"):
        read_settings(argparse.Namespace(chunk_size=-3), LRAConfig)
