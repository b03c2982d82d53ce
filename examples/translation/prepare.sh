#!/usr/bin/env bash
# Prepare a parallel corpus for Mega: train a joined sentencepiece model on the raw training
# text, encode every split, and binarize with fairseq-preprocess --joined-dictionary.
#
#   bash examples/translation/prepare.sh RAW_DIR OUT_DIR
#
# RAW_DIR holds raw (untokenized) text, one sentence per line, line-aligned:
#   train.$SRC train.$TGT valid.$SRC valid.$TGT test.$SRC test.$TGT
# OUT_DIR receives spm.model (and spm.vocab), spm/<split>.<lang> (encoded text) and data-bin/.
#
# Settings (environment): SRC (en), TGT (de), VOCAB_SIZE (32000), SPM_MODEL_TYPE (unigram),
# SPM_SAMPLE (lines sampled to train sentencepiece, 10000000), WORKERS (nproc), PYTHON (python).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 RAW_DIR OUT_DIR   (see the comments at the top of this script)" >&2
    exit 2
fi
RAW=$1
OUT=$2
SRC=${SRC:-en}
TGT=${TGT:-de}
VOCAB_SIZE=${VOCAB_SIZE:-32000}
SPM_MODEL_TYPE=${SPM_MODEL_TYPE:-unigram}
SPM_SAMPLE=${SPM_SAMPLE:-10000000}
WORKERS=${WORKERS:-$(nproc)}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for split in train valid test; do
    for lang in "$SRC" "$TGT"; do
        if [ ! -s "$RAW/$split.$lang" ]; then
            echo "error: missing or empty $RAW/$split.$lang (expected train/valid/test.{$SRC,$TGT})" >&2
            exit 1
        fi
    done
    n_src=$(wc -l < "$RAW/$split.$SRC")
    n_tgt=$(wc -l < "$RAW/$split.$TGT")
    if [ "$n_src" != "$n_tgt" ]; then
        echo "error: $RAW/$split.$SRC has $n_src lines but $RAW/$split.$TGT has $n_tgt" >&2
        exit 1
    fi
done

mkdir -p "$OUT/spm"
echo "[prepare] training a joined sentencepiece model ($SPM_MODEL_TYPE, vocab $VOCAB_SIZE)"
"$PYTHON" "$HERE/spm_tool.py" train --input "$RAW/train.$SRC" "$RAW/train.$TGT" \
    --model-prefix "$OUT/spm" --vocab-size "$VOCAB_SIZE" --model-type "$SPM_MODEL_TYPE" \
    --input-sentence-size "$SPM_SAMPLE"

for split in train valid test; do
    for lang in "$SRC" "$TGT"; do
        echo "[prepare] encoding $split.$lang"
        "$PYTHON" "$HERE/spm_tool.py" encode --model "$OUT/spm.model" < "$RAW/$split.$lang" > "$OUT/spm/$split.$lang"
    done
done

echo "[prepare] binarizing into $OUT/data-bin"
fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$OUT/spm/train" --validpref "$OUT/spm/valid" --testpref "$OUT/spm/test" \
    --destdir "$OUT/data-bin" --joined-dictionary --workers "$WORKERS"
echo "[prepare] done: $OUT/data-bin (dictionary $(wc -l < "$OUT/data-bin/dict.$SRC.txt") symbols), $OUT/spm.model"
