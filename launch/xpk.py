#!/usr/bin/env python
"""Runs one gptjax command on every host of one or more TPU slices of a GKE cluster through xpk, as MaxText's users
launch: a workload on a cluster that already exists (`xpk cluster create`), not a slice made for the run.

  python launch/xpk.py --cluster=my-cluster --workload=gpt2-run --tpu_type=v5e-256 --num_slices=1 \\
      --zone=us-west4-a --project=my-proj -- \\
      gptjax train --config=experiments/pretrain/gpt2_124m.py --workdir=gs://BUCKET/gpt2_124m

xpk builds a container image from --base_docker_image (python:3.11-slim) with this repository as its script
directory (--script_dir, the repository root), pushes it, and runs one container per host of --num_slices slices of
--tpu_type. Each container installs gptjax with its `gcs` and `tpu` extras (the gs:// workdir, jax[tpu] at the
project's jax version) and runs the command with --distributed appended: jax.distributed.initialize() finds the
coordinator, the process count and each process's id from the environment GKE gives TPU pods, and with several
slices the mesh's data axis spans them (docs/plan.md). --docker_image=IMAGE runs a prebuilt image that already holds
gptjax (no install at start). The workdir must be a bucket (gs://). --wait blocks until the workload ends (xpk's
`workload list --wait-for-job-completion`) and exits with its status; the logs are in Cloud Logging (xpk prints the
link). Submitting the same command again after a preemption resumes from the latest checkpoint in the workdir
(delete the finished workload first, or give another --workload).

--dry_run prints the xpk commands (one per line, ready to paste) and runs none.
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpu_pod  # noqa: E402  (accelerator names, the extras every worker installs, the command's checks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE = "python:3.11-slim"  # a Python that gptjax supports (jax 0.10 needs 3.11)
LaunchError = tpu_pod.LaunchError


@dataclasses.dataclass
class Workload:
    cluster: str
    workload: str
    tpu_type: str
    num_slices: int = 1
    zone: str = ""
    project: str = ""
    base_docker_image: str = BASE_IMAGE
    script_dir: str = ROOT
    docker_image: str = ""  # a prebuilt image holding gptjax: no build, no install at start
    priority: str = ""  # xpk's --priority (very-low .. very-high); "": xpk's default

    def __post_init__(self):
        try:
            self.tpu_type = tpu_pod.accelerator_type(self.tpu_type)
        except LaunchError as e:  # the same names as tpu_pod's --accelerator, under this launcher's flag
            raise LaunchError(str(e).replace("--accelerator", "--tpu_type")) from None
        if not self.cluster:
            raise LaunchError("--cluster: give the GKE cluster the workload runs on (made by `xpk cluster create`)")
        # Kubernetes names: xpk turns the workload into a JobSet named after it.
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", self.workload or ""):
            raise LaunchError(f"--workload: {self.workload!r} must be 1-40 lowercase letters, digits and hyphens, "
                              "starting with a letter and not ending with a hyphen")
        if self.num_slices < 1:
            raise LaunchError(f"--num_slices: must be at least 1, got {self.num_slices}")

    def _xpk(self, *args: str) -> list[str]:
        return ["xpk", "workload", *args, f"--cluster={self.cluster}", *([f"--zone={self.zone}"] if self.zone else []),
                *([f"--project={self.project}"] if self.project else [])]

    def container_command(self, command: list[str]) -> str:
        """What each host's container runs: install gptjax (unless the image holds it), then the command joined to
        the other hosts by jax.distributed."""
        run = shlex.join([*command, "--distributed"])
        if self.docker_image:
            return run
        extras = ",".join(tpu_pod.WORKER_EXTRAS)
        return f"set -e; python3 -m pip install --quiet --no-cache-dir -e {shlex.quote(f'.[{extras}]')}; {run}"

    def create(self, command: list[str]) -> list[str]:
        image = ([f"--docker-image={self.docker_image}"] if self.docker_image else
                 [f"--base-docker-image={self.base_docker_image}", f"--script-dir={self.script_dir}"])
        return self._xpk("create", f"--workload={self.workload}", f"--tpu-type={self.tpu_type}",
                         f"--num-slices={self.num_slices}", *image,
                         *([f"--priority={self.priority}"] if self.priority else []),
                         f"--command={self.container_command(command)}")

    def wait(self) -> list[str]:
        return self._xpk("list", f"--wait-for-job-completion={self.workload}")

    def delete(self) -> list[str]:
        return self._xpk("delete", f"--workload={self.workload}")


def launch(w: Workload, command: list[str], dry_run: bool = False, wait: bool = False, out=print,
           runner=subprocess.run) -> int:
    """Submits the workload (and with `wait`, waits for it and returns its status); with dry_run, prints the
    commands instead."""
    tpu_pod.check_command(command)

    def do(cmd: list[str]):
        out(shlex.join(cmd))
        return None if dry_run else runner(cmd, check=False, text=True)

    hosts = tpu_pod.num_workers(w.tpu_type) * w.num_slices
    out(f"# create workload {w.workload} on {w.cluster}: {w.num_slices} x {w.tpu_type} ({hosts} hosts)")
    result = do(w.create(command))
    if result is not None and result.returncode != 0:
        return result.returncode
    if wait:
        out("# wait until it ends")
        result = do(w.wait())
        if result is not None and result.returncode != 0:
            return result.returncode
    out(f"# when it is done: {shlex.join(w.delete())}")
    return 0


def add_flags(parser: argparse.ArgumentParser, location: bool = True) -> None:
    """The workload's flags; sweep.py adds them too (the workload name there is a prefix: one per entry), with
    --zone and --project shared with the tpu launcher's (`location=False`)."""
    parser.add_argument("--cluster", default="", help="the GKE cluster (made by `xpk cluster create`)")
    parser.add_argument("--tpu_type", default="v5e-256", help="v4-N, v5e-N (= v5litepod-N), v5p-N or v6e-N")
    parser.add_argument("--num_slices", type=int, default=1, help="slices joined over the data-centre network")
    if location:
        parser.add_argument("--project", default="", help="GCP project ('': gcloud's default)")
        parser.add_argument("--zone", default="", help="the cluster's zone ('': xpk's default)")
    parser.add_argument("--base_docker_image", default=BASE_IMAGE, help="the image xpk builds on")
    parser.add_argument("--script_dir", default=ROOT, help="the folder xpk copies into the image (this repository)")
    parser.add_argument("--docker_image", default="", help="a prebuilt image that holds gptjax (no build, no install)")
    parser.add_argument("--priority", default="", help="xpk's workload priority ('': its default)")


def workload_from_flags(args, workload: str) -> Workload:
    return Workload(cluster=args.cluster, workload=workload, tpu_type=args.tpu_type, num_slices=args.num_slices,
                    zone=args.zone or "", project=args.project or "", base_docker_image=args.base_docker_image,
                    script_dir=args.script_dir, docker_image=args.docker_image, priority=args.priority)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = tpu_pod.split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, help="the workload's name (lowercase, digits, hyphens)")
    add_flags(parser)
    parser.add_argument("--wait", action="store_true", help="wait until the workload ends; exit with its status")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run none")
    args = parser.parse_args(ours)
    try:
        return launch(workload_from_flags(args, args.workload), command, dry_run=args.dry_run, wait=args.wait)
    except LaunchError as e:
        print(f"xpk: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
