#!/usr/bin/env bash
# The paper's two applications end to end (§5, Tables 3 and 4) on the synthetic benchmark:
# a teacher classifier (the default recipe) -> its informative moments -> pseudo boxes for N
# training clips -> second-stage students of the ezvsl family (mid frame, top-1 moment, moment +
# pseudo boxes, moment + true boxes as the upper bound) -> each scored on the unseen shift
# profile beside shuffled audio and the centre prior; plus the pseudo boxes' IoU with the
# sounding object's true box (top-1 moment, mid frame, centre prior).
#
#   bash benchmarks/paper_applications.sh WORKDIR
#
# Environment (defaults in brackets): CLIPS training clips [240], TEST shift clips [60],
# CLIP_SECONDS per clip [4] (10, VGGSound's length, is where the top-1 moment and the middle frame part,
# with STUDENT_EPOCHS=15: benchmarks/RESULTS.md, issue 26's third and fourth passes), N clips annotated with pseudo boxes [100], TEACHER_EPOCHS [8],
# STUDENT_EPOCHS [8], STUDENT_PRESET (the students' ResNet-18 width: small = 1/8) [small], LR of the students [1e-3],
# STUDENT_INIT (teacher: the students' image nets start from the teacher's video net, `--init
# TEACHER`; empty: the authors' random initialisation) [teacher], MIL_BORDER (map cells of the border
# ring left out of the contrastive loss's max, `--set mil_border=N`) [1] (the two defaults: issue 26's winner),
# SEEDS [0 1], STAGES [data teacher moments boxes students eval] (any subset, in order),
# ROWS [mid moments pseudo true]. Every stage skips what it already finished, so the script
# can be run again after an interruption. Needs soundloc importable as `python3 -m soundloc`
# (PY overrides the interpreter).
set -u
W=${1:?usage: paper_applications.sh WORKDIR}
CLIPS=${CLIPS:-240}; TEST=${TEST:-60}; SECONDS_PER_CLIP=${CLIP_SECONDS:-4}; N=${N:-100}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-8}; STUDENT_EPOCHS=${STUDENT_EPOCHS:-8}; STUDENT_PRESET=${STUDENT_PRESET:-small}
STUDENT_INIT=${STUDENT_INIT-teacher}; MIL_BORDER=${MIL_BORDER:-1}
LR=${LR:-1e-3}; SEEDS=${SEEDS:-0 1}; ROWS=${ROWS:-mid moments pseudo true}
STAGES=${STAGES:-data teacher moments boxes students eval}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python3}
SL="$PY -m soundloc"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$W/runs" "$W/results"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if stage data; then
  [ -f "$W/train/vggsound.csv" ] || $SL synth "$W/train" --clips "$CLIPS" --seed 1 --seconds "$SECONDS_PER_CLIP" \
    --workers 0 > "$W/synth_train.log" 2>&1
  [ -f "$W/shift/vggsound.csv" ] || $SL synth "$W/shift" --clips "$TEST" --seed 2 --seconds "$SECONDS_PER_CLIP" \
    --workers 0 --profile shift --val-fraction 0.99 > "$W/synth_shift.log" 2>&1
  say "data ready"
fi

if stage teacher && [ ! -f "$W/runs/teacher/last.pt" ]; then
  $SL train "$W/train" --out "$W/runs/teacher" --preset small --set clip_seconds="$SECONDS_PER_CLIP" \
    --epochs "$TEACHER_EPOCHS" --batch-size 16 --crop-seconds 3 --flip --cache --workers 1 \
    --json "$W/runs/teacher.json" > "$W/runs/teacher.log" 2>&1 || { echo "teacher FAILED"; tail -3 "$W/runs/teacher.log"; exit 1; }
  say "teacher trained"
fi
TEACHER=$W/runs/teacher/last.pt

if stage moments && [ ! -f "$W/moments.json" ]; then
  $SL moments "$TEACHER" "$W/train" --json "$W/moments.json" > "$W/moments.log" 2>&1 || { echo "moments FAILED"; exit 1; }
  say "moments written"
fi

if stage boxes; then
  # the first N training clips (by name) get pseudo boxes: a folder of links to their videos
  if [ ! -f "$W/pseudo.json" ]; then
    mkdir -p "$W/annotate/videos"
    awk -F, '$4 ~ /train/ {print $1"_"sprintf("%06d", $2)}' "$W/train/vggsound.csv" | sort | head -n "$N" |
      while read -r id; do ln -sf "$W/train/videos/$id.mp4" "$W/annotate/videos/$id.mp4"; done
    $SL annotate "$TEACHER" "$W/annotate" --out "$W/pseudo.json" > "$W/annotate.log" 2>&1 || { echo "annotate FAILED"; exit 1; }
  fi
  # the same clips' true boxes at the same frames (the upper bound), and the pseudo boxes' quality
  $PY "$HERE/pseudo_boxes.py" --ckpt "$TEACHER" --data "$W/train" --pseudo "$W/pseudo.json" \
    --true-out "$W/true.json" --json "$W/results/pseudo_boxes.json" > "$W/results/pseudo_boxes.log" 2>&1 \
    || { echo "pseudo box scoring FAILED"; tail -3 "$W/results/pseudo_boxes.log"; }
  say "boxes ready"
fi

row_flags() {
  case $1 in
    mid) echo "--frames mid" ;;
    moments) echo "--frames moments --moments $W/moments.json" ;;
    pseudo) echo "--frames moments --moments $W/moments.json --boxes $W/pseudo.json" ;;
    true) echo "--frames moments --moments $W/moments.json --boxes $W/true.json" ;;
  esac
}

if stage students; then
  for seed in $SEEDS; do
    for row in $ROWS; do
      name=$row-s$seed
      [ -f "$W/runs/$name/last.pt" ] && grep -q "\"epoch\": $STUDENT_EPOCHS," "$W/runs/$name/log.jsonl" 2>/dev/null && continue
      resume=""; [ -f "$W/runs/$name/last.pt" ] && resume="--resume"
      init=""; [ "$STUDENT_INIT" = teacher ] && [ -z "$resume" ] && init="--init $TEACHER"
      # shellcheck disable=SC2046
      # no validation split: the students are scored on the shift profile, and every clip trains
      $SL train "$W/train" --family ezvsl --out "$W/runs/$name" --preset "$STUDENT_PRESET" --val-split none \
        --epochs "$STUDENT_EPOCHS" --batch-size 32 --lr "$LR" --flip \
        --cache --workers 1 --seed "$seed" --teacher "$TEACHER" $(row_flags "$row") $resume $init --set mil_border="$MIL_BORDER" \
        --json "$W/runs/$name.json" > "$W/runs/$name.log" 2>&1 &
    done
    wait
    say "students of seed $seed trained"
  done
fi

if stage eval; then
  runs=(--run "teacher=$TEACHER")
  for seed in $SEEDS; do for row in $ROWS; do
    [ -f "$W/runs/$row-s$seed/last.pt" ] && runs+=(--run "$row-s$seed=$W/runs/$row-s$seed/last.pt")
  done; done
  $PY "$HERE/generalisation.py" --data "$W/shift" "${runs[@]}" --json "$W/results/students.json" \
    > "$W/results/students.log" 2>&1 || { echo "eval FAILED"; tail -3 "$W/results/students.log"; }
  say "scored"
fi
