#!/usr/bin/env bash
# Evaluate a bundled demo model against FracAtlas radiographs it never saw (issue 15, "done when"),
# with no Inception weights: HOG and radiomics Frechet/KID/precision/recall, TSTR/TRTR (and, for a
# conditional model, per-class recognition rates), memorization; plus the real-vs-real baseline
# (the training part evaluated as if it were generated, against the held-out part).
#
#   bench/eval_demo.sh                                   # demo-dcgan, 64 px, --fit pad, all 476 images
#   MODEL=demo-cdcgan FIT=crop TRAIN_DATASET=train BODY_PARTS=HAND,LEG,HIP,SHOULDER VIEWS=AP,PA,LATERAL,OBLIQUE \
#       bench/eval_demo.sh                               # the conditional demo model
#
# Environment: MODEL (demo-dcgan), HOME_DIR (/work/runs/eval/home-$MODEL, recreated), IMAGES
# (../shared/data/radiographs), SPLIT (models/splits/fracatlas-heldout.txt), RESOLUTION (64), FIT (pad),
# BODY_PARTS / VIEWS (dataset build filters, empty: any), TRAIN_DATASET (all: the 476 images the card's
# fracatlas@v1 holds, as demo-dcgan:v1 was trained; train: the training part only, as the conditional model
# was), N (1000 generated images), TSTR_EPOCHS (30). Output: $HOME_DIR/../$MODEL-evaluation.{txt,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-demo-dcgan}
HOME_DIR=${HOME_DIR:-/work/runs/eval/home-$MODEL}
IMAGES=${IMAGES:-$(cd .. && for d in shared/data/radiographs ../shared/data/radiographs; do [ -d "$d" ] && { realpath "$d"; break; }; done)}
SPLIT=${SPLIT:-models/splits/fracatlas-heldout.txt}
RESOLUTION=${RESOLUTION:-64}
FIT=${FIT:-pad}
BODY_PARTS=${BODY_PARTS:-}
VIEWS=${VIEWS:-}
TRAIN_DATASET=${TRAIN_DATASET:-all}
N=${N:-1000}
TSTR_EPOCHS=${TSTR_EPOCHS:-30}
SP=${SYNTHPACS:-.venv/bin/synthpacs}
[ -n "$IMAGES" ] && [ -d "$IMAGES" ] || { echo "no radiographs folder (set IMAGES)" >&2; exit 2; }
OUT=$(dirname "$HOME_DIR")
filters=(--resolution "$RESOLUTION" --fit "$FIT" --quiet)
[ -n "$BODY_PARTS" ] && filters+=(--body-part "$BODY_PARTS")
[ -n "$VIEWS" ] && filters+=(--view "$VIEWS")

rm -rf "$HOME_DIR" "$HOME_DIR-heldout"
mkdir -p "$HOME_DIR"
# The held-out part alone, in a home of its own (a dataset is built from everything in a store).
complement=$(mktemp)
trap 'rm -f "$complement"' EXIT
comm -23 <(cd "$IMAGES" && ls | grep -Ei '\.(jpe?g|png)$' | sort) <(grep -v '^#' "$SPLIT" | sed '/^$/d' | sort) > "$complement"
$SP --home "$HOME_DIR-heldout" dataset import-images "$IMAGES" --exclude "$complement" --quiet
$SP --home "$HOME_DIR-heldout" dataset build fracatlas-heldout "${filters[@]}"
mkdir -p "$HOME_DIR/datasets"
cp -r "$HOME_DIR-heldout/datasets/fracatlas-heldout" "$HOME_DIR/datasets/"
# The training part, then (for a model trained on all 476 images) the rest.
$SP --home "$HOME_DIR" dataset import-images "$IMAGES" --exclude "$SPLIT" --quiet
$SP --home "$HOME_DIR" dataset build fracatlas-train "${filters[@]}"
train_ref=fracatlas-train@v1
if [ "$TRAIN_DATASET" = all ]; then
  $SP --home "$HOME_DIR" dataset import-images "$IMAGES" --exclude "$complement" --quiet
  $SP --home "$HOME_DIR" dataset build fracatlas "${filters[@]}"
  train_ref=fracatlas@v1
fi
$SP --home "$HOME_DIR" dataset ls

echo "== $MODEL against fracatlas-heldout (training set $train_ref) =="
$SP --home "$HOME_DIR" evaluate "$MODEL" --dataset "$train_ref" --real fracatlas-heldout@v1 --n "$N" \
  --tstr-epochs "$TSTR_EPOCHS" | tee "$OUT/$MODEL-evaluation.txt"
cp "$HOME_DIR"/evaluations/"$MODEL"/v*/evaluation.json "$OUT/$MODEL-evaluation.json" 2>/dev/null \
  || find "$HOME_DIR" -name evaluation.json -newer "$complement" -exec cp {} "$OUT/$MODEL-evaluation.json" \;

echo "== real vs real: the training part (as if generated) against fracatlas-heldout =="
.venv/bin/python -m bench.real_baseline --home "$HOME_DIR" --dataset fracatlas-train@v1 --real fracatlas-heldout@v1 \
  --tstr-epochs "$TSTR_EPOCHS" | tee "$OUT/real-vs-real-$FIT.txt"
