"""Write one split of an LRA image task in the official text layout (``input/`` and ``label/``)."""
from pathlib import Path
from typing import Iterable, Sequence, Tuple


def write_image_split(out: Path, split: str, examples: Iterable[Tuple[Sequence[int], int]]) -> int:
    """Write ``out/input/<split>.src`` (one image per line, grey levels) and ``out/label/<split>.label``.

    Returns the number of images written.
    """
    out = Path(out)
    (out / "input").mkdir(parents=True, exist_ok=True)
    (out / "label").mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / "input" / (split + ".src"), "w") as pixels_file, \
            open(out / "label" / (split + ".label"), "w") as labels_file:
        for pixels, label in examples:
            pixels_file.write(" ".join(str(int(p)) for p in pixels) + "\n")
            labels_file.write("{}\n".format(int(label)))
            count += 1
    return count
