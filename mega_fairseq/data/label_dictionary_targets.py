"""Class ids of binarized text labels (``<data>/label-bin``), as the official ``lra-text`` task defines them.

``fairseq-preprocess --only-source`` writes each label as one symbol plus ``eos``; the class id is the
symbol's index in ``label-bin/dict.txt`` minus the 4 special symbols, i.e. the label's 0-based line
in that file (frequency order of the training split). Official checkpoints depend on this order,
so it is kept; :func:`class_id_mapping` states it so that setup can log it.

Fixed here (B2): a label missing from ``dict.txt`` was binarized as ``<unk>`` and became target -1,
an ``IndexError`` deep in the loss. :func:`check_label_rows` refuses it when the split is loaded.
"""
from typing import Dict

from fairseq.data import Dictionary, OffsetTokensDataset, StripTokenDataset

FILLER_PREFIX = "madeupword"  # symbols fairseq-preprocess adds to pad the dictionary size


def class_id_mapping(label_dictionary: Dictionary) -> Dict[int, str]:
    """``{class id: label string}`` for the real labels of ``label_dictionary`` (fillers left out)."""
    first = label_dictionary.nspecial
    return {index - first: label_dictionary[index] for index in range(first, len(label_dictionary))
            if not label_dictionary[index].startswith(FILLER_PREFIX)}


def check_label_rows(labels, label_dictionary: Dictionary, where: str) -> None:
    """Refuse label rows that are not exactly one known label followed by ``eos``.

    Args:
        labels: the binarized label split (items: LongTensor ``(2,)`` = label index, eos).
        label_dictionary: ``label-bin/dict.txt``.
        where: the split's path, for the message.

    Raises:
        ValueError: a row holding ``<unk>`` (a label absent from ``dict.txt``), a special symbol, or not
            exactly one label.
    """
    eos = label_dictionary.eos()
    for row in range(len(labels)):
        item = labels[row]
        symbols = item[:-1] if len(item) > 0 and int(item[-1]) == eos else item
        if len(symbols) != 1:
            raise ValueError("{}: row {} holds {} label symbols, expected exactly one class label per line".format(
                where, row, len(symbols)))
        index = int(symbols[0])
        if index < label_dictionary.nspecial:
            raise ValueError("{}: row {} holds a label that is not in label-bin/dict.txt (binarized as {}); "
                             "known labels: {} -- binarize every split with the training label dictionary "
                             "(fairseq-preprocess --srcdict label-bin/dict.txt) and make sure the training "
                             "split has every class".format(
                                 where, row, label_dictionary[index],
                                 ", ".join(class_id_mapping(label_dictionary).values())))


def label_targets(labels, label_dictionary: Dictionary):
    """Class ids per row (items: LongTensor ``(1,)``): strip ``eos``, subtract the special symbols."""
    return OffsetTokensDataset(StripTokenDataset(labels, id_to_strip=label_dictionary.eos()),
                               offset=-label_dictionary.nspecial)
