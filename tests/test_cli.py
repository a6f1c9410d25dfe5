"""The `gptjax` command end to end: train a tiny model then sample from it; import a transformers GPT-2 and
sample the same greedy text transformers generates; fine-tune the import; bad input gives one line."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import gptjax_in_process
from helpers import one_line_error as one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gptjax(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "gptjax.main", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def one_line_error(out, message):
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("gptjax: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr, out.stderr


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cli") / "run")
    out = gptjax("train", f"--workdir={workdir}", f"--config={ROOT}/experiments/pretrain/shakespeare_char.py",
                 f"--config.data.path={corpus_file}", "--config.train.steps=30", "--config.eval.every_steps=15",
                 "--config.eval.steps=2", "--config.train.log_every_steps=10", "--config.sample.max_new_tokens=20",
                 "--config.mesh.shape=(-1,1,1)", "--config.train.batch_size=16")
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out


@pytest.mark.slow
def test_train_end_to_end(trained):
    workdir, out = trained
    assert "step     30/30 | val_loss" in out.stdout
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "samples.txt", "tokenizer"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "30"))


@pytest.mark.slow
def test_sample_from_workdir(trained, tmp_path):
    workdir, _ = trained
    args = ["sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=16", "--seed=3"]
    a, b = gptjax(*args), gptjax(*args)
    assert a.returncode == 0, a.stderr[-2000:]
    assert a.stdout.startswith("ROMEO:") and len(a.stdout.split("-----")[0].strip()) > len("ROMEO:")
    assert a.stdout == b.stdout  # the same seed gives the same text
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("JULIET:\n")
    c = gptjax("sample", f"--workdir={workdir}", f"--prompt_file={prompt_file}", "--temperature=0",
               "--max_new_tokens=8")
    assert c.returncode == 0 and c.stdout.startswith("JULIET:\n")


@pytest.mark.slow
def test_sample_beam_search_stop_strings_and_left_truncation(trained):
    workdir, _ = trained
    base = ["sample", f"--workdir={workdir}", "--max_new_tokens=24"]
    beams = gptjax(*base, "--prompt=ROMEO:", "--beam_size=4", "--num_samples=2")
    assert beams.returncode == 0, beams.stderr[-2000:]
    texts = beams.stdout.split("\n-----\n")
    assert len(texts) == 3 and texts[2] == "" and all(t.startswith("ROMEO:") for t in texts[:2]), beams.stdout
    greedy = gptjax(*base, "--prompt=ROMEO:", "--temperature=0").stdout.split("\n-----")[0]
    stop = greedy[len("ROMEO:") + 5]  # a character of the continuation: it ends there (or earlier)
    cut = gptjax(*base, "--prompt=ROMEO:", "--temperature=0", f"--stop={stop}")
    assert cut.stdout.split("\n-----")[0] == "ROMEO:" + greedy[len("ROMEO:"):].split(stop)[0], (greedy, cut.stdout)
    long = "ROMEO: " * 20  # 140 characters; the context is 64
    kept = gptjax(*base, f"--prompt={long}", "--truncate=left", "--temperature=0")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert kept.stdout.startswith(long[-63:])  # sampling keeps room for one new token, then slides


@pytest.mark.slow
def test_char_run_samples_past_its_context_with_the_default_flags(trained):
    """nanoGPT's baby run has a context of 64; `gptjax sample` writes its default 200 tokens by sliding the window."""
    workdir, _ = trained
    out = gptjax("sample", f"--workdir={workdir}", "--prompt=ROMEO:")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout.split("\n-----")[0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 200


@pytest.fixture(scope="module")
def char_workdir(corpus_file, tmp_path_factory):
    """An untrained char-level workdir (config, tokenizer, params): enough for every sampling error."""
    import importlib.util

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gptjax import checkpoint, configs, data
    from gptjax.model import GPT, ModelConfig

    workdir = str(tmp_path_factory.mktemp("char") / "run")
    spec = importlib.util.spec_from_file_location("char", f"{ROOT}/experiments/pretrain/shakespeare_char.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.path = corpus_file
    config = configs.finalize(config)
    tok = data.make_pipeline(config, workdir).tokenizer
    with config.unlocked():
        config.model.vocab_size = tok.vocab_size
    checkpoint.write_config(workdir, config)
    model = GPT(ModelConfig.from_config(config.model))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    checkpoint.save_params(workdir, nn.unbox(params))
    return workdir


def test_sample_errors(char_workdir, capsys, tmp_path):
    workdir = char_workdir
    one_line(capsys, "prompt: 70 tokens leaves no room for a new token in the model's context of 64 tokens",
             "sample", f"--workdir={workdir}", "--prompt=" + "x" * 70, "--max_new_tokens=1")
    one_line(capsys, "prompt: 60 tokens + max_new_tokens=8 exceed the model's context of 64 tokens",
             "sample", f"--workdir={workdir}", "--prompt=" + "x" * 60, "--max_new_tokens=8", "--beam_size=2")
    one_line(capsys, "num_samples: beam search returns at most beam_size=2", "sample", f"--workdir={workdir}",
             "--prompt=hi", "--beam_size=2", "--num_samples=3", "--max_new_tokens=4")
    one_line(capsys, "top_p: must be in (0, 1]", "sample", f"--workdir={workdir}", "--prompt=hi", "--top_p=0")
    one_line(capsys, "not a gptjax workdir", "sample", f"--workdir={tmp_path / 'nothing'}", "--prompt=hi")
    one_line(capsys, "--prompt_file: no such file", "sample", f"--workdir={workdir}",
             f"--prompt_file={tmp_path / 'none.txt'}")
    one_line(capsys, "give exactly one of --prompt and --prompt_file", "sample", f"--workdir={workdir}")
    one_line(capsys, "not in the", "sample", f"--workdir={workdir}", "--prompt=\u2603")
    status, out, _ = gptjax_in_process(capsys, "sample", f"--workdir={workdir}", "--prompt=ROMEO:",
                                       "--max_new_tokens=4", "--temperature=0")
    assert status == 0 and len(out.split("\n-----")[0]) == len("ROMEO:") + 4 and out.startswith("ROMEO:")


@pytest.mark.slow  # about 8 s more: the programs of a second, slid window
def test_sample_slides_past_the_context_in_process(char_workdir, capsys):
    status, out, _ = gptjax_in_process(capsys, "sample", f"--workdir={char_workdir}", "--prompt=ROMEO:",
                                       "--max_new_tokens=100", "--temperature=0")  # past the 64-token context
    assert status == 0 and len(out.split("\n-----")[0]) == len("ROMEO:") + 100


def test_train_data_errors(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    base = ["train", f"--workdir={tmp_path / 'run'}", f"--config={ROOT}/experiments/pretrain/shakespeare_char.py",
            "--config.mesh.shape=(2,2,2)"]
    one_line(capsys, "data.path: no such file", *base, f"--config.data.path={tmp_path / 'missing.txt'}")
    one_line(capsys, "data.path", *base, f"--config.data.path={empty}")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def hf_dir(corpus_file, tmp_path_factory):
    """A random transformers GPT-2 with a byte-level BPE trained on the corpus, as a hub directory would hold."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    path = tmp_path_factory.mktemp("hf")
    tok = ByteLevelBPETokenizer()
    tok.train([corpus_file], vocab_size=400, special_tokens=["<|endoftext|>"])
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=tok.get_vocab_size(),
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return path, model, tok


@pytest.mark.slow
def test_import_hf_then_sample_matches_transformers(hf_dir, tmp_path):
    import torch

    path, model, tok = hf_dir
    workdir = tmp_path / "imported"
    out = gptjax("import-hf", f"--hf_dir={path}", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    prompt = "First Citizen:\nBefore we proceed"
    sample = gptjax("sample", f"--workdir={workdir}", f"--prompt={prompt}", "--temperature=0", "--max_new_tokens=12")
    assert sample.returncode == 0, sample.stderr[-3000:]
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = prompt + tok.decode(ref[0, len(ids):].tolist())
    assert sample.stdout.split("\n-----")[0] == expected
    one_line_error(gptjax("import-hf", f"--hf_dir={path}", f"--workdir={workdir}"), "already holds a run")


@pytest.mark.slow
def test_fine_tune_from_import(hf_dir, corpus_file, tmp_path):
    path, _, _ = hf_dir
    imported, tuned = tmp_path / "imported", tmp_path / "tuned"
    assert gptjax("import-hf", f"--hf_dir={path}", f"--workdir={imported}").returncode == 0
    out = gptjax("train", f"--workdir={tuned}", "--config.data.source=text", f"--config.data.path={corpus_file}",
                 f"--config.train.init_from={imported}", "--config.train.steps=6", "--config.train.log_every_steps=3",
                 "--config.eval.every_steps=6", "--config.eval.steps=1", "--config.data.seq_len=64",
                 "--config.train.batch_size=8", "--config.sample.max_new_tokens=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"initialised params from {imported}" in out.stdout
    assert "0.14M params" in out.stdout or "M params" in out.stdout
    import json

    cfg = json.load(open(tuned / "config.json"))
    assert (cfg["model"]["num_layers"], cfg["model"]["d_model"], cfg["data"]["tokenizer"]) == (2, 64, "hf")
    assert np.isfinite(json.loads(open(tuned / "metrics.jsonl").readline())["train_loss"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (the tpu extra)")
def test_no_libtpu_errors_on_a_machine_without_tpus(tmp_path):
    """With libtpu installed and nothing pinning the platform (as on a user's CPU machine), a training run prints
    none of libtpu's initialisation warnings or errors: gptjax tells libtpu there is no TPU to ask about."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY",
                                                            "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE")}
    env["GPTJAX_SMOKE"] = "1"
    out = subprocess.run([sys.executable, "-m", "gptjax.main", "train", f"--workdir={tmp_path}",
                          "--config=experiments/icl/mapping.py"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in ("E0000", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "INVALID_ARGUMENT", "libtpu"):
        assert noise not in out.stderr, out.stderr[-3000:]
