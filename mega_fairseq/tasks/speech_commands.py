"""``speech_commands``: raw-waveform Speech Commands classification (SC-Raw), official name and arguments.

Stock fairseq 0.12.2 (``LegacyFairseqTask``). Data: the official processed layout, written by
``examples/lra/prepare_speech_commands.py`` (standard library ``wave``; no torchaudio, no sklearn)::

    <data>/processed_data/raw[_dropped<rate>][_all_classes]/{train,val,test}_{X,y}.pt
        X: float N x 1 x 16000 (normalised waveforms), y: int64 (N,) class ids

Split ``valid`` reads the ``val`` files. Batch: ``net_input`` = {``src_tokens`` B x 16000 float,
``src_lengths`` (B,) all 16000}, ``target`` (B,) int64, ``id``, ``nsentences``, ``ntokens`` = B * 16000.
Nothing is downloaded: a missing folder is an error naming the preparation script (the official
code downloaded and processed with torchaudio, which it never imported: B8).
"""
import logging
import os

import torch
from fairseq.data import (
    IdDataset,
    NumelDataset,
    NumSamplesDataset,
    RawLabelDataset,
)
from fairseq.tasks import LegacyFairseqTask, register_task

from mega_fairseq.data.waveform_dataset import WaveformDataset
from mega_fairseq.tasks.lra_checks import (
    check_chunk_divides,
    check_labels_in_range,
    check_model_fits_task,
    check_not_empty,
    describe_data_folder,
)
from mega_fairseq.tasks.lra_task_args import add_common_lra_args, check_common_lra_args
from mega_fairseq.data.shuffled_split import shuffled_split

logger = logging.getLogger(__name__)

TASK_NAME = "speech_commands"
SPLIT_FILE_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def processed_folder_name(dropped_rate: float, all_classes: bool) -> str:
    """``raw[_dropped<rate>][_all_classes]``, the official processed-data folder name."""
    name = "raw"
    if dropped_rate and dropped_rate > 0:
        name += "_dropped{}".format(dropped_rate)
    if all_classes:
        name += "_all_classes"
    return name


def load_tensor(path: str) -> torch.Tensor:
    """A tensor saved with ``torch.save`` (memory-mapped when the file allows it)."""
    try:
        return torch.load(path, weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, weights_only=True)


@register_task(TASK_NAME)
class SpeechCommandsTask(LegacyFairseqTask):
    """Classification of 1-second raw waveforms (16,000 samples)."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("data", metavar="FILE", help="folder holding processed_data/")
        add_common_lra_args(parser)
        parser.add_argument("--sc-all-classes", action="store_true", default=False,
                            help="all 35 classes (processed_data/raw_all_classes) instead of the 10-class subset")
        parser.add_argument("--sc-dropped-rate", type=float, default=0.0,
                            help="read the processed_data/raw_dropped<rate> variant (0: the complete waveforms)")
        parser.add_argument("--mfcc", action="store_true", default=False,
                            help="MFCC features (official option; refused: sc_raw models read raw waveforms)")

    def __init__(self, args):
        super().__init__(args)
        self.folder = os.path.join(args.data, "processed_data",
                                   processed_folder_name(getattr(args, "sc_dropped_rate", 0.0),
                                                         getattr(args, "sc_all_classes", False)))

    @classmethod
    def setup_task(cls, args, **kwargs):
        check_common_lra_args(args, TASK_NAME)
        if getattr(args, "mfcc", False):
            raise ValueError("--mfcc is not supported: the sc_raw models read raw waveforms (drop --mfcc)")
        rate = getattr(args, "sc_dropped_rate", 0.0)
        if rate is None or not 0.0 <= rate < 1.0:
            raise ValueError("--sc-dropped-rate must be in [0, 1), got {}".format(rate))
        task = cls(args)
        if not os.path.isdir(task.folder):
            raise ValueError("{} not found: --task {} reads the processed Speech Commands tensors there ({}); "
                             "make them with examples/lra/prepare_speech_commands.py".format(
                                 task.folder, TASK_NAME, describe_data_folder(args.data)))
        return task

    def load_dataset(self, split, combine=False, epoch=1, **kwargs):
        """Load ``split`` (``valid`` reads ``val_*.pt``) into ``self.datasets[split]``."""
        if split not in SPLIT_FILE_NAMES:
            raise ValueError("split {!r} is not a Speech Commands split; allowed: train, valid, test".format(split))
        stem = os.path.join(self.folder, SPLIT_FILE_NAMES[split])
        if not os.path.exists(stem + "_X.pt"):
            raise ValueError("split {!r} not found: {}_X.pt is missing".format(split, stem))
        waves = WaveformDataset(load_tensor(stem + "_X.pt"), stem + "_X.pt")
        check_not_empty(waves, split, stem + "_X.pt")
        length = int(waves.sizes[0])
        check_chunk_divides(self.args, length, stem + "_X.pt")
        dataset = {"id": IdDataset(),
                   "net_input": {"src_tokens": waves, "src_lengths": NumelDataset(waves, reduce=False)},
                   "nsentences": NumSamplesDataset(), "ntokens": NumelDataset(waves, reduce=True)}
        if os.path.exists(stem + "_y.pt"):
            labels = load_tensor(stem + "_y.pt").long().view(-1)
            if labels.numel() != len(waves):
                raise ValueError("{}_y.pt holds {} labels but {}_X.pt holds {} waveforms".format(
                    stem, labels.numel(), stem, len(waves)))
            labels = labels.tolist()
            check_labels_in_range(labels, getattr(self.args, "sentence_class_num", None), stem + "_y.pt")
            dataset["target"] = RawLabelDataset(labels)
        dataset = shuffled_split(dataset, waves.sizes, self.args)
        logger.info("[%s] %s: %d waveforms of %d samples", TASK_NAME, split, len(dataset), length)
        self.datasets[split] = dataset
        return dataset

    def build_model(self, args, from_checkpoint=False):
        check_model_fits_task(args, TASK_NAME, ["sc_raw"])
        return super().build_model(args, from_checkpoint)

    def max_positions(self):
        return getattr(self.args, "max_positions", None)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
