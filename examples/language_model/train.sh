#!/usr/bin/env bash
# Train mega_lm with the official WikiText-103 or enwik8 hyper-parameters.
#
#   bash train.sh {wikitext-103|enwik8} DATA_BIN SAVE_DIR [extra fairseq-train arguments]
#
# The defaults are the official recipes (examples/mega/README.lm.md of facebookresearch/mega:
# WikiText-103 ran on 24 A100 GPUs, enwik8 on 8). Extra arguments are appended, so they override
# any default (fairseq keeps the last value), e.g. --max-update 1000 --update-freq 3.
# Settings (environment): SEED (1), CPU=1 adds --cpu.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: bash train.sh {wikitext-103|enwik8} DATA_BIN SAVE_DIR [fairseq-train args]" >&2
    exit 2
fi
RECIPE=$1 DATA=$2 SAVE=$3
shift 3
PYTHON=${PYTHON:-python}
USER_DIR=$("$PYTHON" -m mega_fairseq)
EXTRA=()
if [ "${CPU:-0}" = "1" ]; then EXTRA+=(--cpu); fi

COMMON=(
    --user-dir "$USER_DIR" --task mega_language_modeling --seed "${SEED:-1}" --ddp-backend legacy_ddp
    --activation-fn silu --attention-activation-fn softmax --decoder-n-dim 16
    --normalize-before --no-affine-final-norm --normalization-type layernorm
    --truncation-length 8192 --rel-pos-bias rotary
    --optimizer adam --lr 5e-3 --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 0.25
    --lr-scheduler linear_decay --total-num-update 400000 --end-learning-rate 0.0
    --warmup-updates 24000 --warmup-init-lr 1e-07 --weight-decay 0.1 --max-update 400000
    --update-freq 1 --no-epoch-checkpoints --sample-break-mode complete --valid-block splits:10
    --valid-subset valid --log-format simple --log-interval 100 --num-workers 0
)
case "$RECIPE" in
    wikitext-103)
        RECIPE_ARGS=(
            --arch mega_lm_adaptive_big --max-target-positions 8096 --decoder-hidden-dim 2048
            --decoder-chunk-size 1024 --max-tokens 6144
            --variant-block-multiple-min 2 --variant-block-multiple-max 6
            --criterion adaptive_loss --dropout 0.3 --attention-dropout 0.1 --hidden-dropout 0.1
        )
        ;;
    enwik8)
        RECIPE_ARGS=(
            --arch mega_lm_enwik8_base --max-target-positions 10384
            --decoder-chunk-size 2048 --max-tokens 8192
            --variant-block-multiple-min 2 --variant-block-multiple-max 4
            --criterion cross_entropy --share-decoder-input-output-embed
            --dropout 0.1 --attention-dropout 0.0 --hidden-dropout 0.0
        )
        ;;
    *)
        echo "train.sh: unknown recipe '$RECIPE'; allowed: wikitext-103, enwik8" >&2
        exit 2
        ;;
esac

mkdir -p "$SAVE"
fairseq-train "$DATA" "${COMMON[@]}" "${RECIPE_ARGS[@]}" --save-dir "$SAVE" "${EXTRA[@]}" "$@"
