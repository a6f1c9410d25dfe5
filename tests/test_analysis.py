"""gptjax.analysis and `gptjax inspect`: the arrays are right (attention is causal and normalised, recording changes
nothing, the logit lens ends at the model's logits, token losses are the evaluation loss, head scores find an
induction head where there is one and none where there is none), the command writes every file and turns bad input
into one line, and the HTML pages render in headless Chromium with no network."""

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import analysis, objectives
from gptjax.model import GPT, ModelConfig, cross_entropy
from helpers import gptjax_in_process, one_line_error

TINY = ModelConfig(vocab_size=41, num_layers=2, d_model=32, num_heads=4, max_len=24)


def init(cfg, seed=0):
    return nn.unbox(GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"])


def tokens(B=2, T=13, seed=1, vocab=TINY.vocab_size):
    return np.asarray(jax.random.randint(jax.random.key(seed), (B, T), 0, vocab), np.int32)


VARIANTS = {"plain": {}, "scan": dict(scan_layers=True), "post_ln_untied": dict(norm="post", tie_embeddings=False),
            "no_final_norm_sinusoidal": dict(final_norm=False, pos_embedding="sinusoidal"),
            "remat": dict(remat="full")}


# The logit-lens test runs every variant; the variants of all three are in the slow tier.
@pytest.mark.parametrize("variant", ["plain", pytest.param("scan", marks=pytest.mark.slow)])
def test_attention_rows_sum_to_one_and_are_zero_above_the_diagonal(variant):
    cfg = dataclasses.replace(TINY, **VARIANTS[variant])
    params = init(cfg)
    probs = analysis.attention(cfg, params, tokens())
    assert probs.shape == (2, 2, 4, 13, 13)  # (L, B, H, T, T)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs >= 0)
    assert np.all(probs[..., np.triu_indices(13, 1)[0], np.triu_indices(13, 1)[1]] == 0)
    assert analysis.attention(cfg, params, tokens()[0]).shape == (2, 4, 13, 13)  # (T,) input: no batch axis
    # Not trivially uniform: the rows of a random model differ from 1 / (t + 1) somewhere.
    assert not np.allclose(probs[:, :, :, -1], 1 / 13, atol=1e-4)


@pytest.mark.parametrize("variant", ["plain", pytest.param("scan", marks=pytest.mark.slow)])
def test_recording_changes_no_output_and_is_off_unless_asked(variant):
    cfg = dataclasses.replace(TINY, attention_impl="reference", **VARIANTS[variant])
    params, x = init(cfg), jnp.asarray(tokens())
    model = GPT(cfg)
    plain = model.apply({"params": params}, x)
    recorded, state = model.apply({"params": params}, x, mutable=["intermediates", "residuals"])
    np.testing.assert_array_equal(np.asarray(recorded), np.asarray(plain))
    assert set(state) == {"intermediates", "residuals"}
    # Not asked: nothing but the logits comes out (what the training step and decoding see).
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x), params)
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, 13, TINY.vocab_size)
    # The jitted forward pass is the same program whether or not the model has anything to sow: no extra outputs.
    lowered = jax.jit(lambda p: model.apply({"params": p}, x)).lower(params)
    assert len(jax.tree.leaves(lowered.out_info)) == 1


@pytest.mark.parametrize("variant", [v if v == "plain" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in VARIANTS])
def test_logit_lens_last_layer_equals_the_models_logits(variant):
    cfg = dataclasses.replace(TINY, **VARIANTS[variant])
    params, x = init(cfg), tokens()
    lens = analysis.logit_lens(cfg, params, x)
    assert lens.shape == (3, 2, 13, TINY.vocab_size)  # embeddings, block 0, block 1
    logits = np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(x)))  # the default (fast) implementation
    np.testing.assert_allclose(lens[-1], logits, atol=2e-5, rtol=1e-5)
    assert np.abs(lens[0] - logits).max() > 1e-3  # earlier layers are a different read-out


@pytest.mark.slow  # the fast tier's inspect test computes token losses
def test_token_losses_equal_the_evaluation_loss():
    cfg, T = TINY, 17
    params, window = init(cfg, seed=3), tokens(B=3, T=T + 1, seed=4)
    task = objectives.LanguageModeling(seq_len=T)
    total, count = task.evaluate(GPT(cfg), params, task.from_windows(window))["val_loss"]
    nats = analysis.token_losses(cfg, params, window)
    assert nats.shape == (3, T)
    np.testing.assert_allclose(nats.mean(), float(total) / float(count), rtol=1e-5)
    row_loss = jax.jit(lambda x: cross_entropy(GPT(cfg).apply({"params": params}, x[:, :-1]), x[:, 1:])[0])
    for row in range(3):  # and per sequence, against model.cross_entropy on that row alone
        loss = row_loss(jnp.asarray(window[row:row + 1]))
        np.testing.assert_allclose(analysis.token_losses(cfg, params, window[row]).mean(), float(loss), rtol=1e-5)


def test_embedding_geometry():
    cfg = dataclasses.replace(TINY, pos_embedding="sinusoidal")
    params = init(cfg)
    wte = np.asarray(params["wte"]).copy()
    wte[7] = -3.0 * wte[12]  # 12's nearest is not 7 (cosine -1) ...
    wte[20] = 2.5 * wte[12] + 1e-4  # ... but 20 (cosine ~1)
    params = {**params, "wte": jnp.asarray(wte)}
    ids, sims = analysis.embedding_neighbours(cfg, params, [12, 20], k=3)
    assert ids[0, 0] == 20 and ids[1, 0] == 12 and sims[0, 0] > 0.999
    assert 12 not in ids[0] and 7 not in ids[0] and np.all(np.diff(sims, axis=1) <= 0)
    sim = analysis.position_similarity(cfg, params)
    assert sim.shape == (24, 24)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    # Sinusoidal: the similarity depends only on the distance (a Toeplitz matrix).
    for d in (1, 3, 7):
        np.testing.assert_allclose(np.diagonal(sim, d), np.diagonal(sim, d)[0], atol=1e-5)
    xy, explained = analysis.embedding_pca(cfg, params)
    assert xy.shape == (41, 2) and explained[0] >= explained[1] > 0 and explained.sum() <= 1
    # Token 7's planted -3x direction makes the first component separate 7 from 12 and 20.
    assert np.sign(xy[7, 0]) != np.sign(xy[20, 0]) and np.sign(xy[12, 0]) == np.sign(xy[20, 0])


def test_head_scores_find_no_induction_head_in_a_random_model():
    cfg = dataclasses.replace(TINY, max_len=64)
    scores = analysis.head_scores(cfg, init(cfg), seq_len=24, batch=8)
    assert scores["induction"].shape == scores["previous_token"].shape == (2, 4)
    # Near-uniform attention: about 1/t of each row lands on any one position.
    assert scores["induction"].max() < 0.1 and scores["previous_token"].max() < 0.2


def induction_model():
    """A 2-layer model whose weights are set by hand to hold the two-head induction circuit (Olsson et al. 2022).
    The residual stream has a token slot, a position slot and a previous-token slot (one-hot each); the MLPs are
    zero. Layer 0 head 0 attends from position p to p - 1 (its query is p, its key p + 1) and writes that token
    into the previous-token slot; layer 1 head 0 attends to the positions whose previous token is the current
    token. Head 1 of each layer has zero weights (uniform attention)."""
    V, P = 64, 32
    cfg = ModelConfig(vocab_size=V, num_layers=2, d_model=V + P + V, num_heads=2, max_len=P)
    D, K, beta = cfg.d_model, cfg.head_dim, 5.0
    params = jax.tree.map(np.zeros_like, init(cfg))
    tok, pos, prev = np.arange(V), V + np.arange(P), V + P + np.arange(V)
    params["wte"] = np.eye(V, D, dtype=np.float32)
    params["wpe"] = np.zeros((P, D), np.float32)
    params["wpe"][np.arange(P), pos] = 1
    for name in ("h_0", "h_1"):
        params[name]["ln_1"]["scale"] = params[name]["ln_2"]["scale"] = np.ones(D, np.float32)
    params["ln_f"]["scale"] = np.ones(D, np.float32)
    qkv0 = np.zeros((D, 3, 2, K), np.float32)
    qkv0[pos, 0, 0, np.arange(P)] = beta  # query at position p: "p"
    qkv0[pos[:-1], 1, 0, np.arange(1, P)] = 1  # key at position p: "p + 1"
    qkv0[tok, 2, 0, tok] = 1  # value: the token there
    out0 = np.zeros((2, K, D), np.float32)
    out0[0, tok, prev] = 0.2  # written into the previous-token slot
    qkv1 = np.zeros((D, 3, 2, K), np.float32)
    qkv1[tok, 0, 0, tok] = beta  # query: the current token
    qkv1[prev, 1, 0, tok] = 1  # key: the token before that position
    params["h_0"]["attn"].update(qkv_kernel=qkv0, out_kernel=out0)
    params["h_1"]["attn"]["qkv_kernel"] = qkv1
    return cfg, jax.tree.map(jnp.asarray, params)


@pytest.mark.slow  # the fast tier scores heads in the test above and in gptjax inspect
def test_head_scores_find_the_induction_head_of_a_model_built_to_have_one():
    cfg, params = induction_model()
    scores = analysis.head_scores(cfg, params, seq_len=12, batch=16)
    assert np.unravel_index(np.argmax(scores["induction"]), (2, 2)) == (1, 0), scores["induction"]
    assert scores["induction"][1, 0] > 0.7 and np.delete(scores["induction"].ravel(), 2).max() < 0.15
    assert np.unravel_index(np.argmax(scores["previous_token"]), (2, 2)) == (0, 0)
    assert scores["previous_token"][0, 0] > 0.95 and scores["previous_token"][1, 0] < 0.3
    # The circuit needs both heads: without layer 0's previous-token output, layer 1 head 0 finds nothing.
    broken = jax.tree.map(lambda x: x, params)
    broken["h_0"]["attn"]["out_kernel"] = jnp.zeros_like(params["h_0"]["attn"]["out_kernel"])
    assert analysis.head_scores(cfg, broken, seq_len=12, batch=16)["induction"].max() < 0.15
    # Other sequence lengths and seeds: still that head.
    other = analysis.head_scores(cfg, params, seq_len=15, batch=8, seed=3)
    assert other["induction"][1, 0] > 0.7


# ---- gptjax inspect ----------------------------------------------------------------------------------------------

TEXT = "the cat sat on the mat. the cat sat on the hat."


def make_workdir(path, with_params=True, scan=False, alphabet="abcdefghijklmnopqrstuvwxyz .,\n"):
    """A char-level workdir (config, tokenizer and, unless told otherwise, an untrained checkpoint)."""
    from gptjax import checkpoint, configs, tokenizer

    config = configs.get_config()
    config.data.tokenizer = "char"
    config.data.seq_len = 64
    config.model.update(num_layers=2, d_model=32, num_heads=4, max_len=64, scan_layers=scan)
    tok = tokenizer.build_tokenizer(config.data, str(path), lambda: [alphabet])
    config.model.vocab_size = tok.vocab_size
    config = configs.finalize(config)
    checkpoint.write_config(str(path), config)
    if with_params:
        model_cfg = ModelConfig.from_config(config.model)
        checkpoint.save_params(str(path), init(model_cfg))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("inspect") / "run")


def run_inspect(capsys, *args):
    return gptjax_in_process(capsys, "inspect", *args)


def test_inspect_bad_input_is_one_line(workdir, tmp_path, capsys, monkeypatch):
    out = f"--out={tmp_path / 'out'}"
    one_line_error(capsys, "text: empty", "inspect", f"--workdir={workdir}", "--text=   ", out)
    one_line_error(capsys, "give exactly one of --text and --text_file", "inspect", f"--workdir={workdir}", out)
    one_line_error(capsys, "give exactly one of --text and --text_file", "inspect", f"--workdir={workdir}", "--text=a",
             f"--text_file={tmp_path}/t.txt", out)
    one_line_error(capsys, "--text_file: no such file", "inspect", f"--workdir={workdir}", f"--text_file={tmp_path}/nope.txt", out)
    one_line_error(capsys, "--out: required", "inspect", f"--workdir={workdir}", "--text=the cat")
    one_line_error(capsys, "needs at least 2", "inspect", f"--workdir={workdir}", "--text=a", out)
    one_line_error(capsys, "text: 100 tokens is longer than the model's context of 64 tokens", "inspect", f"--workdir={workdir}",
             "--text=" + "a" * 100, "--truncate=error", out)
    one_line_error(capsys, "--layers: 2 is out of range; the model has 2 layers (0..1)", "inspect", f"--workdir={workdir}",
             "--text=the cat", "--layers=0,2", out)
    one_line_error(capsys, "--heads: 4 is out of range; the model has 4 heads (0..3)", "inspect", f"--workdir={workdir}",
             "--text=the cat", "--heads=4", out)
    one_line_error(capsys, "--heads: 'x' is not an integer", "inspect", f"--workdir={workdir}", "--text=the cat", "--heads=x", out)
    empty = make_workdir(tmp_path / "noparams", with_params=False)
    one_line_error(capsys, "no complete checkpoint found", "inspect", f"--workdir={empty}", "--text=the cat", out)
    one_line_error(capsys, "not a gptjax workdir", "inspect", f"--workdir={tmp_path}", "--text=the cat", out)
    monkeypatch.setitem(sys.modules, "bertviz", None)  # the [viz] extra missing: import fails
    one_line_error(capsys, "pip install 'gptjax[viz]'", "inspect", f"--workdir={workdir}", "--text=the cat", out)
    assert not os.path.exists(tmp_path / "out")  # every check ran before anything was written


@pytest.fixture(scope="module")
def inspected(workdir, tmp_path_factory):
    """`gptjax inspect` on the untrained workdir with a text longer than its context (64 characters)."""
    from gptjax import main

    out = tmp_path_factory.mktemp("inspected")
    text = TEXT * 3  # 144 characters: truncated to the first 64 with a note
    assert main.main(["gptjax", "inspect", f"--workdir={workdir}", f"--text={text}", f"--out={out}"]) == 0
    return out


@pytest.mark.slow
def test_inspect_writes_every_file(inspected, workdir):
    from gptjax import workdirs
    from gptjax.analysis import inspect_cli

    for name in inspect_cli.OUTPUTS:
        assert (inspected / name).stat().st_size > 0, name
    heads = json.loads((inspected / "heads.json").read_text())
    assert np.asarray(heads["induction"]).shape == (2, 4) and np.asarray(heads["previous_token"]).shape == (2, 4)
    emb = json.loads((inspected / "embeddings.json").read_text())
    assert emb["positions"]["kind"] == "learned" and len(emb["pca"]["explained_variance_ratio"]) == 2
    assert {n["token"] for n in emb["neighbours"]} == set(TEXT)
    # tokens.html: one span per token (64 after truncation), losses equal the API's, in bits.
    page = (inspected / "tokens.html").read_text()
    assert page.count('class="tok"') == 64
    config, model_cfg, params, tok = workdirs.load(workdir)
    nats = analysis.token_losses(model_cfg, params, tok.encode((TEXT * 3)[:64]))
    bits = [float(b) for b in re.findall(r'data-bits="([0-9.]+)"', page)]
    np.testing.assert_allclose(bits, nats / math.log(2), atol=1e-3)
    html = (inspected / "attention.html").read_text()
    assert "cdnjs" not in html and 'src="http' not in html


def test_inspect_notes_truncation(workdir, tmp_path, capsys):
    status, out, _ = run_inspect(capsys, f"--workdir={workdir}", "--text=" + "ab " * 30, f"--out={tmp_path}",
                                 "--nohtml", "--layers=1", "--heads=0,3")
    assert status == 0
    assert "note: the text is 90 tokens; inspecting its first 64" in out
    assert not (tmp_path / "attention.html").exists() and (tmp_path / "attention.png").exists()


def test_visible_draws_control_characters():
    from gptjax.analysis.plots import visible

    assert visible("a\nb\tc") == "a⏎b⇥c"
    assert visible("\r\x1b\x00\u200b\u2028") == "\\r\\x1b\\x00\\u200b\\u2028"
    assert visible("the cat, é ü — ❤") == "the cat, é ü — ❤"  # printable text is left alone


def test_inspect_draws_control_characters_without_missing_glyph_warnings(tmp_path, capsys):
    """A text with newlines, tabs, a carriage return and an escape character: every PNG draws its tokens without
    matplotlib's "Glyph 9 (\t) missing from font(s)" warnings (the characters are drawn as ⏎, ⇥ and escapes)."""
    import warnings

    workdir = make_workdir(tmp_path / "run", alphabet="abcdefghijklmnopqrstuvwxyz .,\n\t\r\x1b")
    text = "the cat\n\tsat on\r\nthe mat.\x1b\n\nthe end"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = run_inspect(capsys, f"--workdir={workdir}", f"--text={text}", f"--out={tmp_path / 'out'}",
                                       "--nohtml")
    assert status == 0, err
    glyphs = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert glyphs == []
    for name in ("attention.png", "tokens.png", "logit_lens.png", "embeddings.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


# ---- real browser ------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(apt-get install -y chromium)")


# Runs first in the page: records script errors, console.error calls and failed loads (scripts, images) in an
# attribute of <html>, which --dump-dom shows once the page has run.
_RECORDER = """<script>
window.__errors = [];
function __record(msg) { window.__errors.push(String(msg));
  document.documentElement.setAttribute("data-errors", JSON.stringify(window.__errors)); }
window.addEventListener("error", function (e) {
  __record(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href)))); }, true);
window.addEventListener("unhandledrejection", function (e) { __record("unhandled rejection: " + e.reason); });
var __consoleError = console.error;
console.error = function () { __record([].join.call(arguments, " ")); __consoleError.apply(console, arguments); };
</script>"""


def render(path, screenshot=None):
    """(DOM after the page's scripts ran, errors) of `path` in headless Chromium with the network off (every
    request goes to a closed proxy port). Errors: uncaught exceptions, console.error calls and failed loads."""
    page = open(path, encoding="utf-8").read()
    at = page.index("<head>") + len("<head>") if "<head>" in page else 0
    probe = os.path.join(os.path.dirname(os.path.abspath(path)), "_probe_" + os.path.basename(path))
    with open(probe, "w", encoding="utf-8") as fh:
        fh.write(page[:at] + _RECORDER + page[at:])
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    if screenshot:
        args += [f"--screenshot={screenshot}", "--window-size=1100,900", "--hide-scrollbars"]
    else:
        args += ["--dump-dom"]
    proc = subprocess.run(args + [f"file://{probe}"], capture_output=True, text=True, timeout=180)
    os.remove(probe)
    errors = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
    recorded = re.search(r'data-errors="([^"]*)"', proc.stdout)
    if recorded:
        import html

        errors += json.loads(html.unescape(recorded.group(1)))
    return proc.stdout, errors


@needs_chromium
@pytest.mark.slow
def test_console_errors_are_caught(tmp_path):
    """The check below can fail: a page with a script error reports it."""
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><script>console.log('fine'); not_defined_anywhere();</script>"
                    "</body></html>")
    _, errors = render(page)
    assert len(errors) == 2 and all("not_defined_anywhere" in e for e in errors), errors  # stderr and the page
    # BertViz's own page needs the network: offline, require.js does not load and nothing is drawn.
    import torch
    from bertviz import head_view

    cdn = tmp_path / "cdn.html"
    cdn.write_text("<html><head></head><body>" + head_view([torch.rand(1, 2, 3, 3)], ["a", "b", "c"],
                                                            html_action="return").data + "</body></html>")
    dom, errors = render(cdn)
    assert any("require" in e for e in errors), errors
    assert 'class="headAttention"' not in dom


@needs_chromium
@pytest.mark.slow
def test_pages_render_in_headless_chromium_offline(inspected, workdir, tmp_path, capsys):
    dom, errors = render(inspected / "attention.html")
    assert not errors, errors
    head = dom[dom.index('id="head-view"'):dom.index('id="model-view"')]
    model = dom[dom.index('id="model-view"'):]
    # Head view: a layer menu with both layers, arcs drawn for the 4 heads over the 64 tokens.
    assert len(re.findall(r"<select id=\"layer\">(.*?)</select>", head, re.S)) == 1
    assert len(re.findall(r"<option value=\"\d+\">", head)) == 2
    assert len(re.findall(r'class="headAttention"', head)) == 4
    assert head.count("<line") == 4 * 64 * 64
    # Model view: one thumbnail per layer and head.
    assert sorted(re.findall(r'id="attn_background_(\d+)_(\d+)"', model)) == [
        (str(i), str(j)) for i in range(2) for j in range(4)]
    # tokens.html: every token rendered, with its tooltip.
    dom, errors = render(inspected / "tokens.html")
    assert not errors, errors
    assert dom.count('class="tok"') == 64 and dom.count('class="tip"') == 64
    # Chosen layers and heads: the views hold only those.
    status, _, _ = run_inspect(capsys, f"--workdir={workdir}", f"--text={TEXT}", f"--out={tmp_path}",
                               "--layers=1", "--heads=0,2")
    assert status == 0
    dom, errors = render(tmp_path / "attention.html")
    assert not errors, errors
    model = dom[dom.index('id="model-view"'):]
    assert sorted(re.findall(r'id="attn_background_(\d+)_(\d+)"', model)) == [("0", "0"), ("0", "1")]
    head = dom[dom.index('id="head-view"'):dom.index('id="model-view"')]
    assert len(re.findall(r"<option value=\"\d+\">", head)) == 1
