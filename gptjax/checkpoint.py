"""Checkpoints with orbax: one step directory holds `params`, `train` (step, optimizer state, RNG) and `data`
(the data position, JSON). Resume order: latest complete step in the workdir, else `train.init_from` params,
else scratch. A directory left half-written by a killed process (`N.orbax-checkpoint-tmp`) is never a
complete step, so it is skipped (and a writer's manager removes it).

Faults: a save the filesystem refuses (no space, read-only, no permission), in orbax's writer threads or in this
one, is one `files.WriteError` line naming the checkpoint (`saving`); orbax's own per-thread error logs are
silenced, since the error reaches the caller anyway. A complete step that cannot be read (truncated or missing
files, unreadable metadata) is a `CorruptCheckpoint` naming its step, told apart from a checkpoint of another model
("does not match the config"). `restore_latest` and `load_params` then take the newest step that reads, saying so
in one line, or refuse (`on_corrupt="refuse"`); a training run renames the corrupt step aside as
`<step>.corrupt`, which orbax never lists again, while readers (sampling, init_from) leave the workdir as it is.
"""

import contextlib
import errno
import json
import logging
import re
import sys

import jax
import orbax.checkpoint as ocp

from gptjax import files
from gptjax.errors import CheckpointError  # noqa: F401  (part of this module's API)

CONFIG_FILE = "config.json"
# Keys that must agree between a workdir's saved config and the config that resumes or samples from it, and the
# model fields that may change between runs on the same params (resuming, or fine-tuning from `train.init_from`).
_IDENTITY_KEYS = ("model", "data.tokenizer", "data.seq_len")
TUNABLE_MODEL_KEYS = ("dropout", "dtype", "remat", "attention_impl", "norm_impl", "loss_impl", "embed_impl", "loss_chunks")


ON_CORRUPT = ("fallback", "refuse")  # checkpoint.on_corrupt, and the readers' --on_corrupt
CORRUPT_SUFFIX = ".corrupt"  # a corrupt step set aside: <step>.corrupt, a name orbax never lists as a step


class CorruptCheckpoint(CheckpointError):
    """A complete checkpoint step that cannot be read (truncated or missing files, unreadable metadata); `step`
    names it and `reason` says what could not be read."""

    def __init__(self, message: str, step: int, reason: str = ""):
        super().__init__(message)
        self.step, self.reason = step, reason


class _QuietOrbaxErrors(logging.Filter):
    """Drops orbax's ERROR logs of a refused write (a traceback from each writer thread that met it, more as the
    error travels to the main thread): the same exception reaches the caller of save, wait_until_finished or close,
    which turns it into one line. orbax's other errors are logged as orbax logs them."""

    def filter(self, record):
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        err = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001  (a record that cannot be formatted is left to the handler)
            return True
        return write_refusal(err if err is not None else ValueError(text), "") is None


def _quiet_orbax_errors() -> None:
    log = logging.getLogger("absl")  # orbax logs through absl.logging, whose records this logger emits
    if not any(isinstance(f, _QuietOrbaxErrors) for f in log.filters):
        log.addFilter(_QuietOrbaxErrors())


def manager(workdir: str, ckpt_cfg=None, read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's checkpoint manager; `read_only` for readers (sampling), which never create the directory.
    A writer's manager removes what killed or failed saves left half-written (`N.orbax-checkpoint-tmp`)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.keep if ckpt_cfg is not None else None,
        enable_async_checkpointing=bool(ckpt_cfg.async_save) if ckpt_cfg is not None else False,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    if not read_only:
        _quiet_orbax_errors()
    _quiet_closed_loop()
    return ocp.CheckpointManager(files.path(workdir) / "checkpoints", options=options)


# TensorStore reports a refused write as a status with the OS error code: "RESOURCE_EXHAUSTED: Failed writing:
# ...: No space left on device [os_error_code='28']"; a bucket that refuses says PERMISSION_DENIED (HTTP 403).
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_STATUS_ERRNO = {"PERMISSION_DENIED": errno.EACCES}


def _chain(err: BaseException) -> list:
    out = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def write_refusal(err: BaseException, p, what: str = "a checkpoint") -> "files.WriteError | None":
    """The one-line WriteError for `err` (or any exception it was raised from) when it is the filesystem or bucket
    refusing a write while writing `p`: an OSError with a refusal errno, or TensorStore's status carrying one; None
    for anything else (a bug, a network fault), which keeps its traceback."""
    for x in _chain(err):
        if isinstance(x, files.WriteError):
            return x
        if isinstance(x, OSError) and (refused := files.write_error(x, p, what)) is not None:
            return refused
        text = str(x)
        code = _OS_ERROR_CODE.search(text)
        code = int(code.group(1)) if code else next((e for s, e in _STATUS_ERRNO.items() if text.startswith(s)),
                                                   None)
        if code is not None and (refused := files.write_error(OSError(code, text), p, what)) is not None:
            return refused
    return None


@contextlib.contextmanager
def saving(p, what: str = "a checkpoint"):
    """Turns a refused write inside the block (orbax's save, wait_until_finished or close, which raise what its
    writer threads met) into one WriteError line naming `p`; anything else passes as it is."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  (re-raised unless it is a refusal)
        refused = write_refusal(err, p, what)
        if refused is None:
            raise
        raise refused from None


def save(mngr: ocp.CheckpointManager, step: int, params, train_state, data_state: dict, force: bool = False) -> bool:
    return mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train_state),
            data=ocp.args.JsonSave(data_state),
        ),
        force=force,
    )


def finish(mngr: ocp.CheckpointManager, p) -> None:
    """Waits for the manager's pending save and closes it, always (its threads end here, not at interpreter exit);
    a refused write is one WriteError line naming `p`."""
    try:
        with saving(p):
            mngr.wait_until_finished()
    finally:
        with saving(p):
            mngr.close()  # a save's error is raised once: close does not raise it again


def save_params(workdir: str, params, step: int = 0) -> None:
    """A params-only checkpoint (what `gptjax import-hf` writes): enough to sample or to `init_from`."""
    where = files.path(workdir) / "checkpoints" / str(step)
    with saving(where):
        mngr = manager(workdir)
    try:
        with saving(where):
            mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    finally:
        finish(mngr, where)


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    return text.splitlines()[0][:300] if text else type(err).__name__


# What a complete step that cannot be read raises: TensorStore reading stored bytes that are cut short, missing or
# garbled (OUT_OF_RANGE, DATA_LOSS, NOT_FOUND, FAILED_PRECONDITION ... "Error reading/decoding"), metadata files
# that are not JSON, an item directory that is gone. A checkpoint of another model raises none of these: orbax
# compares the stored shapes and tree with the requested ones first ("does not match the config").
_CORRUPT_STATUS = re.compile(r"\b(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|FAILED_PRECONDITION|INVALID_ARGUMENT)\b.*"
                             r"(Error reading|Error decoding|Invalid JSON)", re.S)
_MISSING_ITEM = re.compile(r'Item "(\w+)" was not found in the checkpoint')


def _items_written(step_dir) -> set | None:
    """The items a step's own metadata says were saved in it, None when that metadata cannot be read."""
    try:
        return set(json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())["item_handlers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _corrupt(directory, step: int, reason: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"checkpoint {step} under {directory} is corrupt ({reason})", step, reason)


def _reason(err: BaseException) -> str:
    """What could not be read, in a few words: TensorStore's status and the array or file it was reading."""
    text = _describe(err)
    if isinstance(err, json.JSONDecodeError):
        return f"unreadable metadata: {err.msg}"
    if isinstance(err, FileNotFoundError):
        return f"missing file {err.filename or text}"
    status = _CORRUPT_STATUS.search(str(err))
    name = re.search(r'Error (?:reading|decoding|opening) (?:local file )?"([^"]+)"', str(err))
    if status and name:
        what = name.group(1)
        what = what.rstrip("/").rsplit("/", 1)[-1] if what.startswith("/") or "://" in what else what
        return f"{status.group(1)} reading {what}"
    return text[:160]


def _restore_error(mngr, step: int, err: BaseException) -> CheckpointError | None:
    """What a failed restore of `step` means for the user: a CorruptCheckpoint, a checkpoint that does not match
    the config, a checkpoint that cannot be read for lack of permission; None for anything else (a bug, a network
    fault), which keeps its traceback."""
    where = mngr.directory / str(step)
    for x in _chain(err):
        missing = _MISSING_ITEM.search(str(x)) if isinstance(x, KeyError) else None
        if missing:
            written = _items_written(where)
            if written is not None and missing.group(1) not in written:
                return CheckpointError(f"checkpoint {where} does not match the config (it holds only "
                                       f"{', '.join(sorted(written))}, not {missing.group(1)}: a params-only "
                                       "checkpoint starts a run through train.init_from)")
            return _corrupt(mngr.directory, step, f"its {missing.group(1)} item is missing")
        if isinstance(x, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError, EOFError)) or (
                isinstance(x, ValueError) and _CORRUPT_STATUS.search(str(x))):
            return _corrupt(mngr.directory, step, _reason(x))
        if isinstance(x, PermissionError) or str(x).startswith("PERMISSION_DENIED"):
            return CheckpointError(f"checkpoint {where}: cannot read it: permission denied")
    if isinstance(err, (ValueError, KeyError, TypeError)):
        return CheckpointError(f"checkpoint {where} does not match the config ({_describe(err)})")
    return None


# What orbax's background writes raise when they outlive the failed save that stopped the run: the event loop
# orbax closed, or the interpreter's executors shut down at exit (a write still queued then).
_AFTER_THE_END = ("Event loop is closed", "cannot schedule new futures after interpreter shutdown")


def _closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) in _AFTER_THE_END


def _quiet_closed_loop() -> None:
    """After a failed save or restore, TensorStore still completes the writes and reads orbax started and hands
    their results to the event loop orbax already closed: Python prints "Event loop is closed" tracebacks (through
    sys.excepthook from TensorStore's threads, or as unraisable) and asyncio logs "Task exception was never
    retrieved" for the writes that met the refusal, or that were still queued when the interpreter shut its
    executors down ("cannot schedule new futures after interpreter shutdown"), at moments of their own, even at exit. They say nothing the
    one line does not, so they are dropped; every other exception and log record passes as before."""
    if getattr(sys.excepthook, "gptjax_quiet", False):
        return
    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, tb):
        if not _closed_loop(value):
            previous_except(kind, value, tb)

    def unraisablehook(unraisable):
        if not _closed_loop(unraisable.exc_value):
            previous_unraisable(unraisable)

    excepthook.gptjax_quiet = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    logging.getLogger("asyncio").addFilter(_QuietAsyncioRefusals())


class _QuietAsyncioRefusals(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a write the filesystem refused (orbax's writes that
    met it after the first one was reported) or for the closed loop."""

    def filter(self, record):  # asyncio's default exception handler logs the exception as exc_info
        err = record.exc_info[1] if record.exc_info else None
        return err is None or not (_closed_loop(err) or write_refusal(err, "") is not None)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_train=None):
    """Restores `params` (and `train` and `data` when `abstract_train` is given) onto the shardings in the
    abstract trees, whatever mesh the checkpoint was written from. A step that cannot be read is a
    CorruptCheckpoint naming it; one written by another model, a CheckpointError saying it does not match."""
    args = {"params": ocp.args.StandardRestore(abstract_params)}
    if abstract_train is not None:
        args.update(train=ocp.args.StandardRestore(abstract_train), data=ocp.args.JsonRestore())
    try:
        out = mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as err:  # noqa: BLE001  (re-raised unless it means something to the user)
        _quiet_closed_loop()
        problem = _restore_error(mngr, step, err)
        if problem is None:
            raise
        raise problem from None
    if abstract_train is None:
        return out.params, None, None
    return out.params, out.train, out.data


def warn(message: str) -> None:
    """A line on stderr (process 0), where a sample's text on stdout never gets it."""
    if jax.process_index() == 0:
        print(f"gptjax: {message}", file=sys.stderr, flush=True)


def set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    """Renames step `step` to `<step>.corrupt` (`.corrupt.2`, ... if taken), which orbax never lists as a step, so
    the next run does not meet it again; returns the new name ("" when the rename was refused)."""
    src = mngr.directory / str(step)
    name, n = f"{step}{CORRUPT_SUFFIX}", 1
    while (mngr.directory / name).exists():
        n += 1
        name = f"{step}{CORRUPT_SUFFIX}.{n}"
    if jax.process_index() == 0:
        try:
            src.rename(mngr.directory / name)
        except OSError:
            return ""
    mngr.reload()
    return name


# The readers' on_corrupt when none is given, and what a refusal tells the user to set instead: the flag of
# `gptjax sample|eval|inspect --on_corrupt`, or checkpoint.on_corrupt for a run's train.init_from.
_POLICY = [("fallback", "--on_corrupt")]


@contextlib.contextmanager
def corrupt_policy(on_corrupt: str, setting: str = "--on_corrupt"):
    """Within the block, readers that are not told otherwise (load_params: sampling, eval, inspect, init_from)
    `fallback` to the newest step that reads or `refuse` a corrupt newest step (`setting`: the flag or config
    key that chose it, named in a refusal)."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt: {on_corrupt!r} is not one of {', '.join(ON_CORRUPT)}")
    _POLICY.append((on_corrupt, setting))
    try:
        yield
    finally:
        _POLICY.pop()


def _corrupt_line(directory, found: list, step: int | None, renamed: list) -> str:
    """One line for the corrupt steps `found` (newest first) skipped on the way to `step`."""
    many = len(found) > 1
    steps = ", ".join(str(e.step) for e in found)
    aside = f"; renamed aside as {', '.join(renamed)}" if renamed else ""
    return (f"checkpoint{'s' * many} {steps} under {directory} {'are' if many else 'is'} corrupt "
            f"({found[0].reason}){aside}; " + (f"using step {step}, the newest that reads" if step is not None
                                                else "no step reads"))


def _everywhere(ok: bool) -> bool:
    """Whether every process of the run read the step it tried (each reads its own shards of a step, so only some
    may meet a truncated file): the processes of a run resume from the same step or none."""
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([ok]))))


def restore_latest(mngr: ocp.CheckpointManager, abstract_params, abstract_train=None, on_corrupt: str = "fallback",
                   set_corrupt_aside: bool = False, setting: str = "checkpoint.on_corrupt"):
    """(step, (params, train, data)) of the newest complete step of `mngr` that reads, None when it has none.
    A corrupt newer step is skipped with one line on stderr (and renamed `<step>.corrupt` when
    `set_corrupt_aside`), or refused in one line naming it (`on_corrupt="refuse"`; `setting` is the option the
    user set, named in the refusal). Every complete step corrupt is refused too: a run never restarts silently from scratch."""
    found, renamed = [], []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            out, err = restore(mngr, step, abstract_params, abstract_train), None
        except CorruptCheckpoint as corrupt:
            out, err = None, corrupt
        if not _everywhere(err is None) and err is None:
            err = _corrupt(mngr.directory, step, "another process of the run could not read it")
        if err is not None:
            if on_corrupt == "refuse":
                raise CorruptCheckpoint(f"{err}; refused by {setting}=refuse ({setting}=fallback uses the newest step "
                                        "that reads, or move it away)", step, err.reason) from None
            found.append(err)
            if set_corrupt_aside and (name := set_aside(mngr, step)):
                renamed.append(name)
            continue
        if found:
            warn(_corrupt_line(mngr.directory, found, step, renamed))
        return step, out
    if found:
        raise CorruptCheckpoint(_corrupt_line(mngr.directory, found, None, renamed)
                                + " (move them away to start over)" * set_corrupt_aside, found[-1].step,
                                found[-1].reason)
    return None


def latest_step(workdir: str) -> int | None:
    path = files.path(workdir) / "checkpoints"
    if not path.exists():
        return None
    mngr = manager(workdir, read_only=True)
    step = mngr.latest_step()
    mngr.close()
    return step


def load_params(workdir: str, abstract_params, on_corrupt: str | None = None):
    """The params of the newest checkpoint in `workdir` that reads (used by sampling, eval, inspect and
    `train.init_from`): a corrupt newer step is skipped with one line, or refused with `on_corrupt="refuse"`
    (default: the `corrupt_policy` in force). A reader never renames anything in the workdir."""
    policy, setting = _POLICY[-1]
    if latest_step(workdir) is None:
        raise CheckpointError(f"{workdir}: no complete checkpoint found under {workdir}/checkpoints")
    mngr = manager(workdir, read_only=True)
    try:
        return restore_latest(mngr, abstract_params, on_corrupt=on_corrupt or policy, setting=setting)[1][0]
    finally:
        mngr.close()


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_config(workdir: str, config) -> None:
    if jax.process_index() == 0:
        path = files.path(workdir) / CONFIG_FILE
        with files.writing(path, CONFIG_FILE):
            files.path(workdir).mkdir(parents=True, exist_ok=True)
            files.write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> dict:
    path = files.path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{workdir}: not a gptjax workdir (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def check_compatible(workdir: str, config) -> None:
    """Stops a run from resuming a workdir written by a different model (before any restore is attempted)."""
    if not (files.path(workdir) / CONFIG_FILE).exists():
        return
    from gptjax.model import model_config_dict

    saved = read_config(workdir)
    saved["model"] = {**model_config_dict().to_dict(), "preset": "", **saved.get("model", {})}  # older runs: defaults
    saved = _flatten(saved)
    current = _flatten(json.loads(config.to_json_best_effort()))
    diffs = [
        f"{k}={saved.get(k)!r} there, {current.get(k)!r} here"
        for k in sorted(set(saved) | set(current))
        if k.startswith(_IDENTITY_KEYS) and saved.get(k) != current.get(k)
        and k not in {f"model.{t}" for t in TUNABLE_MODEL_KEYS}
    ]
    if diffs:
        raise CheckpointError(
            f"--workdir={workdir} holds a different run ({'; '.join(diffs[:3])}); use a new --workdir or its config"
        )
