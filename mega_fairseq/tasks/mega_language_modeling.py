"""``mega_language_modeling``: fairseq's language_modeling task plus the official Mega LM options.

* Training blocks (``--variant-block-multiple-min/max``): the training split is cut into blocks
  of ``decoder_chunk_size x m`` tokens (the chunk of the model built by the task), ``m`` drawn per block in ``[min, max]`` and redrawn
  every epoch from ``--seed`` and the epoch (see :class:`VariantBlockDataset`). Without chunking
  (``decoder_chunk_size <= 0``) the unit is ``--tokens-per-sample``.
* Evaluation blocks (``--valid-block``): every other split is cut into blocks of ``size:N``
  tokens, or into ``splits:K`` blocks of equal length. Such blocks are long; they are never
  dropped: batches are enlarged to hold the longest block, and a block the model cannot take
  raises an error naming the fix.
* Streaming (``--test-chunk-size C --chunk-nums K``): with autograd off (validation,
  fairseq-eval-lm) the model reads each block ``C x K`` tokens at a time, carrying the EMA state
  and the attention cache across pieces; this equals one full-length forward while the memory
  of the layers stays bounded by the piece. Like the official options of the same names, except
  that the attention chunk stays the model's ``decoder_chunk_size`` (change it with
  ``--model-overrides '{"decoder_chunk_size": C}'``, as the official recipe does).
"""
import logging
import math
import os
from dataclasses import dataclass, field
from fairseq import utils
import numpy as np
from fairseq.data import (
    AppendTokenDataset,
    IdDataset,
    ListDataset,
    MonolingualDataset,
    NestedDictionaryDataset,
    NumelDataset,
    PadDataset,
    PrependTokenDataset,
    StripTokenDataset,
    TokenBlockDataset,
    data_utils,
)
from fairseq.data.shorten_dataset import maybe_shorten_dataset
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from mega_fairseq.data import EpochMonolingualDataset, VariantBlockDataset

logger = logging.getLogger(__name__)


@dataclass
class MegaLanguageModelingConfig(LanguageModelingConfig):
    variant_block_multiple_min: int = field(
        default=1, metadata={"help": "training blocks are at least this many attention chunks long"}
    )
    variant_block_multiple_max: int = field(
        default=1, metadata={"help": "training blocks are at most this many attention chunks long"}
    )
    valid_block: str = field(
        default="size:100000000",
        metadata={"help": "evaluation blocks: 'size:N' (N tokens each) or 'splits:K' (K blocks per split)"},
    )
    test_chunk_size: int = field(
        default=0,
        metadata={"help": "with autograd off, stream each block in pieces of test_chunk_size x chunk_nums "
                          "tokens, carrying the Mega state across pieces (0: one full forward)"},
    )
    chunk_nums: int = field(default=1, metadata={"help": "number of test chunks per streamed piece"})


def parse_valid_block(text: str, total_tokens: int) -> int:
    """``'size:N'`` -> N; ``'splits:K'`` -> ceil(total_tokens / K). Raises ValueError otherwise."""
    kind, _, value = str(text).partition(":")
    try:
        number = int(value)
    except ValueError:
        number = 0
    if kind not in ("size", "splits") or number <= 0:
        raise ValueError("--valid-block={!r} is not supported; allowed: 'size:N' or 'splits:K' with a positive "
                         "integer".format(text))
    if kind == "size":
        return number
    return max(1, math.ceil(total_tokens / number))


@register_task("mega_language_modeling", dataclass=MegaLanguageModelingConfig)
class MegaLanguageModelingTask(LanguageModelingTask):
    """Language modeling with variable-length training blocks and streamed long evaluation blocks."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        self._check_options()
        self._eval_datasets = []
        # the attention chunk of the model built by this task (the training-block unit)
        self._model_chunk_size = None
        self._model_max_positions = None

    def _check_options(self) -> None:
        args = self.args
        if not 1 <= args.variant_block_multiple_min <= args.variant_block_multiple_max:
            raise ValueError("--variant-block-multiple-min/max must satisfy 1 <= min <= max, got {} and {}".format(
                args.variant_block_multiple_min, args.variant_block_multiple_max))
        if args.test_chunk_size < 0 or args.chunk_nums < 1:
            raise ValueError("--test-chunk-size must be >= 0 (0: no streaming) and --chunk-nums >= 1, got {} and {}"
                             .format(args.test_chunk_size, args.chunk_nums))
        parse_valid_block(args.valid_block, 1)

    # ------------------------------------------------------------------- model

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        decoder = getattr(model, "decoder", None)
        self._model_chunk_size = getattr(decoder, "chunk_size", None)
        self._model_max_positions = model.max_positions()
        if self.args.test_chunk_size > 0:
            if hasattr(decoder, "stream_size"):
                decoder.stream_size = self.args.test_chunk_size * self.args.chunk_nums
                logger.info("streaming evaluation: pieces of %d tokens", decoder.stream_size)
            else:
                logger.warning("--test-chunk-size is ignored: %s cannot stream (only mega_lm can)",
                               type(model).__name__)
        return model

    # ------------------------------------------------------------------- data

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        """Load ``split``: variable training blocks for ``train*``, ``--valid-block`` blocks otherwise."""
        paths = utils.split_paths(self.args.data)
        data_path = paths[(epoch - 1) % len(paths)]
        split_path = os.path.join(data_path, split)
        if os.path.isfile(split_path + ".bin") and os.path.getsize(split_path + ".bin") == 0:
            # an empty binarized split cannot even be memory-mapped: say what is wrong before trying
            raise ValueError("split '{}' ({}) holds no tokens".format(split, split_path))
        dataset = data_utils.load_indexed_dataset(split_path, self.dictionary, self.args.dataset_impl, combine=combine)
        if dataset is None:
            raise FileNotFoundError("Dataset not found: {} ({})".format(split, split_path))
        if len(dataset) == 0 or int(dataset.sizes.sum()) == 0:
            raise ValueError("split '{}' ({}) holds no tokens".format(split, split_path))
        dataset = maybe_shorten_dataset(dataset, split, self.args.shorten_data_split_list, self.args.shorten_method,
                                        self.args.tokens_per_sample, self.args.seed)
        is_train = split.startswith("train")
        if is_train:
            blocks = self._training_blocks(dataset, epoch)
        else:
            block_size = parse_valid_block(self.args.valid_block, int(dataset.sizes.sum()))
            blocks = TokenBlockDataset(dataset, dataset.sizes, block_size, pad=self.dictionary.pad(),
                                       eos=self.dictionary.eos(), break_mode=self.args.sample_break_mode,
                                       include_targets=True)
            logger.info("%s: %d evaluation blocks, longest %d tokens", split, len(blocks), max(blocks.sizes))
        monolingual = EpochMonolingualDataset if is_train else MonolingualDataset
        self.datasets[split] = monolingual(
            dataset=blocks,
            sizes=blocks.sizes,
            src_vocab=self.dictionary,
            tgt_vocab=self.output_dictionary,
            add_eos_for_other_targets=self.args.sample_break_mode not in (None, "none"),
            shuffle=True,
            targets=self.targets,
            add_bos_token=self.args.add_bos_token,
        )
        if not is_train:
            self._eval_datasets.append(self.datasets[split])

    def _training_blocks(self, dataset, epoch: int):
        chunk = self._model_chunk_size
        if chunk is None:
            logger.warning("training blocks requested before a model was built: using --tokens-per-sample as unit")
        unit = chunk if chunk is not None and chunk > 0 else self.args.tokens_per_sample
        low, high = self.args.variant_block_multiple_min, self.args.variant_block_multiple_max
        if self.args.sample_break_mode == "eos":
            if high > 1:
                raise ValueError("--sample-break-mode eos (one sentence per block) cannot be combined with "
                                 "--variant-block-multiple-max > 1; allowed break modes: none, complete, complete_doc")
            return TokenBlockDataset(dataset, dataset.sizes, unit, pad=self.dictionary.pad(), eos=self.dictionary.eos(),
                                     break_mode="eos", include_targets=True)
        longest = unit * high
        if self._model_max_positions is not None and longest > self._model_max_positions:
            raise ValueError(
                "training blocks of up to {} x {} = {} tokens are longer than the model accepts ({}: an unchunked "
                "model's --max-target-positions). Allowed: --decoder-chunk-size > 0 (any length), or "
                "--variant-block-multiple-max x --tokens-per-sample <= --max-target-positions".format(
                    high, unit, longest, self._model_max_positions))
        logger.info("training blocks: %d..%d x %d tokens", low, high, unit)
        return VariantBlockDataset(dataset, dataset.sizes, unit, low, high, pad=self.dictionary.pad(),
                                   eos=self.dictionary.eos(), break_mode=self.args.sample_break_mode,
                                   seed=self.args.seed, epoch=epoch)

    def _is_eval_dataset(self, dataset) -> bool:
        return any(dataset is d for d in self._eval_datasets)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, *args, **kwargs):
        """As fairseq's, but an evaluation batch always has room for the longest evaluation block."""
        if self._is_eval_dataset(dataset) and max_tokens is not None and len(dataset.sizes) > 0:
            longest = int(max(dataset.sizes))
            if longest > max_tokens:
                logger.info("evaluation blocks of up to %d tokens: raising max_tokens from %d", longest, max_tokens)
                max_tokens = longest
        return super().get_batch_iterator(dataset, max_tokens, max_sentences, max_positions, ignore_invalid_inputs,
                                          *args, **kwargs)

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None, num_shards=1,
                           shard_id=0, num_workers=1, data_buffer_size=10, context_window=0):
        """fairseq-eval-lm batches: every block is scored, none is silently dropped."""
        if context_window > 0:
            raise ValueError(
                "--context-window {} is not used with mega_language_modeling: Mega reads each --valid-block block "
                "in full (streamed with --test-chunk-size), so every token already sees all earlier tokens of its "
                "block. Allowed: --context-window 0 (use --task language_modeling for the windowed protocol)"
                .format(context_window))
        if max_positions is not None and len(dataset.sizes) > 0 and int(max(dataset.sizes)) > max_positions:
            raise ValueError(
                "an evaluation block has {} tokens but the model accepts at most {} (max_positions). Allowed: a "
                "smaller --valid-block (e.g. size:{}), or a chunked model (decoder_chunk_size > 0, any length)"
                .format(int(max(dataset.sizes)), max_positions, max_positions))
        return self.get_batch_iterator(
            dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size, max_positions=max_positions,
            ignore_invalid_inputs=False, num_shards=num_shards, shard_id=shard_id, num_workers=num_workers,
            data_buffer_size=data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts for fairseq-interactive / scoring: ``[eos|bos] + prompt`` as source, ``prompt + pad``
        as target, one prompt per item (as fairseq's, without its eos-mode TokenBlockDataset)."""
        eos, pad = self.source_dictionary.eos(), self.source_dictionary.pad()
        prompts = StripTokenDataset(ListDataset(src_tokens, np.array(src_lengths)), eos)
        start = self.source_dictionary.bos() if getattr(self.args, "add_bos_token", False) else eos
        source = PrependTokenDataset(prompts, token=start)
        target = AppendTokenDataset(prompts, token=pad)
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": PadDataset(source, pad_idx=pad, left_pad=False),
                    "src_lengths": NumelDataset(source, reduce=False),
                },
                "target": PadDataset(target, pad_idx=pad, left_pad=False),
            },
            sizes=[np.array(src_lengths)],
        )
