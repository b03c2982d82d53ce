#!/usr/bin/env bash
# Train Mega on a binarized translation corpus (from prepare.sh) with the official WMT16 En-De
# recipe (examples/mega/README.mt.md of the Mega paper's code; 8 GPUs, --max-tokens 8192).
#
#   bash examples/translation/train.sh DATA_BIN SAVE_DIR [extra fairseq-train flags]
#
# Extra flags come after the recipe's, so they override it; e.g. a small CPU run:
#   CPU=1 bash examples/translation/train.sh data-bin ckpt --encoder-layers 2 --decoder-layers 2 \
#       --encoder-embed-dim 64 --encoder-hidden-dim 128 --encoder-z-dim 32 --encoder-n-dim 4 \
#       --max-tokens 2048 --max-update 3000 --warmup-updates 200 --total-num-update 3000
#
# Settings (environment): SRC (en), TGT (de), CPU (1: train on CPU), EVAL_BLEU (1: validation
# BLEU and best checkpoint by BLEU, as in the recipe; 0: best checkpoint by validation loss),
# SPM_MODEL (sentencepiece model for validation BLEU; default DATA_BIN/../spm.model).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 DATA_BIN SAVE_DIR [extra fairseq-train flags]" >&2
    exit 2
fi
DATA_BIN=$1
SAVE_DIR=$2
shift 2
SRC=${SRC:-en}
TGT=${TGT:-de}
PYTHON=${PYTHON:-python}
USER_DIR=$("$PYTHON" -m mega_fairseq)

RECIPE=(
    --seed 1 --ddp-backend c10d
    --valid-subset valid -s "$SRC" -t "$TGT"
    --arch mega_wmt_en_de --encoder-layers 6 --decoder-layers 6
    --activation-fn silu --attention-activation-fn softmax
    --encoder-n-dim 16 --encoder-chunk-size -1
    --normalization-type layernorm --truncation-length 0
    --optimizer adam --lr 1e-3 --adam-betas "(0.9, 0.98)" --adam-eps 1e-8 --clip-norm 1.0
    --label-smoothing 0.1 --max-tokens 8192 --batch-size 1024 --share-all-embeddings
    --dropout 0.15 --attention-dropout 0.1 --hidden-dropout 0.1 --activation-dropout 0.1 --weight-decay 0.05
    --lr-scheduler linear_decay --total-num-update 500000 --end-learning-rate 0.0
    --warmup-updates 4000 --warmup-init-lr 1e-07
    --criterion label_smoothed_cross_entropy --max-update 500000
    --keep-last-epochs 5 --keep-interval-updates 1 --update-freq 1 --save-interval-updates 5000
    --save-dir "$SAVE_DIR" --log-format simple --log-interval 100 --num-workers 0
)
if [ "${EVAL_BLEU:-1}" = "1" ]; then
    SPM_MODEL=${SPM_MODEL:-$(dirname "$DATA_BIN")/spm.model}
    # The recipe's '--eval-bleu-remove-bpe "@@ "' is for subword-nmt; sentencepiece pieces are
    # undone with --eval-bleu-remove-bpe sentencepiece.
    RECIPE+=(
        --eval-bleu --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok space --eval-tokenized-bleu
        --eval-bleu-args '{"beam": 5, "lenpen": 0.5}'
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
    )
fi
if [ "${CPU:-0}" = "1" ]; then
    RECIPE+=(--cpu)
fi

echo "[train] fairseq-train $DATA_BIN ${RECIPE[*]} $*"
fairseq-train "$DATA_BIN" --user-dir "$USER_DIR" "${RECIPE[@]}" "$@"
