"""``mega_lm``: the decoder-only Mega language model and its named presets.

Presets (``--arch``; hydra: ``model=mega_lm/<preset>``): ``mega_lm`` (the dataclass defaults),
``mega_lm_big``, ``mega_lm_adaptive_big`` (= ``mega_lm_wiki103``), ``mega_lm_adaptive_base``,
``mega_lm_enwik8_base``, ``mega_lm_enwik8_large``. Parameter names follow the official code, so
official ``mega_lm`` state dicts load with ``strict=True``.
"""
from fairseq.models import FairseqLanguageModel, register_model
from fairseq.modules import AdaptiveInput

from mega_fairseq.models.arch_presets import register_presets
from mega_fairseq.models.mega_decoder import MegaDecoder
from mega_fairseq.models.mega_lm_config import MEGA_LM_PRESETS, MegaLMConfig, check_lm_settings
from mega_fairseq.models.mega_settings import parse_cutoff, read_settings
from mega_fairseq.models.token_embedding import build_embedding, check_dictionary_matches


@register_model("mega_lm", dataclass=MegaLMConfig)
class MegaLanguageModel(FairseqLanguageModel):
    """A :class:`MegaDecoder` without cross-attention, trained to predict the next token."""

    def __init__(self, settings: MegaLMConfig, decoder: MegaDecoder):
        super().__init__(decoder)
        #: the resolved, typed settings the model was built from
        self.settings = settings

    @classmethod
    def build_model(cls, cfg, task):
        """Build from a MegaLMConfig DictConfig or an argparse Namespace (``cfg._name`` unused)."""
        settings = read_settings(cfg, MegaLMConfig)
        check_lm_settings(settings)
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
        decoder = MegaDecoder(settings, task.target_dictionary, embed_tokens,
                              final_norm_affine=not settings.no_affine_final_norm)
        return cls(settings, decoder)

    def forward(self, src_tokens, src_lengths=None, **kwargs):
        """B x T ``src_tokens`` -> ``(logits B x T x V, extra)``; ``src_lengths`` is accepted and unused."""
        return self.decoder(src_tokens, **kwargs)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load weights, with a clear message when the dictionary does not match the checkpoint."""
        check_dictionary_matches(state_dict, "decoder.embed_tokens.weight", self.decoder.dictionary, "target")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


register_presets("mega_lm", MegaLMConfig, MEGA_LM_PRESETS)
