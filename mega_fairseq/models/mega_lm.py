"""``mega_lm``: the decoder-only Mega language model and its named presets.

Presets (``--arch``; hydra: ``model=mega_lm/<preset>``): ``mega_lm`` (the dataclass defaults),
``mega_lm_big``, ``mega_lm_adaptive_big`` (= ``mega_lm_wiki103``), ``mega_lm_adaptive_base``,
``mega_lm_enwik8_base``, ``mega_lm_enwik8_large``. Parameter names follow the official code, so
official ``mega_lm`` state dicts load with ``strict=True``.
"""
import torch.nn as nn
from fairseq import utils
from fairseq.models import FairseqLanguageModel, register_model
from fairseq.modules import AdaptiveInput

from mega_fairseq.models.arch_presets import register_presets
from mega_fairseq.models.mega_lm_config import MEGA_LM_PRESETS, MegaLMConfig, parse_cutoff, resolve_lm_settings
from mega_fairseq.models.mega_lm_decoder import MegaLMDecoder


@register_model("mega_lm", dataclass=MegaLMConfig)
class MegaLanguageModel(FairseqLanguageModel):
    """A Mega decoder trained to predict the next token (``supported_targets``: future)."""

    def __init__(self, settings, decoder: MegaLMDecoder):
        super().__init__(decoder)
        self.settings = settings

    @classmethod
    def build_model(cls, cfg, task):
        """Build from a MegaLMConfig DictConfig or an argparse Namespace (``cfg._name`` unused)."""
        settings = resolve_lm_settings(cfg)
        dictionary = task.source_dictionary
        if settings.adaptive_input:
            embed_tokens = AdaptiveInput(
                len(dictionary),
                dictionary.pad(),
                settings.decoder_input_dim,
                settings.adaptive_input_factor,
                settings.decoder_embed_dim,
                parse_cutoff(settings.adaptive_input_cutoff, "adaptive_input_cutoff", len(dictionary)),
            )
        else:
            embed_tokens = build_embedding(dictionary, settings.decoder_input_dim, settings.decoder_embed_path)
        decoder = MegaLMDecoder(settings, task.target_dictionary, embed_tokens)
        return cls(settings, decoder)

    def forward(self, src_tokens, src_lengths=None, **kwargs):
        """B x T ``src_tokens`` -> ``(logits B x T x V, extra)``; ``src_lengths`` is accepted and unused."""
        return self.decoder(src_tokens, **kwargs)


def build_embedding(dictionary, embed_dim: int, path=None) -> nn.Embedding:
    """Token embedding ~ N(0, embed_dim^-1/2) with a zero pad row, optionally loaded from ``path``."""
    embedding = nn.Embedding(len(dictionary), embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim ** -0.5)
    nn.init.constant_(embedding.weight[dictionary.pad()], 0.0)
    if path:
        utils.load_embedding(utils.parse_embedding(path), dictionary, embedding)
    return embedding


register_presets("mega_lm", MegaLMConfig, MEGA_LM_PRESETS)
