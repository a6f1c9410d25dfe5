"""Pod rehearsals: what launch/tpu_pod.py and launch/slurm.py have every host do, done on this machine by 2 local
processes joined by jax.distributed on 127.0.0.1, with the scripts taken from the launchers' own code.

TPU slice. Each of 2 workers is a folder standing in for its home directory (HOME points there; pip and uv keep
using this machine's caches, which is what keeps the rehearsal quick). The worker clones the repository from a
remote that holds one commit of the working tree as it is now (tracked files and untracked ones that git does not
ignore: a clone of HEAD would rehearse the last commit, not the code under test), made with a temporary index and
object folder, so that the checkout's refs, index and objects stay untouched. Then the worker runs
`tpu_pod.worker_setup_script()` unchanged except for one thing: the `tpu` extra (jax[tpu], whose libtpu cannot run
here) is left out, so plain jax at the same version range comes from gptjax's own requirements. That script makes
a fresh virtualenv (uv, from the `uv` that pip puts into the worker's ~/.local) that holds nothing but what the
script installs; the test checks that gcsfs and google-cloud-storage are in it. Then both workers run
`tpu_pod.worker_run_script(command)` at once, the command a `gptjax train --workdir=gs://...` of the default
config shrunk through --config overrides. The command ends in `--distributed`, as on the slice: jax finds its coordinator and process ids
in the environment, here SLURM's variables (the TPU metadata server cannot be stood in for), naming 127.0.0.1. The
gs:// bucket is the stand-in of tests/test_cloud.py, put into the workers' processes by a .pth file in their venv
(tests/fake_gcs_site.py); the training text is read from the bucket too.

SLURM. `slurm.Job.script()` runs under bash as sbatch would run it, with a stand-in `srun` on PATH that starts one
process per node on this machine with the variables SLURM gives each task; the workdir is a local folder, as the
shared filesystem. It runs in this test's own environment (SLURM jobs run in the submitter's environment; the
launcher installs nothing).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import slurm  # noqa: E402
import tpu_pod  # noqa: E402

# The default config (no --config), shrunk: a character model of 1 layer, 4 steps of 8 rows over both processes'
# devices, one evaluation, one checkpoint and a short sample at the end.
TINY = ["--config.data.source=text", "--config.data.tokenizer=char", "--config.data.seq_len=32",
        "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.dropout=0.0", "--config.train.steps=4", "--config.train.batch_size=8",
        "--config.train.log_every_steps=1", "--config.eval.every_steps=4", "--config.eval.steps=1",
        "--config.checkpoint.every_steps=4", "--config.sample.max_new_tokens=8", "--config.mesh.shape=(2,2,1)"]
WORKERS = 2
# conftest.FAST_COMPILE: XLA:CPU compiles about 4x cheaper; the rehearsals check the plumbing, not the speed
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
DEVICES_PER_PROCESS = 2  # 2 processes x 2 devices: the (2,2,1) mesh spans both processes


def git(*args, env=None):
    return subprocess.run(["git", *args], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def snapshot_remote(tmp_path) -> tuple[str, str]:
    """(url, branch) of a bare repository whose branch holds one commit of the working tree as it is now. The commit
    is built in a temporary index, its new objects written to a temporary folder (the checkout's objects are read
    through GIT_ALTERNATE_OBJECT_DIRECTORIES), and pushed from there: no ref, index or object of the checkout
    changes."""
    objects = tmp_path / "snapshot-objects"
    objects.mkdir()
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "snapshot-index"), "GIT_OBJECT_DIRECTORY": str(objects),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(ROOT / git("rev-parse", "--git-path", "objects")),
           "GIT_AUTHOR_NAME": "pod rehearsal", "GIT_AUTHOR_EMAIL": "rehearsal@localhost",
           "GIT_COMMITTER_NAME": "pod rehearsal", "GIT_COMMITTER_EMAIL": "rehearsal@localhost"}
    git("read-tree", "HEAD", env=env)
    git("add", "--all", env=env)
    tree = git("write-tree", env=env)
    commit = git("commit-tree", tree, "-p", "HEAD", "-m", "pod rehearsal: the working tree", env=env)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    git("push", "--quiet", str(remote), f"{commit}:refs/heads/rehearsal", env=env)
    return f"file://{remote}", "rehearsal"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(process_id: int, processes: int, port: int) -> dict:
    """What jax's cluster detection reads for one process of a job on this machine (its SLURM variables)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": str(processes),
            "SLURM_STEP_NUM_NODES": str(processes), "SLURM_PROCID": str(process_id), "SLURM_LOCALID": "0",
            "JAX_COORDINATOR_PORT": str(port)}


def base_env(**extra) -> dict:
    """This machine's environment without the test's own settings (conftest's XLA flags and platform, a venv)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")
           and not k.startswith("SLURM_")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS} {FAST_COMPILE}",
            **extra}


def run_together(scripts_and_envs, cwds, timeout=600):
    """Runs one bash script per process at once, each in its cwd; returns [(status, output)] (its stdout and stderr,
    through a file next to the cwd, so that no pipe fills up while another process is waited for)."""
    procs = []
    try:
        for (script, env), cwd in zip(scripts_and_envs, cwds):
            with open(f"{cwd}.out", "w") as out:
                procs.append(subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        deadline = time.time() + timeout
        statuses = [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(status, pathlib.Path(f"{cwd}.out").read_text()) for status, cwd in zip(statuses, cwds)]


def metrics(text):
    rows = [json.loads(line) for line in text.splitlines()]
    return ({r["step"]: r["train_loss"] for r in rows if "train_loss" in r},
            {r["step"]: r["val_loss"] for r in rows if "val_loss" in r})


@pytest.mark.slow  # 1.1-2.5 min on 2 busy cores with warm pip and uv caches (see docs/pods.md); needs PyPI
def test_tpu_pod_workers_set_up_and_train_on_a_bucket(tmp_path, corpus_file):
    url, ref = snapshot_remote(tmp_path)
    setup = tpu_pod.worker_setup_script(url, ref, extras=tuple(e for e in tpu_pod.WORKER_EXTRAS if e != "tpu"))
    assert setup == tpu_pod.worker_setup_script(url, ref).replace("'.[gcs,tpu]'", "'.[gcs]'")  # only the TPU wheel
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")  # this machine's pip and uv caches
    homes = [tmp_path / f"worker{i}" for i in range(WORKERS)]
    for home in homes:
        home.mkdir()

    t0 = time.time()
    results = run_together([(setup, base_env(HOME=str(home), XDG_CACHE_HOME=cache)) for home in homes], homes)
    setup_seconds = time.time() - t0
    for status, out in results:
        assert status == 0, out[-3000:]
    for home in homes:
        python = str(home / "gptjax-venv" / "bin" / "python")
        assert "include-system-site-packages = false" in (home / "gptjax-venv" / "pyvenv.cfg").read_text()
        check = subprocess.run([python, "-c", "import gcsfs, google.cloud.storage, importlib.util as u, sysconfig; "
                                "assert u.find_spec('jax') and u.find_spec('libtpu') is None; "
                                "print(u.find_spec('gptjax').origin); print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, env=base_env(HOME=str(home)))
        assert check.returncode == 0, check.stderr[-2000:]  # the gcs extra is installed, jax without libtpu
        module, site_packages = check.stdout.split()
        assert module.startswith(str(home / "gptjax")), module  # the worker's own clone, installed editable
        shutil.copy(ROOT / "tests" / "fake_gcs_site.py", site_packages)
        pathlib.Path(site_packages, "fake_gcs_site.pth").write_text("import fake_gcs_site\n")

    bucket = tmp_path / "bucket-store"
    (bucket / "rehearsal").mkdir(parents=True)
    shutil.copy(corpus_file, bucket / "rehearsal" / "plays.txt")
    command = ["gptjax", "train", "--workdir=gs://rehearsal/runs/tiny", "--config.data.path=gs://rehearsal/plays.txt",
               *TINY]
    tpu_pod.check_command(command)  # the launcher takes it
    run = tpu_pod.worker_run_script(command)
    port = free_port()
    t0 = time.time()
    results = run_together([(run, base_env(HOME=str(home), GPTJAX_FAKE_GCS_ROOT=str(bucket),
                                           **cluster_env(i, WORKERS, port))) for i, home in enumerate(homes)], homes)
    run_seconds = time.time() - t0
    for status, out in results:
        assert status == 0, out[-3000:]
    print(f"pod rehearsal: set-up of {WORKERS} workers {setup_seconds:.0f} s, run {run_seconds:.0f} s")

    log = (homes[0] / tpu_pod.REMOTE_LOG).read_text()  # each worker's log, as fetch_logs copies it
    assert log == results[0][1] and (homes[1] / tpu_pod.REMOTE_LOG).exists()
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in log, log[-3000:]  # 4 devices: both processes joined
    stored = bucket / "rehearsal" / "runs" / "tiny"
    for name in ("config.json", "tokenizer/tokenizer.json", "metrics.jsonl", "samples.txt", "checkpoints/4"):
        assert (stored / name).exists(), name
    train, val = metrics((stored / "metrics.jsonl").read_text())
    assert sorted(train) == [1, 2, 3, 4] and sorted(val) == [4]
    for home in homes:  # nothing landed in a local folder named "gs:" next to the clone
        assert not (home / "gptjax" / "gs:").exists()


FAKE_SRUN = f"""#!{sys.executable}
# srun on one machine: starts the command once per node of the job, each task with the variables SLURM gives it;
# --kill-on-bad-exit=1 ends the others when one fails. Exits with the first failure's status.
import os, subprocess, sys, time
args = sys.argv[1:]
kill_on_bad_exit = "--kill-on-bad-exit=1" in args
command = [a for a in args if not a.startswith("--kill-on-bad-exit")]
n = int(os.environ["SLURM_JOB_NUM_NODES"])
procs = [subprocess.Popen(command, env=dict(os.environ, SLURM_NTASKS=str(n), SLURM_STEP_NUM_NODES=str(n),
                                            SLURM_STEP_NODELIST="127.0.0.1", SLURM_PROCID=str(i), SLURM_LOCALID="0"))
         for i in range(n)]
while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode]
    if failed and kill_on_bad_exit:
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.2)
failed = [p.returncode for p in procs if p.returncode]
sys.exit(failed[0] if failed else 0)
"""


@pytest.mark.slow  # 35-60 s on 2 busy cores
def test_slurm_job_script_trains_with_local_processes(tmp_path, corpus_file):
    workdir = tmp_path / "shared" / "run"
    job = slurm.Job(nodes=WORKERS, logs=str(tmp_path / "logs"), chdir=str(ROOT))
    script = job.script(["gptjax", "train", f"--workdir={workdir}", f"--config.data.path={corpus_file}", *TINY])
    assert script.splitlines()[-1].startswith("srun --kill-on-bad-exit=1 gptjax train")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "srun").chmod(0o755)
    env = base_env(PATH=f"{bindir}:{os.environ['PATH']}", SLURM_JOB_ID="4243", SLURM_JOB_NUM_NODES=str(job.nodes),
                   JAX_COORDINATOR_PORT=str(free_port()))
    t0 = time.time()
    result = subprocess.run(["bash", "-c", script], cwd=job.chdir, env=env, capture_output=True, text=True,
                            timeout=300)
    print(f"slurm rehearsal: {time.time() - t0:.0f} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in result.stdout + result.stderr
    train, val = metrics((workdir / "metrics.jsonl").read_text())
    assert sorted(train) == [1, 2, 3, 4] and sorted(val) == [4]
    assert (workdir / "checkpoints" / "4").is_dir() and (workdir / "samples.txt").read_text().strip()
