#!/usr/bin/env bash
# Evaluate a mega_lm checkpoint with the stock fairseq-eval-lm, as in the official recipes.
#
#   bash evaluate.sh {wikitext-103|enwik8} DATA_BIN CHECKPOINT [extra fairseq-eval-lm arguments]
#
# The test set is cut into --valid-block blocks (splits:10 for WikiText-103, splits:50 for
# enwik8, i.e. blocks of ~25k words / ~100k characters), and each block is read in streamed
# pieces of CHUNK x CHUNK_NUMS tokens, the Mega state carried across pieces. Prints
# "Loss (base 2)" (bits per character for enwik8) and perplexity.
# Settings (environment):
#   TEST_CHUNK  attention chunk for the evaluation; default: the chunk the model was trained with.
#               The official numbers used 2048 (WikiText-103) / 4096 (enwik8). Another chunk than
#               the trained one needs the rotary relative bias (--rel-pos-bias rotary): the simple
#               bias holds one weight per offset inside a chunk, so its size is tied to the chunk.
#   CHUNK_NUMS  attention chunks per streamed piece (2 for WikiText-103, 3 for enwik8)
#   CPU=1       adds --cpu.
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
    wikitext-103) UNCHUNKED_PIECE=2048 NUMS=${CHUNK_NUMS:-2} BLOCKS=splits:10 ;;
    enwik8) UNCHUNKED_PIECE=4096 NUMS=${CHUNK_NUMS:-3} BLOCKS=splits:50 ;;
    *)
        echo "evaluate.sh: unknown recipe '$RECIPE'; allowed: wikitext-103, enwik8" >&2
        exit 2
        ;;
esac
if [ ! -f "$CHECKPOINT" ]; then
    echo "evaluate.sh: checkpoint $CHECKPOINT not found" >&2
    exit 1
fi

# What the model was trained with: its attention chunk and its relative position bias.
read -r TRAINED_CHUNK REL_POS_BIAS < <("$PYTHON" - "$CHECKPOINT" <<'PY'
import sys
from fairseq import checkpoint_utils
state = checkpoint_utils.load_checkpoint_to_cpu(sys.argv[1])
model = state["cfg"]["model"] if state.get("cfg") is not None else state["args"]
get = model.get if isinstance(model, dict) or hasattr(model, "get") else (lambda k, d: getattr(model, k, d))
print(get("decoder_chunk_size", -1), get("rel_pos_bias", "simple"))
PY
)
OVERRIDES=()
if [ -z "${TEST_CHUNK:-}" ] || [ "$TEST_CHUNK" = "$TRAINED_CHUNK" ]; then
    # the trained chunk (an unchunked model attends to the whole block: stream it in pieces)
    if [ "$TRAINED_CHUNK" -gt 0 ]; then CHUNK=$TRAINED_CHUNK; else CHUNK=${TEST_CHUNK:-$UNCHUNKED_PIECE}; fi
elif [ "$REL_POS_BIAS" = "simple" ]; then
    echo "evaluate.sh: TEST_CHUNK=$TEST_CHUNK differs from the attention chunk the model was trained with" \
         "($TRAINED_CHUNK), and its simple relative position bias has one weight per offset inside a chunk, so" \
         "the chunk cannot change. Allowed: TEST_CHUNK=$TRAINED_CHUNK (or unset), or a model trained with" \
         "--rel-pos-bias rotary" >&2
    exit 2
else
    CHUNK=$TEST_CHUNK
    OVERRIDES=(--model-overrides "{'decoder_chunk_size': $CHUNK}")
fi
echo "[evaluate] attention chunk $CHUNK (trained with $TRAINED_CHUNK, $REL_POS_BIAS relative bias)," \
     "streamed in pieces of $CHUNK x $NUMS tokens" >&2

fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task mega_language_modeling --path "$CHECKPOINT" \
    --gen-subset test --sample-break-mode complete --valid-block "$BLOCKS" \
    --test-chunk-size "$CHUNK" --chunk-nums "$NUMS" --softmax-batch 1024 \
    "${OVERRIDES[@]}" "${EXTRA[@]}" "$@"
