#!/bin/bash
# Start or continue an experiment arm in the background at low priority, from the frozen code clone.
#   ~/spar-experiments/run-arm.sh new  CONFIG RUN_ID [--fork RUN_DIR]   # a new run
#   ~/spar-experiments/run-arm.sh resume RUN_ID                          # continue after any stop
# Code: ~/spar-experiments/code, a clone of the project (`git clone <checkout> ~/spar-experiments/code` once;
# `git -C ... pull` between runs) so that a checkout laid anew never changes a running arm's code.
# Python: SPAR_PY, default /work/main/.venv/bin/python (the checkout's venv: `make install` there first).
set -euo pipefail
EXP=~/spar-experiments
PY=${SPAR_PY:-/work/main/.venv/bin/python}
export SPAR_CACHE_DIR=$EXP/cache HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
cd $EXP/code
mode=$1; shift
if [ "$mode" = new ]; then
  config=$1; run=$2; shift 2
  args=(run "$config" --runs-dir $EXP/runs --run-id "$run" --no-progress "$@")
else
  run=$1; shift
  args=(run --resume $EXP/runs/$run --no-progress "$@")
fi
mkdir -p $EXP/logs
nohup nice -n 19 "$PY" -m services.cli "${args[@]}" >> $EXP/logs/$run.log 2>&1 &
echo "started $run (pid $!), log $EXP/logs/$run.log"
