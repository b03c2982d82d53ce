"""``lra-image``: Long Range Arena image classification (CIFAR-10 grey, Pathfinder, Path-X).

Same name, arguments and batches as the official task, on stock fairseq 0.12.2
(``LegacyFairseqTask``). Data (the layout of the official ``lra.zip``)::

    <data>/input/<split>.src     one image per line: whitespace-separated grey levels 0..255
    <data>/label/<split>.label   one integer class id per line (optional for prediction-only splits)

Batch: ``net_input`` = {``src_tokens`` B x L float ``(p / 255 - mean) / std``, ``src_lengths`` (B,)
all L}, ``target`` (B,) int64 (the raw label is the class id), ``id``, ``nsentences``,
``ntokens`` = B * L. There is no padding: every image of a split must have the same length, and a
``--chunk-size`` must divide it (both checked when the split is loaded).
"""
import logging
import os

from fairseq.data import (
    IdDataset,
    NumelDataset,
    NumSamplesDataset,
    RawLabelDataset,
    TruncateDataset,
)
from fairseq.data.shorten_dataset import maybe_shorten_dataset
from fairseq.tasks import LegacyFairseqTask, register_task

from mega_fairseq.data.integer_label_file import read_integer_labels
from mega_fairseq.data.pixel_sequence_dataset import PixelSequenceDataset
from mega_fairseq.tasks.lra_checks import (
    check_chunk_divides,
    check_input_type,
    check_labels_in_range,
    check_model_fits_task,
    check_not_empty,
    check_same_length,
    require_file,
)
from mega_fairseq.tasks.lra_task_args import add_common_lra_args, check_common_lra_args
from mega_fairseq.data.shuffled_split import shuffled_split

logger = logging.getLogger(__name__)

TASK_NAME = "lra-image"
LAYOUT = "input/<split>.src and label/<split>.label (one image / one label per line)"
DEFAULT_PIXEL_NORMALIZATION = (0.5, 0.5)


@register_task(TASK_NAME)
class LRAImageTask(LegacyFairseqTask):
    """Classification of flattened grey images given as pixel sequences."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("data", metavar="FILE", help="data folder with input/ and label/")
        add_common_lra_args(parser)
        parser.add_argument("--pixel-normalization", type=float, nargs="+", default=None,
                            help="mean and std applied to pixel/255 (default: 0.5 0.5)")

    def __init__(self, args):
        super().__init__(args)
        self._max_positions = getattr(args, "max_positions", None)
        if self._max_positions is not None:
            args.tokens_per_sample = self._max_positions
        normalization = getattr(args, "pixel_normalization", None)
        self.normalization = tuple(DEFAULT_PIXEL_NORMALIZATION if normalization is None else normalization)
        if len(self.normalization) != 2:
            raise ValueError("--pixel-normalization takes exactly 2 values (mean std), got {}".format(
                list(self.normalization)))

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_common_lra_args(args, TASK_NAME)
        check_input_type(args, TASK_NAME, "image")
        require_file(os.path.join(args.data, "input"), args.data, TASK_NAME, LAYOUT)
        task = cls(args)
        logger.info("[%s] pixels normalised as (p / 255 - %g) / %g", TASK_NAME, *task.normalization)
        return task

    def load_dataset(self, split, combine=False, epoch=1, **kwargs):
        """Load ``split`` into ``self.datasets[split]``; refuses mixed lengths and an undivided chunk."""
        src_path = os.path.join(self.args.data, "input", split + ".src")
        require_file(src_path, self.args.data, TASK_NAME, LAYOUT)
        pixels = PixelSequenceDataset(src_path, self.normalization)
        check_not_empty(pixels, split, src_path)
        src = pixels
        if self._max_positions is not None:
            src = maybe_shorten_dataset(src, split, getattr(self.args, "shorten_data_split_list", ""),
                                        getattr(self.args, "shorten_method", "none"), self._max_positions,
                                        self.args.seed)
            src = TruncateDataset(src, self._max_positions)
        length = check_same_length(src.sizes, src_path, "image")
        check_chunk_divides(self.args, length, src_path)
        dataset = {"id": IdDataset(),
                   "net_input": {"src_tokens": src, "src_lengths": NumelDataset(src, reduce=False)},
                   "nsentences": NumSamplesDataset(), "ntokens": NumelDataset(src, reduce=True)}
        label_path = os.path.join(self.args.data, "label", split + ".label")
        if os.path.exists(label_path):
            labels = read_integer_labels(label_path)
            if len(labels) != len(src):
                raise ValueError("{} holds {} labels but {} holds {} images".format(
                    label_path, len(labels), src_path, len(src)))
            check_labels_in_range(labels, getattr(self.args, "sentence_class_num", None), label_path)
            dataset["target"] = RawLabelDataset(labels)
        dataset = shuffled_split(dataset, src.sizes, self.args)
        logger.info("[%s] %s: %d images of %d pixels", TASK_NAME, split, len(dataset), length)
        self.datasets[split] = dataset
        return dataset

    def build_model(self, args, from_checkpoint=False):
        check_model_fits_task(args, TASK_NAME, ["lra"], input_type="image")
        return super().build_model(args, from_checkpoint)

    def max_positions(self):
        return self._max_positions

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
