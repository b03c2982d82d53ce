#!/usr/bin/env bash
# Binarize WikiText-103 or enwik8 for the Mega language-model recipes (nothing is downloaded).
#
#   bash prepare.sh wikitext-103 RAW_DIR OUT_DIR   # RAW_DIR holds wiki.{train,valid,test}.tokens
#   bash prepare.sh enwik8       RAW_DIR OUT_DIR   # RAW_DIR holds the unzipped file "enwik8"
#
# Where to get the data: see README.md in this folder. Settings (environment): WORKERS (8);
# for enwik8 also VALID_BYTES / TEST_BYTES (5000000 each; smaller values for stand-in data).
# Writes OUT_DIR/data-bin (dict.txt + binarized train/valid/test).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: bash prepare.sh {wikitext-103|enwik8} RAW_DIR OUT_DIR" >&2
    exit 2
fi
RECIPE=$1 RAW=$2 OUT=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-8}
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
        "$PYTHON" "$HERE/prepare_enwik8.py" "$RAW/enwik8" "$OUT/tokens" \
            --valid-bytes "${VALID_BYTES:-5000000}" --test-bytes "${TEST_BYTES:-5000000}"
        TRAIN=$OUT/tokens/train.txt VALID=$OUT/tokens/valid.txt TEST=$OUT/tokens/test.txt
        ;;
    *)
        echo "prepare.sh: unknown recipe '$RECIPE'; allowed: wikitext-103, enwik8" >&2
        exit 2
        ;;
esac

echo "[prepare] fairseq-preprocess $RECIPE -> $OUT/data-bin"
fairseq-preprocess --only-source --trainpref "$TRAIN" --validpref "$VALID" --testpref "$TEST" \
    --destdir "$OUT/data-bin" --workers "$WORKERS"
