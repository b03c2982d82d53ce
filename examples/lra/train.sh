#!/usr/bin/env bash
# Train Mega on a Long Range Arena task or on raw Speech Commands with the official hyper-parameters.
#
#   bash train.sh TASK DATA SAVE_DIR [extra fairseq-train arguments]
#   TASK: listops | imdb | aan | cifar10 | pathfinder | path-x | sc-base | sc-big
#
# The flags are those of the official recipes (examples/mega/README.lra.md and README.sc.md of
# facebookresearch/mega, tested there on one A100, Path-X on 8), unchanged except for --user-dir.
# Extra arguments are appended, so they override any default (fairseq keeps the last value), e.g.
# --max-update 1000 --batch-size 8. Settings (environment): SEED (1); CHUNK: --chunk-size (unset:
# the preset's, -1 = one chunk over the whole sequence for the text tasks); CPU=1 adds --cpu;
# PYTHON (python) picks the interpreter whose fairseq-train runs.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: bash train.sh {listops|imdb|aan|cifar10|pathfinder|path-x|sc-base|sc-big} DATA SAVE_DIR [fairseq-train args]" >&2
    exit 2
fi
RECIPE=$1 DATA=$2 SAVE=$3
shift 3

COMMON=(
    --seed "${SEED:-1}" --ddp-backend c10d --find-unused-parameters
    --criterion lra_cross_entropy --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric
    --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0
    --lr-scheduler linear_decay --end-learning-rate 0.0 --warmup-init-lr 1e-07
    --sentence-avg --keep-last-epochs 1 --save-dir "$SAVE" --log-format simple --log-interval 100
    --num-workers 0
)
TEXT=(--task lra-text --input-type text --n-dim 16 --activation-fn silu --attention-activation-fn softmax
      --sen-rep-type mp --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0)
IMAGE=(--task lra-image --input-type image --n-dim 16 --activation-fn silu --attention-activation-fn laplace
       --sen-rep-type mp --encoder-normalize-before --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0)
SPEECH=(--task speech_commands --encoder-normalize-before --dropout 0.0 --attention-dropout 0.0 --act-dropout 0.0
        --weight-decay 0.01 --batch-size 20 --update-freq 1 --max-update 250000 --total-num-update 250000
        --warmup-updates 10000 --required-batch-size-multiple 1
        --sentence-class-num 10 --max-positions 16000 --sc-dropped-rate 0.)

case "$RECIPE" in
    listops)
        RECIPE_ARGS=(-a mega_lra_listop "${TEXT[@]}" --encoder-layers 6 --norm-type layernorm
            --lr 0.001 --weight-decay 0.01 --batch-size 64 --update-freq 1 --max-update 90000
            --max-sentences-valid 256 --total-num-update 90000 --warmup-updates 3000
            --required-batch-size-multiple 1) ;;
    imdb)
        RECIPE_ARGS=(-a mega_lra_imdb "${TEXT[@]}" --encoder-layers 4 --norm-type scalenorm
            --lr 0.004 --weight-decay 0.01 --batch-size 25 --update-freq 2 --max-update 25000
            --required-batch-size-multiple 1 --total-num-update 25000 --warmup-updates 10000
            --max-sentences-valid 100) ;;
    aan)
        RECIPE_ARGS=(-a mega_lra_aan "${TEXT[@]}" --encoder-layers 6 --norm-type scalenorm
            --lr 0.003 --weight-decay 0.04 --batch-size 8 --update-freq 8 --max-update 91960
            --total-num-update 91960 --warmup-updates 10000 --max-sentences-valid 64) ;;
    cifar10)
        RECIPE_ARGS=(-a mega_lra_cifar10 "${IMAGE[@]}" --pixel-normalization 0.48 0.24 --encoder-layers 8
            --norm-type batchnorm --lr 0.01 --weight-decay 0.02 --batch-size 50 --update-freq 1
            --max-update 180000 --total-num-update 180000 --warmup-updates 9000
            --required-batch-size-multiple 1) ;;
    pathfinder)
        RECIPE_ARGS=(-a mega_lra_pf32 "${IMAGE[@]}" --pixel-normalization 0.5 0.5 --encoder-layers 6
            --norm-type batchnorm --lr 0.01 --weight-decay 0.01 --batch-size 128 --update-freq 1
            --max-update 250000 --total-num-update 250000 --warmup-updates 50000 --max-sentences-valid 512) ;;
    path-x)
        RECIPE_ARGS=(-a mega_lra_pf128 "${IMAGE[@]}" --pixel-normalization 0.5 0.5 --encoder-layers 4
            --norm-type syncbatchnorm --lr 0.01 --weight-decay 0.01 --batch-size 2 --update-freq 8
            --max-update 125000 --total-num-update 125000 --warmup-updates 25000 --warmup-power 2
            --max-sentences-valid 12) ;;
    sc-base)
        RECIPE_ARGS=(-a mega_sc_raw_base "${SPEECH[@]}" --lr 0.01) ;;
    sc-big)
        RECIPE_ARGS=(-a mega_sc_raw_big "${SPEECH[@]}" --lr 0.008) ;;
    *)
        echo "unknown task '$RECIPE'; allowed: listops imdb aan cifar10 pathfinder path-x sc-base sc-big" >&2
        exit 2 ;;
esac

PYTHON=${PYTHON:-python}
USER_DIR=$("$PYTHON" -m mega_fairseq) || {
    echo "$PYTHON cannot import mega_fairseq: set PYTHON to the project's interpreter (e.g. PYTHON=.venv/bin/python)" >&2
    exit 2
}
TRAIN=$(dirname "$(command -v "$PYTHON")")/fairseq-train
[ -x "$TRAIN" ] || TRAIN=fairseq-train
EXTRA=()
if [ "${CPU:-0}" = "1" ]; then EXTRA+=(--cpu); fi
if [ -n "${CHUNK:-}" ]; then EXTRA+=(--chunk-size "$CHUNK"); fi

mkdir -p "$SAVE"
exec "$TRAIN" "$DATA" --user-dir "$USER_DIR" "${COMMON[@]}" "${RECIPE_ARGS[@]}" "${EXTRA[@]}" "$@"
