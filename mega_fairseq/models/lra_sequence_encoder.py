"""MegaSequenceEncoder: the bidirectional Mega stack of the sequence classifiers (``lra``, ``sc_raw``).

Token ids (``text``) or real values (``image``: pixels, waveforms) -> embeddings -> Mega blocks ->
final states and one pooled vector per row. This is the official ``MegaLRAEncoder`` /
``MegaSCRawEncoder`` (same parameter names: ``embed_tokens``, ``layers.N.{mega_layer,nffn}``,
``final_norm``), with its failures fixed:

* a text batch shorter than ``chunk_size`` runs as one chunk (official: assertion, bug B1);
  longer text batches are right-padded with the pad token to a multiple of the chunk, as
  officially (so train-mode batch norm sees the same positions);
* real-valued input whose length the chunk does not divide is refused with a ValueError naming
  ``--chunk-size`` and the length (it has no padding to extend it with);
* ``encoder_layerdrop`` is honoured (officially ignored, bug B6).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import LayerDropModuleList
from torch import Tensor

from mega_fairseq.modules.classifier_token_embedding import ClassifierTokenEmbedding
from mega_fairseq.modules.fairseq_dropout import FairseqDropout
from mega_fairseq.modules.mega_encoder_layer import MegaEncoderLayer
from mega_fairseq.modules.mega_layer_config import MegaLayerConfig
from mega_fairseq.modules.real_number_embedding import RealNumberEmbedding
from mega_fairseq.modules.sequence_norm import SequenceNorm


class MegaSequenceEncoder(nn.Module):
    """Embeddings, ``num_layers`` bidirectional :class:`MegaEncoderLayer` blocks, final norm, pooling.

    Args:
        layer_cfg: the settings of every block (``models.lra_config.classifier_layer_config``).
        num_layers: number of blocks.
        input_type: ``text`` (token ids, a padding mask from ``padding_idx``) or ``image``
            (real values, never padded).
        vocab_size, padding_idx: the token vocabulary (``text`` only).
        normalize_embedding: normalize the embeddings (``layer_cfg.norm_type``) before dropout.
        sen_rep_type: ``mp`` (mean of the final states over ``src_lengths``) or ``cls`` (the
            first position's state).
        layerdrop: probability of skipping a block in training.
    """

    def __init__(self, layer_cfg: MegaLayerConfig, num_layers: int, input_type: str, vocab_size: Optional[int] = None,
                 padding_idx: Optional[int] = None, normalize_embedding: bool = False, sen_rep_type: str = "mp",
                 layerdrop: float = 0.0):
        super().__init__()
        if input_type not in ("text", "image"):
            raise ValueError("input_type={!r} is not supported; allowed values: text, image".format(input_type))
        if sen_rep_type not in ("mp", "cls"):
            raise ValueError("sen_rep_type={!r} is not supported; allowed values: mp, cls".format(sen_rep_type))
        self.input_type = input_type
        self.padding_idx = padding_idx if input_type == "text" else None
        self.embedding_dim = layer_cfg.embed_dim
        self.chunk_size = layer_cfg.chunk_size
        self.sen_rep_type = sen_rep_type
        self.max_positions = layer_cfg.max_positions
        if input_type == "text":
            if vocab_size is None or padding_idx is None:
                raise ValueError("input_type='text' needs vocab_size and padding_idx (a source dictionary)")
            self.embed_tokens = ClassifierTokenEmbedding(vocab_size, self.embedding_dim, padding_idx)
        else:
            self.embed_tokens = RealNumberEmbedding(self.embedding_dim)
        self.embed_norm = SequenceNorm(layer_cfg.norm_type, self.embedding_dim) if normalize_embedding else None
        self.embedding_dropout = FairseqDropout(layer_cfg.dropout, module_name=type(self).__name__)
        blocks = [MegaEncoderLayer(layer_cfg) for _ in range(num_layers)]
        self.layers = LayerDropModuleList(p=layerdrop, modules=blocks) if layerdrop > 0 else nn.ModuleList(blocks)
        self.final_norm = SequenceNorm(layer_cfg.norm_type, self.embedding_dim) if layer_cfg.prenorm else None

    def _chunk_aligned(self, src_tokens: Tensor) -> Tensor:
        """Text: right-pad a batch longer than the chunk to a chunk multiple. Real values: refuse
        a length the chunk does not divide."""
        length = src_tokens.size(1)
        if self.chunk_size <= 0 or length <= self.chunk_size or length % self.chunk_size == 0:
            return src_tokens
        if self.input_type == "text":
            extra = self.chunk_size - length % self.chunk_size
            return F.pad(src_tokens, (0, extra), value=self.padding_idx)
        raise ValueError("--chunk-size {} does not divide the sequence length {} (image/speech input is not padded); "
                         "use a --chunk-size that divides it, or -1".format(self.chunk_size, length))

    def forward(self, src_tokens: Tensor, src_lengths: Tensor,
                last_state_only: bool = False) -> Tuple[List[Tensor], Tensor]:
        """Encode a batch (the official encoder's call and return value).

        Args:
            src_tokens: Batch x Time token ids (text, right-padded) or real values (image).
            src_lengths: (Batch,) real lengths (``mp`` divides the sum of the states by them).
            last_state_only: return only the final states instead of the embeddings and every
                layer's output.

        Returns:
            ``(inner_states, sentence_rep)``: with ``last_state_only`` ``[final states]`` (after
            the final norm, pads zeroed), otherwise the embeddings and each layer's output (as
            officially: before the final norm); every state is Time' x Batch x D (Time' is Time
            rounded up to a chunk multiple for chunked text). The pooled Batch x D representation
            is read from the final states.
        """
        if src_tokens.dim() != 2:
            raise ValueError("src_tokens must be Batch x Time, got shape {}".format(tuple(src_tokens.shape)))
        src_tokens = self._chunk_aligned(src_tokens)
        padding_mask = None
        if self.input_type == "text":
            if torch.is_floating_point(src_tokens):
                raise TypeError("input_type='text' takes token ids, got dtype {}; real-valued input needs "
                                "--input-type image".format(src_tokens.dtype))
            padding_mask = src_tokens.eq(self.padding_idx)
            if not padding_mask.any():
                padding_mask = None
        # B x T x D
        x = self.embed_tokens(src_tokens)
        if self.embed_norm is not None:
            x = self.embed_norm(x.transpose(0, 1)).transpose(0, 1)
        x = self.embedding_dropout(x)
        if padding_mask is not None:
            x = x * (1.0 - padding_mask.unsqueeze(-1).type_as(x))
        # T x B x D
        x = x.transpose(0, 1)
        inner_states = [] if last_state_only else [x]
        for layer in self.layers:
            x = layer(x, padding_mask)
            if not last_state_only:
                inner_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if padding_mask is not None:
            x = x * (1.0 - padding_mask.transpose(0, 1).unsqueeze(-1).type_as(x))
        if self.sen_rep_type == "mp":
            sentence_rep = x.sum(dim=0) / src_lengths.unsqueeze(1).to(x.dtype)
        else:
            sentence_rep = x[0]
        if last_state_only:
            inner_states = [x]
        return inner_states, sentence_rep

