"""Convert the LRA release's ListOps files into the official processed layout.

Input: the folder of ``lra_release/listops-1000/`` with ``basic_train.tsv``, ``basic_val.tsv`` and
``basic_test.tsv`` (tab-separated, header ``Source<TAB>Target``; ``Source`` is the expression with
parentheses, e.g. ``( ( ( [MAX 2 ) 9 ) ] )``, ``Target`` the answer 0-9). Parentheses are removed
(as the LRA input pipeline does); the operator and ``]`` tokens are kept, as in Mega's processed data.

    python convert_listops_release.py LISTOPS_DIR OUT [--srcdict dict.txt --labeldict dict.txt]

writes ``OUT/raw/`` and, through ``fairseq-preprocess``, ``OUT/src-bin`` + ``OUT/label-bin``.
"""
import csv
import sys
from pathlib import Path

from fairseq_binarize import converter_parser, write_and_binarize

RELEASE_SPLITS = {"train": "basic_train.tsv", "valid": "basic_val.tsv", "test": "basic_test.tsv"}


def expression_tokens(source: str) -> str:
    """``( ( [MAX 2 ) 9 ] )`` -> ``[MAX 2 9 ]``."""
    return " ".join(source.replace("(", " ").replace(")", " ").split())


def read_release_split(path: Path):
    """``[(tokens, label), ...]`` from one release TSV."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames is None or not {"Source", "Target"} <= set(reader.fieldnames):
            raise SystemExit("{}: expected a header with the columns Source and Target".format(path))
        for line_number, row in enumerate(reader, start=2):
            label = row["Target"].strip()
            if not label.isdigit():
                raise SystemExit("{} line {}: Target {!r} is not a digit".format(path, line_number, label))
            rows.append((expression_tokens(row["Source"]), label))
    return rows


def main(argv=None):
    args = converter_parser(__doc__, "release_dir", "folder with basic_{train,val,test}.tsv").parse_args(argv)
    splits = {}
    for split, name in RELEASE_SPLITS.items():
        path = Path(args.release_dir) / name
        if not path.exists():
            raise SystemExit("{} not found (the LRA release's lra_release/listops-1000/ folder holds it)".format(path))
        splits[split] = read_release_split(path)
    write_and_binarize(splits, args)


if __name__ == "__main__":
    main()
