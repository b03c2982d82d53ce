"""Read a file of integer class labels, one per line (official ``<data>/label/<split>.label``)."""
from typing import List


def read_integer_labels(path: str) -> List[int]:
    """The labels of ``path`` as ints, one per line.

    Raises:
        ValueError: a line that is not one integer, naming the file and line.
    """
    labels = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            try:
                labels.append(int(text))
            except ValueError:
                raise ValueError("{} line {}: label {!r} is not an integer class id".format(
                    path, line_number, text)) from None
    return labels
