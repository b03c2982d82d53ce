"""Convert the IMDB reviews (``aclImdb_v1.tar.gz``, extracted) into the official processed layout.

LRA's byte-level text classification uses IMDB with the test set as validation set (there is no
other); Mega's ``imdb-4000`` keeps at most 4,000 bytes per review. Input: ``aclImdb/`` with
``{train,test}/{pos,neg}/*.txt``; label 1 = positive, 0 = negative.

    python convert_imdb.py aclImdb OUT [--max-length 4000]

writes ``OUT/raw/`` and, through ``fairseq-preprocess``, ``OUT/src-bin`` + ``OUT/label-bin``.
"""
from pathlib import Path

from byte_tokens import byte_tokens
from fairseq_binarize import converter_parser, write_and_binarize

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
    args = converter_parser(__doc__, "imdb_dir", "the extracted aclImdb/ folder", "review").parse_args(argv)
    splits = {split: read_reviews(Path(args.imdb_dir) / source, args.max_length)
              for split, source in SOURCE_SPLITS.items()}
    write_and_binarize(splits, args)


if __name__ == "__main__":
    main()
