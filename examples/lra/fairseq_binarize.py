"""Binarize raw LRA text splits into the official processed layout with ``fairseq-preprocess``.

Input: ``RAW/{split}.input`` (whitespace tokens, one sequence per line), ``RAW/{split}.label`` (one
label per line) and, for two-document tasks (AAN), ``RAW/{split}.input1``. Output (what the
``lra-text`` task and the official ``lra.zip`` use)::

    OUT/src-bin/{dict.txt, split.bin, split.idx}
    OUT/src1-bin/{split.bin, split.idx}           (two-document tasks, src-bin's dictionary)
    OUT/label-bin/{dict.txt, split.bin, split.idx}

The dictionaries are built from the training split (frequency order; both documents for two-document
tasks), unless ``--srcdict`` /
``--labeldict`` give existing ones (use the official zip's to keep token and class ids of an
official checkpoint).
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SPLITS = ("train", "valid", "test")


def preprocess_tool() -> str:
    """``fairseq-preprocess`` next to this interpreter, else from ``PATH``."""
    local = Path(sys.executable).parent / "fairseq-preprocess"
    return str(local) if local.exists() else "fairseq-preprocess"


def run_preprocess(raw: Path, suffix: str, dest: Path, workers: int, srcdict=None, splits=SPLITS,
                   dict_only: bool = False) -> None:
    """``fairseq-preprocess --only-source`` of ``raw/{split}.{suffix}`` into ``dest``."""
    command = [preprocess_tool(), "--only-source", "--destdir", str(dest), "--workers", str(workers)]
    if dict_only:
        command.append("--dict-only")
    for split in splits:
        command += ["--{}pref".format("train" if split == "train" else split), str(raw / "{}.{}".format(split, suffix))]
    if srcdict:
        command += ["--srcdict", str(srcdict)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit("fairseq-preprocess failed for {}/*.{}:\n{}".format(raw, suffix, result.stderr[-3000:]))


def binarize(raw: Path, out: Path, workers: int = 1, srcdict=None, labeldict=None) -> Path:
    """Binarize the raw splits of ``raw`` into ``out`` (src-bin, optional src1-bin, label-bin)."""
    raw, out = Path(raw), Path(out)
    missing = [str(raw / "{}.{}".format(s, k)) for s in SPLITS for k in ("input", "label")
               if not (raw / "{}.{}".format(s, k)).exists()]
    if missing:
        raise SystemExit("missing raw files: " + ", ".join(missing))
    two_documents = (raw / "train.input1").exists()
    if two_documents and not srcdict:
        # one dictionary for both documents: count the tokens of both training files
        staging = out / "dict.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        with open(staging / "train.both", "w") as both:
            for suffix in ("input", "input1"):
                both.write((raw / "train.{}".format(suffix)).read_text())
        run_preprocess(staging, "both", staging, workers, splits=("train",), dict_only=True)
        (out / "src-bin").mkdir(parents=True, exist_ok=True)
        os.replace(staging / "dict.txt", out / "src-bin" / "dict.both.txt")
        shutil.rmtree(staging)
        srcdict = out / "src-bin" / "dict.both.txt"
    run_preprocess(raw, "input", out / "src-bin", workers, srcdict)
    if two_documents and srcdict == out / "src-bin" / "dict.both.txt":
        srcdict.unlink()
    run_preprocess(raw, "label", out / "label-bin", workers, labeldict)
    if two_documents:
        staging = out / "src1-bin.tmp"
        run_preprocess(raw, "input1", staging, workers, out / "src-bin" / "dict.txt")
        (out / "src1-bin").mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            for ext in ("bin", "idx"):
                os.replace(staging / "{}.{}".format(split, ext), out / "src1-bin" / "{}.{}".format(split, ext))
        shutil.rmtree(staging)
    for folder in ("src-bin", "label-bin"):
        preprocess_log = out / folder / "preprocess.log"
        if preprocess_log.exists():
            preprocess_log.unlink()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", help="folder with {train,valid,test}.input/.label (and .input1)")
    parser.add_argument("out", help="output data folder (src-bin/, label-bin/, src1-bin/)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--srcdict", help="existing token dictionary (e.g. the official zip's src-bin/dict.txt)")
    parser.add_argument("--labeldict", help="existing label dictionary (keeps an official checkpoint's class ids)")
    args = parser.parse_args(argv)
    binarize(Path(args.raw), Path(args.out), args.workers, args.srcdict, args.labeldict)
    print("wrote", args.out)


if __name__ == "__main__":
    main()


def converter_parser(description: str, source: str, source_help: str, max_length_unit: str = None):
    """The command line every text converter shares: SOURCE OUT [--max-length] --srcdict --labeldict
    --workers (``max_length_unit`` None: no ``--max-length``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(source, help=source_help)
    parser.add_argument("out")
    if max_length_unit:
        parser.add_argument("--max-length", type=int, default=4000, help="bytes kept per " + max_length_unit)
    parser.add_argument("--srcdict")
    parser.add_argument("--labeldict")
    parser.add_argument("--workers", type=int, default=1)
    return parser


def write_and_binarize(splits, args) -> None:
    """Write ``{split: rows}`` (rows of ``(document, ..., label)`` strings: one or two documents and
    the label last) as ``OUT/raw/{split}.input[1]`` / ``.label``, then :func:`binarize` them into OUT."""
    raw = Path(args.out) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        for index, suffix in enumerate(("input", "input1")[: len(rows[0]) - 1] if rows else ("input",)):
            (raw / "{}.{}".format(split, suffix)).write_text("".join(row[index] + "\n" for row in rows))
        (raw / (split + ".label")).write_text("".join(row[-1] + "\n" for row in rows))
    binarize(raw, Path(args.out), args.workers, args.srcdict, args.labeldict)
    print("wrote", args.out)
