#!/usr/bin/env bash
# Binarize WikiText-103, enwik8 or your own plain text for the Mega language-model recipes
# (nothing is downloaded).
#
#   bash prepare.sh wikitext-103 RAW_DIR OUT_DIR   # RAW_DIR holds wiki.{train,valid,test}.tokens
#   bash prepare.sh enwik8       RAW_DIR OUT_DIR   # RAW_DIR holds the unzipped file "enwik8"
#   bash prepare.sh text         TEXT_FILE OUT_DIR # any UTF-8/bytes text file, modelled byte by byte
#                                                  # like enwik8 (train/evaluate it with the enwik8 recipe)
#
# Where to get the data: see README.md in this folder. Settings (environment): WORKERS (the number
# of CPU cores); for enwik8 VALID_BYTES / TEST_BYTES (5000000 each), for text the last 5% of the
# file each by default. Writes OUT_DIR/data-bin (dict.txt + binarized train/valid/test).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: bash prepare.sh {wikitext-103|enwik8|text} RAW_DIR_OR_TEXT_FILE OUT_DIR" >&2
    exit 2
fi
RECIPE=$1 RAW=$2 OUT=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 1)}
mkdir -p "$OUT"

case "$RECIPE" in
    wikitext-103)
        for split in train valid test; do
            if [ ! -f "$RAW/wiki.$split.tokens" ]; then
                echo "prepare.sh: $RAW/wiki.$split.tokens not found (see README.md: Data)" >&2
                exit 1
            fi
        done
        TRAIN=$RAW/wiki.train.tokens VALID=$RAW/wiki.valid.tokens TEST=$RAW/wiki.test.tokens
        ;;
    enwik8)
        if [ ! -f "$RAW/enwik8" ]; then
            echo "prepare.sh: $RAW/enwik8 not found (unzip enwik8.zip there; see README.md: Data)" >&2
            exit 1
        fi
        echo "[prepare] splitting $RAW/enwik8 into byte tokens (about a minute for the full 100 MB)"
        "$PYTHON" "$HERE/prepare_enwik8.py" "$RAW/enwik8" "$OUT/tokens" \
            --valid-bytes "${VALID_BYTES:-5000000}" --test-bytes "${TEST_BYTES:-5000000}"
        TRAIN=$OUT/tokens/train.txt VALID=$OUT/tokens/valid.txt TEST=$OUT/tokens/test.txt
        ;;
    text)
        if [ ! -f "$RAW" ]; then
            echo "prepare.sh: text file $RAW not found (the text recipe takes one file, split 90/5/5)" >&2
            exit 1
        fi
        SIZE=$(wc -c < "$RAW")
        HELD=$(( SIZE / 20 ))
        echo "[prepare] splitting $RAW ($SIZE bytes) into byte tokens: the last ${VALID_BYTES:-$HELD} + ${TEST_BYTES:-$HELD} bytes are valid + test"
        "$PYTHON" "$HERE/prepare_enwik8.py" "$RAW" "$OUT/tokens" \
            --valid-bytes "${VALID_BYTES:-$HELD}" --test-bytes "${TEST_BYTES:-$HELD}"
        TRAIN=$OUT/tokens/train.txt VALID=$OUT/tokens/valid.txt TEST=$OUT/tokens/test.txt
        ;;
    *)
        echo "prepare.sh: unknown recipe '$RECIPE'; allowed: wikitext-103, enwik8, text" >&2
        exit 2
        ;;
esac

echo "[prepare] fairseq-preprocess $RECIPE -> $OUT/data-bin with $WORKERS workers" \
     "(minutes for the full data sets: it prints nothing until each split is done)"
fairseq-preprocess --only-source --trainpref "$TRAIN" --validpref "$VALID" --testpref "$TEST" \
    --destdir "$OUT/data-bin" --workers "$WORKERS"
echo "[prepare] done: $OUT/data-bin"
