"""Checkpoints with orbax: one step directory holds `params`, `train` (step, optimizer state, RNG) and `data`
(the data position, JSON). Resume order: latest complete step in the workdir, else `train.init_from` params,
else scratch. A directory left half-written by a killed process (`N.orbax-checkpoint-tmp`) is never a
complete step, so it is skipped."""

import json

import jax
import orbax.checkpoint as ocp

from gptjax import files
from gptjax.errors import CheckpointError  # noqa: F401  (part of this module's API)

CONFIG_FILE = "config.json"
# Keys that must agree between a workdir's saved config and the config that resumes or samples from it, and the
# model fields that may change between runs on the same params (resuming, or fine-tuning from `train.init_from`).
_IDENTITY_KEYS = ("model", "data.tokenizer", "data.seq_len")
TUNABLE_MODEL_KEYS = ("dropout", "dtype", "remat", "attention_impl", "norm_impl", "loss_impl", "embed_impl")


def manager(workdir: str, ckpt_cfg=None, read_only: bool = False) -> ocp.CheckpointManager:
    """The workdir's checkpoint manager; `read_only` for readers (sampling), which never create the directory."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.keep if ckpt_cfg is not None else None,
        enable_async_checkpointing=bool(ckpt_cfg.async_save) if ckpt_cfg is not None else False,
        create=not read_only,
    )
    return ocp.CheckpointManager(files.path(workdir) / "checkpoints", options=options)


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


def save_params(workdir: str, params, step: int = 0) -> None:
    """A params-only checkpoint (what `gptjax import-hf` writes): enough to sample or to `init_from`."""
    mngr = manager(workdir)
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), force=True)
    mngr.wait_until_finished()
    mngr.close()


def _describe_mismatch(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_train=None):
    """Restores `params` (and `train` and `data` when `abstract_train` is given) onto the shardings in the
    abstract trees, whatever mesh the checkpoint was written from."""
    args = {"params": ocp.args.StandardRestore(abstract_params)}
    if abstract_train is not None:
        args.update(train=ocp.args.StandardRestore(abstract_train), data=ocp.args.JsonRestore())
    try:
        out = mngr.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {mngr.directory / str(step)} does not match the config ({_describe_mismatch(err)})"
        ) from None
    if abstract_train is None:
        return out.params, None, None
    return out.params, out.train, out.data


def latest_step(workdir: str) -> int | None:
    path = files.path(workdir) / "checkpoints"
    if not path.exists():
        return None
    mngr = manager(workdir, read_only=True)
    step = mngr.latest_step()
    mngr.close()
    return step


def load_params(workdir: str, abstract_params):
    """The params of the latest checkpoint in `workdir` (used by sampling and by `train.init_from`)."""
    step = latest_step(workdir)
    if step is None:
        raise CheckpointError(f"{workdir}: no complete checkpoint found under {workdir}/checkpoints")
    mngr = manager(workdir, read_only=True)
    try:
        return restore(mngr, step, abstract_params)[0]
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
        files.path(workdir).mkdir(parents=True, exist_ok=True)
        files.write_text(files.path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))


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
