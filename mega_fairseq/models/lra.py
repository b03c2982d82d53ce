"""``lra``: the Mega sequence classifier of the Long Range Arena, and its named presets.

Presets (``--arch``; hydra: ``model=lra/<preset>``): ``lra`` (the dataclass defaults),
``mega_lra_listop``, ``mega_lra_imdb``, ``mega_lra_aan``, ``mega_lra_cifar10``, ``mega_lra_pf32``,
``mega_lra_pf128``. Parameter names follow the official code (``encoder.encoder.layers.N...``,
``classifier.0.0``, ``sentence_projection_layer``), so official checkpoints load with
``strict=True``.

The forward contract is the official one: ``model(sample)`` takes the whole sample dict and
returns ``{'encoder_out': logits}`` (Batch x Classes), so ``lra_cross_entropy`` and
``get_normalized_probs`` work as in the official code. With ``sample['net_input1']`` (AAN: two
documents per row) the representation of the second document comes first, then the first one's,
side by side (the classifier reads 2D values).
"""
import logging
from typing import Optional

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoderModel, register_model
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from torch import Tensor

from mega_fairseq.models.arch_presets import register_presets
from mega_fairseq.models.lra_config import (
    LRA_FLAG_DEFAULTS,
    LRA_PRESETS,
    LRAConfig,
    check_classifier_settings,
    classifier_layer_config,
    resolve_flag_defaults,
)
from mega_fairseq.models.lra_encoder import LRAEncoder
from mega_fairseq.models.lra_sequence_encoder import MegaSequenceEncoder
from mega_fairseq.models.mega_settings import read_settings
from mega_fairseq.models.token_embedding import check_dictionary_matches
from mega_fairseq.modules.activations import get_activation_fn
from mega_fairseq.modules.fairseq_dropout import FairseqDropout

logger = logging.getLogger(__name__)

TOKEN_EMBEDDING_KEY = "encoder.encoder.embed_tokens.embed.weight"


def xavier_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with Xavier-uniform weights and zero bias (the classifier's initialisation)."""
    linear = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(linear.weight)
    if bias:
        nn.init.constant_(linear.bias, 0.0)
    return linear


@register_model("lra", dataclass=LRAConfig)
class LRAModel(FairseqEncoderModel):
    """Mega encoder, pooled representation, ``classifier_layers`` hidden layers, class logits.

    Args:
        settings: resolved settings (:func:`read_settings`).
        encoder: the :class:`LRAEncoder` (its ``encoder`` is the Mega stack).
    """

    #: the config dataclass this model reads its settings into, and its flags' official defaults
    config_class = LRAConfig
    flag_defaults = LRA_FLAG_DEFAULTS

    def __init__(self, settings: LRAConfig, encoder: LRAEncoder):
        super().__init__(encoder)
        #: the resolved, typed settings the model was built from
        self.settings = settings
        in_dim, out_dim = int(settings.classifier_in_dim), int(settings.classifier_out_dim)
        #: how many documents a row holds (2: ``net_input1`` as well, AAN)
        self.num_documents = in_dim // int(settings.encoder_embed_dim)
        self.dropout_module = FairseqDropout(settings.dropout, module_name=type(self).__name__)
        self.classifier = nn.ModuleList()
        for i in range(int(settings.classifier_layers)):
            linear = xavier_linear(in_dim if i == 0 else out_dim, out_dim)
            self.classifier.append(nn.Sequential(linear, self.dropout_module))
        self.classifier_activation = get_activation_fn(str(settings.classifier_activation_fn))
        # classifier_layers=0: the projection reads the representation itself (official: a shape
        # error, bug B4)
        projection_in = out_dim if int(settings.classifier_layers) > 0 else in_dim
        self.sentence_projection_layer = xavier_linear(projection_in, int(settings.sentence_class_num), bias=False)
        if settings.apply_bert_init:
            self.apply(init_bert_params)

    @classmethod
    def input_type(cls, settings: LRAConfig, task) -> str:
        """``settings.input_type``, or (unset) ``text`` when the task has a source dictionary, else ``image``."""
        has_dictionary = getattr(task, "source_dictionary", None) is not None
        input_type = str(settings.input_type) if settings.input_type is not None else None
        if input_type is None:
            input_type = "text" if has_dictionary else "image"
        if input_type == "text" and not has_dictionary:
            raise ValueError("--input-type text needs a task with a source dictionary (--task lra-text); this task "
                             "has none: use --input-type image for pixel or waveform input")
        return input_type

    @classmethod
    def read_config(cls, cfg):
        """The resolved, checked settings of ``cfg`` (DictConfig or Namespace)."""
        settings = resolve_flag_defaults(read_settings(cfg, cls.config_class), cls.flag_defaults)
        check_classifier_settings(settings)
        return settings

    @classmethod
    def build_model(cls, cfg, task):
        """Build from a config DictConfig or an argparse Namespace (official checkpoints' ``args``)."""
        settings = cls.read_config(cfg)
        input_type = cls.input_type(settings, task)
        dictionary = task.source_dictionary if input_type == "text" else None
        stack = MegaSequenceEncoder(
            classifier_layer_config(settings),
            num_layers=int(settings.encoder_layers),
            input_type=input_type,
            vocab_size=len(dictionary) if dictionary is not None else None,
            padding_idx=dictionary.pad() if dictionary is not None else None,
            normalize_embedding=bool(settings.normalize_embedding),
            sen_rep_type=str(settings.sen_rep_type),
            layerdrop=float(settings.encoder_layerdrop),
        )
        return cls(settings, LRAEncoder(dictionary, stack))

    def sentence_representation(self, sample) -> Tensor:
        """The pooled representation the classifier reads: Batch x D, or Batch x 2D for two documents."""
        if "net_input" not in sample:
            raise ValueError("the model takes the whole sample (a dict with 'net_input'), got keys {}".format(
                sorted(sample)))
        second = sample.get("net_input1")
        if (second is not None) != (self.num_documents == 2):
            raise ValueError(
                "this model classifies {} per row (classifier_in_dim={}, --encoder-embed-dim {}), but the sample has "
                "{}".format("pairs of documents" if self.num_documents == 2 else "one document",
                            self.settings.classifier_in_dim, self.settings.encoder_embed_dim,
                            "a second document (net_input1)" if second is not None else "no second document "
                            "(net_input1: src1-bin in the data folder)"))
        net_input = sample["net_input"]
        rep = self.encoder(net_input["src_tokens"], net_input.get("src_lengths"))[1]
        if second is not None:
            rep = torch.cat([self.encoder(second["src_tokens"], second.get("src_lengths"))[1], rep], dim=-1)
        return rep

    def classifier_hidden(self, sentence_rep: Tensor) -> Tensor:
        """The classifier layers: Batch x classifier_in_dim -> the projection's input."""
        for layer in self.classifier:
            sentence_rep = self.classifier_activation(layer(sentence_rep))
        return sentence_rep

    def forward(self, sample) -> dict:
        """``sample`` (the whole batch dict) -> ``{'encoder_out': logits Batch x Classes}``."""
        hidden = self.classifier_hidden(self.sentence_representation(sample))
        return {"encoder_out": self.sentence_projection_layer(hidden)}

    def max_positions(self) -> Optional[int]:
        return int(self.settings.max_positions)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load weights, with a clear message when the dictionary does not match the checkpoint."""
        if self.encoder.dictionary is not None:
            check_dictionary_matches(state_dict, TOKEN_EMBEDDING_KEY, self.encoder.dictionary, "source")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="checkpoint_best.pt", data_name_or_path=".",
                        **kwargs):
        """Load a classification checkpoint as a :class:`ClassifierHubInterface` (``.predict(...)``)."""
        from fairseq import hub_utils

        from mega_fairseq.models.lra_hub_interface import ClassifierHubInterface

        loaded = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)
        return ClassifierHubInterface(loaded["args"], loaded["task"], loaded["models"][0])


register_presets("lra", LRAConfig, LRA_PRESETS)
