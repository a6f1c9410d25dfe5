"""Configs: the default ConfigDict, size presets and the small helpers experiment files use."""

from gptjax.configs.default import ConfigError, finalize, get_config, validate  # noqa: F401
from gptjax.configs.presets import PAPER_PARAMS, PRESETS, apply_preset  # noqa: F401


def sibling(file: str, name: str):
    """The experiment file `name`.py beside the experiment file `file` (or at a path relative to its folder,
    "../finetune/genre"), as a module: settings that a family of experiment files shares
    (experiments/rlhf/_genre.py). Experiment files are loaded by path, not as a package."""
    import importlib.util
    import pathlib

    path = pathlib.Path(file).parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_arg(arg: str | None, **defaults):
    """Parses an experiment argument `key=value,key=value` into a ConfigDict of `defaults`' types.

    `cfg.py:size=small,steps=100` gives get_config("size=small,steps=100") (big_vision's convention).
    """
    import ml_collections

    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ConfigError(f"config argument {key!r} is unknown; choose from {', '.join(defaults) or 'none'}")
        typ = type(defaults[key])
        if typ is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = typ(value)
    return out


def web_scale(config, preset: str, seq_len: int):
    """The shared part of the GPT-2/GPT-3 recipes for real hardware: a size preset, no dropout, bf16 compute,
    scanned and rematerialised blocks, and C4 (English) with GPT-2's byte-level BPE.

    The corpus is TFDS `c4/en:3.0.1`, the copy MaxText trains on: 365M web documents in `train`, 364k in
    `validation`. gptjax reads it without TensorFlow, so it must be stored as array_record under data.data_dir
    (copy `gs://allennlp-tensorflow-datasets/c4/en/3.0.1` and convert it once with `tfds convert_format`; the
    error for a missing or TFRecord copy prints the commands). The tokenizer is a Hugging Face GPT-2 tokenizer
    directory (tokenizer.json, or vocab.json + merges.txt) given as data.tokenizer_path.
    """
    config.model.update(preset=preset, dropout=0.0, dtype="bfloat16", scan_layers=True, remat="full")
    config.data.update(source="tfds:c4/en:3.0.1", tfds_train_split="train", tfds_val_split="validation",
                       tfds_text_key="text", tokenizer="hf", seq_len=seq_len)
    return config
