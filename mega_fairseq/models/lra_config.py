"""LRAConfig: the typed settings of the ``lra`` sequence classifier, its Mega presets, and the
one conversion of those settings into each block's :class:`MegaLayerConfig`.

Field names are the official command-line argument names of the Mega fork's ``lra`` model
(``--act-dropout``, ``--z-dim``, ``--n-dim``, ``--chunk-size``, ``--norm-type``,
``--sen-rep-type``, ``--encoder-normalize-before``, ``--input-type``, ``--max-positions``,
``--sentence-class-num``, ...), so official training commands and the ``args`` stored in official
checkpoints map onto this config field by field. Defaults are the official ``base_architecture``
values, except where noted in a field's help:

* ``layer_type`` is ``mega`` (the only layer this plugin implements; official base: transformer);
* ``norm_type`` defaults to ``layernorm`` (officially it has no default, so ``mega_lra_aan``
  crashed without ``--norm-type``: bug B7; that preset now sets ``scalenorm``, its README value);
* ``input_type`` may be left unset: it is then taken from the task (token ids when the task has a
  source dictionary, real numbers otherwise); officially it was required.

Derived settings (``encoder_ffn_embed_dim`` <- ``encoder_hidden_dim``, ``classifier_in_dim`` <-
``num_documents`` x ``encoder_embed_dim``, ``max_positions`` <- the task's ``tokens_per_sample``) stay ``None`` here
until :func:`mega_fairseq.models.mega_settings.read_settings` fills them from its one table.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from mega_fairseq.models.mega_settings import (
    ACTIVATIONS,
    ATTENTION_ACTIVATIONS,
    NORMALIZATION_TYPES,
    REL_POS_BIASES,
    effective_truncation,
)
from mega_fairseq.modules.mega_layer_config import MegaLayerConfig

INPUT_TYPES = ("text", "image")
SENTENCE_REPRESENTATIONS = ("mp", "cls")
LAYER_TYPES = ("mega",)


@dataclass
class LRAConfig(FairseqDataclass):
    # ---- dropout
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout probability of attention weights"})
    act_dropout: float = field(
        default=0.0, metadata={"help": "dropout of Mega hidden vectors and after the FFN activation"})
    feature_dropout: bool = field(default=False, metadata={"help": "drop whole feature channels instead of elements"})
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "LayerDrop probability of the encoder layers"})
    # ---- sizes
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "model width D"})
    encoder_hidden_dim: int = field(default=2048, metadata={"help": "hidden (value) dimension of Mega attention"})
    encoder_ffn_embed_dim: Optional[int] = field(
        default=None, metadata={"help": "FFN dimension (default: encoder_hidden_dim; 0 = no FFN)"})
    z_dim: int = field(default=128, metadata={"help": "shared query/key dimension z"})
    n_dim: int = field(default=2, metadata={"help": "EMA dimension n"})
    chunk_size: int = field(
        default=-1, metadata={"help": "attention chunk size (-1 or 0: attend over the whole sequence)"})
    truncation_length: Optional[int] = field(
        default=None, metadata={"help": "EMA kernel truncation length (None, 0 or negative: no truncation)"})
    max_positions: Optional[int] = field(
        default=None, metadata={"help": "longest input (default: the task's tokens_per_sample)"})
    # ---- layer flavour
    layer_type: ChoiceEnum(LAYER_TYPES) = field(default="mega", metadata={"help": "encoder layer type"})
    activation_fn: ChoiceEnum(ACTIVATIONS) = field(default="gelu", metadata={"help": "activation function"})
    attention_activation_fn: ChoiceEnum(ATTENTION_ACTIVATIONS) = field(
        default="relu2", metadata={"help": "attention activation function"})
    norm_type: ChoiceEnum(NORMALIZATION_TYPES) = field(default="layernorm", metadata={"help": "normalization"})
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm layers (plus a final norm)"})
    normalize_embedding: bool = field(default=False, metadata={"help": "normalize the embeddings"})
    rel_pos_bias: ChoiceEnum(REL_POS_BIASES) = field(default="simple", metadata={"help": "relative positional bias"})
    # ---- input and pooling
    input_type: Optional[ChoiceEnum(INPUT_TYPES)] = field(
        default=None, metadata={"help": "text (token ids) or image (real numbers); default: from the task"})
    sen_rep_type: ChoiceEnum(SENTENCE_REPRESENTATIONS) = field(
        default="mp", metadata={"help": "sentence representation: mean over positions (mp) or the first one (cls)"})
    use_p: bool = field(default=False, metadata={"help": "official option of non-Mega encoders; refused for mega"})
    # ---- classifier
    sentence_class_num: int = field(default=2, metadata={"help": "number of classes"})
    classifier_layers: int = field(default=1, metadata={"help": "hidden layers of the classifier (0: linear)"})
    num_documents: int = field(
        default=1, metadata={"help": "documents per row whose representations the classifier reads side by side "
                                     "(2: AAN retrieval, net_input1); sets classifier_in_dim when that is unset"})
    classifier_in_dim: Optional[int] = field(
        default=None, metadata={"help": "classifier input (default: num_documents x encoder_embed_dim)"})
    classifier_out_dim: Optional[int] = field(default=2048, metadata={"help": "classifier hidden dimension"})
    classifier_activation_fn: ChoiceEnum(ACTIVATIONS) = field(
        default="gelu", metadata={"help": "activation of the classifier layers"})
    apply_bert_init: Optional[bool] = field(
        default=None, metadata={"help": "initialise every linear layer and embedding N(0, 0.02) (BERT style); "
                                        "unset: see FLAG_DEFAULTS"})
    # ---- the official fallback of max_positions (the LRA tasks are argparse tasks: no interpolation)
    tokens_per_sample: Optional[int] = field(
        default=None, metadata={"help": "max_positions when that is unset (as officially)"})


#: Flags whose official default is True. fairseq turns a dataclass bool that defaults to True into a
#: ``store_false`` option, which would invert the official ``store_true`` flag; such fields default
#: to None ("not given") and take these values in :func:`resolve_flag_defaults`.
LRA_FLAG_DEFAULTS: Dict[str, bool] = {"apply_bert_init": True}


def resolve_flag_defaults(settings, flag_defaults: Dict[str, bool]):
    """``settings`` with each unset (None) flag of ``flag_defaults`` set to its official default."""
    unset = {name: value for name, value in flag_defaults.items() if getattr(settings, name) is None}
    return dataclasses.replace(settings, **unset) if unset else settings


def _mega_lra_preset(hidden, z, layers, embed, chunk, truncation, max_positions, norm, **extra) -> Dict[str, Any]:
    preset = {
        "layer_type": "mega",
        "encoder_hidden_dim": hidden,
        "z_dim": z,
        "n_dim": 16,
        "encoder_layers": layers,
        "activation_fn": "silu",
        "encoder_embed_dim": embed,
        "classifier_layers": 1,
        "classifier_out_dim": hidden,
        "chunk_size": chunk,
        "truncation_length": truncation,
        "max_positions": max_positions,
        "norm_type": norm,
        "sen_rep_type": "mp",
        "apply_bert_init": False,
    }
    preset.update(extra)
    return preset


#: The official Mega presets of ``lra`` (overrides of the dataclass defaults above).
LRA_PRESETS: Dict[str, Dict[str, Any]] = {
    "mega_lra_listop": _mega_lra_preset(160, 64, 6, 80, -1, 1024, 2002, "scalenorm", sentence_class_num=10),
    "mega_lra_imdb": _mega_lra_preset(256, 64, 4, 128, -1, 1024, 4002, "scalenorm"),
    # officially no norm_type (bug B7); scalenorm is the value of the official README recipe.
    # Two documents per row: the classifier reads both representations side by side (officially
    # classifier_in_dim = 2 x encoder_embed_dim, taken after the command line: a data value here).
    "mega_lra_aan": _mega_lra_preset(256, 64, 6, 128, -1, 1024, 4002, "scalenorm", num_documents=2),
    "mega_lra_cifar10": _mega_lra_preset(320, 96, 8, 160, 1024, 1024, 1024, "batchnorm", sentence_class_num=10),
    "mega_lra_pf32": _mega_lra_preset(256, 64, 6, 128, 1024, 1024, 1024, "batchnorm", sentence_class_num=2),
    "mega_lra_pf128": _mega_lra_preset(128, 32, 4, 64, 16384, 4096, 16384, "batchnorm", sentence_class_num=2),
}


def check_classifier_settings(settings: LRAConfig) -> None:
    """The sequence classifiers' own checks on settings from ``read_settings`` (ValueError, one line)."""
    for name in ("z_dim", "n_dim", "sentence_class_num"):
        if int(getattr(settings, name)) < 1:
            raise ValueError("--{} {} must be a positive integer".format(name.replace("_", "-"),
                                                                          getattr(settings, name)))
    if int(settings.classifier_layers) < 0:
        raise ValueError("classifier_layers={} must be >= 0 (0: a linear classifier)".format(
            settings.classifier_layers))
    if str(settings.layer_type) not in LAYER_TYPES:
        raise ValueError("--layer-type {} is not supported; allowed values: {}".format(
            settings.layer_type, ", ".join(LAYER_TYPES)))
    if settings.use_p:
        raise ValueError("--use-p is not supported with --layer-type mega (the official code fails on it too); "
                         "allowed: leave --use-p unset")
    if settings.normalize_embedding and settings.encoder_normalize_before:
        raise ValueError("--normalize-embedding and --encoder-normalize-before cannot be combined "
                         "(allowed: at most one of them)")
    if not 0.0 <= float(settings.encoder_layerdrop) < 1.0:
        raise ValueError("--encoder-layerdrop {} is out of range; allowed values: 0 <= p < 1".format(
            settings.encoder_layerdrop))
    if int(settings.num_documents) not in (1, 2):
        raise ValueError("num_documents={} is not supported; allowed values: 1, 2 (AAN retrieval)".format(
            settings.num_documents))
    embed, in_dim = int(settings.encoder_embed_dim), int(settings.classifier_in_dim)
    if in_dim not in (embed, 2 * embed):
        raise ValueError("classifier_in_dim={} must be --encoder-embed-dim ({}, one document per row) or twice it "
                         "({}, two documents per row as in AAN)".format(in_dim, embed, 2 * embed))
    if settings.input_type is not None and str(settings.input_type) not in INPUT_TYPES:
        raise ValueError("--input-type {} is not supported; allowed values: {}".format(
            settings.input_type, ", ".join(INPUT_TYPES)))


def classifier_layer_config(settings: LRAConfig) -> MegaLayerConfig:
    """The :class:`MegaLayerConfig` of every encoder block of ``lra`` / ``sc_raw``.

    As officially: the blocks are bidirectional; ``act_dropout`` is both the attention's hidden
    dropout and the feed-forward block's activation dropout; the relative positional bias covers
    ``max_positions`` (the chunk when chunked).
    """
    chunk = int(settings.chunk_size)
    max_positions = int(settings.max_positions)
    return MegaLayerConfig(
        embed_dim=int(settings.encoder_embed_dim),
        zdim=int(settings.z_dim),
        hdim=int(settings.encoder_hidden_dim),
        ndim=int(settings.n_dim),
        ffn_hidden_dim=int(settings.encoder_ffn_embed_dim),
        chunk_size=chunk,
        truncation=effective_truncation(settings.truncation_length, None if chunk > 0 else max_positions),
        max_positions=max_positions,
        cross_max_positions=None,
        dropout=float(settings.dropout),
        attention_dropout=float(settings.attention_dropout),
        hidden_dropout=float(settings.act_dropout),
        activation_dropout=float(settings.act_dropout),
        feature_dropout=bool(settings.feature_dropout),
        activation=str(settings.activation_fn),
        attention_activation=str(settings.attention_activation_fn),
        norm_type=str(settings.norm_type),
        prenorm=bool(settings.encoder_normalize_before),
        rel_pos_bias=str(settings.rel_pos_bias),
    )
