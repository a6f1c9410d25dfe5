"""Faults a long run meets (issue 20): every file a command reads may be truncated, empty, binary or of another kind,
and every folder it writes to may be a file, read-only or on a full disk. Each is one line naming the file or folder
(a GptjaxError; the CLI prints `gptjax: error: ...`), never a library's traceback, and a folder that cannot be
written is refused before the long work. A damaged token cache is tokenized again.

Read-only and full disks are real: a small tmpfs mounted for the test (as root, file permissions stop nothing). Where
`mount` is not allowed those cases are skipped, saying why.
"""

import base64
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from gptjax import data, files, tokenizer
from gptjax.configs import get_config
from gptjax.errors import GptjaxError
from helpers import one_line_error

EVAL_DATA = pathlib.Path(__file__).parent / "data" / "evals"
# A real 1x1 PNG: a picture where a JSON, text or model file is expected.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
GARBAGE = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))  # not UTF-8 from byte 1
DAMAGE = ("truncated", "empty", "garbage", "png")


def damage(path, how: str) -> None:
    """Overwrites `path` with a damaged copy: cut in the middle of a line (not at a line end), emptied, random bytes,
    or a PNG picture."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    cut = len(raw) // 2
    while cut > 1 and b"\n" in raw[cut - 1:cut + 1]:  # neither at a line's end nor just before one
        cut -= 1
    path.write_bytes({"truncated": raw[:cut], "empty": b"", "garbage": GARBAGE, "png": PNG}[how])


def one_line(fn, *names, error=GptjaxError) -> str:
    """fn() raises one `error` line that names each of `names` (files, keys)."""
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


# --- Hugging Face GPT-2 directories (gptjax import-hf) --------------------------------------------------------


SHAPE = dict(vocab_size=11, n_layer=1, n_embd=8, n_head=2, n_positions=16)


def write_hf_dir(d, shards: bool = False):
    """A transformers GPT-2 directory of zeros (config.json, model.safetensors or two shards and their index, and a
    tokenizer.json), with no model built: the shapes come from gptjax's own mapping."""
    from safetensors.numpy import save_file

    from gptjax.convert import hf
    from gptjax.model import ModelConfig

    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", **SHAPE}))
    overrides = hf._model_overrides(hf._read_config(str(d)))
    names = hf._hf_names(overrides["num_layers"])
    tensors = {hf._PREFIX + names[p]: np.zeros(hf._hf_shape(p, s), np.float32)
               for p, s in hf._param_shapes(ModelConfig(**overrides)).items()}
    if shards:
        keys = sorted(tensors)
        parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, part in parts.items():
            save_file({k: tensors[k] for k in part}, str(d / name))
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: name for name, part in parts.items() for k in part}}))
    else:
        save_file(tensors, str(d / "model.safetensors"))
    (d / "tokenizer.json").write_text(hf_tokenizer_json())
    return d


def hf_tokenizer_json() -> str:
    import tokenizers
    from tokenizers import models

    vocab = {c: i for i, c in enumerate("abcdefgh")} | {"ab": 8, "<|endoftext|>": 9}
    return tokenizers.Tokenizer(models.BPE(vocab, [("a", "b")])).to_str()


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_hf_dir_damaged_file_is_one_line(tmp_path, name, how):
    from gptjax.convert import hf

    d = write_hf_dir(tmp_path / "hf")
    hf.load_hf_gpt2(str(d))  # the undamaged directory reads
    damage(d / name, how)
    message = one_line(lambda: hf.load_hf_gpt2(str(d)), d / name)
    if how == "png":
        assert "a PNG image" in message, message
    if how == "truncated" and name == "config.json":
        assert "truncated" in message, message


@pytest.mark.parametrize("how", DAMAGE)
def test_hf_sharded_checkpoint_damaged_index_or_shard_is_one_line(tmp_path, how):
    from gptjax.convert import hf

    d = write_hf_dir(tmp_path / "hf", shards=True)
    hf.load_hf_gpt2(str(d))
    shard = d / "model-00002-of-00002.safetensors"
    damage(shard, how)
    one_line(lambda: hf.load_hf_gpt2(str(d)), shard)
    shard.unlink()
    one_line(lambda: hf.load_hf_gpt2(str(d)), shard, "no such file", "model.safetensors.index.json")
    damage(d / "model.safetensors.index.json", how)
    one_line(lambda: hf.load_hf_gpt2(str(d)), d / "model.safetensors.index.json")


def test_hf_config_of_another_kind_is_one_line(tmp_path):
    from gptjax.convert import hf

    d = write_hf_dir(tmp_path / "hf")
    (d / "config.json").write_text("[1, 2, 3]")  # JSON, but not an object
    one_line(lambda: hf.load_hf_gpt2(str(d)), d / "config.json", "not a JSON object")
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": "wide"}))
    one_line(lambda: hf.load_hf_gpt2(str(d)), d / "config.json", "n_embd='wide' is not a whole number")
    one_line(lambda: hf.load_hf_gpt2(str(d / "config.json")), "--hf_dir", "is a file, not a directory")
    one_line(lambda: hf.load_hf_gpt2(str(tmp_path / "nowhere")), "--hf_dir", "no such directory")


def test_import_hf_truncated_safetensors_is_one_cli_line(tmp_path, capsys):
    d = write_hf_dir(tmp_path / "hf")
    damage(d / "model.safetensors", "truncated")
    err = one_line_error(capsys, str(d / "model.safetensors"), "import-hf", f"--hf_dir={d}",
                         f"--workdir={tmp_path / 'run'}")
    assert "truncated" in err and "download it again" in err
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("how", DAMAGE)
def test_import_hf_damaged_tokenizer_json_is_one_line_and_saves_nothing(tmp_path, how):
    d = write_hf_dir(tmp_path / "hf")
    damage(d / "tokenizer.json", how)
    cfg = get_config().data
    cfg.update(tokenizer="hf", tokenizer_path=str(d))
    one_line(lambda: tokenizer.build_tokenizer(cfg, str(tmp_path / "run"), lambda: []), d / "tokenizer.json")
    assert not (tmp_path / "run" / "tokenizer" / tokenizer.MANIFEST).exists()


# --- tokenizer files: data.tokenizer_path and a workdir's saved tokenizer ---------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small sentencepiece model file."""
    cfg = get_config().data
    cfg.update(tokenizer="sentencepiece", vocab_size=300, spm_model_type="bpe")  # 256 byte pieces and a few
    model = tokenizer._train_sentencepiece(cfg, ["the quick brown fox jumps over the lazy dog\n" * 50])
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    path.write_bytes(model)
    return path


@pytest.mark.parametrize("how", DAMAGE)
def test_sentencepiece_tokenizer_path_damaged_is_one_line_and_saves_nothing(tmp_path, spm_model, how):
    path = tmp_path / "tiny.model"
    shutil.copy(spm_model, path)
    cfg = get_config().data
    cfg.update(tokenizer="sentencepiece", tokenizer_path=str(path))
    damage(path, how)
    one_line(lambda: tokenizer.build_tokenizer(cfg, str(tmp_path / "run"), lambda: []), "data.tokenizer_path",
             path)
    assert not (tmp_path / "run" / "tokenizer" / tokenizer.MANIFEST).exists()  # a later run is not stuck with it


@pytest.mark.parametrize("name, how", [*(("vocab.json", how) for how in DAMAGE), ("merges.txt", "garbage"),
                                       ("merges.txt", "png"), ("merges.txt", "cut merge")])
def test_gpt2_vocab_and_merges_damaged_are_one_line(tmp_path, name, how):
    """(A merges.txt cut at a line end, or empty, is a valid shorter list of merges: nothing to refuse.)"""
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate("abcdefgh")} | {"ab": 8, "abc": 9}))
    (d / "merges.txt").write_text("#version: 0.2\na b\nab c\n")
    cfg = get_config().data
    cfg.update(tokenizer="hf", tokenizer_path=str(d))
    assert tokenizer.build_tokenizer(cfg, str(tmp_path / "ok"), lambda: []).vocab_size == 10
    if how == "cut merge":
        (d / "merges.txt").write_text("#version: 0.2\na b\nab")
    else:
        damage(d / name, how)
    message = one_line(lambda: tokenizer.build_tokenizer(cfg, str(tmp_path / "run"), lambda: []), d / name)
    assert ("merges.txt:3: not a merge" in message) == (how == "cut merge"), message


def saved_workdir(tmp_path, kind: str, spm_model) -> pathlib.Path:
    cfg = get_config().data
    cfg.tokenizer = kind
    if kind == "sentencepiece":
        cfg.tokenizer_path = str(spm_model)
    if kind == "hf":
        (tmp_path / "tokenizer.json").write_text(hf_tokenizer_json())
        cfg.tokenizer_path = str(tmp_path / "tokenizer.json")
    workdir = tmp_path / "run"
    tokenizer.build_tokenizer(cfg, str(workdir), lambda: ["abc def\n"])
    return workdir


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("kind", ["char", "sentencepiece", "hf"])
def test_workdir_tokenizer_damaged_is_one_line(tmp_path, spm_model, kind, how):
    workdir = saved_workdir(tmp_path, kind, spm_model)
    tokenizer.load_tokenizer(str(workdir))
    saved = workdir / "tokenizer" / {"char": "chars.json", "sentencepiece": "spm.model", "hf": "hf_tokenizer.json"}[kind]
    damage(saved, how)
    message = one_line(lambda: tokenizer.load_tokenizer(str(workdir)), saved)
    if how == "png":
        assert "a PNG image" in message, message


@pytest.mark.parametrize("how", DAMAGE)
def test_workdir_tokenizer_manifest_damaged_is_one_line(tmp_path, spm_model, how):
    workdir = saved_workdir(tmp_path, "char", spm_model)
    manifest = workdir / "tokenizer" / tokenizer.MANIFEST
    damage(manifest, how)
    one_line(lambda: tokenizer.load_tokenizer(str(workdir)), manifest)
    manifest.write_text(json.dumps({"kind": "char", "file": "gone.json"}))
    one_line(lambda: tokenizer.load_tokenizer(str(workdir)), workdir / "tokenizer" / "gone.json", "no such file")


# --- JSONL, JSON, CSV and labels files: eval tasks, fine-tuning data, RL prompts and comparisons ----------------


def copied(tmp_path, name: str) -> pathlib.Path:
    path = tmp_path / name
    shutil.copy(EVAL_DATA / name, path)
    return path


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name, spec", [("copa.jsonl", "copa:path={}"), ("triviaqa.json", "triviaqa:path={}"),
                                        ("storycloze.csv", "storycloze:path={}"),
                                        ("piqa-labels.lst", "piqa:path={d}/piqa.jsonl,labels={}")])
def test_eval_task_file_damaged_is_one_line(tmp_path, name, spec, how):
    from gptjax.evals import tasks

    path = copied(tmp_path, name)
    copied(tmp_path, "piqa.jsonl")
    damage(path, how)
    one_line(lambda: tasks.get(spec.format(path, d=tmp_path)), path)


@pytest.mark.parametrize("how", DAMAGE)
def test_finetune_jsonl_damaged_is_one_line(tmp_path, how):
    from gptjax.finetune import data as ft_data

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"example {i}", "label": "a"}) + "\n" for i in range(4)))
    f = types.SimpleNamespace(source="jsonl", train_path=str(path), val_path=str(path))
    assert len(ft_data.records(f, "train")) == 4
    damage(path, how)
    message = one_line(lambda: ft_data.records(f, "train"), path)
    if how == "truncated":
        assert "truncated" in message, message


@pytest.mark.parametrize("how", DAMAGE)
def test_rl_prompts_and_comparisons_damaged_are_one_line(tmp_path, how):
    from gptjax.rl import data as rl_data

    prompts, comparisons = tmp_path / "prompts.jsonl", tmp_path / "comparisons.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Once upon a time {i}"}) + "\n" for i in range(3)))
    comparisons.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                                   for i in range(3)))
    assert len(rl_data.read_prompts(str(prompts), "train")) == 3 and len(rl_data.read_comparisons(str(comparisons))) == 3
    damage(prompts, how)
    damage(comparisons, how)
    one_line(lambda: rl_data.check_prompts(str(prompts)), prompts)  # before any model is loaded
    one_line(lambda: rl_data.read_prompts(str(prompts), "train"), prompts)
    one_line(lambda: rl_data.read_comparisons(str(comparisons)), comparisons)


# --- text corpora (data.source=text) -------------------------------------------------------------------------


def text_config(path, **fields):
    cfg = get_config()
    cfg.data.update({"source": "text", "path": str(path), "tokenizer": "char", "seq_len": 16, **fields})
    cfg.train.batch_size = 8
    return cfg


@pytest.mark.parametrize("content, expected", [
    (b"", "is an empty file"),
    (GARBAGE, "not UTF-8 text: binary"),
    (PNG, "not UTF-8 text: a PNG image"),
    ("To be, or not to be: that is the question. Caf\u00e9".encode()[:-1], "cut in the middle of a character"),
    (b"plain text\x00\x00\x00 with NUL bytes", "not text: binary (byte 10 is NUL)"),
])
def test_text_corpus_that_is_not_text_is_one_line(tmp_path, content, expected):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    one_line(lambda: data._source(text_config(path).data).validation(), "data.path", path, expected)


def test_text_corpus_cli_binary_is_one_line(tmp_path, capsys):
    path = tmp_path / "corpus.bin"
    path.write_bytes(GARBAGE)
    one_line_error(capsys, f"data.path: {path}: not UTF-8 text", "train", f"--workdir={tmp_path / 'run'}",
                   "--config.data.source=text", f"--config.data.path={path}", "--config.data.tokenizer=char")


# --- TFDS datasets whose array_record or dataset_info.json files are damaged -------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The Shakespeare TFDS dataset prepared once (array_record): the copies below are damaged."""
    import tensorflow_datasets as tfds

    from gptjax.datasets.shakespeare import shakespeare_dataset_builder

    root = tmp_path_factory.mktemp("tfds")
    builder = shakespeare_dataset_builder.Builder(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return root


def damaged_copy(prepared, tmp_path, name: str, how: str) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path / "tfds"
    shutil.copytree(prepared, root)
    path = root / "shakespeare" / "1.0.0" / name
    if how == "missing":
        path.unlink()
    else:
        damage(path, how)
    return root, path


TRAIN_RECORDS = "shakespeare-train.array_record-00000-of-00001"


@pytest.mark.parametrize("how", DAMAGE + ("missing",))
def test_tfds_record_file_damaged_is_one_line(prepared, tmp_path, how):
    from gptjax.finetune import data as ft_data
    from gptjax.rl import data as rl_data

    root, path = damaged_copy(prepared, tmp_path, TRAIN_RECORDS, how)
    cfg = text_config("", source="tfds:shakespeare", data_dir=str(root))
    message = one_line(lambda: data._source(cfg.data).train_shard(0, 8), "data.source", path,
                       "missing, truncated or corrupt")
    assert f"delete {root}/shakespeare/1.0.0 and rerun" in message  # gptjax's own builder prepares it again
    one_line(lambda: ft_data.read_tfds("shakespeare", "train", str(root)), "finetune.source", path)
    one_line(lambda: rl_data.read_prompts("tfds:shakespeare", "train", "text", str(root)), "rl.prompts", path)


def test_tfds_record_file_damaged_in_an_eval_task_and_the_shakespeare_source(prepared, tmp_path):
    from gptjax.evals import tasks

    root, path = damaged_copy(prepared, tmp_path, TRAIN_RECORDS, "truncated")
    one_line(lambda: tasks.get(f"lambada:tfds=shakespeare,split=train,demo_split=validation,data_dir={root}"),
             "task lambada", path)
    cfg = text_config("", source="shakespeare", data_dir=str(root))
    one_line(lambda: data._source(cfg.data).validation(), "data.source: shakespeare", path)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "png"])
def test_tfds_dataset_info_damaged_is_one_line(prepared, tmp_path, how):
    root, path = damaged_copy(prepared, tmp_path, "dataset_info.json", how)
    cfg = text_config("", source="tfds:shakespeare", data_dir=str(root))
    one_line(lambda: data._source(cfg.data).validation(), "data.source", path)


# --- the token cache under <workdir>/data: damaged files are tokenized again ------------------------------------


@pytest.mark.parametrize("how", DAMAGE + ("missing",))
@pytest.mark.parametrize("which", [".npy", ".lengths.npy", ".json"])
def test_damaged_token_cache_is_tokenized_again(tmp_path, corpus_file, which, how, caplog):
    cfg = text_config(corpus_file)
    workdir = tmp_path / "run"
    first = data.make_pipeline(cfg, str(workdir), 0, 1)
    cached = sorted((workdir / "data").glob(f"train-*-0of8{which}"))
    assert len(cached) == 1
    if how == "missing":
        cached[0].unlink()
    else:
        damage(cached[0], how)
    with caplog.at_level(logging.WARNING):
        again = data.make_pipeline(cfg, str(workdir), 0, 1)
    if not (how == "missing" and which != ".npy"):  # no stats or lengths: an unfinished cache, built again quietly
        assert any("token cache" in r.getMessage() and "tokenizing again" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(again.train_shards[0]), np.asarray(first.train_shards[0]))
    np.testing.assert_array_equal(again.train_batch(3), first.train_batch(3))
    assert data._cached_tokens(*(cached[0].with_name(cached[0].name.replace(which, e))
                                 for e in (".npy", ".lengths.npy", ".json"))) is not None  # written again


# --- folders a command writes to: a file in the way, read-only, a full disk -------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs folder mounted with `options` (e.g. "size=1M,ro"); unmounted afterwards.
    Skips the test, saying why, where this machine does not allow mounting."""
    mounted = []

    def mount(options: str) -> pathlib.Path:
        d = tmp_path / f"mnt{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here to make a real read-only or full disk ({r.stderr.strip()}); "
                        "as root, permissions alone do not stop writes")
        mounted.append(d)
        return d

    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("no Linux mount here to make a real read-only or full disk")
    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", str(d)], capture_output=True)


def fill(d) -> None:
    """Fills the disk of folder `d` to the last byte with a file named filler."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:  # no space left
        pass
    finally:
        os.close(fd)


def full_disk(tmpfs) -> pathlib.Path:
    """A 256 KiB tmpfs filled to the last byte."""
    d = tmpfs("size=256k")
    fill(d)
    return d


def in_the_way(tmp_path) -> pathlib.Path:
    path = tmp_path / "in_the_way"
    path.write_text("a file where a folder should be\n")
    return path


def test_writable_dir_refuses_a_file_read_only_and_full_disk(tmp_path, tmpfs):
    path = in_the_way(tmp_path)
    one_line(lambda: files.writable_dir(path, "the outputs"), path, "a file is in the way", error=files.WriteError)
    one_line(lambda: files.writable_dir(path / "sub", "the outputs"), path / "sub", "a file is in the way",
             error=files.WriteError)
    ro = tmpfs("size=1M,ro")
    one_line(lambda: files.writable_dir(ro / "out"), ro / "out", "read-only", error=files.WriteError)
    one_line(lambda: files.writable_dir(ro), ro, "read-only", error=files.WriteError)  # exists, cannot write in it
    full = full_disk(tmpfs)
    one_line(lambda: files.writable_dir(full), full, "no space left", error=files.WriteError)
    assert sorted(os.listdir(full)) == ["filler"]  # the probe leaves nothing behind


def write_workdir(path) -> pathlib.Path:
    """A char-level workdir with config.json and a tokenizer but no checkpoint: what the checks before loading the
    params need."""
    from gptjax import checkpoint, configs

    config = get_config()
    config.data.update(tokenizer="char", seq_len=32)
    config.model.update(num_layers=1, d_model=16, num_heads=2, max_len=32)
    tok = tokenizer.build_tokenizer(config.data, str(path), lambda: ["abcdefgh .\n"])
    config.model.vocab_size = tok.vocab_size
    checkpoint.write_config(str(path), configs.finalize(config))
    return pathlib.Path(path)


@pytest.fixture
def no_params(monkeypatch):
    """Loading params fails the test: every refusal below comes before the long work."""
    from gptjax import workdirs

    def refuse(*args, **kwargs):
        raise AssertionError("the params were loaded before the output folder was checked")

    monkeypatch.setattr(workdirs, "load_params", refuse)
    monkeypatch.setattr(workdirs, "load", refuse)


def test_inspect_out_that_cannot_be_written_is_one_line_before_the_params(tmp_path, capsys, tmpfs, no_params):
    workdir = write_workdir(tmp_path / "run")
    args = ("inspect", f"--workdir={workdir}", "--text=abc abc", "--nohtml")
    path = in_the_way(tmp_path)
    one_line_error(capsys, f"{path}: cannot write the inspect outputs (--out): a file is in the way", *args,
                   f"--out={path}")
    ro = tmpfs("size=1M,ro")
    one_line_error(capsys, f"{ro / 'out'}: cannot write the inspect outputs (--out): the filesystem is read-only",
                   *args, f"--out={ro / 'out'}")


def test_inspect_text_file_binary_or_empty_is_one_line(tmp_path, capsys):
    workdir = write_workdir(tmp_path / "run")
    text = tmp_path / "text.png"
    text.write_bytes(PNG)
    base = ("inspect", f"--workdir={workdir}", f"--out={tmp_path / 'out'}", "--nohtml")
    one_line_error(capsys, f"{text}: not UTF-8 text: a PNG image", *base, f"--text_file={text}")
    text.write_bytes(b"")
    one_line_error(capsys, f"--text_file: {text} is empty", *base, f"--text_file={text}")


def test_eval_output_folders_that_cannot_be_written_are_one_line_before_evaluating(tmp_path, capsys, tmpfs,
                                                                                   no_params):
    a, b = write_workdir(tmp_path / "a"), write_workdir(tmp_path / "b")
    tasks = "--config.tasks=('arithmetic_2da',)"
    path = in_the_way(tmp_path)
    one_line_error(capsys, f"{path}: cannot write the comparison of the models (--output_dir): a file is in the way",
                   "eval", f"--workdir={a},{b}", f"--output_dir={path}", tasks)
    ro = tmpfs("size=1M,ro")
    one_line_error(capsys, f"{ro / 'cmp'}: cannot write the comparison of the models (--output_dir): the "
                   "filesystem is read-only", "eval", f"--workdir={a},{b}", f"--output_dir={ro / 'cmp'}", tasks)
    c = write_workdir(tmp_path / "c")
    (c / "eval").write_text("a file where the results go")
    one_line_error(capsys, f"{c / 'eval'}: cannot write the evaluation results: a file is in the way", "eval",
                   f"--workdir={c}", tasks)


def test_sweep_workdir_that_cannot_be_written_is_one_line_before_any_run(tmp_path, capsys, tmpfs, monkeypatch):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "launch"))
    import sweep

    sweep_file = tmp_path / "s.py"
    sweep_file.write_text("def get_config(arg=None):\n    pass\n\n\ndef get_sweep():\n    return [{'seed': 1}]\n")
    monkeypatch.setattr(sweep, "run_local", lambda *a, **k: pytest.fail("a run started"))
    path = in_the_way(tmp_path)
    assert sweep.main([f"--config={sweep_file}", f"--workdir={path}"]) == 2
    err = capsys.readouterr().err
    assert err == f"sweep: error: {path}: cannot write the sweep's runs and results: a file is in the way of a " \
                  "directory\n", err
    ro = tmpfs("size=1M,ro")
    assert sweep.main([f"--config={sweep_file}", f"--workdir={ro / 'sweep'}", "--collect_only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: error: {ro / 'sweep'}: cannot write") and "read-only" in err and \
        err.count("\n") == 1, err


def test_sweep_results_skip_damaged_metrics_lines_with_one_note(tmp_path, capsys):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "launch"))
    import sweep

    run = tmp_path / "seed=1"
    run.mkdir()
    rows = [{"step": 2, "train_loss": 3.0}, {"step": 2, "val_loss": 2.9, "val_bpb": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "train_lo'  # a run killed mid-line
    (run / "metrics.jsonl").write_text(text)
    assert sweep.read_metrics(str(run)) == rows
    assert capsys.readouterr().err == (f"sweep: note: {run / 'metrics.jsonl'}: left out 1 line that is not a row of "
                                       "metrics (line 3)\n")
    (run / "metrics.jsonl").write_bytes(PNG)
    assert sweep.read_metrics(str(run)) == []
    assert "left out" in capsys.readouterr().err
    results = sweep.collect(str(tmp_path), [{"seed": 1}], {})
    assert results[0]["status"] == "no metrics" and (tmp_path / "results.md").exists()


def test_token_cache_and_tokenizer_folders_that_cannot_be_written_are_one_line_first(tmp_path, corpus_file, tmpfs,
                                                                                    monkeypatch):
    cfg = text_config(corpus_file)
    read = []
    monkeypatch.setattr(data, "_read_text", lambda *a: read.append(a) or pytest.fail("the corpus was read"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "data").write_text("a file where the token cache goes")
    one_line(lambda: data.make_pipeline(cfg, str(workdir), 0, 1), workdir / "data", "the token cache",
             "a file is in the way", error=files.WriteError)
    (workdir / "data").unlink()
    (workdir / "tokenizer").write_text("a file where the tokenizer goes")
    one_line(lambda: data.make_pipeline(cfg, str(workdir), 0, 1), workdir / "tokenizer", "the tokenizer",
             error=files.WriteError)
    ro = tmpfs("size=1M,ro")
    one_line(lambda: data.make_pipeline(cfg, str(ro / "run"), 0, 1), ro / "run", "read-only",
             error=files.WriteError)


def test_token_cache_on_a_full_disk_is_one_line(tmp_path, corpus_file, tmpfs):
    cfg = text_config(corpus_file)
    d = tmpfs("size=1M")
    workdir = d / "run"
    data.make_pipeline(cfg, str(workdir), 0, 1)  # fits: about 200 kB of uint16 tokens
    fill(d)  # then the disk fills up, and the cache must be written again
    for cached in (workdir / "data").glob("*.json"):
        cached.unlink()
    one_line(lambda: data.make_pipeline(cfg, str(workdir), 0, 1), workdir / "data", "the token cache",
             "no space left", error=files.WriteError)


def test_hf_export_to_a_folder_that_cannot_be_written_is_one_line(tmp_path, tmpfs):
    from gptjax.convert import hf

    overrides, params = hf.load_hf_gpt2(str(write_hf_dir(tmp_path / "hf")))
    from gptjax.model import ModelConfig

    cfg = ModelConfig(**overrides)
    path = in_the_way(tmp_path)
    one_line(lambda: hf.save_hf_gpt2(params, cfg, str(path)), path, "a file is in the way", error=files.WriteError)
    ro = tmpfs("size=1M,ro")
    one_line(lambda: hf.save_hf_gpt2(params, cfg, str(ro / "out")), ro / "out", "read-only", error=files.WriteError)
    small = tmpfs("size=8k")  # two pages: room for config.json, not for the weights
    one_line(lambda: hf.save_hf_gpt2(params, cfg, str(small)), small / "model.safetensors", "no space left",
             error=files.WriteError)
