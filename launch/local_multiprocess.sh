#!/usr/bin/env bash
# Runs one gptjax command as N processes on this machine, joined by jax.distributed over 127.0.0.1: the
# multi-host code path (per-host data slices, global arrays, collective checkpoints) without a cluster.
#
#   launch/local_multiprocess.sh [--dry_run] NUM_PROCESSES DEVICES_PER_PROCESS gptjax train --workdir=runs/mp [--config.* ...]
#
# Each process gets DEVICES_PER_PROCESS virtual CPU devices; logs go to WORKDIR-less files process_<i>.log in
# the current directory. Exits non-zero if any process fails. --dry_run prints each process's command and runs none.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry_run" ]; then dry_run=1; shift; fi
if [ $# -lt 3 ]; then
  sed -n '2,9p' "$0"; exit 2
fi
n=$1; devices=$2; shift 2
port=${GPTJAX_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
if [ "$dry_run" = 1 ]; then
  for ((i = 0; i < n; i++)); do
    printf 'XLA_FLAGS=%q ' "${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
    printf '%q ' "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i"
    printf '> process_%d.log 2>&1 &\n' "$i"
  done
  echo wait
  exit 0
fi
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" \
    >"process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat process_0.log
exit $status
