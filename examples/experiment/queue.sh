#!/bin/bash
# Run experiment arms one after another, each to its end, in the background at low priority:
#   ~/spar-experiments/queue.sh QUEUE_FILE          # e.g. ~/spar-experiments/queue.txt
# QUEUE_FILE: one arm per line, `RUN_ID CONFIG [spar run args...]`, CONFIG relative to the code clone;
# `--fork RUN_ID` names a run under ~/spar-experiments/runs. Lines starting with # are skipped.
# A line `HOLD REASON...` ends the queue there (logged as held, exit 0): the lines after it wait for
# a decision (an arm's recipe, say) and run once the HOLD line is removed and the queue started again.
# A run whose directory exists is resumed (a finished one returns at once); a new one is created.
# A run unpacked from an archive of a finished run (save-state.sh, start.sh) is skipped: its results
# are all there, and resuming it would retrain its versions only to publish weights nothing reads
# (`spar run --resume` on it still does, when asked).
# The queue stops at the first arm that fails or is killed, and logs to logs/queue.log; start it
# again to go on. Stop everything: pkill -f 'spar-experiments/queue.sh'; then kill the arm.
# Where the arms stand: .venv/bin/spar status ~/spar-experiments/runs/*
set -uo pipefail
EXP=${EXP:-~/spar-experiments}
HERE=$(cd "$(dirname "$0")" && pwd)   # run-arm.sh beside this script
PY=${SPAR_PY:-/work/main/.venv/bin/python}   # as run-arm.sh
queue=$1
mkdir -p $EXP/logs
log=$EXP/logs/queue.log
while read -r run config rest <&3; do
  [ -z "${run:-}" ] || [ "${run:0:1}" = "#" ] && continue
  if [ "$run" = HOLD ]; then
    echo "$(date -Is) queue held: $config $rest" >> $log
    exit 0
  fi
  args=()
  set -- $rest
  while [ $# -gt 0 ]; do
    if [ "$1" = --fork ]; then args+=(--fork "$EXP/runs/$2"); shift 2; else args+=("$1"); shift; fi
  done
  if [ -d "$EXP/runs/$run" ] && (cd "$EXP/code" && "$PY" -c \
      'import sys; from shared.runtime.packing import finished_when_packed as f; sys.exit(0 if f(sys.argv[1]) else 1)' \
      "$EXP/runs/$run") 2>/dev/null; then
    echo "$(date -Is) skip $run: finished when packed (only its weights are missing)" >> $log
    continue
  elif [ -d "$EXP/runs/$run" ]; then
    echo "$(date -Is) resume $run" >> $log
    WAIT=1 $HERE/run-arm.sh resume "$run" < /dev/null; rc=$?
  else
    echo "$(date -Is) new $run $config ${args[*]}" >> $log
    WAIT=1 $HERE/run-arm.sh new "$config" "$run" "${args[@]}" < /dev/null; rc=$?
  fi
  echo "$(date -Is) end $run rc=$rc" >> $log
  [ $rc -eq 0 ] || { echo "$(date -Is) queue stopped at $run" >> $log; exit $rc; }
done 3< "$queue"
echo "$(date -Is) queue done" >> $log
