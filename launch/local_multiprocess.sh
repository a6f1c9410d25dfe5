#!/usr/bin/env bash
# Runs one gptjax command as N processes on this machine, joined by jax.distributed over 127.0.0.1: the
# multi-host code path (per-host data slices, global arrays, collective checkpoints) without a cluster.
#
#   launch/local_multiprocess.sh [--dry_run] [--logs=DIR] NUM_PROCESSES DEVICES_PER_PROCESS \
#       gptjax train --workdir=runs/mp [--config.* ...]
#
# Each process gets DEVICES_PER_PROCESS virtual CPU devices. Process i logs to DIR/process_<i>.log: --logs, else
# WORKDIR/logs for a local --workdir, else a new folder under ${TMPDIR:-/tmp}; the first line printed names it.
# At the end process 0's log is printed. Exits non-zero if any process fails. --dry_run prints each process's
# command and runs none.
set -euo pipefail
dry_run=0
logs=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) dry_run=1; shift ;;
    --logs=*) logs=${1#--logs=}; shift ;;
    *) break ;;
  esac
done
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
n=$1; devices=$2; shift 2
if [ -z "$logs" ]; then
  workdir=
  prev=
  for arg in "$@"; do  # the last --workdir=DIR or --workdir DIR, as absl reads it
    case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
    if [ "$prev" = --workdir ]; then workdir=$arg; fi
    prev=$arg
  done
  if [ -n "$workdir" ] && [[ "$workdir" != *://* ]]; then
    logs=$workdir/logs
  else  # a bucket, or no workdir: a new folder (a dry run only names one)
    logs=$(mktemp -d $([ "$dry_run" = 1 ] && echo -u) "${TMPDIR:-/tmp}/gptjax-mp.XXXXXX")
  fi
fi
port=${GPTJAX_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
echo "# logs: $logs/process_<i>.log"
if [ "$dry_run" = 1 ]; then
  printf 'mkdir -p %q\n' "$logs"
  for ((i = 0; i < n; i++)); do
    printf 'XLA_FLAGS=%q ' "${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
    printf '%q ' "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i"
    printf '> %q 2>&1 &\n' "$logs/process_$i.log"
  done
  echo wait
  exit 0
fi
mkdir -p "$logs"
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" \
    >"$logs/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=$?; echo "# process $i failed (exit $status): $logs/process_$i.log" >&2; }
done
cat "$logs/process_0.log"
exit $status
