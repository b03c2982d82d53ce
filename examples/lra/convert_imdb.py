"""Convert the IMDB reviews (``aclImdb_v1.tar.gz``, extracted) into the official processed layout.

LRA's byte-level text classification uses IMDB with the test set as validation set (there is no
other); Mega's ``imdb-4000`` keeps at most 4,000 bytes per review. Input: ``aclImdb/`` with
``{train,test}/{pos,neg}/*.txt``; label 1 = positive, 0 = negative.

    python convert_imdb.py aclImdb OUT [--max-length 4000]

writes ``OUT/raw/`` and, through ``fairseq-preprocess``, ``OUT/src-bin`` + ``OUT/label-bin``.
"""
import argparse
from pathlib import Path

from byte_tokens import byte_tokens
from fairseq_binarize import binarize

SOURCE_SPLITS = {"train": "train", "valid": "test", "test": "test"}
LABELS = {"neg": "0", "pos": "1"}


def read_reviews(folder: Path, max_length: int):
    """``[(tokens, label), ...]`` of ``folder/{neg,pos}/*.txt`` in file-name order."""
    rows = []
    for name, label in LABELS.items():
        files = sorted((folder / name).glob("*.txt"))
        if not files:
            raise SystemExit("no reviews in {} (expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt)".format(folder / name))
        for path in files:
            text = path.read_text(encoding="utf-8").replace("\n", " ")
            rows.append((byte_tokens(text, max_length), label))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("imdb_dir", help="the extracted aclImdb/ folder")
    parser.add_argument("out")
    parser.add_argument("--max-length", type=int, default=4000, help="bytes kept per review")
    parser.add_argument("--srcdict")
    parser.add_argument("--labeldict")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    raw = Path(args.out) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, source in SOURCE_SPLITS.items():
        rows = read_reviews(Path(args.imdb_dir) / source, args.max_length)
        (raw / (split + ".input")).write_text("".join(tokens + "\n" for tokens, _ in rows))
        (raw / (split + ".label")).write_text("".join(label + "\n" for _, label in rows))
    binarize(raw, Path(args.out), args.workers, args.srcdict, args.labeldict)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
