#!/usr/bin/env bash
# The issue-10 ablation in one go: the training and shifted-test data, every row's training (in
# parallel, one process each), each checkpoint scored on the shifted profile, one merged table.
#
#   bash benchmarks/generalisation_runs.sh WORKDIR [EPOCHS] [DEVICE]
#
# WORKDIR gets train/ (default profile), shift/ (the shifted test profile), runs/NAME/ and
# results/ (one generalisation JSON per row and all.json). EPOCHS defaults to 30, DEVICE to auto
# (a GPU if torch sees one). CLIPS (training clips, default 500), TEST (shifted clips, default
# 100), ROWS (names to run, default all) and AMP (auto, on, off; default auto) come from the
# environment. Runs that fail are named
# at the end; the others still count. Needs: soundloc importable as `python3 -m soundloc`.
set -u
W=${1:?usage: generalisation_runs.sh WORKDIR [EPOCHS] [DEVICE]}
EPOCHS=${2:-30}
DEVICE=${3:-auto}
CLIPS=${CLIPS:-500}
TEST=${TEST:-100}
AMP=${AMP:-auto}
HERE=$(cd "$(dirname "$0")" && pwd)
SL="python3 -m soundloc"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$W/runs" "$W/results"

# name | recipe flags (every row: small preset, 4 s clips, 3 s crops, flips)
ROW_SPECS=(
  "av-only|--recipe paper --set head=av-only"
  "shared-fc|--recipe paper --set head=shared-fc"
  "paper|--recipe paper"
  "paper-s1|--recipe paper --seed 1"
  "tied-fc-dot|--recipe paper --set head=tied-fc"
  "default|"
  "default-s1|--seed 1"
  "contrastive|--set contrastive_weight=1"
  "contrastive-s1|--set contrastive_weight=1 --seed 1"
  "zoom|--zoom 0.5"
  "zoom-s1|--zoom 0.5 --seed 1"
  "zoom-contrastive|--zoom 0.5 --set contrastive_weight=1"
)
selected() { [ -z "${ROWS:-}" ] || [[ " $ROWS " == *" $1 "* ]]; }

t0=$(date +%s)
[ -f "$W/train/vggsound.csv" ] || $SL synth "$W/train" --clips "$CLIPS" --seed 1 --seconds 4 --workers 0 > "$W/synth_train.log" 2>&1 &
[ -f "$W/shift/vggsound.csv" ] || $SL synth "$W/shift" --clips "$TEST" --seed 2 --seconds 4 --workers 0 --profile shift --val-fraction 0.99 > "$W/synth_shift.log" 2>&1 &
wait
echo "data ready after $(( $(date +%s) - t0 )) s"

for spec in "${ROW_SPECS[@]}"; do
  name=${spec%%|*}; flags=${spec#*|}
  selected "$name" || continue
  # shellcheck disable=SC2086
  $SL train "$W/train" --out "$W/runs/$name" --preset small --set clip_seconds=4 --epochs "$EPOCHS" \
    --batch-size 16 --crop-seconds 3 --flip --cache --workers 1 --device "$DEVICE" --amp "$AMP" \
    --json "$W/runs/$name.json" $flags > "$W/runs/$name.log" 2>&1 &
done
wait
echo "trained after $(( $(date +%s) - t0 )) s"

for spec in "${ROW_SPECS[@]}"; do
  name=${spec%%|*}
  selected "$name" && [ -f "$W/runs/$name/last.pt" ] || continue
  python3 "$HERE/generalisation.py" --data "$W/shift" --run "$name=$W/runs/$name/last.pt" \
    --json "$W/results/$name.json" > "$W/results/$name.log" 2>&1 &
done
wait
echo "scored after $(( $(date +%s) - t0 )) s"
python3 "$HERE/generalisation.py" --combine "$W"/results/*.json --json "$W/results/all.json"
for spec in "${ROW_SPECS[@]}"; do
  name=${spec%%|*}
  selected "$name" || continue
  [ -f "$W/results/$name.json" ] || { echo "FAILED: $name (see $W/runs/$name.log, $W/results/$name.log)"; tail -3 "$W/runs/$name.log"; }
done
