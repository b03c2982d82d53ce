#!/usr/bin/env bash
# Demo: a tiny character-level Mega language model learns made-up stories on CPU in a few minutes.
#
#   bash examples/language_model/demo.sh [WORK_DIR]     (run from the repository root)
#
# 1. make_demo_text.py writes stories from a small grammar (each story repeats its hero's name);
# 2. fairseq-preprocess binarizes the characters;
# 3. fairseq-train trains mega_lm (chunk 64, training blocks of 2-4 chunks, the official recipe's
#    optimizer and schedule scaled down), printing progress;
# 4. fairseq-eval-lm scores the whole test set as ONE block (hundreds of chunks long), streamed
#    1024 tokens at a time, and prints the base-2 loss (= bits per character) and perplexity;
# 5. fairseq-interactive samples a continuation of a prompt.
# Settings (environment): DEMO_UPDATES (300), DEMO_STORIES (1500), OMP_NUM_THREADS (2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-$ROOT/work-demo/language_model}
if [ -x "$ROOT/.venv/bin/python" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
UPDATES=${DEMO_UPDATES:-300}
HERE=$ROOT/examples/language_model
USER_DIR=$("$PYTHON" -m mega_fairseq)
rm -rf "$WORK"
mkdir -p "$WORK"
start=$(date +%s)

echo "== [1/5] made-up stories (character level)"
"$PYTHON" "$HERE/make_demo_text.py" "$WORK/raw" --train "${DEMO_STORIES:-1500}" --valid 40 --test 80
echo "   e.g. $(head -n 1 "$WORK/raw/test.plain.txt")"

echo "== [2/5] fairseq-preprocess"
fairseq-preprocess --only-source --trainpref "$WORK/raw/train.txt" --validpref "$WORK/raw/valid.txt" \
    --testpref "$WORK/raw/test.txt" --destdir "$WORK/data-bin" --workers 2 >"$WORK/preprocess.log" 2>&1
echo "   $(( $(wc -l <"$WORK/data-bin/dict.txt") )) characters in the dictionary"

echo "== [3/5] training a tiny mega_lm for $UPDATES updates (progress every 25 updates)"
fairseq-train "$WORK/data-bin" --user-dir "$USER_DIR" --task mega_language_modeling --arch mega_lm \
    --decoder-layers 2 --decoder-embed-dim 64 --decoder-hidden-dim 128 --decoder-ffn-embed-dim 128 \
    --decoder-z-dim 32 --decoder-n-dim 8 --decoder-chunk-size 64 --normalize-before --no-affine-final-norm \
    --variant-block-multiple-min 2 --variant-block-multiple-max 4 --sample-break-mode complete \
    --valid-block splits:1 --test-chunk-size 1024 \
    --dropout 0.0 --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 0.25 \
    --lr 5e-3 --lr-scheduler linear_decay --warmup-updates 25 --total-num-update "$UPDATES" \
    --end-learning-rate 0.0 --max-tokens 2048 --max-update "$UPDATES" --criterion cross_entropy \
    --cpu --num-workers 0 --seed 1 --save-dir "$WORK/checkpoints" --no-epoch-checkpoints \
    --save-interval-updates 0 --validate-interval-updates "$UPDATES" \
    --log-format simple --log-interval 25 --no-progress-bar 2>&1 \
    | tee "$WORK/train.log" \
    | grep --line-buffered -E 'train_inner|valid on|done training|Error' \
    | sed -u -E 's/.*valid on .valid. subset \| (loss [0-9.]+) \| (ppl [0-9.]+).*/   validation \1 bits\/char, \2/; s/.*train_inner \| (epoch [0-9]+):[^l]*(loss=[0-9.]+).*(num_updates=[0-9]+).*(wall=[0-9]+).*/   \1 \3 \2 \4s/'

echo "== [4/5] fairseq-eval-lm: the whole test set as one block, streamed 1024 characters at a time"
fairseq-eval-lm "$WORK/data-bin" --user-dir "$USER_DIR" --task mega_language_modeling \
    --path "$WORK/checkpoints/checkpoint_last.pt" --gen-subset test --sample-break-mode complete \
    --valid-block splits:1 --test-chunk-size 1024 --cpu --no-progress-bar 2>&1 \
    | tee "$WORK/eval.log" | grep -E 'Evaluated|Loss \(base 2\)' | sed -E 's/.*\| INFO \| fairseq_cli.eval_lm \| /   /'
echo "   (tokens are characters: the base-2 loss is the test set's bits per character)"

echo "== [5/5] sampling continuations of two prompts (fairseq-interactive, top-3 sampling)"
printf 'long ago a child named\nthe baker asked\n' | sed 's/ /_/g; s/./& /g; s/ $//' \
    | fairseq-interactive "$WORK/data-bin" --user-dir "$USER_DIR" --task mega_language_modeling \
        --path "$WORK/checkpoints/checkpoint_last.pt" --sampling --sampling-topk 3 --beam 1 --max-len-b 160 \
        --seed 3 --cpu 2>"$WORK/sample.err" >"$WORK/sample.log"
grep '^H-' "$WORK/sample.log" | cut -f3 | sed 's/ //g; s/_/ /g; s/^/   /' | tee "$WORK/sample.txt"
GEN_SECONDS=$(cat "$WORK/sample.log" "$WORK/sample.err" | grep -o 'translation time: [0-9.]*' | tail -n 1 \
    | awk '{print $3}' || true)
GEN_CHARS=$(grep '^H-' "$WORK/sample.log" | cut -f3 | tr -d ' \n' | wc -c)
echo "   generation speed: $GEN_CHARS characters (prompts included) in ${GEN_SECONDS:-?} s (fairseq-interactive's translation time)"
echo "== demo finished in $(( $(date +%s) - start ))s"
