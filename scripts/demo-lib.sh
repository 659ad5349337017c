# Shared by the demo scripts (sourced, not run): the child processes they start, stopped in
# reverse order on exit, Ctrl-C or TERM, and a bounded wait for a child's ready line.
# shellcheck shell=bash

me=${0##*/}
pids=()
# shellcheck disable=SC2317  # invoked from traps
cleanup() {
  trap - EXIT INT TERM
  # Stop in reverse order of start (clients before the nodes they use).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

# wait_line FILE REGEX PID SECONDS WHAT: bounded wait for a line in FILE, while PID is alive; on
# failure prints the last lines of FILE's .log sibling.
wait_line() {
  local file=$1 re=$2 pid=$3 secs=$4 what=$5 n=$(($4 * 10))
  for _ in $(seq "$n"); do
    if grep -Eq "$re" "$file"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$me: $what exited before it was ready; last log lines:" >&2
      tail -n 20 "${file%.out}.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "$me: $what not ready after ${secs}s; last log lines:" >&2
  tail -n 20 "${file%.out}.log" >&2 || true
  return 1
}
