"""Checks shared by the sequence-classification tasks (``lra-text``, ``lra-image``, ``speech_commands``).

Each refuses bad input with one line that names the argument or file and what would fit, before
anything is trained or evaluated.
"""
import os
from typing import Iterable, Optional


def describe_data_folder(path: str) -> str:
    """What the folder ``path`` looks like, by the official layouts (for error messages)."""
    if not os.path.isdir(path):
        return "it does not exist"
    kinds = []
    if os.path.isdir(os.path.join(path, "src-bin")):
        kinds.append("text data (src-bin/: --task lra-text --input-type text)")
    if os.path.isdir(os.path.join(path, "input")):
        kinds.append("image data (input/: --task lra-image --input-type image)")
    if os.path.isdir(os.path.join(path, "processed_data")):
        kinds.append("speech data (processed_data/: --task speech_commands)")
    if not kinds:
        return "it holds none of src-bin/, label-bin/, input/, label/, processed_data/"
    return "it looks like " + " and ".join(kinds)


def require_file(path: str, data: str, task: str, layout: str) -> None:
    """Raise ``ValueError`` unless ``path`` exists; the message says what ``task`` expects in ``data``."""
    if not os.path.exists(path):
        raise ValueError("{} not found: --task {} reads {} under the data folder {} ({})".format(
            path, task, layout, data, describe_data_folder(data)))


def check_input_type(args, task: str, expected: str) -> None:
    """Refuse ``--input-type`` values that do not fit the task's data (``None`` is accepted)."""
    given = getattr(args, "input_type", None)
    if given is not None and given != expected:
        raise ValueError("--input-type {} does not fit --task {} (its data is {}); use --input-type {}".format(
            given, task, "token ids" if expected == "text" else "pixel values", expected))


def check_not_empty(dataset, split: str, where: str) -> None:
    """Refuse an empty split."""
    if len(dataset) == 0:
        raise ValueError("split {!r} is empty: {} holds no rows".format(split, where))


def check_same_length(lengths: Iterable[int], where: str, what: str) -> int:
    """The one length all sequences share; refuses data whose sequences differ in length."""
    distinct = sorted(set(int(n) for n in lengths))
    if len(distinct) > 1:
        raise ValueError("{}: {}s have different lengths ({} ... {}); these inputs are not padded, so every "
                         "{} must have the same length".format(where, what, distinct[0], distinct[-1], what))
    return distinct[0]


def check_labels_in_range(labels, num_classes, where: str) -> None:
    """Refuse integer class ids outside ``[0, num_classes)`` (``num_classes`` None: only negatives)."""
    low, high = min(labels), max(labels)
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise ValueError("{}: class ids range over {}..{}, but the model predicts {} classes (0..{}); set "
                         "--sentence-class-num to the number of classes".format(
                             where, low, high, num_classes, "?" if num_classes is None else num_classes - 1))


def check_chunk_divides(args, length: int, where: str) -> None:
    """Refuse an unpadded input length that ``--chunk-size`` does not divide.

    Image and speech inputs are never padded, so chunked attention needs ``length % chunk == 0``
    (a length shorter than the chunk is one chunk and fine).
    """
    chunk = getattr(args, "chunk_size", -1)
    if chunk is not None and chunk > 0 and length > chunk and length % chunk != 0:
        raise ValueError("--chunk-size {} does not divide the sequence length {} of {} (image and speech inputs "
                         "are not padded); use a --chunk-size that divides {}, or -1".format(
                             chunk, length, where, length))


def check_model_fits_task(args, task: str, model_names: Iterable[str], input_type: Optional[str] = None) -> None:
    """Refuse a model (an ``--arch`` or a checkpoint's) that was not made for ``task``.

    ``fairseq-validate --task X --path ckpt.pt`` builds the checkpoint's model under task X: a model
    of another task is refused here, before it is built, instead of failing inside it.
    """
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    arch = getattr(args, "arch", None) or getattr(args, "_name", None)
    model_name = ARCH_MODEL_NAME_REGISTRY.get(arch, arch)
    allowed = sorted(model_names)
    if model_name not in allowed:
        raise ValueError("--task {} takes a model of type {} (e.g. --arch mega_lra_* / mega_sc_raw*), but the "
                         "model (or checkpoint) has --arch {} (model {!r}): it was made for another task".format(
                             task, " or ".join(repr(m) for m in allowed), arch, model_name))
    if input_type is not None:
        given = getattr(args, "input_type", None)
        if given is not None and given != input_type:
            raise ValueError("--task {} needs a model with --input-type {}, but the model (or checkpoint) has "
                             "--input-type {}: it was trained on the other kind of data".format(
                                 task, input_type, given))
