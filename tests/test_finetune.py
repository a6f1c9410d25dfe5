"""Fine-tuning: GPT-1 input transformations and head, the auxiliary LM loss, instruction tuning's response-only
loss and packing, LoRA, bad input, sharded runs and exact resume."""

import json
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from gptjax import configs, optimizer, runs, sharding
from gptjax.configs import finetune as finetune_config
from gptjax.errors import CheckpointError, ConfigError, DataError
from gptjax.finetune import data as ft_data
from gptjax.finetune import heads, lora, objectives, transforms
from gptjax.model import GPT, ModelConfig
from gptjax.runs import finetune as ft_run
from gptjax.tokenizer import CharTokenizer
from gptjax.trainer import Trainer
from helpers import communicate, gptjax_in_process, gptjax_subprocess, metrics_by_step, one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENRE = os.path.join(ROOT, "experiments", "finetune", "genre.py")
TINY = dict(vocab_size=23, num_layers=2, d_model=16, num_heads=2, max_len=16, attention_impl="reference",
            norm_impl="reference", loss_impl="reference")
S = transforms.Specials(100, 101, 102)


def test_input_transformations_are_token_exact():
    t = transforms.transform
    assert t("classification", [[1, 2, 3]], S, 8) == [[100, 1, 2, 3, 102]]
    assert t("entailment", [[1, 2], [3]], S, 8) == [[100, 1, 2, 101, 3, 102]]
    assert t("similarity", [[1, 2], [3]], S, 8) == [[100, 1, 2, 101, 3, 102], [100, 3, 101, 1, 2, 102]]
    assert t("multiple_choice", [[1, 2], [3], [4, 5]], S, 8) == [[100, 1, 2, 101, 3, 102],
                                                                [100, 1, 2, 101, 4, 5, 102]]
    # Too long: the longest field loses its last tokens (the earliest on ties); the special tokens stay.
    assert t("classification", [[1, 2, 3, 4, 5]], S, 5) == [[100, 1, 2, 3, 102]]
    assert t("entailment", [[1, 2, 3, 4], [5, 6]], S, 7) == [[100, 1, 2, 101, 5, 6, 102]]
    assert t("entailment", [[1, 2, 3], [5, 6, 7]], S, 7) == [[100, 1, 2, 101, 5, 6, 102]]
    with pytest.raises(transforms.TooLong):
        t("classification", [[1, 2, 3, 4, 5]], S, 5, truncate=False)


def test_records_are_encoded_with_the_specials_after_the_vocabulary(tmp_path):
    tok = CharTokenizer("abc xyz")
    path = tmp_path / "nli.jsonl"
    path.write_text('{"p": "ab", "h": "c", "y": 1}\n\n{"p": "x", "h": "yz", "y": 0}\n')
    f = finetune_config.section()
    f.update(task_type="entailment", fields=("p", "h"), label_field="y", labels=("0", "1"))
    enc = ft_data.encode_classification(ft_data.read_jsonl(str(path)), tok, f, transforms.Specials.after(7), 8)
    s, d, e = 7, 8, 9
    a, b, c, x, y, z = (tok.encode(ch)[0] for ch in "abcxyz")
    np.testing.assert_array_equal(enc.inputs[:, 0], [[s, a, b, d, c, e, 0, 0], [s, x, d, y, z, e, 0, 0]])
    np.testing.assert_array_equal(enc.lengths[:, 0], [6, 6])
    np.testing.assert_array_equal(enc.labels, [1, 0])
    assert enc.where == [f"{path}:1", f"{path}:3"]


def _classifier(combine="first", num_classes=3, **kw):
    cfg = ModelConfig(**{**TINY, "vocab_size": 23, **kw})
    return heads.ClassifierGPT(cfg, num_classes, combine)


def test_the_head_reads_the_last_token_that_is_not_padding():
    model = _classifier()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 23, (3, 1, 12)).astype(np.int32)
    lengths = np.array([[5], [12], [1]], np.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, lengths)["params"])
    apply = jax.jit(model.apply)  # one program for the three calls below
    scores, _ = apply({"params": params}, tokens, lengths)
    # The head is a linear map of the backbone's hidden state at position length - 1.
    hidden, _ = jax.jit(lambda p, x: GPT(model.cfg).apply({"params": p}, x, return_hidden=True))(params["gpt"],
                                                                                                tokens[:, 0])
    want = hidden[np.arange(3), lengths[:, 0] - 1] @ params["kernel"] + params["bias"]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # Padding after the last token changes nothing; the last token itself does.
    padded = tokens.copy()
    for i, n in enumerate(lengths[:, 0]):
        padded[i, 0, n:] = rng.integers(1, 23, 12 - n)
    np.testing.assert_array_equal(apply({"params": params}, padded, lengths)[0], scores)
    changed = tokens.copy()
    changed[0, 0, 4] = (changed[0, 0, 4] % 22) + 1
    assert not np.allclose(apply({"params": params}, changed, lengths)[0][0], scores[0])


@pytest.mark.slow  # the fast tier's head test is the one above (combine="first")
def test_similarity_adds_both_orders_and_multiple_choice_softmaxes_over_choices():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 23, (2, 2, 8)).astype(np.int32)
    lengths = np.array([[6, 8], [3, 7]], np.int32)
    sim = _classifier("sum", 2)
    params = nn.unbox(sim.init(jax.random.PRNGKey(0), tokens, lengths)["params"])
    hidden, _ = GPT(sim.cfg).apply({"params": params["gpt"]}, tokens.reshape(4, 8), return_hidden=True)
    last = heads.last_token_states(hidden, lengths.reshape(4)).reshape(2, 2, -1)
    np.testing.assert_allclose(sim.apply({"params": params}, tokens, lengths)[0],
                               last.sum(1) @ params["kernel"] + params["bias"], rtol=1e-5, atol=1e-6)
    swapped = tokens[:, ::-1], lengths[:, ::-1]  # the two orders are symmetric
    np.testing.assert_allclose(sim.apply({"params": params}, *swapped)[0], sim.apply({"params": params}, tokens,
                                                                                      lengths)[0], rtol=1e-5)
    mc = _classifier("choices")
    params = nn.unbox(mc.init(jax.random.PRNGKey(0), tokens, lengths)["params"])
    scores = mc.apply({"params": params}, tokens, lengths)[0]
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores, (last @ params["kernel"] + params["bias"])[..., 0], rtol=1e-5, atol=1e-6)


def _cls_batch(rng, B=4, C=1, T=12, classes=3):
    tokens = rng.integers(1, 23, (B, C, T)).astype(np.int32)
    lengths = rng.integers(3, T + 1, (B, C)).astype(np.int32)
    return {"inputs": tokens, "lengths": lengths, "label": rng.integers(0, classes, (B, 1)).astype(np.int32),
            "weight": np.ones((B, 1), np.float32)}


@pytest.mark.slow  # three gradient programs; the fast tier trains a classifier with the LM loss in the LoRA test
def test_lambda_zero_leaves_the_lm_loss_without_effect():
    model = _classifier()
    batch = _cls_batch(np.random.default_rng(2))
    params = nn.unbox(objectives.Classification(12, 1, 0.0).init(model, jax.random.PRNGKey(0), batch))

    def head_only(p):
        scores, _ = model.apply({"params": p["model"]}, batch["inputs"], batch["lengths"])
        return optax.softmax_cross_entropy_with_integer_labels(scores, batch["label"][:, 0]).mean()

    def grads(task):  # jitted, as every loss below: one program each instead of hundreds of eager ops
        return jax.jit(jax.value_and_grad(lambda p: task.loss(model, p, batch, jax.random.PRNGKey(1))[0]))(params)

    (l0, g0), (lh, gh) = grads(objectives.Classification(12, 1, 0.0)), jax.jit(jax.value_and_grad(head_only))(params)
    np.testing.assert_allclose(l0, lh, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), g0, gh)
    # With lambda = 0.5 the LM loss is there: L = L_clf + 0.5 L_lm, and the gradients differ.
    half = objectives.Classification(12, 1, 0.5)
    (l5, aux), g5 = jax.jit(jax.value_and_grad(lambda p: half.loss(model, p, batch, jax.random.PRNGKey(1)),
                                               has_aux=True))(params)
    np.testing.assert_allclose(l5, aux["clf_loss"] + 0.5 * aux["lm_loss"], rtol=1e-6)
    assert aux["lm_loss"] > 1.0
    assert not np.allclose(g5["model"]["gpt"]["wte"], g0["model"]["gpt"]["wte"])


def _sft_examples():
    tok = CharTokenizer("abcdefgh:# \n")
    f = finetune_config.section()
    f.template = "#{prompt}:"
    recs = [(f"mem:{i}", {"prompt": p, "response": r})
            for i, (p, r) in enumerate([("ab", "cde"), ("h", "gg"), ("abc", "d"), ("fe", "hhh")])]
    return tok, ft_data.encode_sft(recs, tok, f, eos_id=tok.vocab_size, seq_len=16)


def test_sft_loss_counts_response_tokens_only():
    tok, ex = _sft_examples()
    toks, plen = ex[0]
    assert toks == tok.encode("#ab:") + tok.encode("cde") + [tok.vocab_size] and plen == 4
    rows = ft_data.sft_rows(ex, 16, pack=False)
    # Row 0: 8 tokens -> 7 (input, target) pairs; targets 4.. are the response and eos.
    np.testing.assert_array_equal(rows["weights"][0], [0, 0, 0, 1, 1, 1, 1] + [0] * 9)
    np.testing.assert_array_equal(rows["targets"][0, 3:7], tok.encode("cde") + [tok.vocab_size])

    cfg = ModelConfig(**{**TINY, "vocab_size": tok.vocab_size + 1})
    model, task = GPT(cfg), objectives.InstructionTuning(16)
    params = nn.unbox(task.init(model, jax.random.PRNGKey(0), rows))

    def loss_of_logits(logits):
        from gptjax.model import cross_entropy
        return cross_entropy(logits, rows["targets"], rows["weights"])[0]

    logits = jax.jit(model.apply)({"params": params["model"]}, rows["inputs"])
    g = jax.jit(jax.grad(loss_of_logits))(logits)
    prompt = rows["weights"] == 0
    assert np.all(np.asarray(g)[prompt] == 0) and np.all(np.abs(np.asarray(g)[~prompt]).sum(-1) > 0)
    # Scrambling the prompt tokens' targets changes neither the loss nor any parameter gradient.
    scrambled = {**rows, "targets": np.where(prompt, (rows["targets"] + 3) % tok.vocab_size, rows["targets"])}
    loss_and_grads = jax.jit(jax.value_and_grad(lambda p, rows: task.loss(model, p, rows, None)[0]))
    a, b = loss_and_grads(params, rows), loss_and_grads(params, scrambled)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_packed_batches_give_the_loss_and_gradients_of_unpacked_ones():
    tok, ex = _sft_examples()
    packed, unpacked = ft_data.sft_rows(ex, 16, pack=True), ft_data.sft_rows(ex, 16, pack=False)
    assert len(packed["inputs"]) == 2 and len(unpacked["inputs"]) == 4
    np.testing.assert_array_equal(packed["segment_ids"][0], [1] * 7 + [2] * 5 + [0] * 4)
    cfg = ModelConfig(**{**TINY, "vocab_size": tok.vocab_size + 1})
    model, task = GPT(cfg), objectives.InstructionTuning(16)
    params = nn.unbox(task.init(model, jax.random.PRNGKey(0), unpacked))
    unpacked = {k: v for k, v in unpacked.items() if k != "segment_ids"}  # one example per row: no segments at all
    loss_and_grads = jax.jit(jax.value_and_grad(lambda p, rows: task.loss(model, p, rows, None)[0]))
    a, b = loss_and_grads(params, packed), loss_and_grads(params, unpacked)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7), a, b)


@pytest.mark.slow  # the fast tier's LoRA test is the training step below
def test_lora_starts_as_the_base_model_and_merged_equals_unmerged():
    model = _classifier()
    batch = _cls_batch(np.random.default_rng(3))
    spec = objectives.LoraSpec(rank=2, alpha=4.0)
    task = objectives.Classification(12, 1, 0.5, lora=spec)
    params = nn.unbox(task.init(model, jax.random.PRNGKey(0), batch))
    ad = params["lora"]
    assert sorted(k.split("/")[-1] for k in ad) == sorted(["fc_kernel", "out_kernel", "proj_kernel", "qkv_kernel"] * 2)
    assert ad["h_0/attn/qkv_kernel"]["a"].shape == (16, 2) and ad["h_0/attn/qkv_kernel"]["b"].shape == (2, 48)
    base = model.apply({"params": params["model"]}, batch["inputs"], batch["lengths"])[0]
    np.testing.assert_array_equal(task.scores(model, params, batch), base)  # B = 0: the base model exactly

    rng = np.random.default_rng(4)
    params["lora"] = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype) * 0.3, ad)
    unmerged = task.scores(model, params, batch)
    assert not np.allclose(unmerged, base, atol=1e-4)
    merged = {**params["model"], "gpt": lora.merge(params["model"]["gpt"], params["lora"], 4.0, 2)}
    np.testing.assert_allclose(model.apply({"params": merged}, batch["inputs"], batch["lengths"])[0], unmerged,
                               rtol=1e-5, atol=1e-6)
    # The adapter is x A B * alpha / r beside x W: check one MLP input projection by hand.
    W = params["model"]["gpt"]["h_1"]["mlp"]["fc_kernel"]
    A, B = params["lora"]["h_1/mlp/fc_kernel"]["a"], params["lora"]["h_1/mlp/fc_kernel"]["b"]
    x = rng.normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_allclose(x @ merged["gpt"]["h_1"]["mlp"]["fc_kernel"], x @ W + (x @ A @ B) * 2.0, rtol=1e-4,
                               atol=1e-5)


def _config(**finetune):
    c = configs.default.get_config()
    c.model.update(**{k: v for k, v in TINY.items() if k != "vocab_size"})
    c.data.seq_len = 16
    c.train.update(batch_size=8, steps=3, log_every_steps=1)
    c.optim.update(lr=1e-2, warmup_steps=0)
    c.finetune = finetune_config.section()
    c.finetune.update(**{"labels": ("0", "1", "2"), **finetune})
    return c


def test_lora_trains_only_the_adapters_and_the_head():
    model = _classifier()
    task = objectives.Classification(12, 1, 0.5, lora=objectives.LoraSpec(2, 4.0))
    c = _config(lora_rank=2)
    tx = optimizer.make_optimizer(c.optim, 3, frozen=task.frozen)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    tr = Trainer(c, mesh, model, task, tx=tx)
    state = tr.init_state(0)
    batch = _cls_batch(np.random.default_rng(5), B=8)
    with tr.context():
        new, _ = tr.train_step(jax.tree.map(jnp.copy, state), sharding.host_local_to_global(batch, mesh))
    jax.tree.map(np.testing.assert_array_equal, new.params["model"]["gpt"], state.params["model"]["gpt"])
    assert not np.allclose(new.params["model"]["kernel"], state.params["model"]["kernel"])
    assert not np.allclose(new.params["lora"]["h_0/attn/qkv_kernel"]["b"], 0)
    # Adam's two moments exist for the adapters and the head only.
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    n_train = sum(x.size for x in jax.tree.leaves((state.params["lora"], state.params["model"]["kernel"],
                                                   state.params["model"]["bias"])))
    assert n_opt == 2 * n_train < sum(x.size for x in jax.tree.leaves(state.params["model"]["gpt"]))


@pytest.mark.slow
def test_sharded_fine_tuning_equals_one_device():
    batches = [_cls_batch(np.random.default_rng(10 + s), B=8) for s in range(3)]
    c = _config()
    losses, params = [], []
    for mesh in (sharding.make_mesh((1, 1, 1), jax.devices()[:1]), sharding.make_mesh((2, 2, 2))):
        model, task = _classifier(), objectives.Classification(12, 1, 0.5)
        tr = Trainer(c, mesh, model, task)
        state = tr.init_state(0)
        out = []
        with tr.context():
            for b in batches:
                state, m = tr.train_step(state, sharding.host_local_to_global(b, mesh))
                out.append({k: float(v) for k, v in m.items()})
        losses.append(out)
        params.append(jax.device_get(state.params))
    for a, b in zip(*losses):
        for k in ("train_loss", "clf_loss", "lm_loss", "grad_norm"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4), *params)


# --- bad input: one DataError / ConfigError / CheckpointError naming the file and line or the key ---------------


def test_bad_records_name_the_file_and_line(tmp_path):
    tok = CharTokenizer("abc")
    f = finetune_config.section()
    f.update(fields=("text",), labels=("x", "y"))
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ab", "label": "x"}\n{"txt": "ab", "label": "y"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: no field 'text' \(finetune.fields\)"):
        ft_data.encode_classification(ft_data.read_jsonl(str(path)), tok, f, S, 8)
    path.write_text('{"text": "ab", "label": "x"}\n{"text": "ab", "label": "z"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: label 'z' is not one of finetune.labels"):
        ft_data.encode_classification(ft_data.read_jsonl(str(path)), tok, f, S, 8)
    path.write_text('{"text": "abcabcabc", "label": "x"}\n')
    f.truncate = False
    with pytest.raises(DataError, match=rf"{path}:1: 9 text tokens exceed the 6 .* by 3"):
        ft_data.encode_classification(ft_data.read_jsonl(str(path)), tok, f, S, 8)
    path.write_text('{"text": "ab", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match=rf"{path}:2: not a JSON object"):
        ft_data.read_jsonl(str(path))


def test_a_tfds_name_that_does_not_exist_is_one_line(tmp_path):
    with pytest.raises(DataError, match="finetune.source: unknown tfds dataset 'glue_no_such/sst2'"):
        ft_data.read_tfds("glue_no_such/sst2", "train", str(tmp_path))


def _pretrained_workdir(path, tokenizer_chars="abcdefgh :\n"):
    """A tiny 'pretrained' workdir: config, char tokenizer, a params checkpoint."""
    from gptjax import checkpoint
    from gptjax.tokenizer import build_tokenizer

    c = configs.default.get_config()
    c.model.update(**{k: v for k, v in TINY.items() if k != "vocab_size"})
    c.data.tokenizer = "char"
    c.data.seq_len = 16
    tok = build_tokenizer(c.data, str(path), lambda: [tokenizer_chars])
    c.model.vocab_size = tok.vocab_size
    checkpoint.write_config(str(path), c)
    params = GPT(ModelConfig.from_config(c.model)).init(jax.random.PRNGKey(3), np.zeros((1, 16), np.int32))["params"]
    checkpoint.save_params(str(path), nn.unbox(params))
    return tok


def test_init_from_is_never_the_workdir_and_needs_the_same_tokenizer(tmp_path):
    _pretrained_workdir(tmp_path / "pre")
    c = _config()
    c.train.init_from = str(tmp_path / "pre")
    with pytest.raises(ConfigError, match="train.init_from: .* is \\(or holds\\) this run's workdir"):
        runs.train(c, str(tmp_path / "pre"))
    with pytest.raises(ConfigError, match="train.init_from"):
        runs.train(c, str(tmp_path / "pre" / "ft"))
    _pretrained_workdir(tmp_path / "other", "xyz")
    os.makedirs(tmp_path / "ft")
    import shutil
    shutil.copytree(tmp_path / "other" / "tokenizer", tmp_path / "ft" / "tokenizer")
    with pytest.raises(CheckpointError, match="train.init_from: .* has another tokenizer"):
        runs.train(c, str(tmp_path / "ft"))


@pytest.mark.slow
def test_fine_tuning_from_a_pretrained_workdir_grows_the_embedding(tmp_path):
    """A whole classification run in-process on JSONL: the backbone comes from init_from (the embedding grows by the
    three special tokens), val_accuracy is logged, predictions are written, the pretrained workdir is untouched."""
    pre = tmp_path / "pre"
    tok = _pretrained_workdir(pre)
    before = sorted(str(p.relative_to(pre)) for p in pre.rglob("*"))
    for split, n in (("train", 24), ("val", 10)):
        with open(tmp_path / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"s": "abc" * (i % 3 + 1) if i % 2 else "fgh :" * (i % 2 + 1), "y": i % 2}) + "\n")
    c = _config(source="jsonl", train_path=str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"),
                fields=("s",), label_field="y", labels=("0", "1"))
    c.train.init_from = str(pre)
    c.eval.update(every_steps=3, batch_size=8)
    out = runs.train(c, str(tmp_path / "ft"))
    assert sorted(str(p.relative_to(pre)) for p in pre.rglob("*")) == before
    assert 0 <= out["val_accuracy"] <= 1 and "val_f1" in out
    rows = [json.loads(x) for x in open(tmp_path / "ft" / "predictions.jsonl")]
    assert len(rows) == 10 and rows[3]["example"] == f"{tmp_path / 'val.jsonl'}:4" and rows[3]["label"] == "1"
    saved = [json.loads(x) for x in open(tmp_path / "ft" / "metrics.jsonl")]
    assert any("val_accuracy" in r for r in saved)
    cfg = json.load(open(tmp_path / "ft" / "config.json"))
    assert cfg["model"]["vocab_size"] == tok.vocab_size + 3


@pytest.mark.slow
def test_genre_fine_tuning_resumes_exactly_after_sigkill(tmp_path):
    """`gptjax train --config=experiments/finetune/genre.py` (tiny model, from scratch, dropout on): 8 steps
    straight == 4 steps, SIGKILL, the same command again: same losses, val_accuracy and parameters."""
    args = [f"--config={GENRE}:steps=8,seq_len=32,batch=8", "--config.model.num_layers=1",
            "--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.dropout=0.1",
            "--config.data.vocab_size=512", "--config.train.log_every_steps=1", "--config.checkpoint.every_steps=4",
            "--config.checkpoint.async_save=False", "--config.eval.every_steps=8", "--config.eval.batch_size=512",
            "--config.mesh.shape=(2,2,2)"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    p = gptjax_subprocess("train", f"--workdir={straight}", *args)
    out, err = communicate(p, 900)
    assert p.returncode == 0, err[-3000:]
    p = gptjax_subprocess("train", f"--workdir={killed}", *args)
    start = time.time()
    while not os.path.isdir(os.path.join(killed, "checkpoints", "4")):
        assert p.poll() is None, p.stderr.read()[-2000:]
        assert time.time() - start < 900
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(killed, "checkpoints", "8")), "the run finished before it was killed"
    p = gptjax_subprocess("train", f"--workdir={killed}", *args)
    out, err = communicate(p, 900)
    assert p.returncode == 0, err[-3000:]
    assert "resumed from" in out and "checkpoints/4" in out
    a, b = metrics_by_step(straight, "train_loss"), metrics_by_step(killed, "train_loss")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]
    assert metrics_by_step(straight, "val_accuracy") == metrics_by_step(killed, "val_accuracy") != {}
    assert open(os.path.join(straight, "predictions.jsonl")).read() == open(os.path.join(killed,
                                                                                   "predictions.jsonl")).read()
    params = []
    for workdir in (straight, killed):
        with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
            params.append(mngr.restore(8, args=ocp.args.Composite(params=ocp.args.StandardRestore())).params)
    jax.tree.map(np.testing.assert_array_equal, *params)


def test_tfds_records_map_feature_names_to_fields(tmp_path):
    """The real TFDS reader on a small dataset written in glue/sst2's feature names (sentence, label as ClassLabel),
    prepared as array_record as TFDS does, then encoded through glue.py's sst2 mapping."""
    import tensorflow_datasets as tfds

    class Sst2Standin(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2),
                 "idx": tfds.features.Scalar(np.int32)}), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(["a fine play", "dull"]),
                    "validation": self._generate_examples(["witty"])}

        def _generate_examples(self, texts):
            for i, t in enumerate(texts):
                yield i, {"sentence": t, "label": i % 2, "idx": i}

    data_dir = str(tmp_path / "tfds")
    Sst2Standin(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    recs = ft_data.read_tfds("sst2_standin", "train", data_dir)
    assert recs == [("tfds:sst2_standin[train] record 0", {"sentence": "a fine play", "label": 0, "idx": 0}),
                    ("tfds:sst2_standin[train] record 1", {"sentence": "dull", "label": 1, "idx": 1})]
    import importlib.util

    spec = importlib.util.spec_from_file_location("glue", os.path.join(ROOT, "experiments", "finetune", "glue.py"))
    glue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue)
    f = glue.get_config("task=sst2").finetune
    tok = CharTokenizer("a fineplydulwt")
    enc = ft_data.encode_classification(recs, tok, f, S, 16)
    np.testing.assert_array_equal(enc.inputs[1, 0, :6], [100, *tok.encode("dull"), 102])
    np.testing.assert_array_equal(enc.labels, [0, 1])
    with pytest.raises(DataError, match="tfds:sst2_standin\\[train\\] record 0: no field 'premise'"):
        ft_data.encode_classification(recs, tok, glue.get_config("task=mnli").finetune, S, 16)
    f = glue.get_config("task=mnli").finetune  # its validation split is validation_matched, which sst2 has not
    f.update(source="tfds:sst2_standin", data_dir=data_dir)
    with pytest.raises(DataError, match=r"^finetune.tfds_val_split: TFDS dataset 'sst2_standin' has no split "
                                        r"'validation_matched' \(it has train, validation\)$"):
        ft_data.records(f, "validation")


def test_sample_template_comes_from_the_instruction_tuned_workdir(tmp_path):
    from gptjax import checkpoint

    c = _config(kind="sft", template="Q: {prompt}\nA:")
    checkpoint.write_config(str(tmp_path / "sft"), c)
    assert ft_data.render(ft_data.saved_template(str(tmp_path / "sft")), "Who?") == "Q: Who?\nA:"
    checkpoint.write_config(str(tmp_path / "cls"), _config())
    with pytest.raises(DataError, match="--template: .* is not an instruction-tuned run"):
        ft_data.saved_template(str(tmp_path / "cls"))


# --- a field the run computes from others never replaces a value given on the command line ----------------------


def _experiment(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", "finetune", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_steps_given_on_the_command_line_is_the_run_length():
    """genre.py and glue.py size the run by epochs (finetune.epochs) and warm up over a fraction of it: a
    --config.train.steps or --config.optim.warmup_steps from the command line is used as given instead (the saved
    config then says epochs 0 / fraction 0); both a field and what sets it is one line."""
    def steps(overrides, name="genre", arg=None, num_train=8000):
        c = _experiment(name).get_config(arg)
        for key, value in overrides.items():
            section, field = key.split(".")
            c[section][field] = value
        c = configs.finalize(c, overridden=overrides)  # as `gptjax train` does with the --config.* overrides
        finetune_config.validate(c)
        ft_run._set_steps(c, num_train)
        return c.train.steps, c.optim.warmup_steps, c.finetune.epochs, c.finetune.warmup_fraction

    assert steps({}) == (750, 2, 3.0, 0.002)  # 3 epochs of 8000 passages in batches of 32
    assert steps({"train.steps": 3}) == (3, 1, 0.0, 0.002)
    assert steps({"train.steps": 3}, "glue", "task=sst2") == (3, 1, 0.0, 0.002)
    assert steps({"optim.warmup_steps": 7}) == (750, 7, 3.0, 0.0)
    assert steps({"finetune.epochs": 1.0}) == (250, 1, 1.0, 0.002)
    assert steps({}, arg="steps=40") == (40, 1, 0.0, 0.002)  # the experiment's own argument
    for both in ({"train.steps": 3, "finetune.epochs": 1.0},
                 {"optim.warmup_steps": 3, "finetune.warmup_fraction": 0.1}):
        with pytest.raises(ConfigError, match="given together with finetune.*, which sets it; give one of them"):
            steps(both)
    c = _experiment("genre").get_config()
    c.train.steps = 3
    c = configs.finalize(c)  # a config built in code, not on the command line: epochs still decide
    ft_run._set_steps(c, 8000)
    assert c.train.steps == 750


def test_finetune_experiments_refuse_what_they_would_not_use(capsys, tmp_path):
    """Both train.steps and finetune.epochs given, and sample.* (read by pretraining only), are one line each."""
    for name in ("genre", "genre_lora", "glue", "imdb", "instruct"):
        one_line_error(capsys, "--config.sample.max_new_tokens: no such key in the config", "train",
                       f"--config={ROOT}/experiments/finetune/{name}.py", f"--workdir={tmp_path / name}",
                       "--config.sample.max_new_tokens=5")
    one_line_error(capsys, "gptjax: error: train.steps: given together with finetune.epochs=2.0, which sets it; give "
                   "one of them", "train", f"--config={GENRE}", f"--workdir={tmp_path / 'w'}",
                   "--config.train.steps=3", "--config.finetune.epochs=2",
                   "--config.finetune.source=jsonl")  # were it not refused: a DataError (no file), not a whole run
    assert not os.listdir(tmp_path)


def _jsonl(path, rows):
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["genre.py", "genre_lora.py", "glue.py:task=sst2", "instruct.py"])
def test_train_steps_on_the_command_line_sets_the_steps_the_run_trains(experiment, capsys, tmp_path):
    """`gptjax train --config=experiments/finetune/X --config.train.steps=2` trains 2 steps (the experiments' own
    lengths: genre 3 epochs = 75 steps here, instruct 300), from a tiny pretrained workdir."""
    from tests import rl_fixtures

    rl_fixtures.policy_workdir(tmp_path / "pre", rl_fixtures.plays_alphabet())
    args = [f"--config={ROOT}/experiments/finetune/{experiment}", f"--workdir={tmp_path / 'run'}",
            f"--config.train.init_from={tmp_path / 'pre'}", "--config.train.steps=2",
            "--config.checkpoint.async_save=False"]
    if experiment.startswith("genre"):
        args.append("--config.finetune.passage_chars=4000")  # about 800 training and 150 validation passages
    if experiment.startswith("glue"):  # sst2's fields in JSONL (the TFDS reader has its own tests)
        rows = [{"sentence": w * (i % 5 + 1), "label": i % 2} for i, w in enumerate(["a fine play ", "dull "] * 40)]
    if experiment.startswith("instruct"):  # a template in the tiny model's characters
        rows = [{"prompt": f"Say {w}.", "response": w} for w in ("ay", "no", "hark", "anon") * 20]
        args.append("--config.finetune.template=Q: {prompt} A: ")
    if experiment.startswith(("glue", "instruct")):
        args += ["--config.finetune.source=jsonl", f"--config.finetune.train_path={_jsonl(tmp_path / 't.jsonl', rows)}",
                 f"--config.finetune.val_path={_jsonl(tmp_path / 'v.jsonl', rows[:16])}"]
    status, out, err = gptjax_in_process(capsys, "train", *args)
    assert status == 0, err[-3000:]
    run_dir = tmp_path / "run"
    assert sorted(metrics_by_step(str(run_dir))) == [2]  # logged every 10 or 50 steps, and at the last
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2"]
    saved = json.load(open(run_dir / "config.json"))
    assert saved["train"]["steps"] == 2 and saved["finetune"]["epochs"] == 0


def test_a_finished_run_rerun_keeps_its_exported_model(tmp_path):
    """Rerunning the command of a finished run that exports its GPT (SFT, reward, PPO) reaches the export again at
    the same step: it is left as it is (it used to stop with orbax's 'already exists' traceback); a later step is
    written beside it."""
    from gptjax import checkpoint, workdirs

    c = configs.get_config()
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    params = {"w": np.ones((2, 3), np.float32)}
    out = workdirs.export_model(c, str(tmp_path), params, 5)
    again = workdirs.export_model(c, str(tmp_path), {"w": np.zeros((2, 3), np.float32)}, 5)
    assert again == out and checkpoint.latest_step(out) == 5
    workdirs.export_model(c, str(tmp_path), params, 7)
    assert checkpoint.latest_step(out) == 7
