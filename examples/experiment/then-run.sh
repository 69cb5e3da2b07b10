#!/bin/bash
# Wait for a running arm to end, move the code clone to a commit, then run a queue:
#   ~/spar-experiments/then-run.sh PID COMMIT QUEUE_FILE
# PID: the running arm's `services.cli run` process; COMMIT: a commit of /work/main's main branch
# (`main` for its tip), checked out in the clone once the arm ends (the arm keeps the code it
# started with); logs to logs/queue.log.
set -uo pipefail
EXP=${EXP:-~/spar-experiments}
pid=$1; commit=$2; queue=$3
log=$EXP/logs/queue.log
while kill -0 "$pid" 2>/dev/null; do sleep 30; done
echo "$(date -Is) arm $pid ended; clone -> $commit" >> $log
[ "$commit" = main ] && commit=FETCH_HEAD
git -C $EXP/code fetch -q /work/main main && git -C $EXP/code checkout -q "$commit" || {
  echo "$(date -Is) could not check out $commit; queue not started" >> $log; exit 1; }
exec $EXP/queue.sh "$queue"
