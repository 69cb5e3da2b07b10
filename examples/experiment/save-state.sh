#!/bin/bash
# Pack every experiment run without its model weights into this checkout's examples/experiment/state/,
# so that a machine that replaces this one continues the arms (start.sh unpacks them):
#   examples/experiment/save-state.sh            # then commit examples/experiment/state/ ($STATE)
# Why: the runs live outside the checkout ($EXP, default ~/spar-experiments), and the machine that
# holds them has been replaced between working periods more than once; each time a 3-hour arm started
# over. A packed run is a few MB (samples, judgments, pairs, evaluations, records); its trained versions
# are retrained on `spar run --resume` and published only if bit-identical to the ones packed
# (docs/operations.md, "Moving a run"). Runs are packed while they work: a shard that completes
# meanwhile is simply done again after unpacking.
set -euo pipefail
EXP=${EXP:-~/spar-experiments}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${SPAR_PY:-$REPO/.venv/bin/python}
STATE=${STATE:-$HERE/state}
mkdir -p "$STATE"
for run in "$EXP"/runs/*/; do
  run=${run%/}
  [ -f "$run/config.json" ] || continue
  (cd "$REPO" && "$PY" -m services.cli pack "$run" --out "$STATE/$(basename "$run").tar.gz")
done
du -ch "$STATE"/*.tar.gz 2>/dev/null | tail -1
