#!/bin/bash
# Pack the experiment runs the queue still needs, without their model weights, into this checkout's
# examples/experiment/state/, so that a machine that replaces this one continues the arms (start.sh
# unpacks them):
#   examples/experiment/save-state.sh            # then commit examples/experiment/state/ ($STATE)
# Why: the runs live outside the checkout ($EXP, default ~/spar-experiments), and the machine that
# holds them has been replaced between working periods more than once; each time a 3-hour arm started
# over. A packed run is a few MB (samples, judgments, pairs, evaluations, records); its trained versions
# are retrained on `spar run --resume` and published only if bit-identical to the ones packed
# (docs/operations.md, "Moving a run"). Runs are packed while they work: a shard that completes
# meanwhile is simply done again after unpacking.
# What the queue needs ($QUEUE, default the queue.txt beside this script): every run of a line that is
# not commented out (those after a HOLD line included: they run once it is lifted), and the run a
# line forks while that line's run is not created yet. A finished arm
# whose line is commented out is not packed, and its archive is removed: unpacked, its resume would
# retrain every version for nothing.
set -euo pipefail
EXP=${EXP:-~/spar-experiments}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${SPAR_PY:-$REPO/.venv/bin/python}
STATE=${STATE:-$HERE/state}
QUEUE=${QUEUE:-$HERE/queue.txt}
[ -f "$QUEUE" ] || { echo "no queue file $QUEUE (set QUEUE)" >&2; exit 2; }
needed=" "
while read -r run config rest; do
  [ -z "${run:-}" ] || [ "${run:0:1}" = "#" ] || [ "$run" = HOLD ] && continue
  needed+="$run "
  if [ ! -d "$EXP/runs/$run" ]; then   # not created yet: the run it forks must travel too
    set -- $rest
    while [ $# -gt 0 ]; do
      if [ "$1" = --fork ] && [ $# -ge 2 ]; then needed+="$2 "; shift 2; else shift; fi
    done
  fi
done < "$QUEUE"
mkdir -p "$STATE"
for run in "$EXP"/runs/*/; do
  run=${run%/}
  [ -f "$run/config.json" ] || continue
  name=$(basename "$run")
  if [[ "$needed" != *" $name "* ]]; then
    echo "not packed: $name (no line of $QUEUE needs it)"
    continue
  fi
  (cd "$REPO" && "$PY" -m services.cli pack "$run" --out "$STATE/$name.tar.gz")
done
for archive in "$STATE"/*.tar.gz; do
  [ -f "$archive" ] || continue
  name=$(basename "$archive" .tar.gz)
  if [[ "$needed" != *" $name "* ]]; then
    rm -f "$archive"
    echo "removed $archive (no line of $QUEUE needs it)"
  fi
done
du -ch "$STATE"/*.tar.gz 2>/dev/null | tail -1 || true
