# Sourced by scripts/eval-facts-gpu.sh and scripts/eval-benchmarks-gpu.sh, which start their
# evaluation processes as `timeout ... &` in the background: the deadline of
# $LIFT_EVAL_WALL_S seconds (0 or unset: none), after which no process starts and those
# running are stopped, so the reports are merged before a device call's own limit ends the
# script, and the wait for a free slot among $parallel processes.

# deadline_start WORK_DIR: starts the watchdog; `watchdogs` is the number of background jobs
# it adds (0 or 1), which the slot count leaves out.
deadline_start() {
  deadline_stop_file=$1/stop
  watchdogs=0
  local wall_s=${LIFT_EVAL_WALL_S:-0}
  if ((wall_s > 0)); then
    # `timeout` passes the TERM on to its process.
    (sleep "$wall_s"; touch "$deadline_stop_file"; pkill -TERM -P $$ -x timeout || true) >/dev/null 2>&1 &
    deadline_watchdog=$!
    watchdogs=1
  fi
}

deadline_passed() {
  [[ -e $deadline_stop_file ]]
}

# Returns once fewer than $parallel evaluation processes run.
wait_for_slot() {
  while (($(jobs -rp | wc -l) >= parallel + watchdogs)); do
    wait -n || true
  done
}

# Stops the watchdog, once every process ended.
deadline_end() {
  if ((watchdogs == 1)); then
    pkill -P "$deadline_watchdog" || true
    kill "$deadline_watchdog" 2>/dev/null || true
  fi
}
