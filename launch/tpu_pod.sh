#!/usr/bin/env bash
# Runs gptjax on every host of a Cloud TPU VM pod slice: installs the repo, then starts the same command on all
# workers at once; jax.distributed.initialize() (--distributed) finds the coordinator from the TPU metadata.
#
#   launch/tpu_pod.sh TPU_NAME ZONE gptjax train --config=experiments/pretrain/gpt2_124m.py:size=gpt2-small \
#       --workdir=gs://BUCKET/runs/gpt2_124m --config.data.data_dir=gs://BUCKET/tfds
#
# The workdir must be a bucket (or a filesystem every host sees): orbax writes each host's shards there.
# Re-running the same command after a preemption resumes from the latest complete checkpoint.
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,10p' "$0"; exit 2; fi
tpu=$1; zone=$2; shift 2
repo=${GPTJAX_REPO:?set GPTJAX_REPO to the git URL of your gptjax repository}
ref=${GPTJAX_REF:-main}
cmd=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  if [ ! -d gptjax ]; then git clone --quiet $repo gptjax; fi
  cd gptjax && git fetch --quiet origin && git checkout --quiet $ref
  python3 -m pip install --quiet -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  $cmd --distributed
"
