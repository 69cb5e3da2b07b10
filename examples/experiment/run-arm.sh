#!/bin/bash
# Start or continue an experiment arm in the background at low priority, from the frozen code clone.
#   ~/spar-experiments/run-arm.sh new  CONFIG RUN_ID [--fork RUN_DIR]   # a new run
#   ~/spar-experiments/run-arm.sh resume RUN_ID                          # continue after any stop
# Code: ~/spar-experiments/code, a clone of the project (`git clone <checkout> ~/spar-experiments/code` once;
# `git -C ... pull` between runs) so that a checkout laid anew never changes a running arm's code.
# Python: SPAR_PY, default /work/main/.venv/bin/python (the checkout's venv: `make install` there first).
set -euo pipefail
EXP=${EXP:-~/spar-experiments}
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
nohup setsid nice -n 19 "$PY" -m services.cli "${args[@]}" >> $EXP/logs/$run.log 2>&1 &
pid=$!
# Kernel autogroups: each session is a scheduling group, at nice 0 when it starts, and a process's nice
# ranks it only inside its group. The arm runs in a session of its own (setsid), so every session
# leader in the arm's tree has its group put at nice 19 here, and nothing else is touched.
( while kill -0 $pid 2>/dev/null; do
    for p in $(pstree -p $pid | grep -o '([0-9]*)' | tr -d '()'); do
      [ "$(ps -o sid= -p $p 2>/dev/null | tr -d ' ')" = "$p" ] && echo 19 > /proc/$p/autogroup 2>/dev/null
    done
    sleep 20
  done ) >/dev/null 2>&1 &
echo "started $run (pid $pid), log $EXP/logs/$run.log"
# WAIT=1: stay until the arm ends and exit with its status (queue.sh runs arms one after another)
if [ "${WAIT:-0}" = 1 ]; then wait $pid; fi
