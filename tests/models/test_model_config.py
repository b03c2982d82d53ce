"""MegaConfig: official names and defaults, presets defined once, ``--arch`` == hydra YAML."""
import os

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.initialize import add_defaults
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

import mega_fairseq  # noqa: F401  (registers the plugin, as --user-dir does)
from mega_fairseq.models import arch_presets
from mega_fairseq.models.mega_config import MEGA_PRESETS, MegaConfig

# fairseq/models/mega.py of the official code: base_architecture (the 'mega' arch)
OFFICIAL_BASE = dict(
    encoder_embed_dim=512, encoder_hidden_dim=1024, encoder_z_dim=128, encoder_n_dim=16, encoder_layers=6,
    encoder_chunk_size=-1, decoder_layers=6, dropout=0.1, attention_dropout=0.0, hidden_dropout=0.0,
    activation_dropout=0.0, feature_dropout=False, rel_pos_bias="simple", normalization_type="layernorm",
    normalize_before=False, normalize_embedding=False, no_scale_embedding=False, adaptive_softmax_cutoff=None,
    adaptive_softmax_dropout=0, share_decoder_input_output_embed=False, share_all_embeddings=False,
    activation_fn="silu", attention_activation_fn="softmax", truncation_length=1024, tie_adaptive_weights=False,
)
# ... and the two named architectures, with their derived sizes after base_architecture
OFFICIAL_PRESETS = {
    "mega_wmt_en_de": dict(dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1,
                           encoder_embed_dim=512, decoder_embed_dim=512, decoder_ffn_embed_dim=1024),
    "mega_wmt_en_de_big": dict(encoder_embed_dim=1024, encoder_hidden_dim=2048, encoder_z_dim=256, dropout=0.3,
                               attention_dropout=0.1, hidden_dropout=0.1, activation_dropout=0.1,
                               decoder_embed_dim=1024, decoder_hidden_dim=2048, decoder_z_dim=256,
                               encoder_ffn_embed_dim=2048, decoder_ffn_embed_dim=2048),
}
TINY = dict(encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, encoder_hidden_dim=24, encoder_z_dim=8,
            encoder_n_dim=2, decoder_n_dim=3)


def test_dataclass_defaults_are_the_official_base_architecture():
    defaults = MegaConfig()
    for name, value in OFFICIAL_BASE.items():
        assert getattr(defaults, name) == value, name


def test_shipped_yamls_are_the_presets():
    for preset in arch_presets.PRESETS["mega"]:
        with open(arch_presets.preset_yaml_path("mega", preset)) as f:
            assert f.read() == arch_presets.preset_yaml("mega", preset), preset
    assert set(arch_presets.PRESETS["mega"]) == {"mega", *MEGA_PRESETS}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mega_cfg_data")
    for lang in ("en", "de"):
        (path / "dict.{}.txt".format(lang)).write_text("".join("w{} {}\n".format(i, 100 - i) for i in range(30)))
    return str(path)


def build_from_cli(data_dir, arch, *flags):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [data_dir, "--task", "translation", "-s", "en", "-t", "de", "--arch", arch, *flags]
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    given = OmegaConf.create(OmegaConf.to_container(cfg.model))  # before build_model fills it
    return task.build_model(cfg.model), given, task


def write_experiment_yaml(conf_dir, data_dir, preset, model_overrides) -> str:
    """A user's fairseq-hydra-train config that picks the plugin's preset YAML for the model."""
    os.makedirs(conf_dir, exist_ok=True)
    lines = [
        "defaults:", "  - model: mega/{}".format(preset), "  - _self_",
        "hydra:", "  searchpath:", "    - file://{}".format(arch_presets.CONFIG_DIR),
        "task:", "  _name: translation", "  data: {}".format(data_dir), "  source_lang: en", "  target_lang: de",
        "model:",
    ] + ["  {}: {}".format(k, v) for k, v in model_overrides.items()]
    with open(os.path.join(conf_dir, "exp.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "exp"


def build_from_hydra_yaml(conf_dir, data_dir, preset, model_overrides, task):
    """Compose ``--config-dir CONF --config-name exp`` with hydra, then fill and build the model
    node as fairseq-hydra-train does (``add_defaults``, resolve, ``task.build_model``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    name = write_experiment_yaml(conf_dir, data_dir, preset, model_overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.1"):  # fairseq needs 1.1 semantics
        composed = compose(name)
    GlobalHydra.instance().clear()
    root = OmegaConf.create({"task": {"max_source_positions": task.cfg.max_source_positions,
                                      "max_target_positions": task.cfg.max_target_positions}})
    root.model = composed.model
    add_defaults(root)
    root = OmegaConf.create(OmegaConf.to_container(root, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(root, True)
    given = OmegaConf.create(OmegaConf.to_container(root.model))
    return task.build_model(root.model), given


def model_settings(cfg):
    return {k: (v.value if hasattr(v, "value") else v) for k, v in OmegaConf.to_container(cfg).items()
            if k != "_name"}


@pytest.mark.parametrize("preset", ["mega", "mega_wmt_en_de", "mega_wmt_en_de_big"])
def test_arch_flag_and_hydra_yaml_build_the_same_model(data_dir, preset, tmp_path):
    cli_flags = []
    for key, value in TINY.items():
        cli_flags += ["--" + key.replace("_", "-"), str(value)]
    cli_model, cli_cfg, task = build_from_cli(data_dir, preset, *cli_flags)
    yaml_model, yaml_cfg = build_from_hydra_yaml(tmp_path / "conf", data_dir, preset, TINY, task)
    assert model_settings(cli_cfg) == model_settings(yaml_cfg)
    cli_shapes = {k: tuple(v.shape) for k, v in cli_model.state_dict().items()}
    yaml_shapes = {k: tuple(v.shape) for k, v in yaml_model.state_dict().items()}
    assert cli_shapes == yaml_shapes
    for name in ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout"):
        assert getattr(cli_model.settings, name) == OFFICIAL_PRESETS.get(preset, OFFICIAL_BASE)[name], name
    assert vars(cli_model.settings) == vars(yaml_model.settings)  # every resolved setting the layers saw
    assert cli_model.settings.decoder_n_dim == 3 and cli_model.settings.decoder_z_dim == TINY["encoder_z_dim"]


@pytest.mark.parametrize("preset", ["mega_wmt_en_de", "mega_wmt_en_de_big"])
def test_presets_set_the_official_values(data_dir, preset):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_dir, "--task", "translation", "--arch", preset])
    from mega_fairseq.models.mega_config import MegaConfig
    from mega_fairseq.models.mega_settings import read_settings

    settings = read_settings(args, MegaConfig)
    for name, value in OFFICIAL_PRESETS[preset].items():
        assert getattr(settings, name) == value, name


def test_command_line_values_win_over_the_preset(data_dir):
    _, cfg, _ = build_from_cli(data_dir, "mega_wmt_en_de_big", "--dropout", "0.05", *sum(
        (["--" + k.replace("_", "-"), str(v)] for k, v in TINY.items()), []))
    assert cfg.dropout == 0.05 and cfg.attention_dropout == 0.1 and cfg.encoder_embed_dim == 16
