#!/bin/bash
# Issue 25's measurements (benchmarks/RESULTS.md): data, two default-recipe models trained on the
# default profile, calibration, the stream figures, SLAVC's extended metrics and the cost.
#   bash benchmarks/visibility_runs.sh WORKDIR [SEEDS]
set -e
W=${1:?work folder}; SEEDS=${2:-"0 1"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
B=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W/res" && cd "$W"
[ -f train240/vggsound.csv ] || soundloc synth train240 --clips 240 --seed 1 --seconds 4 --workers 1
[ -f negcal/vggsound.csv ] || soundloc synth negcal --clips 60 --seed 3 --seconds 4 --workers 1 --profile negatives --val-fraction 0.99
[ -f negtest80/vggsound.csv ] || soundloc synth negtest80 --clips 80 --seed 4 --seconds 4 --workers 1 --profile negatives --val-fraction 0.99
[ -f negcal160/vggsound.csv ] || soundloc synth negcal160 --clips 160 --seed 5 --seconds 4 --workers 1 --profile negatives --val-fraction 0.99
[ -f shift60/vggsound.csv ] || soundloc synth shift60 --clips 60 --seed 2 --seconds 4 --workers 1 --profile shift --val-fraction 0.99
for s in $SEEDS; do
  [ -f runs/s$s/last.pt ] || soundloc train train240 --out runs/s$s --preset small --set clip_seconds=4 --epochs 6 \
      --batch-size 16 --crop-seconds 3 --flip --cache --workers 1 --seed $s
  soundloc export runs/s$s/last.pt --out ex_s$s --verify --json res/export_s$s.json
  rm -rf excal_s$s && cp -r ex_s$s excal_s$s
  soundloc calibrate excal_s$s --data negcal --false-alarm 0.1 | tee res/calibrate_s$s.log
  python "$B/visibility.py" --export excal_s$s --data negtest80 --labels-data shift60 --json res/visibility_s$s.json
  python "$B/visibility_statistics.py" --export excal_s$s --cal negcal --test negtest80 --json res/visibility_statistics_s$s.json
  rm -rf excal160_s$s && cp -r ex_s$s excal160_s$s  # the same, calibrated on 160 clips
  soundloc calibrate excal160_s$s --data negcal160 --false-alarm 0.1 | tee res/calibrate160_s$s.log
  python "$B/visibility.py" --export excal160_s$s --data negtest80 --json res/visibility160_s$s.json
  for c in top25 score heard_seen constant; do
    soundloc eval runs/s$s/last.pt --annotations negtest80/vggss.json --videos negtest80 --confidence $c --json res/eval_${c}_s$s.json
  done
  for c in top25 score heard_seen; do
    soundloc eval runs/s$s/last.pt --annotations negtest80/vggss.json --videos negtest80 --baseline shuffled \
        --confidence $c --json res/eval_shuffled_${c}_s$s.json
  done
  soundloc eval runs/s$s/last.pt --annotations shift60/vggss.json --videos shift60 --json res/eval_shift_s$s.json
  for b in "" "--baseline shuffled"; do  # the export's calibrated confidence (the combined rule when chosen)
    soundloc eval runs/s$s/last.pt --annotations negtest80/vggss.json --videos negtest80 $b --confidence calibrated \
        --calibration excal_s$s --json res/eval${b:+_shuffled}_calibrated_s$s.json
  done
done
soundloc eval --baseline center --annotations negtest80/vggss.json --confidence constant --json res/eval_center.json
s=${SEEDS%% *}
soundloc export runs/s$s/last.pt --out ex8_s$s --precision int8 --calib train240 --verify --json res/int8_s$s.json || true
rm -rf cost && python "$B/label_cost.py" runs/s$s/last.pt --out cost --calibration excal_s$s
soundloc bench cost/before cost/now --backend onnxruntime-cpu --threads 1 --no-references --json res/bench_cost.json
python "$B/label_cost_rounds.py" cost --rounds 6 --localize 2000 --calibration excal_s$s --json res/label_cost_rounds.json
