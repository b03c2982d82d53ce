#!/usr/bin/env bash
# Demo: Mega learns a made-up language pair on CPU in a few minutes and reports sacrebleu.
#
#   bash examples/translation/demo.sh [WORK_DIR]     (run from the repository root)
#
# 1. make_demo_corpus.py writes a rule-based English -> "Zed" corpus (word-by-word lexicon,
#    adjectives after the noun, verb at the end of the clause, plural agreement);
# 2. prepare.sh trains sentencepiece and binarizes it;
# 3. train.sh trains a tiny Mega (the official recipe's optimizer and schedule, scaled down;
#    pre-norm layers and no dropout, because this tiny model otherwise needs many more updates
#    before its cross-attention starts to help);
# 4. evaluate.sh translates the test set with beam 5 and prints the sacrebleu score.
#    The learning rate is low on purpose (peak 1e-3, decaying only to 2e-4): at 2e-3..5e-3 the
#    loss can sit on a plateau (~1.9, the source nouns ignored) until the end for some seeds.
# Settings (environment): DEMO_SEED (1, fairseq-train --seed), DEMO_UPDATES (3500),
# DEMO_TRAIN_PAIRS (20000), DEMO_TRAIN_FLAGS (extra fairseq-train flags, appended last so they
# override the demo's), OMP_NUM_THREADS (1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-$ROOT/work-demo/translation}
if [ -x "$ROOT/.venv/bin/python" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export SRC=en TGT=zed
UPDATES=${DEMO_UPDATES:-3500}
SEED=${DEMO_SEED:-1}
HERE=$ROOT/examples/translation
rm -rf "$WORK"
mkdir -p "$WORK"
start=$(date +%s)

echo "== [1/4] made-up corpus"
"$PYTHON" "$HERE/make_demo_corpus.py" "$WORK/raw" --train "${DEMO_TRAIN_PAIRS:-20000}" --valid 300 --test 500
echo "   e.g.  en: $(head -n 1 "$WORK/raw/test.en")"
echo "        zed: $(head -n 1 "$WORK/raw/test.zed")"

echo "== [2/4] sentencepiece + fairseq-preprocess"
VOCAB_SIZE=200 WORKERS=1 bash "$HERE/prepare.sh" "$WORK/raw" "$WORK/prep" 2>&1 | grep '^\[prepare\]'

echo "== [3/4] training a tiny Mega for $UPDATES updates (progress every 250 updates)"
CPU=1 EVAL_BLEU=0 bash "$HERE/train.sh" "$WORK/prep/data-bin" "$WORK/checkpoints" \
    --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --encoder-hidden-dim 128 \
    --encoder-ffn-embed-dim 128 --encoder-z-dim 32 --encoder-n-dim 8 --normalize-before \
    --dropout 0.0 --attention-dropout 0.0 --hidden-dropout 0.0 --activation-dropout 0.0 \
    --weight-decay 0.0 --clip-norm 0.0 --lr 1e-3 --end-learning-rate 2e-4 --max-tokens 1024 --batch-size 256 \
    --max-update "$UPDATES" --total-num-update "$UPDATES" --warmup-updates 100 \
    --save-interval-updates 0 --keep-last-epochs 1 --no-epoch-checkpoints --validate-interval 1000 \
    --log-interval 250 --no-progress-bar --seed "$SEED" ${DEMO_TRAIN_FLAGS:-} 2>&1 \
    | grep --line-buffered -E 'train_inner|valid on|done training' \
    | sed -u -E 's/.*(epoch [0-9]+)[^|]*\| (valid on .*)/   \1 \2/; s/.*train_inner \| (epoch [0-9]+):[^l]*(loss=[0-9.]+).*(num_updates=[0-9]+).*(wall=[0-9]+).*/   \1 \3 \2 \4s/'

echo "== [4/4] translating the test set (beam 5) and scoring with sacrebleu"
bash "$HERE/evaluate.sh" "$WORK/prep/data-bin" "$WORK/checkpoints/checkpoint_last.pt" "$WORK/prep/spm.model" \
    "$WORK/raw/test.zed" --cpu 2>/dev/null | tee "$WORK/bleu.txt"
echo "   e.g. hypothesis: $(head -n 1 "$WORK/checkpoints/hyp.detok.txt")"
echo "== demo finished in $(( $(date +%s) - start ))s; test BLEU above (sacrebleu, detokenized)"
