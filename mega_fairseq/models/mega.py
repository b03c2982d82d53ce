"""The ``mega`` encoder-decoder model (translation) and its named architectures.

``--arch mega`` (the MegaConfig defaults), ``mega_wmt_en_de`` and ``mega_wmt_en_de_big`` (see
:data:`mega_config.MEGA_PRESETS`), usable from ``fairseq-train`` and, as
``config/model/mega/<preset>.yaml``, from ``fairseq-hydra-train``.
"""
import logging
from typing import Dict, List, Optional, Tuple

from fairseq.models import FairseqEncoderDecoderModel, register_model
from torch import Tensor

from mega_fairseq.models.arch_presets import register_presets
from mega_fairseq.models.mega_config import MEGA_PRESETS, MegaConfig
from mega_fairseq.models.mega_decoder import MegaDecoder
from mega_fairseq.models.mega_encoder import MegaEncoder
from mega_fairseq.models.mega_settings import read_settings
from mega_fairseq.models.token_embedding import build_embedding, check_dictionary_matches

logger = logging.getLogger(__name__)

#: Checkpoint settings that stock fairseq 0.12.2 cannot load as written by the official code,
#: overridden by :meth:`MegaModel.from_pretrained` unless the caller sets them: the official
#: WMT checkpoints store ``eval_bleu=True`` with ``eval_bleu_args=None``, and the translation
#: task then calls ``json.loads(None)`` while building the model. Validation BLEU is a
#: training-time feature, so the hub turns it off.
HUB_ARG_OVERRIDES = {"eval_bleu": False}


@register_model("mega", dataclass=MegaConfig)
class MegaModel(FairseqEncoderDecoderModel):
    """Mega encoder-decoder: :class:`MegaEncoder` + :class:`MegaDecoder` (with cross-attention)."""

    def __init__(self, settings: MegaConfig, encoder: MegaEncoder, decoder: MegaDecoder):
        super().__init__(encoder, decoder)
        #: the resolved, typed settings the model was built from
        self.settings = settings
        self.supports_align_args = True

    @classmethod
    def build_model(cls, cfg, task):
        """Build from a MegaConfig DictConfig or an argparse Namespace (e.g. an old checkpoint's).

        The settings are read once (:func:`mega_settings.read_settings`: missing ones get the
        MegaConfig defaults, derived ones their twin's value) and kept as ``model.settings``.
        """
        settings = read_settings(cfg, MegaConfig)
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if settings.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary)")
            if settings.encoder_embed_dim != settings.decoder_input_dim:
                raise ValueError("--share-all-embeddings requires --encoder-embed-dim ({}) to match "
                                 "--decoder-embed-dim ({})".format(settings.encoder_embed_dim, settings.decoder_input_dim))
            if settings.decoder_embed_path and settings.decoder_embed_path != settings.encoder_embed_path:
                raise ValueError("--share-all-embeddings is not compatible with --decoder-embed-path")
            encoder_embed = build_embedding(src_dict, settings.encoder_embed_dim, settings.encoder_embed_path)
            decoder_embed = encoder_embed
            settings.share_decoder_input_output_embed = True
        else:
            encoder_embed = build_embedding(src_dict, settings.encoder_embed_dim, settings.encoder_embed_path)
            decoder_embed = build_embedding(tgt_dict, settings.decoder_input_dim, settings.decoder_embed_path)
        encoder = MegaEncoder(settings, src_dict, encoder_embed)
        # one cross-attention bias serves both lengths: sized by the longer of the two
        cross_positions = max(settings.max_target_positions, settings.max_source_positions)
        decoder = MegaDecoder(settings, tgt_dict, decoder_embed, cross_max_positions=cross_positions)
        return cls(settings, encoder, decoder)

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Tensor,
        prev_output_tokens: Tensor,
        return_all_hiddens: bool = True,
        features_only: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        """src_tokens: B x S (left padded by default); prev_output_tokens: B x T (right padded).

        Returns ``(logits B x T x V, {"attn": [B x T x S], "inner_states": [...]})``.
        """
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)
        return self.decoder(
            prev_output_tokens,
            encoder_out=encoder_out,
            features_only=features_only,
            alignment_layer=alignment_layer,
            src_lengths=src_lengths,
            return_all_hiddens=return_all_hiddens,
        )

    def get_normalized_probs(
        self,
        net_output: Tuple[Tensor, Optional[Dict[str, List[Optional[Tensor]]]]],
        log_probs: bool,
        sample: Optional[Dict[str, Tensor]] = None,
    ):
        return self.get_normalized_probs_scriptable(net_output, log_probs, sample)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load weights, with a clear message when the dictionary does not match the checkpoint."""
        check_dictionary_matches(state_dict, "encoder.embed_tokens.weight", self.encoder.dictionary, "source")
        check_dictionary_matches(state_dict, "decoder.embed_tokens.weight", self.decoder.dictionary, "target")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """Load a checkpoint directory as fairseq's generator hub (``.translate("...")``).

        Example::

            hub = MegaModel.from_pretrained("checkpoints/", checkpoint_file="checkpoint_best.pt",
                                            data_name_or_path="data-bin", bpe="sentencepiece",
                                            sentencepiece_model="spm.model")
            hub.translate("Hello world", beam=5)

        Works for checkpoints of this plugin and of the official Mega code (see
        :data:`HUB_ARG_OVERRIDES`). Extra keyword arguments override checkpoint settings.
        """
        from fairseq import hub_utils

        overrides = dict(HUB_ARG_OVERRIDES)
        overrides.update(kwargs)
        loaded = hub_utils.from_pretrained(
            model_name_or_path,
            checkpoint_file,
            data_name_or_path,
            archive_map=cls.hub_models(),
            **overrides,
        )
        return hub_utils.GeneratorHubInterface(loaded["args"], loaded["task"], loaded["models"])


register_presets("mega", MegaConfig, MEGA_PRESETS)
