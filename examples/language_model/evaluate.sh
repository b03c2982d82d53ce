#!/usr/bin/env bash
# Evaluate a mega_lm checkpoint with the stock fairseq-eval-lm, as in the official recipes.
#
#   bash evaluate.sh {wikitext-103|enwik8} DATA_BIN CHECKPOINT [extra fairseq-eval-lm arguments]
#
# The test set is cut into --valid-block blocks (splits:10 for WikiText-103, splits:50 for
# enwik8, i.e. blocks of ~25k words / ~100k characters), and each block is read in streamed
# pieces of TEST_CHUNK x CHUNK_NUMS tokens with an attention chunk of TEST_CHUNK, the Mega state
# carried across pieces. Prints "Loss (base 2)" (bits per character for enwik8) and perplexity.
# Settings (environment): TEST_CHUNK / CHUNK_NUMS (2048 / 2 for WikiText-103, 4096 / 3 for
# enwik8), CPU=1 adds --cpu.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: bash evaluate.sh {wikitext-103|enwik8} DATA_BIN CHECKPOINT [fairseq-eval-lm args]" >&2
    exit 2
fi
RECIPE=$1 DATA=$2 CHECKPOINT=$3
shift 3
PYTHON=${PYTHON:-python}
USER_DIR=$("$PYTHON" -m mega_fairseq)
EXTRA=()
if [ "${CPU:-0}" = "1" ]; then EXTRA+=(--cpu); fi
case "$RECIPE" in
    wikitext-103) CHUNK=${TEST_CHUNK:-2048} NUMS=${CHUNK_NUMS:-2} BLOCKS=splits:10 ;;
    enwik8) CHUNK=${TEST_CHUNK:-4096} NUMS=${CHUNK_NUMS:-3} BLOCKS=splits:50 ;;
    *)
        echo "evaluate.sh: unknown recipe '$RECIPE'; allowed: wikitext-103, enwik8" >&2
        exit 2
        ;;
esac

fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task mega_language_modeling --path "$CHECKPOINT" \
    --gen-subset test --sample-break-mode complete --valid-block "$BLOCKS" \
    --test-chunk-size "$CHUNK" --chunk-nums "$NUMS" --softmax-batch 1024 \
    --model-overrides "{'decoder_chunk_size': $CHUNK}" "${EXTRA[@]}" "$@"
