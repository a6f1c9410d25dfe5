"""Workdirs: the checks and the lock a run takes on its workdir before any work; using a finished workdir (load its
config, tokenizer and params to sample from it); creating one from a Hugging Face GPT-2 checkpoint."""

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import checkpoint, configs, decoding, files, sampling, sharding, tokenizer
from gptjax.errors import ConfigError, GptjaxError
from gptjax.metrics import log
from gptjax.model import GPT, ModelConfig


LOCK_FILE = ".gptjax.lock"
_LOCKS: dict = {}  # realpath of a workdir -> the open lock file this process holds on it


class WorkdirBusy(GptjaxError):
    """Another live process is training in the workdir."""


def check_writable(workdir: str, key: str = "--workdir") -> None:
    """One WriteError line, before any long work, when `workdir` cannot be a run's directory: a file is in its way,
    it cannot be created, or a file cannot be written in it (read-only, no permission, no space). A local workdir
    that does not exist yet is not made here: the folder it would be made in is probed. Every process of a run
    checks: each writes its own shards of the checkpoints."""
    p = files.path(workdir)
    name = f"{key}={workdir}"
    with files.writing(name, "the workdir"):
        if files.is_local(p) and not p.exists():  # not made here (bad input found later leaves no workdir): the
            # folder it would be made in must take a file, and no file may be in the way on the path to it
            p = next(a for a in p.parents if a.exists())
            if not p.is_dir():
                raise OSError(errno.EEXIST, f"a file is in the way: {p}")
        elif files.is_local(p) and not p.is_dir():
            raise OSError(errno.EEXIST, "a file is in the way")
        else:
            p.mkdir(parents=True, exist_ok=True)
        probe = p / f".gptjax-probe-{socket.gethostname()}-{os.getpid()}-{jax.process_index()}"
        try:
            if files.is_local(p):
                with open(probe, "wb") as f:  # a few bytes, to disk: a full disk refuses them
                    f.write(b"gptjax")
                    f.flush()
                    os.fsync(f.fileno())
            else:
                probe.write_bytes(b"gptjax")
        except PermissionError as err:  # a bucket's refusal (HTTP 403) has no errno
            raise OSError(err.errno or errno.EACCES, str(err)) from err
        finally:
            try:
                probe.unlink()
            except (OSError, FileNotFoundError):
                pass


def lock(workdir: str, only_if_exists: bool = False) -> None:
    """Takes the workdir's lock for this process, so that a second `gptjax train` on the same workdir (the same
    command started twice) refuses in one line naming the holder instead of writing checkpoints between the first
    one's. An exclusive flock on `<workdir>/.gptjax.lock`, which the kernel releases when the holder dies however
    it dies (no stale lock after SIGKILL). Taken once per run: by process 0 of a multi-process run (whose
    processes share the workdir) and again by nobody in this process (it is reentrant). A gs:// workdir has no
    lock: an object store has no lock that outlives a killed holder without a lease, and none is kept there (two
    runs on one bucket workdir are not stopped). A filesystem without flock (some network filesystems) has none
    either. With `only_if_exists`, a workdir not there yet is left uncreated and unlocked (a run about to check its
    config takes the lock later). Only process 0 looks at the workdir, and every process joins the broadcast of
    its finding: processes that each asked the filesystem could disagree (process 0 may create the workdir while
    another asks) and then wait in different collectives for ever."""
    p = files.path(workdir)
    busy = None
    if jax.process_index() == 0 and files.is_local(p) and (not only_if_exists or p.exists()):
        key = os.path.realpath(os.fspath(p))
        if key not in _LOCKS:
            busy = _take_lock(workdir, key)
    if jax.process_count() > 1:  # the other processes of a second run stop with process 0
        import numpy as np
        from jax.experimental import multihost_utils

        if not multihost_utils.broadcast_one_to_all(np.array(busy is None)):
            busy = busy or WorkdirBusy(f"--workdir={workdir} is in use by another gptjax run (process 0 of this "
                                       "run found it locked)")
    if busy is not None:
        raise busy


def _take_lock(workdir: str, key: str) -> WorkdirBusy | None:
    path = os.path.join(key, LOCK_FILE)
    with files.writing(f"--workdir={workdir}", "the workdir's lock file"):
        os.makedirs(key, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        return WorkdirBusy(f"--workdir={workdir} is in use by another gptjax run{holder}; wait for it to end or "
                           "stop it (it resumes later), or use another --workdir")
    except OSError as err:  # no flock here (ENOLCK, EOPNOTSUPP): the run goes on without a lock
        os.close(fd)
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # who holds it is only told to a second run; the lock itself is taken
    _LOCKS[key] = fd
    return None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def unlock(workdir: str | None = None) -> None:
    """Releases this process's lock on `workdir` (all of them when None); the end of the process does it too."""
    keys = list(_LOCKS) if workdir is None else [os.path.realpath(os.fspath(files.path(workdir)))]
    for key in keys:
        fd = _LOCKS.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the lock file releases the flock


def model_dir(workdir: str) -> str:
    """Where the plain GPT of `workdir` is: `<workdir>/model` when the run wrote one there (runs whose params carry
    more than the GPT: a reward model's or PPO's head, a fine-tuned run's adapters), else the workdir itself."""
    files.check_url(workdir)
    out = str(files.path(workdir) / "model")
    return out if (files.path(out) / checkpoint.CONFIG_FILE).exists() else workdir


def adopt_init_from(config, workdir: str) -> None:
    """A run that starts from `train.init_from` takes that workdir's model shape and tokenizer, which its params
    fit: copies them into the config (but the tunable fields, dropout, dtype, remat, implementations) and its
    tokenizer into `workdir`. Refused in one line: init_from that is (or holds) this workdir, that is no gptjax
    workdir, or whose tokenizer differs from the one this workdir already has. Either may be a gs:// URL."""
    source = config.train.init_from
    files.check_url(source, "train.init_from")
    src, here = str(files.path(source)).rstrip("/"), str(files.path(workdir)).rstrip("/")
    if here == src or here.startswith(src + "/"):
        raise ConfigError(f"train.init_from: {source} is (or holds) this run's workdir; start the run in a new "
                          "--workdir, the run it starts from is never written to")
    saved = checkpoint.read_config(source)  # "not a gptjax workdir" when it has no config.json
    theirs, ours = _tokenizer_fingerprint(source), _tokenizer_fingerprint(workdir)
    if ours is not None and ours != theirs:
        raise checkpoint.CheckpointError(f"train.init_from: {source} has another tokenizer than {workdir}/tokenizer; "
                                         "start the run in a new --workdir")
    with config.unlocked():
        for key, value in saved["model"].items():
            if key not in checkpoint.TUNABLE_MODEL_KEYS and key in config.model:
                config.model[key] = value
        config.data.tokenizer = saved["data"]["tokenizer"]
        config.data.tokenizer_path = saved["data"]["tokenizer_path"]
        config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    configs.validate(config)
    src_tok, dst_tok = files.path(source) / "tokenizer", files.path(workdir) / "tokenizer"
    if src_tok.is_dir() and not dst_tok.exists() and jax.process_index() == 0:
        files.copytree(src_tok, dst_tok)


def _tokenizer_fingerprint(workdir: str):
    d = files.path(workdir) / "tokenizer"
    if not (d / "tokenizer.json").is_file():
        return None
    return tokenizer.load_tokenizer(workdir).fingerprint or sorted(p.name for p in d.iterdir())


def export_model(config, workdir: str, gpt_params, step: int, what: str = "the plain GPT") -> str:
    """The GPT of a run whose params carry more than the GPT (a head, adapters) as a plain gptjax workdir at
    `<workdir>/model`: config, tokenizer and a params-only checkpoint, which `gptjax sample`, `eval`, `inspect` and
    `train.init_from` read when given `<workdir>` (`model_dir`). A rerun of a finished run finds its export there at
    the same step and leaves it (the same params)."""
    out = str(files.path(workdir) / "model")
    if (files.path(out) / checkpoint.CONFIG_FILE).exists() and checkpoint.latest_step(out) == step:
        return out
    checkpoint.write_config(out, config)
    src, dst = files.path(workdir) / "tokenizer", files.path(out) / "tokenizer"
    if jax.process_index() == 0 and not dst.exists():
        files.copytree(src, dst)
    checkpoint.save_params(out, gpt_params, step)
    log(f"wrote {what} to {out}")
    return out


def load_config(workdir: str):
    """(config, model_cfg, tokenizer) of `workdir` (of its plain GPT, see `model_dir`): cheap, no params."""
    workdir = model_dir(workdir)
    config = ml_collections.ConfigDict(checkpoint.read_config(workdir))
    return config, ModelConfig.from_config(config.model), tokenizer.load_tokenizer(workdir)


def load(workdir: str, mesh=None):
    """(config, model_cfg, params, tokenizer) of the latest checkpoint in `workdir`, params sharded on `mesh` (by
    default all devices on the data axis, which replicates them) with the run's logical-axis rules."""
    config, model_cfg, tok = load_config(workdir)
    return config, model_cfg, load_params(model_dir(workdir), config, model_cfg, mesh), tok


def load_params(workdir: str, config, model_cfg: ModelConfig, mesh=None):
    mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
    model = GPT(model_cfg)
    abstract, _ = sharding.abstract_state(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"], mesh,
        config.mesh.logical_axis_rules)
    return checkpoint.load_params(workdir, abstract)


def run_mesh(config):
    """The run's own mesh (`mesh.shape`) over this process's devices, so a model trained sharded is sampled
    sharded; when that shape cannot cover these devices, FSDP over all of them (parameters still split)."""
    try:
        return sharding.make_mesh(config.mesh.shape)
    except ConfigError:
        return sharding.make_mesh((1, -1, 1))


def sample_from_workdir(workdir: str, prompt: str, *, stream: bool = True, truncate: str = "error", mesh=None,
                        **options) -> list[str]:
    """Prints and returns the continuations of `prompt`: the first one streamed as it is generated (sampling), the
    rest when done. `options` are `sampling.generate`'s (max_new_tokens, temperature, beam_size, stop_strings...).
    Parameters are loaded sharded on `mesh` (default: `run_mesh`, the run's mesh) and stay sharded."""
    config, model_cfg, tok = load_config(workdir)
    sampling.check_options(**{k: v for k, v in options.items() if k in ("temperature", "top_k", "top_p", "beam_size",
                                                                         "num_samples")})
    max_new = options.get("max_new_tokens", 100)
    beam = options.get("beam_size", 1) > 1
    prompt_ids = decoding.fit_prompts([tok.encode(prompt)], max_new, model_cfg.max_len, truncate, slide=not beam)[0]
    shown = tok.decode(prompt_ids)  # the prompt as the model sees it (its end, if truncated)
    mesh = mesh if mesh is not None else run_mesh(config)
    params = load_params(model_dir(workdir), config, model_cfg, mesh)
    live = stream and not beam
    if live:
        print(shown, end="", flush=True)
    completions = sampling.generate(
        model_cfg, params, [prompt_ids], tokenizer=tok, eos_id=tok.eos_id, mesh=mesh,
        rules=config.mesh.logical_axis_rules,
        on_text=(lambda row, text: row == 0 and print(text, end="", flush=True)) if live else None, **options
    )
    texts = [shown + c.text for c in completions]
    for i, text in enumerate(texts):
        print("\n-----" if live and i == 0 else f"{text}\n-----", flush=True)
    return texts


def import_hf(hf_dir: str, workdir: str) -> None:
    """Writes a gptjax workdir (config.json, tokenizer, params checkpoint) from a transformers GPT-2 directory."""
    from gptjax.convert import hf

    files.check_url(workdir)
    if (files.path(workdir) / checkpoint.CONFIG_FILE).exists():
        raise checkpoint.CheckpointError(f"--workdir={workdir} already holds a run; choose a new directory")
    check_writable(workdir)
    overrides, params = hf.load_hf_gpt2(hf_dir)
    config = configs.get_config()
    config.model.update(overrides)
    config.data.tokenizer = "hf"
    config.data.tokenizer_path = os.path.abspath(hf_dir)
    config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    config = configs.finalize(config, shrink=False)  # the weights are given: a smoke run imports them whole
    tokenizer.build_tokenizer(config.data, workdir, lambda: [])
    model_cfg = ModelConfig.from_config(config.model)
    if model_cfg.scan_layers:
        params = hf.stack_layers(params, model_cfg.num_layers)
    checkpoint.write_config(workdir, config)
    checkpoint.save_params(workdir, params)
    print(f"imported {hf_dir} into {workdir} ({dataclasses.asdict(model_cfg)['num_layers']} layers)")
