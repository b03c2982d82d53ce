#!/usr/bin/env bash
# Demo: Mega learns ListOps (Long Range Arena) at reduced length on CPU in a few minutes.
#
#   bash examples/lra/demo.sh [WORK_DIR]     (run from the repository root; `make demo-lra`)
#
# 1. make_listops.py generates short ListOps expressions offline (seeded; fairseq-preprocess binarizes);
# 2. train.sh listops trains a small mega_lra_listop (the official recipe, scaled down by overrides);
# 3. fairseq-validate scores the best checkpoint on the test split, and the demo prints its accuracy
#    next to the majority-class rate (always answering the most frequent training label).
# Settings (environment): DEMO_SEED (1, training seed), DEMO_UPDATES (1200), DEMO_TRAIN (20000
# expressions), DEMO_MIN_LENGTH / DEMO_MAX_LENGTH (10 / 60 tokens), OMP_NUM_THREADS (1: small matrices; on a
# busy machine more threads slow it down),
# DEMO_TRAIN_FLAGS (appended to fairseq-train).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-$ROOT/work-demo/lra}
if [ -x "$ROOT/.venv/bin/python" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
export PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
UPDATES=${DEMO_UPDATES:-1200}
HERE=$ROOT/examples/lra
USER_DIR=$("$PYTHON" -m mega_fairseq)
rm -rf "$WORK"
mkdir -p "$WORK"
start=$(date +%s)

echo "== [1/3] ListOps, ${DEMO_MIN_LENGTH:-10}-${DEMO_MAX_LENGTH:-60} tokens per expression"
"$PYTHON" "$HERE/make_listops.py" "$WORK/data" --train "${DEMO_TRAIN:-20000}" --valid 1000 --test 1000 \
    --min-length "${DEMO_MIN_LENGTH:-10}" --max-length "${DEMO_MAX_LENGTH:-60}" --seed 1 --workers 2
echo "   e.g. $(head -n 1 "$WORK/data/raw/test.input")  ->  $(head -n 1 "$WORK/data/raw/test.label")"

echo "== [2/3] training mega_lra_listop (2 layers, width 32) for $UPDATES updates"
# shellcheck disable=SC2086
CPU=1 SEED=${DEMO_SEED:-1} bash "$HERE/train.sh" listops "$WORK/data" "$WORK/checkpoints" \
    --encoder-layers 2 --encoder-embed-dim 32 --encoder-hidden-dim 64 --z-dim 16 \
    --dropout 0.0 --lr 0.003 --weight-decay 0.01 --batch-size 64 --max-sentences-valid 500 \
    --max-update "$UPDATES" --total-num-update "$UPDATES" --warmup-updates $((UPDATES / 10)) \
    --no-epoch-checkpoints --log-interval 100 --ddp-backend legacy_ddp ${DEMO_TRAIN_FLAGS:-} \
    2>&1 | grep --line-buffered -E "train_inner|valid on|done training" | sed -u 's/^.*| INFO | /   /'

echo "== [3/3] fairseq-validate on the test split"
fairseq-validate "$WORK/data" --user-dir "$USER_DIR" --task lra-text --path "$WORK/checkpoints/checkpoint_best.pt" \
    --valid-subset test --batch-size 500 --cpu >"$WORK/validate.log" 2>&1 || { tail -n 20 "$WORK/validate.log"; exit 1; }
grep "valid on 'test' subset" "$WORK/validate.log" | sed 's/^.*| INFO | /   /'
"$PYTHON" - "$WORK" <<'PY'
import collections, re, sys
work = sys.argv[1]
train = open(work + "/data/raw/train.label").read().split()
test = open(work + "/data/raw/test.label").read().split()
majority, _ = collections.Counter(train).most_common(1)[0]
rate = 100.0 * sum(label == majority for label in test) / len(test)
line = [l for l in open(work + "/validate.log") if "valid on 'test' subset" in l][-1]
accuracy = float(re.search(r"accuracy ([0-9.]+)", line).group(1))
print("   test accuracy {:.1f} %  vs  majority class ({!r}) {:.1f} %  ({} test expressions)".format(
    accuracy, majority, rate, len(test)))
PY
echo "   demo took $(( $(date +%s) - start )) s"
