"""Launch scripts: the commands their --dry_run prints (a v5e-256 TPU slice, a 4-node SLURM job, local processes),
and that without --dry_run they run exactly those commands, in order, against fake gcloud / sbatch executables
that record their arguments (so the slice is deleted even when the run fails)."""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import tpu_pod  # noqa: E402

TRAIN = ["gptjax", "train", "--config=experiments/pretrain/gpt2_124m.py", "--workdir=gs://bucket/gpt2",
         "--config.data.data_dir=gs://bucket/tfds"]
REPO = "https://github.com/example/gptjax.git"


def launch(script, *args, env=None, check=True):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def commands(stdout):
    """The printed commands, as argv lists (comment lines dropped)."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def flag(cmd, name):
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, cmd)
    return values[0]


def test_tpu_pod_dry_run_v5e_256_queued_spot():
    out = launch("tpu_pod.py", "--tpu=gpt2-run", "--zone=us-west4-a", "--accelerator=v5e-256", "--spot", "--queued",
                 f"--repo={REPO}", "--ref=v1.0", "--project=my-proj", "--dry_run", "--", *TRAIN).stdout
    cmds = commands(out)
    assert all(c[:3] == ["gcloud", "compute", "tpus"] for c in cmds)
    assert all(flag(c, "zone") == "us-west4-a" and flag(c, "project") == "my-proj" for c in cmds)
    create, describe, setup, run, *scps, delete = cmds
    assert create[3:6] == ["queued-resources", "create", "gpt2-run"] and "--spot" in create
    assert flag(create, "node-id") == "gpt2-run" and flag(create, "accelerator-type") == "v5litepod-256"
    assert flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
    assert describe[3:6] == ["queued-resources", "describe", "gpt2-run"]
    for ssh in (setup, run):
        assert ssh[3:6] == ["tpu-vm", "ssh", "gpt2-run"] and flag(ssh, "worker") == "all"
    assert flag(setup, "command") == tpu_pod.worker_setup_script(REPO, "v1.0")
    assert f"git clone --quiet {REPO} gptjax" in flag(setup, "command")
    assert "git checkout --quiet v1.0" in flag(setup, "command")
    assert "uv pip install --quiet --python $HOME/gptjax-venv/bin/python -e '.[gcs,tpu]'" in flag(setup, "command")
    remote = flag(run, "command")
    assert remote == tpu_pod.worker_run_script(TRAIN)
    assert f". $HOME/gptjax-venv/bin/activate && {shlex.join(TRAIN)} --distributed" in remote
    assert "tee $HOME/gptjax.log" in remote
    # v5e-256: 64 hosts of 4 chips, one log each
    assert len(scps) == 64
    assert [flag(c, "worker") for c in scps] == [str(i) for i in range(64)]
    assert [c[5:7] for c in scps] == [["gpt2-run:gptjax.log", f"logs/gpt2-run/worker_{i}.log"] for i in range(64)]
    assert delete[3:6] == ["queued-resources", "delete", "gpt2-run"] and "--force" in delete
    assert "# wait until the queued resource is ACTIVE" in out


def test_tpu_pod_dry_run_direct_create_and_keep():
    out = launch("tpu_pod.py", "--tpu=t", "--zone=us-central2-b", "--accelerator=v4-32", f"--repo={REPO}", "--keep",
                 "--dry_run", "--", *TRAIN).stdout
    cmds = commands(out)
    assert cmds[0][3:6] == ["tpu-vm", "create", "t"] and flag(cmds[0], "version") == "tpu-ubuntu2204-base"
    assert "--spot" not in cmds[0] and not any("queued-resources" in c for c in cmds)
    assert len([c for c in cmds if c[4] == "scp"]) == 4  # v4-32: 16 chips, 4 hosts
    assert not any(c[4] == "delete" for c in cmds)  # --keep
    assert "delete it with: gcloud compute tpus tpu-vm delete t --quiet" in out


def setup_py(*keys):
    """The values of setup()'s keyword arguments `keys` in setup.py, as written there."""
    import ast

    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    return [ast.literal_eval(kwargs[key]) for key in keys]


def test_tpu_workers_install_what_a_gs_workdir_and_the_tpu_need():
    from gptjax import files

    requires, extras, python = setup_py("install_requires", "extras_require", "python_requires")
    assert set(tpu_pod.WORKER_EXTRAS) == {"gcs", "tpu"} <= set(extras)
    # every package that gptjax asks for before it uses a gs:// workdir is in the gcs extra
    needed = {pkg for _, pkg in files.PACKAGES["gs"] + files.WORKDIR_PACKAGES["gs"]}
    assert needed == {"gcsfs", "google-cloud-storage"}
    assert {r.split(">")[0].split("<")[0].split("=")[0] for r in extras["gcs"]} == needed
    # jax[tpu] at the project's own jax range
    jax = next(r for r in requires if r.startswith("jax>"))
    assert extras["tpu"] == [jax.replace("jax", "jax[tpu]", 1)]
    setup = tpu_pod.worker_setup_script(REPO, "main")
    assert setup.endswith("-e '.[gcs,tpu]'")
    # the venv's Python is one gptjax installs on (the TPU images' own python3 is 3.10)
    assert tpu_pod.PYTHON == python and f"uv venv --quiet --python '{python}' $HOME/gptjax-venv" in setup


@pytest.mark.parametrize("accelerator,workers", [("v4-8", 1), ("v4-32", 4), ("v5p-128", 16), ("v5e-8", 1),
                                                 ("v5litepod-16", 4), ("v5e-256", 64), ("v6e-256", 64)])
def test_tpu_hosts_per_slice(accelerator, workers):
    assert tpu_pod.num_workers(accelerator) == workers


def test_tpu_pod_refuses_what_cannot_work():
    cases = [(["--accelerator=v5e-256", "--", "gptjax", "train", "--workdir=runs/local"], "needs a gs:// workdir"),
             (["--accelerator=tpu-9", "--", *TRAIN], "--accelerator: 'tpu-9' is not one of"),
             (["--accelerator=v4-8"], "give the gptjax command after `--`")]
    for args, message in cases:
        r = launch("tpu_pod.py", "--tpu=t", "--zone=z", f"--repo={REPO}", "--dry_run", *args, check=False)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = launch("tpu_pod.py", "--tpu=t", "--zone=z", "--accelerator=v4-8", "--dry_run", "--", *TRAIN, check=False)
    assert r.returncode == 2 and "--repo: give the git URL" in r.stderr


def fake_bin(tmp_path, name, body):
    """An executable `name` that appends its argv (one JSON list per line) to calls.jsonl, then runs `body`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / name
    exe.write_text(f"""#!{sys.executable}
import json, sys
with open({str(tmp_path / 'calls.jsonl')!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
{body}
""")
    exe.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def calls(tmp_path):
    import json

    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_tpu_pod_runs_the_printed_commands_and_deletes_after_a_failed_run(tmp_path, monkeypatch):
    # queued resource: WAITING twice, then ACTIVE; the run fails on the workers with status 3
    env = fake_bin(tmp_path, "gcloud", f"""
import pathlib
if "describe" in sys.argv:
    n = pathlib.Path({str(tmp_path / 'polls')!r})
    k = int(n.read_text()) if n.exists() else 0
    n.write_text(str(k + 1))
    print("ACTIVE" if k >= 2 else "WAITING_FOR_RESOURCES")
if any(a.startswith("--command=") and "gptjax train" in a for a in sys.argv):
    sys.exit(3)
""")
    args = ["--tpu=sweep-0", "--zone=us-west4-a", "--accelerator=v5e-16", "--queued", f"--repo={REPO}",
            f"--logs={tmp_path / 'logs'}"]
    dry = commands(launch("tpu_pod.py", *args, "--dry_run", "--", *TRAIN, env=env).stdout)
    assert not (tmp_path / "calls.jsonl").exists()  # a dry run runs nothing
    pod = tpu_pod.Pod(tpu="sweep-0", zone="us-west4-a", accelerator="v5e-16", queued=True, repo=REPO,
                      logs=str(tmp_path / "logs"))
    monkeypatch.setenv("PATH", env["PATH"])
    status = tpu_pod.launch(pod, TRAIN, poll_seconds=0.01, out=lambda line: None)
    assert status == 3
    ran = [["gcloud", *c] for c in calls(tmp_path)]
    describe = dry[1]
    assert ran.count(describe) == 3  # polled until ACTIVE
    assert [c for c in ran if c != describe] == [c for c in dry if c != describe]  # the rest, once each, in order
    assert ran[-1][3:6] == ["queued-resources", "delete", "sweep-0"]  # deleted although the run failed
    assert (tmp_path / "logs" / "sweep-0").is_dir()


def test_slurm_dry_run_4_nodes():
    out = launch("slurm.py", "--nodes=4", "--gpus_per_node=8", "--time=24:00:00", "--partition=gpu",
                 "--account=lm", "--job_name=gpt3-xl", "--dry_run", "--", "gptjax", "train",
                 "--config=experiments/pretrain/gpt3.py:size=gpt3-xl", "--workdir=/shared/runs/gpt3_xl").stdout
    lines = out.splitlines()
    assert lines[0] == "sbatch --parsable <<'EOF'" and lines[-1] == "EOF"
    script = lines[1:-1]
    assert script[0] == "#!/bin/bash"
    options = [line.split(" ", 1)[1] for line in script if line.startswith("#SBATCH ")]
    for option in ("--job-name=gpt3-xl", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                   "--signal=TERM@120", "--output=logs/%x-%j.out", "--time=24:00:00", "--partition=gpu",
                   "--account=lm", f"--chdir={ROOT}"):
        assert option in options, option
    assert shlex.split(script[-1]) == ["srun", "--kill-on-bad-exit=1", "gptjax", "train",
                                       "--config=experiments/pretrain/gpt3.py:size=gpt3-xl",
                                       "--workdir=/shared/runs/gpt3_xl", "--distributed"]


def test_slurm_submits_the_printed_script(tmp_path):
    env = fake_bin(tmp_path, "sbatch", f"""
pathlib = __import__("pathlib")
pathlib.Path({str(tmp_path / 'script.sh')!r}).write_text(sys.stdin.read())
print("4242;cluster")
""")
    args = ["--nodes=4", f"--logs={tmp_path / 'logs'}", "--", "gptjax", "train", "--workdir=/shared/x"]
    dry = launch("slurm.py", "--dry_run", *args, env=env).stdout
    assert not (tmp_path / "calls.jsonl").exists()
    r = launch("slurm.py", *args, env=env)
    assert calls(tmp_path) == [["--parsable"]]
    assert (tmp_path / "script.sh").read_text() == dry.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    assert f"job 4242; log: {tmp_path / 'logs'}/gptjax-4242.out" in r.stdout


def local_multiprocess(*args, cwd, env=None):
    return subprocess.run([str(ROOT / "launch" / "local_multiprocess.sh"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "GPTJAX_COORDINATOR_PORT": "23456", "XLA_FLAGS": "",
                                        **(env or {})})


def test_local_multiprocess_dry_run_prints_each_process(tmp_path):
    r = local_multiprocess("--dry_run", "2", "4", "gptjax", "train", "--workdir=runs/mp",
                           "--config.mesh.shape=(2,4,1)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "# logs: runs/mp/logs/process_<i>.log"  # the run's workdir, not the current directory
    assert lines[1] == "mkdir -p runs/mp/logs" and lines[-1] == "wait" and len(lines) == 5
    for i, line in enumerate(lines[2:4]):
        argv = shlex.split(line)
        assert argv[0] == "XLA_FLAGS= --xla_force_host_platform_device_count=4"
        assert argv[1:9] == ["gptjax", "train", "--workdir=runs/mp", "--config.mesh.shape=(2,4,1)",
                             "--coordinator_address=127.0.0.1:23456", "--num_processes=2", f"--process_id={i}",
                             ">"]
        assert argv[9:] == [f"runs/mp/logs/process_{i}.log", "2>&1", "&"]
    assert not os.listdir(tmp_path)  # a dry run writes nothing

    # a bucket workdir, or none: a new folder in $TMPDIR (named, not made); --logs: that folder
    for args, env, logs in [(["--workdir", "gs://b/run"], {"TMPDIR": str(tmp_path)}, f"{tmp_path}/gptjax-mp."),
                            (["--logs=my logs", "--workdir=runs/mp"], {}, "my logs")]:
        ours = [a for a in args if a.startswith("--logs")]
        r = local_multiprocess("--dry_run", *ours, "2", "1", "gptjax", "train",
                               *[a for a in args if a not in ours], cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        first, mkdir = r.stdout.splitlines()[:2]
        assert first.startswith(f"# logs: {logs}") and shlex.split(mkdir)[2].startswith(logs), r.stdout
        assert shlex.split(r.stdout.splitlines()[2])[-3].startswith(logs)
    assert not os.listdir(tmp_path)


PROCESS = """import sys
print("argv", sys.argv[1:])
sys.exit(3 if "--process_id=1" in sys.argv and "--fail" in sys.argv else 0)"""  # a process that the script starts


@pytest.mark.slow  # a subprocess (well under a second: the processes are two tiny Python programs)
def test_local_multiprocess_logs_go_to_the_workdir_not_the_current_directory(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = local_multiprocess("2", "1", sys.executable, "-c", PROCESS, f"--workdir={tmp_path / 'run'}", cwd=cwd)
    assert r.returncode == 0, r.stderr
    logs = tmp_path / "run" / "logs"
    assert r.stdout.splitlines()[0] == f"# logs: {logs}/process_<i>.log"
    assert sorted(os.listdir(logs)) == ["process_0.log", "process_1.log"]
    assert "--process_id=0" in (logs / "process_0.log").read_text()
    assert "--process_id=1" in (logs / "process_1.log").read_text()
    assert r.stdout.splitlines()[1:] == (logs / "process_0.log").read_text().splitlines()  # process 0's log at the end
    assert not os.listdir(cwd)

    r = local_multiprocess("2", "1", sys.executable, "-c", PROCESS, "--fail", cwd=cwd, env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 3
    (logs,) = tmp_path.glob("gptjax-mp.*")  # no workdir: a new folder under $TMPDIR, named on the first line
    assert r.stdout.splitlines()[0] == f"# logs: {logs}/process_<i>.log"
    assert f"# process 1 failed (exit 3): {logs}/process_1.log" in r.stderr
    assert not os.listdir(cwd)


@pytest.fixture
def no_cluster(monkeypatch):
    """jax.distributed.initialize() in this process as in a fresh `gptjax` process on a machine that is no cluster:
    no cluster variables, and jax's check that no backend is up yet passed (other tests have used jax here; what
    follows the check only reads the environment before it raises, and connects to nothing)."""
    from jax._src import xla_bridge

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST", "JAX_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)


def test_distributed_off_a_cluster_is_one_line(no_cluster, capsys, tmp_path):
    from helpers import one_line_error

    err = one_line_error(capsys, "--distributed: jax found no cluster to join here", "train", "--distributed",
                         f"--workdir={tmp_path / 'run'}")
    assert "--coordinator_address=HOST:PORT --num_processes=N --process_id=I instead of --distributed" in err
    assert "launch/local_multiprocess.sh" in err
    one_line_error(capsys, "--num_processes=2: every process also needs --coordinator_address and --process_id",
                   "train", "--num_processes=2", f"--workdir={tmp_path / 'run'}")
    one_line_error(capsys, "--num_processes=2: every process also needs --process_id", "sample",
                   "--num_processes=2", "--coordinator_address=127.0.0.1:1234", f"--workdir={tmp_path / 'run'}",
                   "--prompt=a")
    one_line_error(capsys, "--process_id=2: must be 0 to 1 with --num_processes=2", "train", "--num_processes=2",
                   "--process_id=2", "--coordinator_address=127.0.0.1:1234", f"--workdir={tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()


XPK = ["--cluster=my-cluster", "--tpu_type=v5e-256", "--num_slices=2", "--zone=us-west4-a", "--project=my-proj"]


def test_xpk_dry_run_creates_one_workload_that_installs_and_runs_on_every_host():
    out = launch("xpk.py", "--workload=gpt2-run", *XPK, "--dry_run", "--", *TRAIN).stdout
    (create,) = commands(out)
    assert create[:3] == ["xpk", "workload", "create"]
    assert flag(create, "workload") == "gpt2-run" and flag(create, "cluster") == "my-cluster"
    assert flag(create, "tpu-type") == "v5litepod-256" and flag(create, "num-slices") == "2"
    assert flag(create, "zone") == "us-west4-a" and flag(create, "project") == "my-proj"
    assert flag(create, "base-docker-image") == "python:3.11-slim" and flag(create, "script-dir") == str(ROOT)
    assert flag(create, "command") == (
        "set -e; python3 -m pip install --quiet --no-cache-dir -e '.[gcs,tpu]'; " + shlex.join([*TRAIN, "--distributed"]))
    assert "2 x v5litepod-256 (128 hosts)" in out
    assert "# when it is done: xpk workload delete --workload=gpt2-run --cluster=my-cluster" in out
    # A prebuilt image: no build, no install.
    (create,) = commands(launch("xpk.py", "--workload=gpt2-run", *XPK, "--docker_image=gcr.io/p/gptjax:1",
                                "--dry_run", "--", *TRAIN).stdout)
    assert flag(create, "docker-image") == "gcr.io/p/gptjax:1" and not any("script-dir" in a for a in create)
    assert flag(create, "command") == shlex.join([*TRAIN, "--distributed"])


@pytest.mark.parametrize("args, message", [
    (["--workload=Bad_Name", "--cluster=c"], "--workload: 'Bad_Name' must be"),
    (["--workload=w"], "--cluster: give the GKE cluster"),
    (["--workload=w", "--cluster=c", "--tpu_type=v9-8"], "--tpu_type: 'v9-8' is not one of"),
    (["--workload=w", "--cluster=c", "--num_slices=0"], "--num_slices: must be at least 1"),
])
def test_xpk_refuses_what_cannot_work(args, message):
    result = launch("xpk.py", *args, "--dry_run", "--", *TRAIN, check=False)
    assert result.returncode == 2 and result.stderr.startswith("xpk: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    local = launch("xpk.py", "--workload=w", "--cluster=c", "--", "gptjax", "train", "--workdir=runs/x", check=False)
    assert local.returncode == 2 and "a pod run needs a gs:// workdir" in local.stderr


def test_xpk_runs_the_printed_commands_and_waits_for_the_status(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "launch"))
    import xpk

    env = fake_bin(tmp_path, "xpk", 'sys.exit(4 if "--wait-for-job-completion=w1" in sys.argv else 0)')
    monkeypatch.setenv("PATH", env["PATH"])
    dry = commands(launch("xpk.py", "--workload=w1", *XPK, "--wait", "--dry_run", "--", *TRAIN, env=env).stdout)
    assert not (tmp_path / "calls.jsonl").exists()
    status = xpk.main(["--workload=w1", *XPK, "--wait", "--", *TRAIN])
    assert status == 4  # the workload's status, from xpk's wait
    assert [["xpk", *c] for c in calls(tmp_path)] == dry  # exactly the printed commands, in order
    assert [c[1] for c in calls(tmp_path)] == ["create", "list"]


def test_a_sweep_submits_one_xpk_workload_per_entry():
    cfg = "experiments/sweeps/gpt1_vs_gpt2_ablation.py"
    out = launch("sweep.py", f"--config={cfg}", "--workdir=gs://bucket/abl", "--launcher=xpk", "--cluster=c",
                 "--workload=abl", "--tpu_type=v5e-16", "--zone=z", "--dry_run").stdout
    creates = [c for c in commands(out) if c[:3] == ["xpk", "workload", "create"]]
    assert [flag(c, "workload") for c in creates] == [f"abl-{i}" for i in range(len(creates))] and len(creates) > 2
    assert all(flag(c, "tpu-type") == "v5litepod-16" and flag(c, "zone") == "z" for c in creates)
    assert "--workdir=gs://bucket/abl/base" in flag(creates[0], "command")
    local = launch("sweep.py", f"--config={cfg}", "--workdir=runs/abl", "--launcher=xpk", "--cluster=c",
                   "--workload=abl", check=False)
    assert local.returncode == 2 and "the xpk launcher needs a gs:// workdir" in local.stderr
