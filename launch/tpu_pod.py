#!/usr/bin/env python
"""Runs one gptjax command on every host of a Cloud TPU VM slice: create it, set up every worker, run the
command on all workers at once, fetch each worker's log, delete the slice.

  python launch/tpu_pod.py --tpu=gpt2-run --zone=us-west4-a --accelerator=v5e-256 --spot --queued \\
      --repo=https://github.com/YOU/gptjax.git -- \\
      gptjax train --config=experiments/pretrain/gpt2_124m.py --workdir=gs://BUCKET/gpt2_124m \\
      --config.data.data_dir=gs://BUCKET/tfds --config.data.tokenizer_path=/path/on/workers/gpt2

--dry_run prints every command (one per line, ready to paste) and runs none. --queued asks for the slice through
a queued resource (it waits in the queue until capacity frees up) and --spot makes it a spot slice (cheaper,
preemptible); without --queued the slice is created directly. The command runs with --distributed appended:
jax.distributed.initialize() finds the coordinator from the TPU metadata. The workdir must be a bucket (gs://),
which every host reads and writes. After the run (or a failure) each worker's log is copied to
--logs/<tpu>/worker_<i>.log, and the slice is deleted unless --keep. Rerunning the same command after a spot
preemption resumes from the latest checkpoint in the workdir.

Each worker gets a clone of --repo at --ref in ~/gptjax and a virtual environment ~/gptjax-venv made by uv with a
Python that gptjax supports (3.11 or 3.12: uv takes the image's own if it has one, else downloads one; the TPU
images' python3 is 3.10), holding gptjax with its `gcs` extra (gcsfs and google-cloud-storage, for the gs://
workdir) and its `tpu` extra (jax[tpu] at the project's jax version); the command runs in that environment.
worker_setup_script() and worker_run_script() give the two scripts (tests/test_pod_rehearsal.py runs them).
"""

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time

# Runtime images by generation (Cloud TPU docs: "TPU software versions").
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}
REMOTE_LOG = "gptjax.log"  # in each worker's home directory
VENV = "$HOME/gptjax-venv"  # each worker's Python environment for gptjax
# setup.py extras every worker installs: `gcs` for the gs:// workdir, `tpu` for jax[tpu] at the project's jax range
WORKER_EXTRAS = ("gcs", "tpu")
UV = "uv>=0.5,<1"  # makes the venv with a Python that gptjax supports, and installs into it
PYTHON = ">=3.11,<3.13"  # setup.py's python_requires (jax 0.10 needs 3.11)


class LaunchError(ValueError):
    """A launcher flag that cannot work; printed as one line."""


def accelerator_type(name: str) -> str:
    """gcloud's accelerator type: `v5e-256` (the marketing name) becomes `v5litepod-256`; others pass through."""
    m = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", name)
    if not m:
        raise LaunchError(f"--accelerator: {name!r} is not one of v4-N, v5e-N (v5litepod-N), v5p-N, v6e-N")
    gen = "v5litepod" if m.group(1) == "v5e" else m.group(1)
    return f"{gen}-{m.group(2)}"


def num_workers(accelerator: str) -> int:
    """TPU VM hosts in a slice. v4/v5p count TensorCores (2 per chip, 4 chips per host); v5e/v6e count chips,
    with 4 chips per host in multi-host slices and one host for slices of up to 8 chips."""
    gen, n = accelerator_type(accelerator).rsplit("-", 1)
    n = int(n)
    if gen in ("v4", "v5p"):
        return max(1, n // 8)
    return 1 if n <= 8 else n // 4


@dataclasses.dataclass
class Pod:
    tpu: str
    zone: str
    accelerator: str
    project: str = ""
    runtime_version: str = ""  # "": by generation (RUNTIME_VERSIONS)
    spot: bool = False
    queued: bool = False
    repo: str = ""
    ref: str = "main"
    logs: str = "logs"

    def __post_init__(self):
        self.accelerator = accelerator_type(self.accelerator)
        self.runtime_version = self.runtime_version or RUNTIME_VERSIONS[self.accelerator.rsplit("-", 1)[0]]
        if not self.repo:
            raise LaunchError("--repo: give the git URL that every TPU worker clones gptjax from")

    @property
    def workers(self) -> int:
        return num_workers(self.accelerator)

    def _gcloud(self, *args: str) -> list[str]:
        return ["gcloud", "compute", "tpus", *args, f"--zone={self.zone}",
                *([f"--project={self.project}"] if self.project else [])]

    def create(self) -> list[str]:
        if self.queued:
            return self._gcloud("queued-resources", "create", self.tpu, f"--node-id={self.tpu}",
                                f"--accelerator-type={self.accelerator}", f"--runtime-version={self.runtime_version}",
                                *(["--spot"] if self.spot else []))
        return self._gcloud("tpu-vm", "create", self.tpu, f"--accelerator-type={self.accelerator}",
                            f"--version={self.runtime_version}", *(["--spot"] if self.spot else []))

    def state(self) -> list[str]:
        """Prints the queued resource's state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED, ...)."""
        return self._gcloud("queued-resources", "describe", self.tpu, "--format=value(state.state)")

    def _ssh_all(self, script: str) -> list[str]:
        return self._gcloud("tpu-vm", "ssh", self.tpu, "--worker=all", f"--command={script}")

    def setup(self) -> list[str]:
        return self._ssh_all(worker_setup_script(self.repo, self.ref))

    def run(self, command: list[str]) -> list[str]:
        return self._ssh_all(worker_run_script(command))

    def fetch_logs(self) -> list[list[str]]:
        return [self._gcloud("tpu-vm", "scp", f"{self.tpu}:{REMOTE_LOG}", f"{self.logs}/{self.tpu}/worker_{i}.log",
                             f"--worker={i}") for i in range(self.workers)]

    def delete(self) -> list[str]:
        if self.queued:  # --force deletes the slice together with its queued resource
            return self._gcloud("queued-resources", "delete", self.tpu, "--force", "--quiet")
        return self._gcloud("tpu-vm", "delete", self.tpu, "--quiet")


def worker_setup_script(repo: str, ref: str, extras: tuple[str, ...] = WORKER_EXTRAS) -> str:
    """The shell script that sets up one worker, run in its home directory: clone (or update) gptjax at `ref`, make
    the venv once (uv, itself installed with the image's pip into ~/.local; PIP_BREAK_SYSTEM_PACKAGES lets that
    --user install through on images whose Python is marked externally managed), install gptjax with `extras`."""
    return (f"set -e; if [ ! -d gptjax ]; then git clone --quiet {shlex.quote(repo)} gptjax; fi; "
            f"cd gptjax; git fetch --quiet origin; git checkout --quiet {shlex.quote(ref)}; "
            f"if [ ! -x {VENV}/bin/python ]; then PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user "
            f"{shlex.quote(UV)}; "
            f"$HOME/.local/bin/uv venv --quiet --python {shlex.quote(PYTHON)} {VENV}; fi; "
            f"$HOME/.local/bin/uv pip install --quiet --python {VENV}/bin/python -e "
            + shlex.quote(f".[{','.join(extras)}]"))


def worker_run_script(command: list[str]) -> str:
    """The shell script that runs `command` on one worker, in the venv, joined to the others by jax.distributed
    (`--distributed`: the coordinator and process ids come from the TPU metadata), its output also in ~/REMOTE_LOG."""
    return (f"set -o pipefail; cd gptjax && . {VENV}/bin/activate && {shlex.join([*command, '--distributed'])} "
            f"2>&1 | tee $HOME/{REMOTE_LOG}")


def check_command(command: list[str]) -> None:
    if not command:
        raise LaunchError("give the gptjax command after `--`")
    workdirs = [a.split("=", 1)[1] for a in command if a.startswith("--workdir=")]
    if not workdirs or not workdirs[-1].startswith("gs://"):
        raise LaunchError("--workdir: a pod run needs a gs:// workdir that every host can write "
                          f"(got {workdirs[-1] if workdirs else 'none'})")


def launch(pod: Pod, command: list[str], dry_run: bool = False, keep: bool = False, poll_seconds: float = 30,
           out=print, runner=subprocess.run, timings: dict | None = None) -> int:
    """Creates the slice, sets it up, runs `command` on every worker, fetches logs and deletes the slice (unless
    `keep`); with dry_run, prints those commands instead. Returns the run's exit status; `timings` gets
    "run_seconds", the time the command ran on the slice."""
    check_command(command)

    def do(cmd: list[str], check: bool = True, capture: bool = False):
        out(shlex.join(cmd))
        if dry_run:
            return None
        return runner(cmd, check=check, text=True, capture_output=capture)

    out(f"# create {pod.accelerator} ({pod.workers} workers) {'via a queued resource' if pod.queued else ''}"
        f"{' (spot)' if pod.spot else ''}".rstrip())
    do(pod.create())
    status = 1
    try:
        if pod.queued:
            out(f"# wait until the queued resource is ACTIVE (polled every {poll_seconds:g} s)")
            while not dry_run:
                state = do(pod.state(), capture=True).stdout.strip()
                if state == "ACTIVE":
                    break
                if state in ("FAILED", "SUSPENDED"):
                    raise LaunchError(f"queued resource {pod.tpu} is {state}")
                time.sleep(poll_seconds)
            if dry_run:
                do(pod.state())
        out("# set up every worker")
        do(pod.setup())
        out("# run on every worker")
        t0 = time.time()
        result = do(pod.run(command), check=False)
        status = 0 if dry_run else result.returncode
        if timings is not None and not dry_run:
            timings["run_seconds"] = time.time() - t0
    finally:
        out(f"# fetch each worker's log into {pod.logs}/{pod.tpu}/")
        if not dry_run:
            os.makedirs(f"{pod.logs}/{pod.tpu}", exist_ok=True)
        for cmd in pod.fetch_logs():
            do(cmd, check=False)
        if keep:
            out(f"# --keep: the slice stays up; delete it with: {shlex.join(pod.delete())}")
        else:
            out("# delete the slice")
            do(pod.delete(), check=False)
    return status


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The slice's flags; sweep.py adds them too (the TPU name there is a prefix: one slice per entry)."""
    parser.add_argument("--zone", help="e.g. us-west4-a (v5e), us-central2-b (v4)")
    parser.add_argument("--accelerator", default="v5e-256", help="v4-N, v5e-N (= v5litepod-N), v5p-N or v6e-N")
    parser.add_argument("--project", default="", help="GCP project ('': gcloud's default)")
    parser.add_argument("--runtime_version", default="", help="TPU VM image ('': the default for the generation)")
    parser.add_argument("--spot", action="store_true", help="a spot (preemptible) slice")
    parser.add_argument("--queued", action="store_true", help="request the slice through a queued resource")
    parser.add_argument("--repo", default="", help="git URL that the workers clone")
    parser.add_argument("--ref", default="main", help="git branch, tag or commit to check out")
    parser.add_argument("--keep", action="store_true", help="do not delete the slice at the end")


def pod_from_flags(args, tpu: str, logs: str = "logs") -> Pod:
    if not args.zone:
        raise LaunchError("--zone: give the zone of the TPU slice")
    return Pod(tpu=tpu, zone=args.zone, accelerator=args.accelerator, project=args.project,
               runtime_version=args.runtime_version, spot=args.spot, queued=args.queued, repo=args.repo, ref=args.ref,
               logs=logs)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the launcher's own flags, the gptjax command after `--`); the other launchers split theirs the same way."""
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tpu", required=True, help="name of the TPU slice (and of its queued resource)")
    add_flags(parser)
    parser.add_argument("--logs", default="logs", help="local folder for the workers' logs")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run none")
    args = parser.parse_args(ours)
    try:
        return launch(pod_from_flags(args, args.tpu, args.logs), command, dry_run=args.dry_run, keep=args.keep)
    except LaunchError as e:
        print(f"tpu_pod: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
