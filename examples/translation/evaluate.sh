#!/usr/bin/env bash
# Translate the test split with beam search and score it with sacrebleu (detokenized BLEU).
#
#   bash examples/translation/evaluate.sh DATA_BIN CHECKPOINT SPM_MODEL REFERENCE [extra flags]
#
# REFERENCE is the raw (untokenized) reference text of the test split, one line per sentence.
# Writes CHECKPOINT's directory/generate-test.txt (fairseq-generate's output) and
# hyp.detok.txt (detokenized hypotheses in test-set order), then prints sacrebleu's score.
# Extra flags go to fairseq-generate (e.g. --batch-size 64, --cpu, --nbest 2).
# Settings (environment): SRC (en), TGT (de), BEAM (5), LENPEN (0.5, the recipe's).
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 DATA_BIN CHECKPOINT SPM_MODEL REFERENCE [extra fairseq-generate flags]" >&2
    exit 2
fi
DATA_BIN=$1
CHECKPOINT=$2
SPM_MODEL=$3
REFERENCE=$4
shift 4
SRC=${SRC:-en}
TGT=${TGT:-de}
PYTHON=${PYTHON:-python}
USER_DIR=$("$PYTHON" -m mega_fairseq)
OUT_DIR=$(dirname "$CHECKPOINT")

fairseq-generate "$DATA_BIN" --user-dir "$USER_DIR" --path "$CHECKPOINT" \
    --gen-subset test -s "$SRC" -t "$TGT" --beam "${BEAM:-5}" --lenpen "${LENPEN:-0.5}" \
    --batch-size 128 --bpe sentencepiece --sentencepiece-model "$SPM_MODEL" \
    --scoring sacrebleu "$@" > "$OUT_DIR/generate-test.txt" 2> "$OUT_DIR/generate-test.log" \
    || { tail -n 30 "$OUT_DIR/generate-test.log" >&2; exit 1; }
# D-<id>\t<score>\t<detokenized hypothesis>: best hypothesis first for each id.
grep '^D-' "$OUT_DIR/generate-test.txt" | sed 's/^D-//' | sort -s -n -k1,1 | awk -F'\t' '!seen[$1]++ {print $3}' \
    > "$OUT_DIR/hyp.detok.txt"
if [ "$(wc -l < "$OUT_DIR/hyp.detok.txt")" != "$(wc -l < "$REFERENCE")" ]; then
    echo "error: $(wc -l < "$OUT_DIR/hyp.detok.txt") hypotheses for $(wc -l < "$REFERENCE") reference lines" >&2
    exit 1
fi
# the generation speed ("Translated N sentences (M tokens) in Ts (... tokens/s)") and the BLEU line
cat "$OUT_DIR/generate-test.txt" "$OUT_DIR/generate-test.log" | grep -E 'Translated [0-9,]+ sentences' \
    | sed -E 's/^.*\| (Translated)/\1/' || true
tail -n 1 "$OUT_DIR/generate-test.txt"
echo "[evaluate] sacrebleu $REFERENCE < $OUT_DIR/hyp.detok.txt"
sacrebleu "$REFERENCE" -i "$OUT_DIR/hyp.detok.txt" -m bleu -b -w 2
