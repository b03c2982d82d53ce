"""Convert the LRA release's AAN retrieval files into the official processed layout (two documents).

Input: ``lra_release/tsv_data/`` with ``new_aan_pairs.{train,eval,test}.tsv``: no header, tab
separated, columns ``label id1 id2 text1 text2`` (label ``0``/``1``, possibly written ``1.0``).
Each document becomes byte-level tokens cut to ``--max-length`` (4,000) bytes; ``text1`` goes to
``src-bin``, ``text2`` to ``src1-bin`` (``net_input`` / ``net_input1`` of the ``lra-text`` task).

    python convert_aan.py TSV_DIR OUT [--max-length 4000]
"""
from pathlib import Path

from byte_tokens import byte_tokens
from fairseq_binarize import converter_parser, write_and_binarize

RELEASE_SPLITS = {"train": "new_aan_pairs.train.tsv", "valid": "new_aan_pairs.eval.tsv",
                  "test": "new_aan_pairs.test.tsv"}


def read_pairs(path: Path, max_length: int):
    """``[(tokens1, tokens2, label), ...]`` of one release TSV."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5:
                raise SystemExit("{} line {}: expected 5 tab-separated fields (label id1 id2 text1 text2), "
                                 "got {}".format(path, line_number, len(fields)))
            try:
                label = int(float(fields[0]))
            except ValueError:
                raise SystemExit("{} line {}: label {!r} is not a number".format(path, line_number, fields[0]))
            rows.append((byte_tokens(fields[3], max_length), byte_tokens(fields[4], max_length), str(label)))
    return rows


def main(argv=None):
    args = converter_parser(__doc__, "tsv_dir", "folder with new_aan_pairs.{train,eval,test}.tsv",
                            "document").parse_args(argv)
    splits = {}
    for split, name in RELEASE_SPLITS.items():
        path = Path(args.tsv_dir) / name
        if not path.exists():
            raise SystemExit("{} not found (the LRA release's lra_release/tsv_data/ folder holds it)".format(path))
        splits[split] = read_pairs(path, args.max_length)
    write_and_binarize(splits, args)


if __name__ == "__main__":
    main()
