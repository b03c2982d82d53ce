"""``lra-text``: Long Range Arena text classification (ListOps, IMDB byte-level, AAN retrieval).

Same name, arguments and batches as the official task, on stock fairseq 0.12.2 (a
``LegacyFairseqTask``: ``self.args`` is the whole argparse namespace, as the official code expects).

Data (``fairseq-preprocess --only-source`` output, the layout of the official ``lra.zip``)::

    <data>/src-bin/{dict.txt, <split>.bin/.idx}     token ids of each sequence (eos appended)
    <data>/src1-bin/<split>.bin/.idx                optional second document (AAN), src-bin's dict
    <data>/label-bin/{dict.txt, <split>.bin/.idx}   one label symbol per row

Batch: ``net_input`` = {``src_tokens`` B x T int64 right-padded with pad, ``src_lengths`` (B,)},
``net_input1`` likewise for ``src1-bin``, ``target`` B x 1 int64, ``id``, ``nsentences``, ``ntokens``.
``<CLS>`` is appended to the dictionary (always, as officially: embeddings have ``len(dict.txt) + 5``
rows) and prepended to every row when ``--sen-rep-type cls``; rows are cut to ``max_positions``.

Class ids follow ``label-bin/dict.txt`` order (official checkpoints depend on it); the mapping is
logged at setup, and a label missing from that dictionary is an error when the split is loaded.
"""
import logging
import os

import numpy as np
from fairseq.data import (
    Dictionary,
    IdDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    RightPadDataset,
    TruncateDataset,
    data_utils,
)
from fairseq.data.shorten_dataset import maybe_shorten_dataset
from fairseq.tasks import LegacyFairseqTask, register_task

from mega_fairseq.data.label_dictionary_targets import check_label_rows, class_id_mapping, label_targets
from mega_fairseq.tasks.lra_checks import (
    check_input_type,
    check_model_fits_task,
    check_not_empty,
    require_file,
)
from mega_fairseq.tasks.lra_task_args import add_common_lra_args, check_common_lra_args
from mega_fairseq.data.shuffled_split import shuffled_split

logger = logging.getLogger(__name__)

TASK_NAME = "lra-text"
CLS_SYMBOL = "<CLS>"
LAYOUT = "src-bin/ and label-bin/ (fairseq-preprocess --only-source output)"


@register_task(TASK_NAME)
class LRATextTask(LegacyFairseqTask):
    """Sequence classification of token sequences (one or two documents per row)."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("data", metavar="FILE", help="data folder with src-bin/ and label-bin/")
        add_common_lra_args(parser)
        parser.add_argument("--init-token", type=int, default=None,
                            help="official option without effect (the official task never read it); refused when set")
        parser.add_argument("--separator-token", type=int, default=None,
                            help="official option without effect (the official task never read it); refused when set")

    def __init__(self, args, data_dictionary: Dictionary, label_dictionary: Dictionary):
        super().__init__(args)
        self.dictionary = data_dictionary
        self._label_dictionary = label_dictionary
        self.cls_idx = data_dictionary.index(CLS_SYMBOL)
        self.prepend_cls = getattr(args, "sen_rep_type", "mp") == "cls"
        self._max_positions = getattr(args, "max_positions", None)
        if self._max_positions is not None:
            args.tokens_per_sample = self._max_positions
        self.class_names = class_id_mapping(label_dictionary)

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_common_lra_args(args, TASK_NAME)
        check_input_type(args, TASK_NAME, "text")
        for option in ("init_token", "separator_token"):
            if getattr(args, option, None) is not None:
                raise ValueError("--{} is not supported by --task {}: the official task accepted it but never used "
                                 "it (use --sen-rep-type cls for a leading <CLS>)".format(option.replace("_", "-"),
                                                                                         TASK_NAME))
        data = args.data
        for folder in ("src-bin", "label-bin"):
            require_file(os.path.join(data, folder, "dict.txt"), data, TASK_NAME, LAYOUT)
        data_dictionary = Dictionary.load(os.path.join(data, "src-bin", "dict.txt"))
        data_dictionary.add_symbol(CLS_SYMBOL)
        label_dictionary = Dictionary.load(os.path.join(data, "label-bin", "dict.txt"))
        task = cls(args, data_dictionary, label_dictionary)
        logger.info("[input] dictionary: %d types (%s = %d appended)", len(data_dictionary), CLS_SYMBOL,
                    task.cls_idx)
        logger.info("[label] class ids follow label-bin/dict.txt order: %s",
                    ", ".join("{}={!r}".format(i, name) for i, name in task.class_names.items()))
        num_classes = getattr(args, "num_classes", -1)
        if num_classes is not None and num_classes > 0 and num_classes != len(task.class_names):
            raise ValueError("--num-classes {} does not match the {} labels of {}".format(
                num_classes, len(task.class_names), os.path.join(data, "label-bin", "dict.txt")))
        return task

    def _load_tokens(self, folder: str, split: str):
        path = os.path.join(self.args.data, folder, split)
        if os.path.exists(path + ".bin") and os.path.getsize(path + ".bin") == 0:
            raise ValueError("split {!r} is empty: {} holds no rows".format(split, path))
        tokens = data_utils.load_indexed_dataset(path, self.dictionary, getattr(self.args, "dataset_impl", None))
        if tokens is None:
            raise ValueError("split {!r} not found: {}.bin/.idx is missing under {}".format(
                split, path, self.args.data))
        check_not_empty(tokens, split, path)
        if self._max_positions is not None:
            room = self._max_positions - (1 if self.prepend_cls else 0)
            tokens = maybe_shorten_dataset(tokens, split, getattr(self.args, "shorten_data_split_list", ""),
                                           getattr(self.args, "shorten_method", "none"), room, self.args.seed)
        if self.prepend_cls:
            tokens = PrependTokenDataset(tokens, self.cls_idx)
        if self._max_positions is not None:
            tokens = TruncateDataset(tokens, self._max_positions)
        return tokens

    def _net_input(self, tokens):
        return {"src_tokens": RightPadDataset(tokens, pad_idx=self.dictionary.pad()),
                "src_lengths": NumelDataset(tokens, reduce=False)}

    def load_dataset(self, split, combine=False, epoch=1, **kwargs):
        """Load ``split`` (``train``/``valid``/``test``) into ``self.datasets[split]``."""
        src = self._load_tokens("src-bin", split)
        dataset = {"id": IdDataset(), "net_input": self._net_input(src),
                   "nsentences": NumSamplesDataset(), "ntokens": NumelDataset(src, reduce=True)}
        sizes = src.sizes
        if os.path.exists(os.path.join(self.args.data, "src1-bin", split + ".idx")):
            src1 = self._load_tokens("src1-bin", split)
            if len(src1) != len(src):
                raise ValueError("split {!r}: src1-bin holds {} rows but src-bin {}".format(split, len(src1), len(src)))
            dataset["net_input1"] = self._net_input(src1)
            sizes = np.maximum(sizes, src1.sizes)
        label_path = os.path.join(self.args.data, "label-bin", split)
        labels = data_utils.load_indexed_dataset(label_path, self._label_dictionary,
                                                 getattr(self.args, "dataset_impl", None))
        if labels is not None:
            if len(labels) != len(src):
                raise ValueError("split {!r}: label-bin holds {} rows but src-bin {}".format(
                    split, len(labels), len(src)))
            check_label_rows(labels, self._label_dictionary, label_path)
            dataset["target"] = label_targets(labels, self._label_dictionary)
        dataset = shuffled_split(dataset, sizes, self.args)
        logger.info("[%s] %s: %d rows", TASK_NAME, split, len(dataset))
        self.datasets[split] = dataset
        return dataset

    def build_model(self, args, from_checkpoint=False):
        check_model_fits_task(args, TASK_NAME, ["lra"], input_type="text")
        classes = getattr(args, "sentence_class_num", None)
        if classes is not None and classes < len(self.class_names):
            raise ValueError("--sentence-class-num {} is smaller than the {} labels of {}".format(
                classes, len(self.class_names), os.path.join(self.args.data, "label-bin", "dict.txt")))
        return super().build_model(args, from_checkpoint)

    def max_positions(self):
        return self._max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    @property
    def label_dictionary(self):
        return self._label_dictionary
