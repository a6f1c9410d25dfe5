#!/usr/bin/env python
"""Submits one gptjax command as a SLURM job: one process per node, joined by jax.distributed.

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --time=24:00:00 --partition=gpu -- \\
      gptjax train --config=experiments/pretrain/gpt3.py:size=gpt3-xl --workdir=/shared/runs/gpt3_xl

The batch script (printed with --dry_run, together with the sbatch command, and nothing submitted) runs
`srun <command> --distributed` on every node; jax.distributed.initialize() reads the coordinator, the process
count and this process's id from the SLURM environment. SLURM sends SIGTERM two minutes before the time limit:
gptjax saves a checkpoint and exits, and submitting the same command again resumes. The job's log is
--logs/<job name>-<job id>.out on the shared filesystem. --wait blocks until the job ends and exits with its
status.
The workdir must be on a filesystem every node sees.
"""

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys


class LaunchError(ValueError):
    """A launcher flag that cannot work; printed as one line."""


@dataclasses.dataclass
class Job:
    nodes: int
    gpus_per_node: int = 8
    job_name: str = "gptjax"
    time: str = ""  # "": the partition's default limit
    partition: str = ""
    account: str = ""
    logs: str = "logs"
    chdir: str = ""  # where the job runs ("": the directory sbatch is called from)

    def __post_init__(self):
        if self.nodes < 1:
            raise LaunchError(f"--nodes: must be at least 1, got {self.nodes}")

    def script(self, command: list[str]) -> str:
        """The batch script: #SBATCH options, then one srun that starts the command on every node."""
        if not command:
            raise LaunchError("give the gptjax command after `--`")
        options = [f"--job-name={self.job_name}", f"--nodes={self.nodes}", "--ntasks-per-node=1",
                   f"--gpus-per-node={self.gpus_per_node}", "--signal=TERM@120",
                   f"--output={self.logs}/%x-%j.out"]
        options += [f"--{k}={v}" for k, v in (("time", self.time), ("partition", self.partition),
                                             ("account", self.account), ("chdir", self.chdir)) if v]
        lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "set -euo pipefail",
                 f"srun --kill-on-bad-exit=1 {shlex.join([*command, '--distributed'])}"]
        return "\n".join(lines) + "\n"

    def sbatch(self, wait: bool = False) -> list[str]:
        """The submit command; the script goes on its standard input. --parsable prints just the job id."""
        return ["sbatch", "--parsable", *(["--wait"] if wait else [])]


def submit(job: Job, command: list[str], dry_run: bool = False, wait: bool = False, out=print,
           runner=subprocess.run) -> tuple[str, int]:
    """Submits the job (or prints what it would submit); returns its id ('' in a dry run) and sbatch's status
    (with wait, the job's)."""
    script = job.script(command)
    out(f"{shlex.join(job.sbatch(wait))} <<'EOF'\n{script}EOF")
    if dry_run:
        return "", 0
    os.makedirs(job.logs, exist_ok=True)
    result = runner(job.sbatch(wait), input=script, text=True, capture_output=True, check=False)
    job_id = result.stdout.strip().split(";")[0]
    if not wait and (result.returncode or not job_id):
        raise LaunchError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    if wait and result.returncode:
        out(f"# job {job_id} ended with status {result.returncode}; log: {job.logs}/{job.job_name}-{job_id}.out")
    return job_id, result.returncode


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The job's flags; sweep.py adds them too."""
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--time", default="", help="time limit, e.g. 24:00:00 ('': the partition's default)")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")


def job_from_flags(args, job_name: str = "gptjax", logs: str = "logs") -> Job:
    return Job(nodes=args.nodes, gpus_per_node=args.gpus_per_node, job_name=job_name, time=args.time,
               partition=args.partition, account=args.account, logs=logs, chdir=os.getcwd())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser)
    parser.add_argument("--job_name", default="gptjax")
    parser.add_argument("--logs", default="logs", help="folder for the job's log (shared filesystem)")
    parser.add_argument("--wait", action="store_true", help="block until the job ends; exit with its status")
    parser.add_argument("--dry_run", action="store_true", help="print the sbatch command and script, submit nothing")
    args = parser.parse_args(ours)
    try:
        job_id, status = submit(job_from_flags(args, args.job_name, args.logs), command, dry_run=args.dry_run,
                                wait=args.wait)
    except LaunchError as e:
        print(f"slurm: error: {e}", file=sys.stderr)
        return 2
    if job_id:
        print(f"job {job_id}; log: {args.logs}/{args.job_name}-{job_id}.out")
    return status


if __name__ == "__main__":
    sys.exit(main())
