#!/bin/bash
# Ready ~/spar-experiments on this machine and start the queue of arms in the background, in one step:
#   examples/experiment/start.sh [QUEUE_FILE]    # default: the clone's examples/experiment/queue.txt,
#                                                # that is this checkout's once the clone is moved
# Run it from a checkout after `make install` (its .venv runs the arms). Safe to run again after a
# stop, in a new session or on a new machine:
#   - while a queue of this $EXP runs, it does nothing (bash reads a running script as it goes: its
#     queue.sh is never rewritten under it);
#   - $EXP (default ~/spar-experiments) gets runs/, logs/, notes/ where missing;
#   - $EXP/code, a clone of this checkout, is made where missing: the arms' code. Where it exists it
#     is moved to this checkout's commit, as no queue runs (and no arm: a running arm's code never
#     changes under it; to move it while a queue runs, between arms, use then-run.sh);
#   - queue.sh, run-arm.sh and then-run.sh are copied beside it from this checkout;
#   - runs packed into $STATE (default: examples/experiment/state/, by save-state.sh, committed) that $EXP/runs lacks are
#     unpacked: a new machine continues them, retraining their model versions bit for bit;
#   - the queue starts: each arm whose run directory exists is resumed, the others are created, so
#     after a machine that lost its runs the same command starts them all again.
# Where the arms stand: .venv/bin/spar status $EXP/runs/*    Stop: pkill -f "$EXP/queue.sh"; kill the arm.
set -euo pipefail
EXP=${EXP:-~/spar-experiments}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export SPAR_PY=${SPAR_PY:-$REPO/.venv/bin/python}
if [ ! -x "$SPAR_PY" ]; then
  echo "no Python with spar installed at $SPAR_PY: run \`make install\` in $REPO first (or set SPAR_PY)" >&2
  exit 2
fi
# a queue of this $EXP at work: a process whose command line holds "$EXP/queue.sh " (a literal match)
running=$(ps -eo pid=,args= | Q="$EXP/queue.sh" awk 'index($0 " ", ENVIRON["Q"] " ") { print; exit }')
if [ -n "$running" ]; then
  echo "a queue of $EXP is running already: $running"
  exit 0
fi
mkdir -p "$EXP/runs" "$EXP/logs" "$EXP/notes"
if [ ! -d "$EXP/code/.git" ]; then
  git clone -q "$REPO" "$EXP/code"
  echo "cloned $REPO into $EXP/code at $(git -C "$EXP/code" rev-parse --short HEAD)"
else
  # no queue runs: move the clone to this checkout's commit (its queue.txt and configs included),
  # unless an arm of this $EXP still runs outside a queue (its code stays as it started)
  arms=$(ps -eo args= | E="$EXP/runs" awk 'index($0, "services.cli run") && index($0, ENVIRON["E"]) { print; exit }')
  before=$(git -C "$EXP/code" rev-parse --short HEAD)
  if [ -n "$arms" ]; then
    echo "code clone left at $before: an arm runs from it ($arms)"
  elif git -C "$EXP/code" fetch -q "$REPO" HEAD && git -C "$EXP/code" checkout -q --detach FETCH_HEAD; then
    echo "code clone $before -> $(git -C "$EXP/code" rev-parse --short HEAD) (this checkout's commit)"
  else
    echo "code clone left at $before: could not check out $REPO's HEAD (local changes in $EXP/code?)" >&2
  fi
fi
# runs packed by save-state.sh on an earlier machine: laid out again where this machine lacks them
# (their model versions are retrained on --resume and checked against the packed digests)
STATE=${STATE:-$HERE/state}
for archive in "$STATE"/*.tar.gz; do
  [ -f "$archive" ] || continue
  run=$(basename "$archive" .tar.gz)
  if [ ! -d "$EXP/runs/$run" ]; then
    (cd "$REPO" && "$SPAR_PY" -m services.cli unpack "$archive" --runs-dir "$EXP/runs")
  fi
done
cp "$HERE/queue.sh" "$HERE/run-arm.sh" "$HERE/then-run.sh" "$EXP/"
chmod +x "$EXP/queue.sh" "$EXP/run-arm.sh" "$EXP/then-run.sh"
queue=${1:-$EXP/code/examples/experiment/queue.txt}
[ -f "$queue" ] || { echo "no queue file $queue" >&2; exit 2; }
queue=$(cd "$(dirname "$queue")" && pwd)/$(basename "$queue")
EXP=$EXP nohup setsid "$EXP/queue.sh" "$queue" >/dev/null 2>&1 &
echo "queue $queue started (pid $!); log $EXP/logs/queue.log"
echo "watch: $REPO/.venv/bin/spar status $EXP/runs/*"
